"""Resume: a run killed at any moment and resumed ends with exactly the files of a run never
interrupted, from its one checkpoint; result-neutral flags may change on the way, others are
refused; damaged checkpoints, finished runs and busy run folders are refused cleanly."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from lth import lottery, record, resume, runs
from lth.errors import UserError
from lth.record import RunRecord
from lth.results import RunDir
from tests.conftest import REFERENCE_FLAGS, ROOT, kept_checkpoints
from tests.resultfiles import assert_same_results, snapshot, stopped_after

FLAGS = [*REFERENCE_FLAGS, "--prune_iterations", "3"]


@pytest.fixture
def data(mnist_data) -> list[str]:
    """Data flags shared by the session's runs (the data set is imported once)."""
    return mnist_data


def run_main(cwd: Path, *flags: str) -> int:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return main.main(list(flags))


def the_run(cwd: Path) -> Path:
    (run,) = (cwd / "results").iterdir()
    return run


def faulty_main(cwd: Path, kill_at: str, *flags: str) -> subprocess.CompletedProcess:
    """main.py in a real process (through tests/faulty_main.py), killed by SIGKILL at `kill_at`."""
    env = {**os.environ, "TQDM_DISABLE": "1", "KILL_AT": kill_at}
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "faulty_main.py"), *flags],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def temporaries(run: Path) -> list[str]:
    return sorted(p.name.split(".")[1] for p in run.rglob(".*.tmp"))


def checkpoints_after_each_level(monkeypatch) -> list[tuple[int, list[str]]]:
    """(level, the files in checkpoints/) right after each level's checkpoint is committed."""
    real, seen = RunDir.commit_checkpoint, []

    def commit_checkpoint(self: RunDir) -> None:
        real(self)
        seen.append(
            (
                self.checkpoint_level(),
                sorted(p.name for p in self.checkpoint_path().parent.iterdir()),
            )
        )

    monkeypatch.setattr(RunDir, "commit_checkpoint", commit_checkpoint)
    return seen


def test_killed_anywhere_and_resumed_gives_the_files_of_an_uninterrupted_run(
    tmp_path, capsys, monkeypatch, data
):
    reference, chain = tmp_path / "reference", tmp_path / "chain"
    reference.mkdir()
    chain.mkdir()
    seen = checkpoints_after_each_level(monkeypatch)
    assert run_main(reference, *FLAGS, *data) == 0
    monkeypatch.undo()
    assert seen == [(level, ["latest.pth"]) for level in range(3)]  # one checkpoint at a time

    # Killed while writing the initial state (the second file): no checkpoint yet.
    killed = faulty_main(chain, "write:2", *FLAGS, *data)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = the_run(chain)
    assert temporaries(run) == ["initial_state_dict_lt"]
    assert not (run / "checkpoints").exists()
    assert not (run / "saves/fc1/mnist/initial_state_dict_lt.pth.tar").exists()

    # Resumed (level 0 again, from the seed), killed after the first epoch of level 1.
    killed = faulty_main(chain, "epoch:3", "--resume", str(run))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "at level 0" in killed.stdout
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["latest.pth"]
    assert RunDir(run, "fc1", "mnist", "lt").checkpoint_level() == 0
    assert not (run / "saves/fc1/mnist/1_model_lt.pth.tar").exists() and not temporaries(run)

    # Resumed at level 1 (file 1: args.json), killed while staging level 1's checkpoint (file
    # 8), its other files written: level 0's checkpoint is still whole, the only one there.
    killed = faulty_main(chain, "write:8", "--resume", str(run))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "at level 1" in killed.stdout
    assert temporaries(run) == ["staged"]
    assert RunDir(run, "fc1", "mnist", "lt").checkpoint_level() == 0
    assert (run / "saves/fc1/mnist/1_model_lt.pth.tar").exists()
    assert (run / "dumps/lt/fc1/mnist/lt_mask_90.0.pkl").exists()

    # `--resume` alone finds the run, redoes level 1 over its files, and finishes (in this
    # process, which saves starting one more).
    capsys.readouterr()
    assert run_main(chain, "--resume") == 0
    assert f"resuming {Path('results') / run.name} at level 1" in capsys.readouterr().out

    assert_same_results(run, the_run(reference))
    resumes = json.loads((run / "args.json").read_text())["resumes"]
    assert [(r["at_level"], r["changed"]) for r in resumes] == [(0, {}), (1, {}), (1, {})]


def test_the_checkpoint_holds_each_thing_once_and_the_mask_as_booleans(finished):
    state = torch.load(finished / "checkpoints/latest.pth", weights_only=False)
    assert state["level"] == 1
    # the initial state is saves/.../initial_state_dict_lt.pth.tar; no rewind state without
    # --rewind_epoch (its file otherwise)
    assert sorted(state["progress"]) == ["bestacc", "comp", "mask", "summary", "tags"]
    masks = state["progress"]["mask"]
    assert list(masks) == ["classifier.0.weight", "classifier.2.weight", "classifier.4.weight"]
    assert all(m.dtype == np.bool_ for m in masks.values())
    initial = torch.load(
        finished / "saves/fc1/mnist/initial_state_dict_lt.pth.tar", weights_only=False
    )
    classes = lottery.saved_model_classes(initial)
    whole = resume.whole_checkpoint(state, RunDir(finished, "fc1", "mnist", "lt"), False, classes)
    assert all(m.dtype == np.float32 for m in whole["progress"]["mask"].values())
    assert whole["progress"]["rewind_state"] is None
    assert list(whole["progress"]["initial_state"]) == list(initial.state_dict())


@pytest.fixture
def finished(reference_run) -> Path:
    """A finished run of 2 levels (the session's reference run); tests work on copies of it
    (see `finished_run`); each checkpoint it saved is kept (see `kept`)."""
    return reference_run


kept = kept_checkpoints


def finished_run(tmp_path: Path, finished: Path) -> Path:
    """A copy of the finished run in tmp_path/results/."""
    return Path(shutil.copytree(finished, tmp_path / "results" / finished.name))


def refused(capsys, cwd: Path, *flags: str) -> str:
    status = run_main(cwd, *flags)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def damage(kind: str, path: Path) -> None:
    content = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(content[: len(content) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(len(content)))
    else:  # a few flipped bytes inside the weights: torch.load alone would not notice
        start = content.index(b"data/0") + 4096
        path.write_bytes(
            content[:start]
            + bytes(b ^ 0xFF for b in content[start : start + 8])
            + content[start + 8 :]
        )


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "flipped"])
def test_damaged_checkpoint_is_refused_and_nothing_changes(tmp_path, capsys, finished, kind):
    run = finished_run(tmp_path, finished)
    stopped_after(run, kept(finished), 0)
    damage(kind, run / "checkpoints/latest.pth")
    if kind == "flipped":  # the damage is real: the file still loads, with other weights
        damaged = torch.load(run / "checkpoints/latest.pth", weights_only=False)
        assert damaged["level"] == 0
    before = snapshot(run)
    capsys.readouterr()
    line = refused(capsys, tmp_path, "--resume", str(run))
    assert "checkpoints/latest.pth is corrupt" in line and "--start_iter 0" in line
    assert snapshot(run) == before


def test_a_damaged_initial_state_is_refused_and_start_iter_0_runs_it_all_again(
    tmp_path, capsys, finished
):
    """A resume reads the initial state from its result file; --start_iter 0 needs nothing old."""
    run = finished_run(tmp_path, finished)
    stopped_after(run, kept(finished), 0)
    damage("flipped", run / "saves/fc1/mnist/initial_state_dict_lt.pth.tar")
    before = snapshot(run)
    capsys.readouterr()
    line = refused(capsys, tmp_path, "--resume", str(run))
    assert "initial state" in line and "initial_state_dict_lt.pth.tar is corrupt" in line
    assert "--start_iter 0" in line
    assert snapshot(run) == before

    assert run_main(tmp_path, "--resume", str(run), "--start_iter", "0") == 0
    assert "at level 0" in capsys.readouterr().out
    assert_same_results(run, finished)


def test_start_iter_is_the_level_after_the_checkpoint_or_0(tmp_path):
    args = argparse.Namespace(start_iter=1)
    assert resume.first_level(args, set(), 2, tmp_path) == 2
    assert resume.first_level(args, {"start_iter"}, 1, tmp_path) == 1
    args.start_iter = 0
    assert resume.first_level(args, {"start_iter"}, 2, tmp_path) == 0
    args.start_iter = 1
    with pytest.raises(UserError, match="newest level \\(1\\) only; continue at level 2"):
        resume.first_level(args, {"start_iter"}, 2, tmp_path)
    with pytest.raises(UserError, match="has no finished level"):
        resume.first_level(args, {"start_iter"}, 0, tmp_path)


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_resume_on_another_machine_may_change_the_neutral_flags(tmp_path, capsys, data, finished):
    """Another --plot_dpi, a copy of the data elsewhere, another --gpu (none here: the CPU
    notice): the run ends with the results of the uninterrupted one, the changes recorded."""
    run = finished_run(tmp_path, finished)
    stopped_after(run, kept(finished), 0)
    old_dir = data[1].removeprefix("--data_dir=")
    new_dir = shutil.copytree(old_dir, tmp_path / "elsewhere" / "data")
    capsys.readouterr()
    flags = ["--plot_dpi", "30", f"--data_dir={new_dir}", "--gpu", "1"]
    assert run_main(tmp_path, "--resume", str(run), *flags) == 0
    out = capsys.readouterr().out
    assert "notice: CUDA is not available, running on the CPU" in out and "at level 1" in out

    plots = "plots/lt/fc1/mnist/"
    assert_same_results(run, finished, plots_alike=False)
    for name in ("lt_LossVsAccuracy_100.0.png", "lt_LossVsAccuracy_90.0.png"):
        assert png_width(run / plots / name) == png_width(finished / plots / name) * (
            1 if "100.0" in name else 1.5
        )
    recorded = json.loads((run / "args.json").read_text())
    assert recorded["args"] == json.loads((finished / "args.json").read_text())["args"]
    (entry,) = recorded["resumes"]
    assert entry["at_level"] == 1 and entry["device"] == "cpu"
    assert entry["changed"] == {
        "data_dir": [old_dir, str(new_dir)],
        "gpu": ["0", "1"],
        "plot_dpi": [20, 30],
    }
    assert RunRecord(run, recorded).args["data_dir"] == str(new_dir)  # what the next resume uses
    assert runs.read_run(run).args["data_dir"] == str(new_dir)  # and every other reader


def test_a_flag_that_changes_results_is_refused_in_one_line(tmp_path, capsys, finished):
    run = finished_run(tmp_path, finished)
    stopped_after(run, kept(finished), 0)
    before = snapshot(run)
    capsys.readouterr()
    line = refused(capsys, tmp_path, "--resume", str(run), "--lr", "0.1")
    assert line.startswith("error: --resume: --lr 0.1 differs from the run's 0.0012 (only --gpu,")
    line = refused(
        capsys, tmp_path, "--resume", str(run), "--lr=0.1", "--plot_dpi=30", "--batch_size=10"
    )
    assert "--batch_size 10 differs from the run's 32; --lr 0.1 differs" in line
    assert "--plot_dpi 30" not in line
    assert snapshot(run) == before


def test_on_cuda_a_run_uses_deterministic_algorithms_and_on_the_cpu_nothing_changes(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    record.deterministic_algorithms(torch.device("cpu"))
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        record.deterministic_algorithms(torch.device("cuda", 0))  # sets flags only: no GPU needed
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a user's own setting stays
        record.deterministic_algorithms(torch.device("cuda", 0))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(False)


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys, finished):
    run = finished_run(tmp_path, finished)
    before = snapshot(run)
    capsys.readouterr()
    assert run_main(tmp_path, "--resume", str(run)) == 0
    captured = capsys.readouterr()
    assert "nothing to do" in captured.out and "finished all 2 levels" in captured.out
    assert captured.err == ""
    assert snapshot(run) == before


def test_a_run_folder_in_use_is_refused(tmp_path, capsys, finished):
    run = finished_run(tmp_path, finished)
    stopped_after(run, kept(finished), 0)
    before = snapshot(run)
    capsys.readouterr()
    with RunDir(run, "fc1", "mnist", "lt").locked():  # as another process running it
        line = refused(capsys, tmp_path, "--resume", str(run))
    assert str(run) in line and "in use" in line
    assert snapshot(run) == before


def test_resume_alone_picks_the_newest_run_with_the_same_data_arch_and_prune_type(tmp_path):
    import argparse
    import json

    from lth import resume
    from lth.errors import UserError

    def made(name, started, **changes):
        recorded = {"dataset": "mnist", "arch_type": "fc1", "prune_type": "lt", **changes}
        recorded["prune_iterations"] = 3
        (tmp_path / name).mkdir()
        (tmp_path / name / "args.json").write_text(
            json.dumps({"args": recorded, "started": started})
        )

    made("Nov25_10-00-00_h", "2026-11-25T10:00:00")
    made("Nov25_11-00-00_h", "2026-11-25T11:00:00")
    made("Nov25_12-00-00_h", "2026-11-25T12:00:00", prune_type="reinit")
    (tmp_path / "Nov25_13-00-00_h").mkdir()  # no args.json: not a run
    args = argparse.Namespace(
        dataset="mnist", arch_type="fc1", prune_type=["lt"], results_root=str(tmp_path)
    )
    assert resume.newest_matching_run(args) == tmp_path / "Nov25_11-00-00_h"
    args.arch_type = "lenet5"
    with pytest.raises(UserError, match="--arch_type lenet5"):
        resume.newest_matching_run(args)


def test_checkpoints_of_every_level_from_an_earlier_version_are_named(tmp_path, capsys, finished):
    run = finished_run(tmp_path, finished)
    (run / "checkpoints/latest.pth").rename(run / "checkpoints/level_1.pth")
    before = snapshot(run)
    capsys.readouterr()
    line = refused(capsys, tmp_path, "--resume", str(run))
    assert "one checkpoint per level (level_1.pth, ...)" in line and "rename the newest" in line
    assert snapshot(run) == before


def test_a_resume_elsewhere_checks_the_data_source_it_is_given_not_the_recorded_one(
    tmp_path, capsys, data, finished
):
    """The run recorded a --data_source that this machine lacks; the resume names another: only
    the one given is checked (and compared with the copy in --data_dir)."""
    run = finished_run(tmp_path, finished)
    stopped_after(run, kept(finished), 0)
    record = json.loads((run / "args.json").read_text())
    record["args"]["data_source"] = str(tmp_path / "gone")
    (run / "args.json").write_text(json.dumps(record))
    source = data[0].removeprefix("--data_source=")
    assert run_main(tmp_path, "--resume", str(run), f"--data_source={source}") == 0
    changed = json.loads((run / "args.json").read_text())["resumes"][0]["changed"]
    assert changed == {"data_source": [str(tmp_path / "gone"), source]}
