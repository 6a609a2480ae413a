"""Resume: a run killed at any moment and resumed ends with exactly the files of a run never
interrupted; damaged checkpoints, finished runs and busy run folders are refused cleanly."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
from results import RunDir
from tests.conftest import ROOT
from tests.datafiles import write_mnist_files
from tests.resultfiles import assert_same_results, snapshot

FLAGS = ["--seed", "3", "--plot_dpi", "20", "--prune_iterations", "3", "--end_iter", "2"]
FLAGS += ["--batch_size", "32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """Data flags shared by the module's runs (the data set is imported once)."""
    folder = tmp_path_factory.mktemp("data")
    source = write_mnist_files(folder / "source", n_train=120, n_test=60)
    return [f"--data_source={source}", f"--data_dir={folder / 'data'}"]


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


def test_killed_anywhere_and_resumed_gives_the_files_of_an_uninterrupted_run(
    tmp_path, capsys, data
):
    reference, chain = tmp_path / "reference", tmp_path / "chain"
    reference.mkdir()
    chain.mkdir()
    assert run_main(reference, *FLAGS, *data) == 0

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
    assert (run / "checkpoints/level_0.pth").exists()
    assert not (run / "checkpoints/level_1.pth").exists()
    assert not (run / "saves/fc1/mnist/1_model_lt.pth.tar").exists() and not temporaries(run)

    # Resumed at level 1, killed while writing level 1's checkpoint, its other files written.
    killed = faulty_main(chain, "write:7", "--resume", str(run))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "at level 1" in killed.stdout
    assert temporaries(run) == ["level_1"]
    assert (run / "saves/fc1/mnist/1_model_lt.pth.tar").exists()
    assert (run / "dumps/lt/fc1/mnist/lt_mask_90.0.pkl").exists()

    # `--resume` alone finds the run, redoes level 1 over its files, and finishes (in this
    # process, which saves starting one more).
    capsys.readouterr()
    assert run_main(chain, "--resume") == 0
    assert f"resuming {Path('results') / run.name} at level 1" in capsys.readouterr().out

    assert_same_results(run, the_run(reference))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> Path:
    """A finished run of 2 levels; tests work on copies of it (see `finished_run`)."""
    folder = tmp_path_factory.mktemp("finished")
    assert run_main(folder, *FLAGS, "--prune_iterations=2", *data) == 0
    return the_run(folder)


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
    (run / "checkpoints/level_1.pth").unlink()  # as if killed before level 1's checkpoint
    damage(kind, run / "checkpoints/level_0.pth")
    if kind == "flipped":  # the damage is real: the file still loads, with other weights
        damaged = torch.load(run / "checkpoints/level_0.pth", weights_only=False)
        assert damaged["level"] == 0
    before = snapshot(run)
    capsys.readouterr()
    line = refused(capsys, tmp_path, "--resume", str(run))
    assert "checkpoints/level_0.pth" in line and "--start_iter 0" in line
    assert snapshot(run) == before


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
    (run / "checkpoints/level_1.pth").unlink()
    before = snapshot(run)
    capsys.readouterr()
    with RunDir(run, "fc1", "mnist", "lt").locked():  # as another process running it
        line = refused(capsys, tmp_path, "--resume", str(run))
    assert str(run) in line and "in use" in line
    assert snapshot(run) == before


def test_resume_alone_picks_the_newest_run_with_the_same_data_arch_and_prune_type(tmp_path):
    import argparse
    import json

    import resume
    from utils import UserError

    def made(name, started, **changes):
        recorded = {"dataset": "mnist", "arch_type": "fc1", "prune_type": "lt", **changes}
        (tmp_path / name).mkdir()
        (tmp_path / name / "args.json").write_text(
            json.dumps({"args": recorded, "started": started})
        )

    made("Nov25_10-00-00_h", "2026-11-25T10:00:00")
    made("Nov25_11-00-00_h", "2026-11-25T11:00:00")
    made("Nov25_12-00-00_h", "2026-11-25T12:00:00", prune_type="reinit")
    (tmp_path / "Nov25_13-00-00_h").mkdir()  # no args.json: not a run
    args = argparse.Namespace(
        dataset="mnist", arch_type="fc1", prune_type="lt", results_root=str(tmp_path)
    )
    assert resume.newest_matching_run(args) == tmp_path / "Nov25_11-00-00_h"
    args.arch_type = "lenet5"
    with pytest.raises(UserError, match="--arch_type lenet5"):
        resume.newest_matching_run(args)
