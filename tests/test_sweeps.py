"""The shell sweep over prune percents and the Ray sweep, on tiny data."""

import argparse
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import main
import sweep
from lth import cli, runs
from lth.errors import UserError
from lth.safe_load import load_array_list
from tests.conftest import ROOT
from tests.datafiles import write_mnist_files
from tests.resultfiles import back_to_level

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


@pytest.mark.slow
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
    assert "sweep: 1 task(s) in 1 process(es) on Ray" in second.stdout
    assert len(runs.all_runs(results)) == 2 and runs.load_run(broken.root).complete
    log = (results / "sweep_logs" / "lt_10_seed0.log").read_text()
    assert f"resuming {broken.root} at level 0" in log

    # everything finished: a third call starts no Ray at all
    third = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert third.returncode == 0 and "on Ray" not in third.stdout
    assert third.stdout.count("skipped") == 2


def test_sweep_log_parsing_finds_the_run_folder_and_the_error(tmp_path):
    status, folders, error = sweep.run_main(
        ["--dataset", "nope"], str(tmp_path), str(tmp_path / "log"), threads=1
    )
    assert status == 2 and folders == []
    assert error.startswith("error: --dataset nope is not supported")
    assert "\n" not in error


class FakeRay(types.ModuleType):
    """The part of Ray sweep.py uses, running one task at a time in the order they were started:
    enough to see which task is started when, and with which command line."""

    def __init__(self):
        super().__init__("ray")
        self.started: list[list[str]] = []  # each task's main.py argv, in the order started
        self.queue: list = []
        self.results: dict = {}

    def init(self, **kwargs) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def remote(self, function):
        fake = self

        class Remote:
            def options(self, **kwargs):
                return self

            def remote(self, *args):
                ref = object()
                fake.started.append(list(args[0]))
                fake.queue.append((ref, function, args))
                return ref

        return Remote()

    def wait(self, refs: list, num_returns: int) -> tuple[list, list]:
        ref, function, args = self.queue.pop(0)
        self.results[ref] = function(*args)
        return [ref], [r for r in refs if r is not ref]

    def get(self, ref):
        return self.results.pop(ref)


def control_options(*extra: str) -> argparse.Namespace:
    return sweep.build_parser().parse_args(["--prune_type", "reinit_ticket", "lt", *extra])


def test_control_tasks_run_reinit_and_pair_with_the_lt_task_of_their_percent_and_seed():
    options = control_options("--prune_percent", "10", "20", "--seed", "0", "1")
    tasks = sweep.make_tasks(options, ["--dataset", "mnist"])
    controls = [t for t in tasks if t.name.startswith("reinit_ticket_")]
    assert [t.name for t in controls] == [
        f"reinit_ticket_{p}_seed{s}" for p in (10, 20) for s in (0, 1)
    ]
    for control in controls:
        assert control.args.prune_type == "reinit" and control.args.masks_from is None
        assert "--masks_from" not in control.argv
        ticket = control.ticket
        assert ticket.name == control.name.replace("reinit_ticket_", "lt_")
        assert ticket.args.prune_type == "lt" and ticket.ticket is None
        assert (ticket.args.prune_percent, ticket.args.seed) == (
            control.args.prune_percent,
            control.args.seed,
        )


@pytest.mark.parametrize(
    ("sweep_flags", "main_flags", "message"),
    [
        (
            ["--prune_type", "reinit_ticket", "random"],
            [],
            "--prune_type reinit_ticket needs lt in the same sweep",
        ),
        (
            ["--prune_type", "lottery"],
            [],
            "--prune_type lottery is not supported; choose any of: lt, reinit, random, lrr,"
            " finetune, snip, grasp, synflow, reinit_ticket",
        ),
        (
            ["--prune_type", "lt", "reinit_ticket"],
            ["--masks_from", "x"],
            "--masks_from after `--`: the sweep gives it to each reinit_ticket task itself",
        ),
    ],
)
def test_control_sweeps_refuse_what_they_cannot_run(
    tmp_path, capsys, sweep_flags, main_flags, message
):
    argv = [*sweep_flags, "--results_root", str(tmp_path / "r"), "--", *main_flags]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_control_starts_only_after_its_lt_task_and_not_when_it_failed(tmp_path, monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    ran = []

    def fake_run_main(argv, cwd, log, threads):
        args = cli.one_trial(cli.parse_args(argv))
        ran.append(Path(log).stem)
        if args.prune_type == "lt" and args.prune_percent == 50:
            return 2, [], "error: something"
        return 0, [str(tmp_path / Path(log).stem)], ""

    monkeypatch.setattr(sweep, "run_main", fake_run_main)
    options = control_options("--prune_percent", "20", "50", "--seed", "0", "--batch", "1")
    options.results_root = str(tmp_path / "results")
    tasks = sweep.make_tasks(options, [])
    sweep.run_on_ray(tasks, options, tmp_path / "logs")
    # both lt tasks start first; the control of the finished one after it, with its masks
    assert ran == ["lt_20_seed0", "lt_50_seed0", "reinit_ticket_20_seed0"]
    control_argv = fake.started[2]
    assert control_argv[control_argv.index("--prune_type") + 1] == "reinit"
    masks_from = control_argv[control_argv.index("--masks_from") + 1]
    assert masks_from == str((tmp_path / "lt_20_seed0").resolve())
    status = {t.name: (t.status, t.error) for t in tasks}
    assert status["reinit_ticket_20_seed0"] == ("done", "")
    assert status["reinit_ticket_50_seed0"] == (
        "failed",
        "not started: its lt task lt_50_seed0 failed",
    )


def test_control_sweep_on_ray_uses_the_lt_runs_masks_and_resumes_like_every_task(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "ray", FakeRay())
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    argv = ["--prune_type", "lt", "reinit_ticket", "--prune_percent", "50", "--seed", "0"]
    argv += ["--results_root", str(results), "--", *tiny_flags(tmp_path)]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert out.index("sweep: lt_50_seed0 done") < out.index("sweep: reinit_ticket_50_seed0 done")
    lt, control = runs.all_runs(results)
    assert lt.args["prune_type"] == "lt" and lt.complete and control.complete
    assert control.args["prune_type"] == "reinit"
    assert control.args["masks_from"] == str(lt.root.resolve())
    assert control.args["seed"] == lt.args["seed"] == 0
    for level in range(2):
        assert control.mask_path(level).read_bytes() == lt.mask_path(level).read_bytes()
    assert (results / "combined_plots" / "combined_fc1_mnist.csv").exists()

    # the batch interrupted in its last level: the next call resumes both, as one process
    back_to_level(lt.root, 0)
    back_to_level(control.root, 0)
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert f"sweep: lt_50_seed0 was interrupted in {lt.root}: resuming it" in out
    assert f"sweep: reinit_ticket_50_seed0 was interrupted in {control.root}: resuming it" in out
    assert "sweep: 2 task(s) in 1 process(es) on Ray" in out
    assert len(runs.all_runs(results)) == 2 and runs.load_run(control.root).complete

    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "on Ray" not in out and out.count("skipped") == 2


def test_a_sweep_of_tickets_and_controls_is_one_process_and_controls_take_their_tickets_masks(
    tmp_path, monkeypatch, capsys
):
    """2 seeds x lt + reinit_ticket: one main.py process of four trials; each control is
    `reinit --masks_from` its lt trial's folder, with that trial's mask at every level."""
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    argv = ["--prune_type", "lt", "reinit_ticket", "--prune_percent", "50", "--seed", "0", "1"]
    argv += ["--results_root", str(results), "--", *tiny_flags(tmp_path)]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "sweep: 4 task(s) in 1 process(es) on Ray" in out
    (started,) = fake.started
    assert started[started.index("--prune_type") :][:3] == ["--prune_type", "lt", "reinit_ticket"]
    assert started[started.index("--seed") :][:3] == ["--seed", "0", "1"]
    found = runs.all_runs(results)
    assert len(found) == 4 and all(run.complete for run in found)
    lts = {run.args["seed"]: run for run in found if run.args["prune_type"] == "lt"}
    controls = {run.args["seed"]: run for run in found if run.args["prune_type"] == "reinit"}
    assert lts.keys() == controls.keys() == {0, 1}
    for seed, control in controls.items():
        assert control.args["masks_from"] == str(lts[seed].root.resolve())
        for level in range(2):
            ticket = load_array_list(lts[seed].mask_path(level))
            taken = load_array_list(control.mask_path(level))
            assert all(np.array_equal(a, b) for a, b in zip(ticket, taken, strict=True))
    # every task done, and a second call finds them all finished
    assert all(
        f"sweep: {t}_50_seed{s} done" in out for t in ("lt", "reinit_ticket") for s in (0, 1)
    )
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.count("skipped") == 4


def test_batches_hold_at_most_batch_trials_and_keep_each_control_with_its_ticket():
    options = control_options("--prune_percent", "20", "--seed", "0", "1", "2", "--batch", "4")
    tasks = sweep.make_tasks(options, ["--dataset", "mnist"])
    jobs = sweep.make_jobs(tasks, options.batch)
    assert [[t.name for t in job.tasks] for job in jobs] == [
        ["reinit_ticket_20_seed0", "reinit_ticket_20_seed1", "lt_20_seed0", "lt_20_seed1"],
        ["reinit_ticket_20_seed2", "lt_20_seed2"],
    ]
    assert all(job.after is None for job in jobs)
    single = sweep.make_jobs(sweep.make_tasks(options, []), 1)
    assert [len(job.tasks) for job in single] == [1] * 6
    controls = [job for job in single if job.tasks[0].prune_type == "reinit_ticket"]
    assert all(job.after is not None and job.after.tasks[0].prune_type == "lt" for job in controls)
    assert [job.after.tasks[0].seed for job in controls] == [0, 1, 2]


def test_finetune_under_a_schedule_runs_in_a_batch_of_its_own():
    """Its trials train at the schedule's final rate, the others follow the schedule."""
    options = sweep.build_parser().parse_args(
        ["--prune_percent", "20", "--prune_type", "lt", "finetune", "lrr", "--seed", "0", "1"]
    )
    scheduled = sweep.make_jobs(sweep.make_tasks(options, ["--lr_drops", "1"]), None)
    assert [[t.name for t in job.tasks] for job in scheduled] == [
        ["lt_20_seed0", "lt_20_seed1", "lrr_20_seed0", "lrr_20_seed1"],
        ["finetune_20_seed0", "finetune_20_seed1"],
    ]
    constant = sweep.make_jobs(sweep.make_tasks(options, []), None)
    assert [len(job.tasks) for job in constant] == [6]


def test_a_sweep_refuses_a_data_source_without_the_files_before_any_task(
    tmp_path, capsys, mnist_data
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    results = tmp_path / "r"
    argv = ["--seed", "0", "--results_root", str(results), "--", mnist_data[1]]
    assert sweep.main([*argv, "--data_source", str(elsewhere)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data_source {elsewhere} has none of the files of mnist: ")
    assert err.count("\n") == 1 and "train-images-idx3-ubyte" in err
    assert not results.exists()
