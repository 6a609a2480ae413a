"""Finding the run to continue and the state it stopped at (`--resume`, `--start_iter`).

A run keeps one checkpoint, of its newest finished level (the initial and rewind states are read
from their result files), so it continues after that level or starts again at 0. The trials of a
batch are resumed together; a batch killed while committing its checkpoints is settled here.
"""

import argparse
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lth import methods, runs
from lth.errors import UserError
from lth.experiment import NOT_RECORDED, RESUME_LOOKUP, Experiment, Trial, identity, neutral_fields
from lth.pruning import prunable
from lth.record import RunRecord, UnreadableRecord
from lth.results import RunDir, mask_from_bool, mask_to_bool
from lth.safe_load import load_torch

FROM_FILES = ("initial_state", "rewind_state")  # progress a checkpoint does not hold
CHECKPOINT_KEYS = {"level", "model_state", "progress", "rng"}  # main.checkpoint's (+ "trial_rng")
TRIAL_FLAGS = ("seed", "prune_type")  # a resume takes the batch's; given, they must agree
RESTART = "to run the whole run again in this folder, add --start_iter 0"


class RunFinished(Exception):
    """The run asked for has finished every level: nothing to do."""


@dataclass
class Resumed:
    """A batch to continue: the trials still running, in the batch's order, and where they are."""

    experiment: Experiment
    trials: list[Trial]
    run_dirs: list[RunDir]
    start: int  # first level to run
    # each trial's state at the end of level `start - 1`; None: start afresh
    checkpoints: list[dict | None]
    records: list[RunRecord]  # each trial's args.json
    changed: dict[str, list]  # result-neutral flag -> [the run's value, the new one]
    arguments: list[argparse.Namespace]  # each trial's arguments, as recorded and changed


def read_record(folder: Path) -> RunRecord:
    """The run's args.json, its faults in the words of --resume."""
    try:
        return RunRecord.read(folder)
    except UnreadableRecord as unreadable:
        if unreadable.error is None:
            raise UserError(
                f"--resume {folder}: no args.json there, so it is not a run folder (or a run stopped before it recorded its arguments: start it again)"
            ) from None
        raise UserError(
            f"--resume {folder}: args.json cannot be read ({unreadable.error})"
        ) from None


def newest_matching_run(args: argparse.Namespace) -> Path:
    """The newest run under --results_root with the same dataset, arch and prune type."""
    types = [methods.record_name(t) for t in args.prune_type]
    wanted = {identity({**vars(args), "prune_type": t}, RESUME_LOOKUP) for t in types}
    found = runs.all_runs(args.results_root)
    matching = [run for run in found if identity(run.args, RESUME_LOOKUP) in wanted]
    if not matching:
        shown = ", ".join(
            f"--{name} {' '.join(types) if name == 'prune_type' else getattr(args, name)}"
            for name in RESUME_LOOKUP
        )
        raise UserError(f"--resume: no run under {args.results_root}/ with {shown}")
    return matching[-1].root


def changed_flags(recorded: dict, args: argparse.Namespace, explicit: set[str]) -> dict:
    """The options the command line changes, name -> [old, new]; UserError for non-neutral ones."""
    changed, refused = {}, []
    neutral = neutral_fields()
    for name in sorted(explicit - set(NOT_RECORDED) - set(TRIAL_FLAGS)):
        new = getattr(args, name)
        if identity({**recorded, name: new}, {name}) == identity(recorded, {name}):
            continue
        if name in neutral:
            changed[name] = [recorded[name], new]
        else:
            refused.append(f"--{name} {new} differs from the run's {recorded[name]}")
    if refused:
        neutral = ", ".join(f"--{name}" for name in neutral)
        raise UserError(f"--resume: {'; '.join(refused)} (only {neutral} may change)")
    return changed


def finished_levels(run_dir: RunDir, levels: int) -> int:
    """One more than the checkpoint's level (0 without one); UserError if damaged or off range."""
    path = run_dir.checkpoint_path()
    if not path.exists():
        older = sorted(path.parent.glob("level_*.pth"))
        if older:  # that version's checkpoint of the newest level loads as one of these
            raise UserError(
                f"{path.parent} holds one checkpoint per level ({older[0].name}, ...), as an earlier version wrote them: rename the newest to {path.name}, delete the others and resume again"
            )
        return 0
    level = run_dir.checkpoint_level()
    if level is None:
        load_verified(path, "checkpoint")  # raises, naming the damage
        raise UserError(f"checkpoint {path} does not record its level; {RESTART}")
    if not 0 <= level < levels:
        raise UserError(
            f"checkpoint {path} records level {level}, not one of the run's 0..{levels - 1}; {RESTART}"
        )
    return level + 1


def load_verified(path: Path, what: str, classes: Iterable[type] = (), hint: str = RESTART) -> Any:
    """A result file read back by `safe_load.load_torch`, its damage a UserError naming it and
    ending with `hint`. torch.load checks no CRCs, so every zip member's is checked first."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise UserError(f"{what} {path} is corrupt ({damaged} fails its checksum); {hint}")
        return load_torch(path, what, classes)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing; {hint}") from None
    except Exception as error:  # any unzipping or unpickling fault means the file is damaged
        raise UserError(
            f"{what} {path} is corrupt or truncated ({type(error).__name__}); {hint}"
        ) from None


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`: UserError unless it holds what `main.checkpoint` saves."""
    state = load_verified(path, "checkpoint")
    missing = CHECKPOINT_KEYS - set(state) if isinstance(state, dict) else CHECKPOINT_KEYS
    if missing:
        raise UserError(
            f"checkpoint {path} is not one of this program's (it lacks {', '.join(sorted(missing))}); {RESTART}"
        )
    return state


def check_checkpoint(state: dict, path: Path, model: nn.Module, levels: int) -> None:
    """UserError naming `path` unless `state` fits this run (model, masks, levels), pre-restore."""

    def refuse(what: str) -> UserError:
        return UserError(f"checkpoint {path} does not fit this run: {what}; {RESTART}")

    own = model.state_dict()
    saved = state["model_state"]
    if not isinstance(saved, dict) or set(saved) != set(own):
        raise refuse("its model state names other tensors than the network's")
    for name, tensor in own.items():
        if not isinstance(saved[name], torch.Tensor) or saved[name].shape != tensor.shape:
            raise refuse(f"its {name} is not a tensor of shape {tuple(tensor.shape)}")
    progress = state["progress"]
    if not isinstance(progress, dict):
        raise refuse("its progress is not a record")
    mask, weights = progress.get("mask"), prunable(model)
    if not isinstance(mask, dict) or set(mask) != set(weights):
        raise refuse("its mask names other weights than the network's prunable ones")
    for name, weight in weights.items():
        entry = mask[name]
        if not (isinstance(entry, np.ndarray) and np.isin(entry, (0, 1)).all()):
            raise refuse(f"its mask of {name} is not an array of ones and zeros")
        if entry.shape != tuple(weight.shape):
            raise refuse(f"its mask of {name} is not of shape {tuple(weight.shape)}")
    for name in ("comp", "bestacc"):
        values = progress.get(name)
        if not (isinstance(values, np.ndarray) and values.dtype.kind == "f"):
            raise refuse(f"its {name} is not an array of numbers")
        if values.shape != (levels,):
            raise refuse(f"its {name} has not one entry for each of the {levels} levels")
    done = state["level"] + 1
    tags, summary = progress.get("tags"), progress.get("summary")
    if not (isinstance(tags, list) and len(tags) == done and all(isinstance(t, str) for t in tags)):
        raise refuse(f"its level tags are not {done} texts")
    if not (isinstance(summary, list) and len(summary) == done):
        raise refuse(f"its summary has not {done} rows")
    if not all(isinstance(row, dict) for row in summary):
        raise refuse("its summary rows are not records")


def checkpoint_progress(progress: dict) -> dict:
    """What a checkpoint keeps of a level's progress: all but FROM_FILES, the mask as booleans."""
    kept = {name: value for name, value in progress.items() if name not in FROM_FILES}
    kept["mask"] = mask_to_bool(progress["mask"])
    return kept


def whole_checkpoint(
    state: dict, run_dir: RunDir, rewinds_late: bool, classes: Iterable[type]
) -> dict:
    """The checkpoint `state` with the progress complete again: the float mask and the initial
    (and if `rewinds_late`, the rewind) state from their result files, models of `classes`."""
    progress = dict(state["progress"])
    progress["mask"] = mask_from_bool(progress["mask"])
    progress["initial_state"] = saved_state(run_dir.initial_state_path(), "initial state", classes)
    progress["rewind_state"] = None
    if rewinds_late:
        progress["rewind_state"] = saved_state(run_dir.rewind_state_path(), "rewind state", classes)
    return {**state, "progress": progress}


def saved_state(
    path: Path, what: str, classes: Iterable[type], hint: str = RESTART
) -> dict[str, torch.Tensor]:
    """The state of a model saved whole; UserError ending with `hint` when it is not one."""
    model = load_verified(path, what, classes, hint)
    if not isinstance(model, nn.Module):
        raise UserError(f"{what} {path} holds a {type(model).__name__}, not a model; {hint}")
    return model.state_dict()


def first_level(args: argparse.Namespace, explicit: set[str], done: int, folder: Path) -> int:
    """--start_iter, or the level after the checkpoint's (the only ones it can start at)."""
    start = args.start_iter if "start_iter" in explicit else done
    if start in (0, done):
        return start
    if done == 0:
        raise UserError(
            f"--start_iter {start}: {folder} has no finished level; leave --start_iter out"
        )
    raise UserError(
        f"--start_iter {start}: {folder} keeps the state of its newest level ({done - 1}) only; continue at level {done} (leave --start_iter out) or start again with --start_iter 0"
    )


def batch_folders(folder: Path, record: RunRecord) -> list[Path]:
    """The folders of the batch `folder` ran in, in order (siblings its args.json names)."""
    names = record.batch.get("runs")
    if not names:
        return [folder]
    folders = [folder.parent / name for name in names]
    missing = [str(f) for f in folders if not RunRecord.exists(f)]
    if missing:
        raise UserError(
            f"--resume {folder}: it ran in a batch of {len(folders)} trials, and the run folder {missing[0]} of that batch is gone; its trials are resumed together"
        )
    return folders


def check_trial_flags(args: argparse.Namespace, explicit: set[str], recorded: list[dict]) -> None:
    """--seed and --prune_type given with --resume must name the batch's own."""
    for name in sorted(set(TRIAL_FLAGS) & explicit):
        as_recorded = methods.record_name if name == "prune_type" else lambda value: value
        given = {as_recorded(v) for v in getattr(args, name)}
        theirs = {r[name] for r in recorded}
        if given != theirs:
            shown = " ".join(str(v) for v in sorted(theirs, key=str))
            raise UserError(
                f"--resume: --{name} {' '.join(map(str, getattr(args, name)))} differs from the batch's {shown} (leave --{name} out)"
            )


def settle(run_dirs: list[RunDir]) -> None:
    """Finish a batch's checkpoint commit a kill interrupted if every live trial staged or committed
    that level; otherwise remove the staged ones (the level runs again)."""
    staged = [d for d in run_dirs if d.staged_path().exists()]
    if not staged:
        return
    level = staged_level(staged[0])
    live = [d for d in run_dirs if d.failed_at() is None]
    whole = level is not None and all(
        d.staged_path().exists() or d.checkpoint_level() == level for d in live
    )
    for run_dir in staged:
        if whole and staged_level(run_dir) == level:
            run_dir.commit_checkpoint()
        else:
            run_dir.staged_path().unlink()


def staged_level(run_dir: RunDir) -> int | None:
    """The level of the staged checkpoint, or None when it cannot be read."""
    try:
        return int(load_torch(run_dir.staged_path(), "staged checkpoint", mmap=True)["level"])
    except Exception:  # damaged
        return None


def locate(
    args: argparse.Namespace, explicit: set[str], validate: Callable[[argparse.Namespace], None]
) -> Resumed:
    """Merge the recorded arguments with the command line (`validate` checks each trial's) and find
    where the batch continues; a trial stopped (failure.txt) before that level stays stopped."""
    folder = newest_matching_run(args) if args.resume == "latest" else Path(args.resume)
    record = read_record(folder)
    folders = batch_folders(folder, record)
    records = [record if f == folder else read_record(f) for f in folders]
    recorded = [r.args for r in records]
    check_trial_flags(args, explicit, recorded)
    changed = changed_flags(recorded[0], args, explicit)
    arguments = merged_arguments(args, folder, recorded, folders, changed, validate)
    run_dirs = [
        RunDir(f, a.arch_type, a.dataset, a.prune_type)
        for f, a in zip(folders, arguments, strict=True)
    ]
    settle(run_dirs)
    start, live = resume_point(args, explicit, folder, run_dirs, arguments[0].prune_iterations)
    for i in live:
        arguments[i].start_iter = start
        run_dirs[i].failure_path().unlink(missing_ok=True)  # it runs that level again
    records, run_dirs, running = ([x[i] for i in live] for x in (records, run_dirs, arguments))
    checkpoints = [load_checkpoint(d.checkpoint_path()) if start > 0 else None for d in run_dirs]
    return Resumed(
        Experiment.of(vars(arguments[0])),
        live_trials(running, [r.batch for r in records], live),
        run_dirs,
        start,
        checkpoints,
        records,
        changed,
        running,
    )


def merged_arguments(
    args: argparse.Namespace,
    folder: Path,
    recorded: list[dict],
    folders: list[Path],
    changed: dict[str, list],
    validate: Callable[[argparse.Namespace], None],
) -> list[argparse.Namespace]:
    """Each trial's recorded arguments over the command line's and `changed`, by `validate`."""
    arguments = []
    given = "".join(f" with --{name} {new}" for name, (_, new) in changed.items())
    for values, trial_folder in zip(recorded, folders, strict=True):
        merged = argparse.Namespace(**{**vars(args), **values, "resume": str(folder)})
        for name, (_, new) in changed.items():
            setattr(merged, name, new)
        try:
            validate(merged)
        except UserError as error:
            raise UserError(f"{RunRecord.path(trial_folder)}{given}: {error}") from None
        arguments.append(merged)
    return arguments


def resume_point(
    args: argparse.Namespace, explicit: set[str], folder: Path, run_dirs: list[RunDir], levels: int
) -> tuple[int, list[int]]:
    """The level the batch continues at and the indices of the trials that run it."""
    again = "start_iter" in explicit and args.start_iter == 0
    stopped = [d.failed_at() for d in run_dirs]
    live = [i for i, d in enumerate(run_dirs) if stopped[i] is None]
    finished = {run_dirs[i].root.name: finished_levels(run_dirs[i], levels) for i in live}
    if not again and len(set(finished.values())) > 1:
        shown = ", ".join(f"{name} {done}" for name, done in finished.items())
        raise UserError(
            f"--resume {folder}: the runs of its batch have finished different numbers of levels ({shown}), which a batch never leaves; {RESTART}"
        )
    done = 0 if again else min(finished.values(), default=levels)
    start = first_level(args, explicit, done, folder)
    live = [i for i in range(len(run_dirs)) if stopped[i] is None or stopped[i] >= start]
    if start >= levels or not live:
        raise RunFinished(f"{folder} has finished all {levels} levels")
    return start, live


def live_trials(
    arguments: list[argparse.Namespace], batches: list[dict], live: list[int]
) -> list[Trial]:
    """The Trials that run on (`live`: their indices in the batch), tickets renumbered."""
    position = {index: live.index(index) for index in live}
    return [
        Trial(
            seed=values.seed,
            prune_type=values.prune_type,
            masks_from=values.masks_from if batch.get("ticket") is None else None,
            ticket=position.get(batch.get("ticket")),
        )
        for values, batch in zip(arguments, batches, strict=True)
    ]
