"""The run directory: the original's result paths, atomic writes, the record of the run.

Layout, relative to `results/<Mon DD_HH-MM-SS>_<host>/` (as the original wrote it):
  saves/{arch}/{dataset}/initial_state_dict_{pt}.pth.tar, {level}_model_{pt}.pth.tar,
      rewind_state_dict_{pt}.pth.tar (with --rewind_iter or --rewind_epoch > 0)
  plots/lt/{arch}/{dataset}/{pt}_LossVsAccuracy_{comp}.png, {pt}_AccuracyVsWeights.png
  dumps/lt/{arch}/{dataset}/{pt}_all_loss_{comp}.dat, {pt}_all_accuracy_{comp}.dat,
      {pt}_mask_{comp}.pkl, {pt}_compression.dat, {pt}_bestaccuracy.dat,
      {pt}_all_val_loss_{comp}.dat, {pt}_all_val_accuracy_{comp}.dat (with --val_size > 0)
  args.json, summary.csv, checkpoints/latest.pth (the newest level's state only), tensorboard/,
  failure.txt (only when the run stopped: why, in one line)
Every file is written to a temporary name and renamed into place; a process holds a lock on the
run folder while it writes there.
"""

import contextlib
import csv
import datetime
import fcntl
import io
import json
import os
import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from lth.errors import UserError
from lth.pruning import Mask, prunable
from lth.safe_load import Refused, load_array_list, load_torch

CHECKPOINTS = "checkpoints"
TEMPORARY = ".tmp"  # suffix of the temporary names atomic_write uses
SUMMARY_FIELDS = [
    "level",
    "weights_left",
    "params_left",
    "best_accuracy",
    "best_epoch",
    "final_accuracy",
    "final_loss",
]
VALIDATION_FIELDS = ["early_stop_epoch", "val_loss", "val_accuracy", "test_accuracy"]  # --val_size


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` through `write(file)` under a temporary name, then rename it into place. Made
    in memory first, so a failing disk shows as a plain write's OSError (torch.save would raise a
    RuntimeError); it becomes a UserError naming the file."""
    buffer = io.BytesIO()
    write(buffer)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise UserError(f"cannot write {path}: {error.strerror or error}") from error
        raise


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def write_json(path: Path, content: dict) -> None:
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def save_png(figure: Figure, path: Path, dpi: int) -> None:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=dpi))


def run_name(now: datetime.datetime | None = None) -> str:
    """`<Mon DD_HH-MM-SS>_<host>`, the original's folder name (`%b%d_%H-%M-%S`)."""
    now = now or datetime.datetime.now()
    return f"{now.strftime('%b%d_%H-%M-%S')}_{socket.gethostname()}"


def level_tag(comp: float, level: int, earlier_tags: list[str]) -> str:
    """A level's `{comp}`: % of weights left to 1 decimal, `_level{N}` after a tie (tiny rates)."""
    tag = f"{comp:.1f}"
    return tag if tag not in earlier_tags else f"{tag}_level{level}"


class RunDir:
    """One run's folder and the exact file names the original used inside it."""

    def __init__(self, root: Path, arch_type: str, dataset: str, prune_type: str):
        self.root = Path(root)
        self.prune_type = prune_type
        self.saves = self.root / "saves" / arch_type / dataset
        self.plots = self.root / "plots" / "lt" / arch_type / dataset
        self.dumps = self.root / "dumps" / "lt" / arch_type / dataset

    @classmethod
    def create(cls, results_root: str, arch_type: str, dataset: str, prune_type: str) -> "RunDir":
        """Make a new, empty run folder; a second run in the same second gets `_2`, `_3`, ..."""
        base = Path(results_root) / run_name()
        try:  # --results_root itself was checked by cli.validate (cli.check_folder)
            Path(results_root).mkdir(parents=True, exist_ok=True)
            for attempt in range(1, 1000):
                root = base if attempt == 1 else base.with_name(f"{base.name}_{attempt}")
                with contextlib.suppress(FileExistsError):
                    root.mkdir()
                    return cls(root, arch_type, dataset, prune_type)
        except OSError as error:
            raise UserError(
                f"--results_root {results_root}: cannot create a run folder there ({error.strerror or error})"
            ) from None
        raise UserError(f"cannot find a free run folder name beside {base}")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive flock on the folder, which goes with the process (even a killed one)."""
        try:
            descriptor = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise UserError(f"cannot open {self.root} ({error.strerror or error})") from None
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{self.root} is in use by another process (the run itself or a resume of it); wait until it ends"
                ) from None
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def remove_leftovers(self, first_level: int, levels: int) -> None:
        """Before a resume: remove temporary files of a killed writer, the TensorBoard events of
        the levels about to run again and, when it starts again at level 0, the checkpoint."""
        for temporary in self.root.rglob(f".*{TEMPORARY}"):
            temporary.unlink(missing_ok=True)
        if first_level == 0:
            self.checkpoint_path().unlink(missing_ok=True)
        for level in range(first_level, levels):
            for path in self.tensorboard.glob(f"events.out.tfevents.*{self.events_suffix(level)}"):
                path.unlink(missing_ok=True)

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @staticmethod
    def events_suffix(level: int) -> str:
        return f".level{level}"

    def initial_state_path(self) -> Path:
        return self.saves / f"initial_state_dict_{self.prune_type}.pth.tar"

    def rewind_state_path(self) -> Path:
        return self.saves / f"rewind_state_dict_{self.prune_type}.pth.tar"

    def model_path(self, level: int) -> Path:
        return self.saves / f"{level}_model_{self.prune_type}.pth.tar"

    def loss_plot_path(self, tag: str) -> Path:
        return self.plots / f"{self.prune_type}_LossVsAccuracy_{tag}.png"

    def accuracy_plot_path(self) -> Path:
        return self.plots / f"{self.prune_type}_AccuracyVsWeights.png"

    def dump_path(self, what: str, tag: str | None = None, suffix: str = ".dat") -> Path:
        name = f"{self.prune_type}_{what}" + (f"_{tag}" if tag is not None else "")
        return self.dumps / (name + suffix)

    def checkpoint_path(self) -> Path:
        return self.root / CHECKPOINTS / "latest.pth"  # the newest finished level's state

    def staged_path(self) -> Path:
        return self.root / CHECKPOINTS / "staged.pth"

    def failure_path(self) -> Path:
        return self.root / "failure.txt"

    def save_model(self, model: nn.Module, path: Path) -> None:
        atomic_write(path, lambda f: torch.save(model, f))

    def dump_array(self, array: np.ndarray, path: Path) -> None:
        """Same bytes as the original's `ndarray.dump(path)` (a protocol-2 pickle)."""
        atomic_write(path, lambda f: pickle.dump(array, f, protocol=2))

    def dump_mask(self, model: nn.Module, mask: Mask, path: Path) -> None:
        entries = mask_to_list(model, mask)
        atomic_write(path, lambda f: pickle.dump(entries, f))

    def save_figure(self, figure: Figure, path: Path, dpi: int) -> None:
        save_png(figure, path, dpi)

    def write_json(self, name: str, content: dict) -> None:
        write_json(self.root / name, content)

    def write_summary(self, rows: list[dict]) -> None:
        """`summary.csv`: one row per finished level, with VALIDATION_FIELDS when rows have them."""
        validation = rows and VALIDATION_FIELDS[0] in rows[0]
        fields = SUMMARY_FIELDS + VALIDATION_FIELDS if validation else SUMMARY_FIELDS
        write_csv(self.root / "summary.csv", fields, rows)

    def stage_checkpoint(self, state: dict) -> None:
        """Write `state` (a dict with its "level") as the staged checkpoint, which
        `commit_checkpoint` makes the checkpoint (`resume.settle` settles a batch killed between)."""
        atomic_write(self.staged_path(), lambda f: torch.save(state, f))

    def save_checkpoint(self, state: dict) -> None:
        self.stage_checkpoint(state)
        self.commit_checkpoint()

    def commit_checkpoint(self) -> None:
        """Make the staged checkpoint the checkpoint, in one rename."""
        os.replace(self.staged_path(), self.checkpoint_path())

    def write_failure(self, level: int, line: str) -> None:
        text = f"level {level}: {line}\n"
        atomic_write(self.failure_path(), lambda f: f.write(text.encode()))

    def failed_at(self) -> int | None:
        """The level `failure.txt` names, or None when the run has not stopped."""
        try:
            first = self.failure_path().read_text().split(":", 1)[0]
            return int(first.removeprefix("level "))
        except (OSError, ValueError):
            return None

    def checkpoint_level(self) -> int | None:
        """The checkpoint's level (mmap); None without a readable one, Refused for an alien one."""
        try:
            state = load_torch(self.checkpoint_path(), "checkpoint", mmap=True)
            return int(state["level"])
        except Refused:
            raise
        except Exception:  # missing, or any unzipping or unpickling fault of a damaged file
            return None


# The mask file (`{pt}_mask_{comp}.pkl`): as the original, a list with one float32 array of ones
# and zeros per parameter whose name contains "weight", in `named_parameters()` order; all ones
# for any such parameter that is not pruned here (a BatchNorm scale).


def mask_file_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters() if "weight" in name]


def mask_to_list(model: nn.Module, mask: Mask) -> list[np.ndarray]:
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return [
        np.asarray(mask[name] if name in mask else np.ones(shapes[name]), dtype=np.float32)
        for name in mask_file_names(model)
    ]


def mask_from_list(model: nn.Module, entries: object, source: str) -> Mask:
    """The mask of `model` that a mask file's list holds; UserError naming `source` unless it
    lines up with `model` and keeps every parameter this program never prunes."""
    names = mask_file_names(model)
    if not isinstance(entries, list) or len(entries) != len(names):
        found = f"{len(entries)}" if isinstance(entries, list) else f"a {type(entries).__name__}"
        raise UserError(
            f"{source}: a mask of this model is a list of {len(names)} arrays (one per parameter named 'weight'), found {found}"
        )
    parameters = dict(model.named_parameters())
    weights = prunable(model)
    mask = {}
    for name, entry in zip(names, entries, strict=True):
        shape = tuple(parameters[name].shape)
        if not isinstance(entry, np.ndarray) or entry.shape != shape:
            found = entry.shape if isinstance(entry, np.ndarray) else type(entry).__name__
            raise UserError(
                f"{source}: the entry for {name} should be an array {shape}, got {found}"
            )
        if not np.isin(entry, (0, 1)).all():
            raise UserError(f"{source}: the entry for {name} holds values other than 0 and 1")
        if name in weights:
            mask[name] = entry.astype(np.float32)
        elif not entry.all():
            raise UserError(f"{source}: {name} is pruned there, but it is never pruned here")
    return {name: mask[name] for name in weights}


def mask_to_bool(mask: Mask) -> dict[str, np.ndarray]:
    """`mask` as booleans, the form a checkpoint stores."""
    return {name: np.asarray(entry, dtype=bool) for name, entry in mask.items()}


def mask_from_bool(stored: dict[str, np.ndarray]) -> Mask:
    return {name: entry.astype(np.float32) for name, entry in stored.items()}


def read_mask(path: Path | str, model: nn.Module) -> Mask:
    """The mask file `path`'s mask of `model` (safe_load); UserError unless it reads and fits."""
    return mask_from_list(model, load_array_list(path), str(path))
