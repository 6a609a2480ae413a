"""Comparing two run folders file by file, and snapshots of a folder's files."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lth.results import RunDir


def files_under(folder: Path, skip: tuple[str, ...] = ()) -> set[str]:
    """Every file below `folder`, as paths relative to it, except those under the `skip` folders."""
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return {f for f in found if not f.startswith(tuple(f"{s}/" for s in skip))}


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time (ns) of every file below `folder`."""
    return {
        name: (
            hashlib.sha256((folder / name).read_bytes()).hexdigest(),
            os.stat(folder / name).st_mtime_ns,
        )
        for name in sorted(files_under(folder))
    }


def keep_checkpoints(monkeypatch, folder: Path) -> None:
    """Copy every checkpoint main.py saves to `folder/level_{k}.pth`, so that a test can put an
    older one back: the run folder as if the run had stopped after that level."""
    real = RunDir.commit_checkpoint

    def commit_checkpoint(self: RunDir) -> None:
        real(self)
        level = self.checkpoint_level()
        shutil.copyfile(self.checkpoint_path(), folder / f"level_{level}.pth")

    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(RunDir, "commit_checkpoint", commit_checkpoint)


def stopped_after(run: Path, kept: Path, level: int) -> None:
    """`run` as if it had stopped in the level after `level` (see keep_checkpoints)."""
    shutil.copyfile(kept / f"level_{level}.pth", run / "checkpoints" / "latest.pth")


def assert_same_state(a: dict, b: dict, what: str) -> None:
    assert list(a) == list(b), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def assert_same_value(a, b, what: str) -> None:
    """Deep equality of checkpoint content: tensors and arrays bit for bit, the rest with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), what
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes(), what
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), what
        for key in a:
            assert_same_value(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_value(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


def scalars(tensorboard: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar by tag, in step order (the events files of the levels are read in name
    order, which is not level order once a process has made ten writers)."""
    events = EventAccumulator(str(tensorboard))
    events.Reload()
    return {
        tag: sorted((s.step, s.value) for s in events.Scalars(tag))
        for tag in events.Tags()["scalars"]
    }


def assert_same_results(run: Path, reference: Path, plots_alike: bool = True) -> None:
    """`run` holds exactly the files of `reference`, with the same content (the figures: the
    same names only, unless `plots_alike`).

    Dumps, masks, plots and summary.csv: byte for byte. Saved models: every tensor of the state
    bit for bit, and the files byte for byte. args.json: the same arguments. Checkpoints: the
    same content (their pickles may differ in how they share equal strings). TensorBoard: one
    events file per level and the same scalars at the same steps.
    """
    names = files_under(run, skip=("tensorboard",))
    assert names == files_under(reference, skip=("tensorboard",))
    for name in sorted(names):
        mine, theirs = run / name, reference / name
        if name == "args.json":
            assert json.loads(mine.read_text())["args"] == json.loads(theirs.read_text())["args"]
        elif name.startswith("checkpoints/"):
            a = torch.load(mine, weights_only=False)
            b = torch.load(theirs, weights_only=False)
            assert_same_value(a, b, name)
        elif name.endswith(".png") and not plots_alike:
            continue
        elif name.endswith(".pth.tar"):
            a, b = torch.load(mine, weights_only=False), torch.load(theirs, weights_only=False)
            assert_same_state(a.state_dict(), b.state_dict(), name)
            assert mine.read_bytes() == theirs.read_bytes(), name
        else:
            assert mine.read_bytes() == theirs.read_bytes(), name
    levels = torch.load(run / "checkpoints" / "latest.pth", weights_only=False)["level"] + 1
    for folder in (run, reference):
        suffixes = sorted(p.name.rsplit(".", 1)[1] for p in (folder / "tensorboard").iterdir())
        assert suffixes == sorted(f"level{k}" for k in range(levels)), folder
    assert scalars(run / "tensorboard") == scalars(reference / "tensorboard")


def back_to_level(run: Path, level: int) -> None:
    """Mark `run`'s checkpoint as saved at `level`: the run folder as if it had stopped in the
    level after `level` (its later files are left over and rewritten by a resume)."""
    path = run / "checkpoints" / "latest.pth"
    state = torch.load(path, weights_only=False)
    state["level"] = level
    for name in ("tags", "summary"):  # one for each finished level, as resume checks
        state["progress"][name] = state["progress"][name][: level + 1]
    torch.save(state, path)
