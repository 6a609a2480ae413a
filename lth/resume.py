"""Finding the run to continue and the state it stopped at (`--resume`, `--start_iter`).

A run keeps one checkpoint, the state at the end of its newest finished level (the level is
inside). It holds the model, the mask (as booleans), the per-level figures and every random
generator; the initial state and the rewind state are read back from their own result files.
So a run continues at the level after its checkpoint, or starts again at level 0.
"""

import argparse
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lth import runs
from lth.errors import UserError
from lth.experiment import NEUTRAL, NOT_RECORDED, RESUME_LOOKUP
from lth.results import RunDir, mask_from_bool, mask_to_bool
from lth.safe_load import load_torch

FROM_FILES = ("initial_state", "rewind_state")  # progress a checkpoint does not hold
CHECKPOINT_KEYS = {"level", "model_state", "progress", "rng"}  # what main.checkpoint saves
RESTART = "to run the whole run again in this folder, add --start_iter 0"


class RunFinished(Exception):
    """The run asked for has finished every level: nothing to do."""


@dataclass
class Resumed:
    run_dir: RunDir
    args: argparse.Namespace
    start: int  # first level to run
    # the state at the end of level `start - 1` (its initial and rewind states are read by
    # whole_checkpoint, which needs the model); None: start afresh
    checkpoint: dict | None
    record: dict  # the content of args.json
    changed: dict[str, list]  # result-neutral flag -> [the run's value, the new one]


def read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / "args.json").read_text())
    except FileNotFoundError:
        raise UserError(
            f"--resume {folder}: no args.json there, so it is not a run folder"
            " (or a run stopped before it recorded its arguments: start it again)"
        ) from None
    except (OSError, ValueError) as error:
        raise UserError(f"--resume {folder}: args.json cannot be read ({error})") from None


def current_args(record: dict) -> dict:
    """The run's arguments as its latest resume left them: the recorded ones, with the new
    values of the result-neutral flags each resume changed."""
    args = dict(record["args"])
    for entry in record.get("resumes", []):
        args.update({name: new for name, (_, new) in entry["changed"].items()})
    return args


def newest_matching_run(args: argparse.Namespace) -> Path:
    """The newest run under --results_root with the same dataset, arch and prune type."""
    matching = [
        run
        for run in runs.all_runs(args.results_root)
        if all(run.args.get(name) == getattr(args, name) for name in RESUME_LOOKUP)
    ]
    if not matching:
        wanted = ", ".join(f"--{name} {getattr(args, name)}" for name in RESUME_LOOKUP)
        raise UserError(f"--resume: no run under {args.results_root}/ with {wanted}")
    return matching[-1].root


def changed_flags(recorded: dict, args: argparse.Namespace, explicit: set[str]) -> dict:
    """The result-neutral flags the command line changes, as name -> [old, new].

    A flag that would change the results must keep the run's value: UserError naming every such
    flag in one line.
    """
    changed, refused = {}, []
    for name in sorted(explicit - set(NOT_RECORDED)):
        new = getattr(args, name)
        if name not in recorded or recorded[name] == new:
            continue
        if name in NEUTRAL:
            changed[name] = [recorded[name], new]
        else:
            refused.append(f"--{name} {new} differs from the run's {recorded[name]}")
    if refused:
        neutral = ", ".join(f"--{name}" for name in NEUTRAL)
        raise UserError(f"--resume: {'; '.join(refused)} (only {neutral} may change)")
    return changed


def finished_levels(run_dir: RunDir) -> int:
    """How many levels have finished: one more than the checkpoint's level (0 without one).
    UserError when the checkpoint is damaged."""
    path = run_dir.checkpoint_path()
    if not path.exists():
        older = sorted(path.parent.glob("level_*.pth"))
        if older:  # that version's checkpoint of the newest level loads as one of these
            raise UserError(
                f"{path.parent} holds one checkpoint per level ({older[0].name}, ...), as an"
                f" earlier version wrote them: rename the newest to {path.name}, delete the others"
                " and resume again"
            )
        return 0
    level = run_dir.checkpoint_level()
    if level is None:
        load_verified(path, "checkpoint")  # raises, naming the damage
        raise UserError(f"checkpoint {path} does not record its level; {RESTART}")
    return level + 1


def load_verified(path: Path, what: str, classes: Iterable[type] = ()) -> Any:
    """A result file read back by `safe_load.load_torch` (tensors, plain values, numpy arrays of
    numbers and instances of `classes` only), its damage a UserError naming it.

    torch.load does not check the checksums its zip format stores, so a file with flipped bytes
    in a tensor would load silently: every member's CRC is checked first.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise UserError(f"{what} {path} is corrupt ({damaged} fails its checksum); {RESTART}")
        return load_torch(path, what, classes)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing; {RESTART}") from None
    except Exception as error:  # any unzipping or unpickling fault means the file is damaged
        raise UserError(
            f"{what} {path} is corrupt or truncated ({type(error).__name__}); {RESTART}"
        ) from None


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`: UserError unless it holds what `main.checkpoint` saves."""
    state = load_verified(path, "checkpoint")
    missing = CHECKPOINT_KEYS - set(state) if isinstance(state, dict) else CHECKPOINT_KEYS
    if missing:
        raise UserError(
            f"checkpoint {path} is not one of this program's (it lacks"
            f" {', '.join(sorted(missing))}); {RESTART}"
        )
    return state


def checkpoint_progress(progress: dict) -> dict:
    """What a checkpoint keeps of a level's progress: all but the initial and rewind states
    (their result files hold them), the mask as booleans."""
    kept = {name: value for name, value in progress.items() if name not in FROM_FILES}
    kept["mask"] = mask_to_bool(progress["mask"])
    return kept


def whole_checkpoint(
    state: dict, run_dir: RunDir, rewinds_late: bool, classes: Iterable[type]
) -> dict:
    """The checkpoint `state` with the progress complete again: the float mask, and the initial
    (and, if `rewinds_late`: --rewind_iter or --rewind_epoch, the rewind) state from their result
    files, whole models that may hold instances of `classes` only (those of the model this run
    builds)."""
    progress = dict(state["progress"])
    progress["mask"] = mask_from_bool(progress["mask"])
    initial = saved_state(run_dir.initial_state_path(), "initial state", classes)
    progress["initial_state"], progress["rewind_state"] = initial, None
    if rewinds_late:
        rewind = saved_state(run_dir.rewind_state_path(), "rewind state", classes)
        progress["rewind_state"] = rewind
    return {**state, "progress": progress}


def saved_state(path: Path, what: str, classes: Iterable[type]) -> dict[str, torch.Tensor]:
    """The state of a model that results.RunDir.save_model saved whole (a model of `classes`)."""
    model = load_verified(path, what, classes)
    if not isinstance(model, nn.Module):
        raise UserError(f"{what} {path} holds a {type(model).__name__}, not a model; {RESTART}")
    return model.state_dict()


def first_level(args: argparse.Namespace, explicit: set[str], done: int, folder: Path) -> int:
    """--start_iter, or the level after the checkpoint's. Only the newest level's state is kept,
    so a run continues there or starts again at 0."""
    start = args.start_iter if "start_iter" in explicit else done
    if start in (0, done):
        return start
    if done == 0:
        raise UserError(
            f"--start_iter {start}: {folder} has no finished level; leave --start_iter out"
        )
    raise UserError(
        f"--start_iter {start}: {folder} keeps the state of its newest level ({done - 1}) only;"
        f" continue at level {done} (leave --start_iter out) or start again with --start_iter 0"
    )


def locate(args: argparse.Namespace, explicit: set[str]) -> Resumed:
    """Merge the recorded arguments with the command line and find where to continue.

    A result-neutral flag (NEUTRAL) given on the command line replaces the recorded value; any
    other must agree with it. --start_iter 0 starts the run again; otherwise it continues after
    its checkpoint.
    """
    folder = newest_matching_run(args) if args.resume == "latest" else Path(args.resume)
    record = read_record(folder)
    recorded = current_args(record)
    changed = changed_flags(recorded, args, explicit)
    merged = argparse.Namespace(**{**vars(args), **recorded})
    for name, (_, new) in changed.items():
        setattr(merged, name, new)
    merged.resume = str(folder)
    run_dir = RunDir(folder, merged.arch_type, merged.dataset, merged.prune_type)
    again = "start_iter" in explicit and args.start_iter == 0
    done = 0 if again else finished_levels(run_dir)
    start = merged.start_iter = first_level(args, explicit, done, folder)
    if start >= merged.prune_iterations:
        raise RunFinished(f"{folder} has finished all {merged.prune_iterations} levels")
    checkpoint = load_checkpoint(run_dir.checkpoint_path()) if start > 0 else None
    return Resumed(run_dir, merged, start, checkpoint, record, changed)
