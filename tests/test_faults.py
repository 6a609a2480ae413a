"""Faults met while a run writes or trains: an unwritable results folder, a full disk, a
diverging loss. Each stops the run with exit status 2 and one line on stderr, no traceback, and
leaves every file written before it whole."""

import errno
import functools
import os
from pathlib import Path

import pytest
import tqdm

import main
from lth import lottery, results, train
from tests.conftest import REFERENCE_FLAGS
from tests.resultfiles import assert_same_results, files_under

FLAGS = REFERENCE_FLAGS
LEVEL_0 = [
    "saves/fc1/mnist/initial_state_dict_lt.pth.tar",
    "saves/fc1/mnist/0_model_lt.pth.tar",
    "dumps/lt/fc1/mnist/lt_all_loss_100.0.dat",
    "dumps/lt/fc1/mnist/lt_all_accuracy_100.0.dat",
    "dumps/lt/fc1/mnist/lt_mask_100.0.pkl",
    "plots/lt/fc1/mnist/lt_LossVsAccuracy_100.0.png",
    "checkpoints/latest.pth",
]


@pytest.fixture
def data(mnist_data) -> list[str]:
    return mnist_data


@pytest.fixture
def reference(reference_run) -> Path:
    """The same run as the tests' (FLAGS), never disturbed."""
    return reference_run


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    """Progress bars share stderr with the error line; the tests count stderr's lines."""
    monkeypatch.setattr(train, "tqdm", functools.partial(tqdm.tqdm, disable=True))


def run_main(cwd: Path, *flags: str) -> int:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return main.main(list(flags))


def refused(capsys, cwd: Path, *flags: str) -> str:
    capsys.readouterr()
    status = run_main(cwd, *flags)
    err = capsys.readouterr().err
    assert status == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.splitlines()[0]


def no_permission(monkeypatch, results_root: Path) -> None:
    """Make `results_root` refuse new folders: chmod, or for root (whom chmod does not stop) an
    EACCES from mkdir, as the kernel gives."""
    results_root.mkdir()
    if os.geteuid() != 0:
        results_root.chmod(0o555)
        return
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).parent == results_root:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("a file", ["is a file, not a folder"]),
        ("below a file", ["is a file, not a folder (below the file"]),
        ("no permission", ["cannot create a run folder", "Permission denied"]),
    ],
)
def test_unwritable_results_root(tmp_path, capsys, monkeypatch, data, case, words):
    root = tmp_path / "runs"
    if case == "a file":
        root.write_text("not a folder")
    elif case == "below a file":
        (tmp_path / "file").write_text("not a folder")
        root = tmp_path / "file" / "runs"
    else:
        no_permission(monkeypatch, root)
    line = refused(capsys, tmp_path, *FLAGS, *data, f"--results_root={root}")
    assert f"--results_root {root}" in line
    for word in words:
        assert word in line, line
    assert not root.is_dir() or not any(root.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["file" if case == "below a file" else "runs"]
    )


def fill_the_disk_at(monkeypatch, n: int, space: int = 4096) -> None:
    """The n-th file results.py writes fills the disk after `space` bytes (ENOSPC)."""
    calls = [0]

    class FullDisk:
        def __init__(self, file):
            self.file, self.space = file, space

        def write(self, data):
            data = bytes(data)
            self.file.write(data[: self.space])
            self.space -= len(data)
            if self.space < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return len(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def open_(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        calls[0] += 1
        return FullDisk(file) if calls[0] == n else file

    monkeypatch.setattr(results, "open", open_, raising=False)


def test_full_disk_stops_the_run_cleanly_and_it_resumes(
    tmp_path, capsys, monkeypatch, data, reference
):
    # Files 1-9: args.json, the initial state, level 0's six files and its checkpoint. File 10,
    # level 1's model, goes through torch.save, which turns an OSError into a RuntimeError.
    fill_the_disk_at(monkeypatch, 10)
    line = refused(capsys, tmp_path, *FLAGS, *data)
    (run,) = (tmp_path / "results").iterdir()
    assert f"cannot write results/{run.name}/saves/fc1/mnist/1_model_lt.pth.tar:" in line
    assert "No space left on device" in line
    assert files_under(run, skip=("tensorboard",)) == {"args.json", "summary.csv", *LEVEL_0}
    for name in LEVEL_0:  # the files of level 0 are whole: the same as the reference's
        if not name.endswith((".pth", ".pth.tar")):
            assert (run / name).read_bytes() == (reference / name).read_bytes(), name

    monkeypatch.undo()  # space freed
    monkeypatch.setattr(train, "tqdm", functools.partial(tqdm.tqdm, disable=True))
    assert run_main(tmp_path, "--resume", str(run)) == 0
    assert_same_results(run, reference)


def test_diverging_level_0_names_the_epoch_and_suggests_a_lower_lr(tmp_path, capsys, data):
    line = refused(capsys, tmp_path, *FLAGS, *data, "--lr=1e30")
    assert "diverged at epoch 0 ([level 0])" in line and "lower --lr than 1e+30" in line
    (run,) = (tmp_path / "results").iterdir()
    left = files_under(run, skip=("tensorboard",))
    assert left == {"args.json", "failure.txt", "saves/fc1/mnist/initial_state_dict_lt.pth.tar"}


def test_diverging_later_level_leaves_earlier_levels_intact(
    tmp_path, capsys, monkeypatch, data, reference
):
    real, calls = train.train_epoch, [0]

    def train_epoch(*args, **kwargs):
        calls[0] += 1
        losses = real(*args, **kwargs)
        return [float("nan")] * len(losses) if calls[0] == 4 else losses  # level 1's 2nd epoch

    monkeypatch.setattr(train, "train_epoch", train_epoch)
    line = refused(capsys, tmp_path, *FLAGS, *data)
    assert "diverged at epoch 1 ([level 1]): the loss is nan" in line and "--lr" in line
    (run,) = (tmp_path / "results").iterdir()
    assert line.startswith(f"error: results/{run.name}: training diverged")
    left = files_under(run, skip=("tensorboard",))
    assert left == {"args.json", "summary.csv", "failure.txt", *LEVEL_0}
    assert (run / "failure.txt").read_text() == f"level 1: {line.split(': ', 2)[2]}\n"
    for name in left - {"args.json", "summary.csv", "failure.txt"}:
        if not name.endswith((".pth", ".pth.tar")):
            assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    summary = (reference / "summary.csv").read_text().splitlines()
    assert (run / "summary.csv").read_text().splitlines() == summary[:2]  # header, level 0


def test_ctrl_c_is_one_line_saying_how_to_go_on(tmp_path, capsys, monkeypatch, data):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lottery, "train_level", interrupted)
    monkeypatch.chdir(tmp_path)
    assert main.main([*FLAGS, *data]) == 130
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("interrupted:") and "--resume" in lines[0]
    (run,) = (tmp_path / "results").iterdir()  # the run folder stays, ready to be resumed
    assert (run / "args.json").exists() and not list(run.rglob(".*.tmp"))
