"""The shell sweep over prune percents and the Ray sweep, on tiny data."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import main
import runs
import sweep
from tests.conftest import ROOT
from tests.datafiles import write_mnist_files
from utils import UserError

TINY = ["--prune_iterations", "2", "--end_iter", "1", "--plot_dpi", "20", "--batch_size", "50"]


def tiny_flags(tmp_path: Path) -> list[str]:
    source = write_mnist_files(tmp_path / "source", n_train=100, n_test=50)
    return [*TINY, "--data_source", str(source), "--data_dir", str(tmp_path / "data")]


def test_shell_sweep_runs_each_percent_for_lt_and_reinit_and_combines_them(tmp_path):
    results = tmp_path / "results"
    flags = [*tiny_flags(tmp_path), "--seed", "3", "--results_root", str(results)]
    flags += ["--prune_percent_output", "10"]  # a flag whose name starts like a swept one
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "sweep_prune_percent.sh"),
            "-j",
            "2",
            "20",
            "50",
            "--",
            *flags,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    made = runs.all_runs(results)
    assert sorted((r.args["prune_type"], r.args["prune_percent"]) for r in made) == [
        ("lt", 20.0),
        ("lt", 50.0),
        ("reinit", 20.0),
        ("reinit", 50.0),
    ]
    assert all(r.complete and r.args["seed"] == 3 for r in made)
    assert all(r.args["prune_percent_output"] == 10.0 for r in made)
    for run in made:
        assert f"results: {run.root}" in done.stdout
    figure = results / "combined_plots" / "combined_fc1_mnist.png"
    assert f"combined plot: {figure}" in done.stdout


def test_shell_sweep_rejects_flags_it_sets_itself(tmp_path):
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "sweep_prune_percent.sh"),
            "20",
            "--",
            "--prune_type",
            "lt",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert (
        done.stderr
        == "error: --prune_type: the sweep sets --prune_type and --prune_percent itself\n"
    )
    assert not (tmp_path / "results").exists()


def test_sweep_tasks_are_the_cross_product_and_reject_swept_flags(tmp_path):
    options = sweep.build_parser().parse_args(
        ["--prune_percent", "10", "20", "--prune_type", "lt", "reinit", "--seed", "0", "1"]
    )
    tasks = sweep.make_tasks(options, ["--dataset", "mnist"])
    assert [t.name for t in tasks] == [
        f"{pt}_{p}_seed{s}" for pt in ("lt", "reinit") for p in (10, 20) for s in (0, 1)
    ]
    assert all(t.args.dataset == "mnist" and t.status == "new" for t in tasks)
    with pytest.raises(UserError, match="--seed after `--`: give it to sweep.py itself"):
        sweep.make_tasks(options, ["--seed", "4"])
    with pytest.raises(UserError, match="--arch_type"):
        sweep.make_tasks(options, ["--arch_type", "nonet"])


def test_sweep_plan_skips_finished_runs_and_resumes_interrupted_ones(tmp_path):
    results = tmp_path / "results"
    flags = [*tiny_flags(tmp_path), "--results_root", str(results), "--seed", "0"]
    assert main.main([*flags, "--prune_type", "lt"]) == 0
    assert main.main([*flags, "--prune_type", "reinit"]) == 0
    lt_run, reinit_run = (r.root for r in runs.all_runs(results))
    (reinit_run / "checkpoints" / "latest.pth").unlink()  # as if stopped during level 0

    options = sweep.build_parser().parse_args(
        ["--prune_type", "lt", "reinit", "--prune_percent", "10", "20", "--seed", "0"]
        + ["--results_root", str(results)]
    )
    tasks = sweep.make_tasks(options, [*tiny_flags(tmp_path)])
    sweep.plan(tasks, str(results))
    plan = {t.name: (t.status, t.run_dir, t.argv[:2]) for t in tasks}
    assert plan["lt_10_seed0"] == ("finished", str(lt_run), ["--prune_iterations", "2"])
    assert plan["reinit_10_seed0"] == ("resume", str(reinit_run), ["--resume", str(reinit_run)])
    assert plan["lt_20_seed0"][:2] == plan["reinit_20_seed0"][:2] == ("new", "")


def test_sweep_without_ray_installed_says_how_to_install_it(tmp_path):
    script = (
        "import sys; sys.modules['ray'] = None; sys.path.insert(0, sys.argv[1]); import sweep;"
        " sys.exit(sweep.main(sys.argv[2:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT), "--prune_type", "lt", "--", "--end_iter", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: sweep.py needs Ray: pip install -r requirements-ray.txt (it is not installed)\n"
    )


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install -r requirements-ray.txt); CI installs it",
)
def test_ray_sweep_reports_a_failed_task_resumes_it_next_time_and_skips_finished(tmp_path):
    results = tmp_path / "results"
    flags = tiny_flags(tmp_path)
    # an earlier lt run whose checkpoint is damaged: resuming it fails
    assert main.main([*flags, "--results_root", str(results), "--seed", "0"]) == 0
    [broken] = runs.all_runs(results)
    (broken.root / "checkpoints" / "latest.pth").write_bytes(b"damaged")
    command = [sys.executable, str(ROOT / "sweep.py"), "--prune_type", "lt", "reinit"]
    command += ["--prune_percent", "10", "--seed", "0", "--results_root", str(results)]
    command += ["--num_cpus", "2", "--", *flags]

    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "sweep: lt_10_seed0 failed error: checkpoint" in first.stdout
    assert "sweep: reinit_10_seed0 done" in first.stdout
    table = first.stdout[first.stdout.index("task ") :].splitlines()
    assert table[0].split() == [
        "task",
        "status",
        "seed",
        "weights_left",
        "best_accuracy",
        "best_epoch",
        "run",
        "error",
    ]
    assert table[1].split()[:3] == ["lt_10_seed0", "failed", "0"]
    assert table[2].split()[:4] == ["reinit_10_seed0", "done", "0", "90.0"]
    reinit = [r for r in runs.all_runs(results) if r.args["prune_type"] == "reinit"]
    assert len(reinit) == 1 and reinit[0].complete
    assert (results / "combined_plots" / "combined_fc1_mnist.png").exists()

    # repaired by hand: level 0 runs again in the same folder, the finished reinit run is skipped
    (broken.root / "checkpoints" / "latest.pth").unlink()
    second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"sweep: lt_10_seed0 was interrupted in {broken.root}: resuming it" in second.stdout
    assert f"sweep: reinit_10_seed0 finished earlier in {reinit[0].root}: skipped" in second.stdout
    assert "sweep: 1 task(s) on Ray" in second.stdout
    assert len(runs.all_runs(results)) == 2 and runs.load_run(broken.root).complete
    log = (results / "sweep_logs" / "lt_10_seed0.log").read_text()
    assert f"resuming {broken.root} at level 0" in log

    # everything finished: a third call starts no Ray at all
    third = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert third.returncode == 0 and "on Ray" not in third.stdout
    assert third.stdout.count("skipped") == 2


def test_sweep_log_parsing_finds_the_run_folder_and_the_error(tmp_path):
    status, folder, error = sweep.run_main(
        ["--dataset", "nope"], str(tmp_path), str(tmp_path / "log"), threads=1
    )
    assert status == 2 and folder == ""
    assert error.startswith("error: --dataset nope is not supported")
    assert "\n" not in error
