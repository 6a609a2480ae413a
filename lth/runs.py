"""Reading run folders back (a folder with main.py's `args.json`): their recorded arguments,
whether they finished, their results. Runs of one experiment that differ only in their trial's
own arguments (lth.experiment.TRIAL_FIELDS) are trials, summarised level by level (`Trials`);
of runs of the same trial, the newest is kept (`distinct_trials`).
"""

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lth import methods
from lth.errors import UserError
from lth.experiment import BOOKKEEPING, IS_CONTROL, identity, is_control
from lth.record import RunRecord
from lth.results import RunDir, level_tag
from lth.safe_load import Refused, load_array

# How a run prunes; a --masks_from control records those of the run whose masks it takes.
MASK_ARGS = ("prune_percent", "prune_percent_output", "prune_percent_conv", "prune_scope")

INTEGER_FIELDS = ("level", "best_epoch", "early_stop_epoch")
# summary.csv's figures of a run that stopped early on a validation set (--val_size)
EARLY_STOP = ("test_accuracy", "early_stop_epoch")


@dataclass
class Run:
    root: Path
    args: dict  # every setting, as its latest resume left them (RunRecord.args)
    started: str  # ISO time the run was created

    @property
    def files(self) -> RunDir:
        a = self.args
        return RunDir(self.root, a["arch_type"], a["dataset"], a["prune_type"])

    @property
    def complete(self) -> bool:
        """Dumps there and the checkpoint the last level's; safe_load.Refused for an alien dump."""
        files = self.files
        dumps = (files.dump_path("compression"), files.dump_path("bestaccuracy"))
        last = self.args["prune_iterations"] - 1
        if not all(path.exists() for path in dumps) or files.checkpoint_level() != last:
            return False
        for path in dumps:
            try:
                load_array(path)
            except Refused:
                raise
            except UserError:  # damaged: no matter for completeness
                pass
        return True

    def weights_left(self) -> np.ndarray:
        """Percent of the prunable weights left at each level (summary.csv's, not the dump's)."""
        return np.array([row["weights_left"] for row in self.summary()])

    def best_accuracy(self) -> np.ndarray:
        return load_array(self.files.dump_path("bestaccuracy"))

    def finished_levels(self) -> int:
        """Levels with a summary row and a checkpoint (written last) of that level or later."""
        rows = len(self.summary()) if (self.root / "summary.csv").exists() else 0
        checkpointed = self.files.checkpoint_level()
        return 0 if checkpointed is None else min(rows, checkpointed + 1)

    def level_tags(self) -> list[str]:
        """The `{comp}` of each finished level's file names, as main.py made it."""
        tags: list[str] = []
        for row in self.summary():
            tags.append(level_tag(row["params_left"], row["level"], tags))
        return tags

    def mask_path(self, level: int) -> Path:
        return self.files.dump_path("mask", self.level_tags()[level], ".pkl")

    def summary(self) -> list[dict]:
        try:
            with open(self.root / "summary.csv", newline="") as file:
                return [
                    {k: int(v) if k in INTEGER_FIELDS else float(v) for k, v in row.items()}
                    for row in csv.DictReader(file)
                ]
        except (OSError, ValueError) as error:
            raise UserError(f"{self.root / 'summary.csv'} cannot be read ({error})") from None


def read_run(folder: Path | str) -> Run | None:
    """The run in `folder`, or None when it holds no args.json lth wrote."""
    try:
        return checked_run(folder)
    except UserError:
        return None


def checked_run(folder: Path | str) -> Run:
    """The run in `folder`; UserError saying why when its args.json is unreadable or refused."""
    record = RunRecord.read(folder)
    return Run(record.folder, record.args, record.started)


def load_run(folder: Path | str) -> Run:
    """The complete run in `folder`; UserError when it is not a run folder or not finished."""
    run = checked_run(folder)
    if not run.complete:
        raise UserError(
            f"{folder} is not complete (its last level, {run.args['prune_iterations'] - 1}, has not finished); resume it with: python main.py --resume {folder}"
        )
    return run


def mask_source(folder: str, args: argparse.Namespace) -> Path:
    """The folder `--masks_from` names, resolved, once it is a finished-enough run of the method
    whose masks the trial's method takes, of the same data set and architecture; UserError
    naming what differs otherwise (whether the masks fit is checked when they are read)."""
    run = masks_run(folder)
    for name in ("dataset", "arch_type"):
        if run.args.get(name) != getattr(args, name):
            raise UserError(
                f"--masks_from {folder} is a run of --{name} {run.args.get(name)}, not {getattr(args, name)}"
            )
    source = methods.get(args.prune_type).masks_of
    if run.args.get("prune_type") != source:
        raise UserError(
            f"--masks_from {folder} is a run of --prune_type {run.args.get('prune_type')}; the control takes the masks of an {source} run (its winning tickets)"
        )
    done = run.finished_levels()
    if done < args.prune_iterations:
        raise UserError(
            f"--masks_from {folder} has {done} finished level(s), fewer than --prune_iterations {args.prune_iterations}"
        )
    return run.root.resolve()


def take_mask_args(args: argparse.Namespace, explicit: set[str]) -> None:
    """A --masks_from control's MASK_ARGS: those of the run it takes its masks from, so it is
    labelled and grouped by its masks' rates. UserError for one given in `explicit` that differs."""
    source = masks_run(args.masks_from)
    for name in MASK_ARGS:
        theirs, mine = source.args[name], getattr(args, name)
        if name in explicit and mine != theirs:
            raise UserError(
                f"--{name} {flag_value(mine)} differs from {flag_value(theirs)}, that of the run --masks_from {args.masks_from}: a control's masks, hence its rates, are that run's (leave --{name} out)"
            )
        setattr(args, name, theirs)


def masks_run(folder: str) -> Run:
    """The run --masks_from names; UserError when it is not one."""
    run = read_run(folder)
    if run is None:
        raise UserError(f"--masks_from {folder} is not a run folder (no readable args.json)")
    return run


def flag_value(value: object) -> str:
    """A recorded value as it would be written on the command line (20.0 as 20)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def all_runs(results_root: Path | str) -> list[Run]:
    """Every run folder directly under `results_root`, oldest first."""
    root = Path(results_root)
    found = [read_run(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    return sorted((r for r in found if r is not None), key=age)


def newest_complete(results_root: Path | str) -> dict[tuple[str, str], list[Run]]:
    """For each (arch_type, dataset): the newest complete run of each prune type (the control
    apart), in newest_order, each with its complete trials, oldest first (of one seed, all)."""
    complete = [run for run in all_runs(results_root) if run.complete]
    newest: dict[tuple, Run] = {}
    for run in complete:
        newest[identity(run.args, NEWEST_OF)] = run
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in sorted(newest.values(), key=newest_order):
        trials = [r for r in complete if identity(r.args) == identity(run.args)]
        groups.setdefault((run.args["arch_type"], run.args["dataset"]), []).extend(trials)
    return groups


# What `newest_complete` keeps the newest run of
NEWEST_OF = ("arch_type", "dataset", "prune_type", IS_CONTROL)


def newest_order(run: Run) -> tuple[str, str, str, bool]:
    """The order of `newest_complete`'s groups and lines, a control after its plain run."""
    a = run.args
    return a["arch_type"], a["dataset"], a["prune_type"], is_control(a)


def differing_args(runs: list[Run]) -> list[str]:
    """Names of the recorded arguments whose values differ between the runs (`masks_from` only
    as set or not, shown in the label of `prune_type`)."""
    names = sorted({name for run in runs for name in run.args} - set(BOOKKEEPING))

    def value(run: Run, name: str) -> str:
        return repr(is_control(run.args) if name == "masks_from" else run.args.get(name))

    first = ["prune_type", "prune_percent", "seed"]
    differ = [n for n in names if len({value(run, n) for run in runs}) > 1]
    if "masks_from" in differ:  # told by the label of the prune type
        differ.remove("masks_from")
        differ += [] if "prune_type" in differ else ["prune_type"]
    return [n for n in first if n in differ] + [n for n in differ if n not in first]


LABELS = {"prune_type": "{}", "prune_percent": "{:g}% pruned", "seed": "seed {}"}


def describe(args: dict, names: list[str]) -> str:
    """A label of `names`' values: `lt, 20% pruned, seed 0, lr=0.001`, `reinit with lt masks`."""
    parts = []
    for name in names:
        value = args.get(name)
        if name == "prune_type" and is_control(args):
            value = f"{value} with {methods.recorded(value).masks_of} masks"
        parts.append(LABELS.get(name, name + "={}").format(value))
    return ", ".join(parts)


def trial_key(run: Run) -> tuple:
    """A run's trial: experiment, seed (else its folder), for a control the masks' trial."""
    seed = run.args.get("seed")
    key: tuple = (identity(run.args), str(run.root.resolve()) if seed is None else seed)
    if is_control(run.args):
        source = read_run(run.args["masks_from"])
        if source is None or source.args.get("seed") is None:
            key += (str(run.args["masks_from"]),)
        else:
            key += (identity(source.args), source.args["seed"])
    return key


@dataclass
class LeftOut:
    """A run left out of the trials for `kept`, a newer run of its trial (or itself again)."""

    run: Run
    kept: Run

    def __str__(self) -> str:
        if self.run.root.resolve() == self.kept.root.resolve():
            return f"{self.run.root} (given more than once)"
        return f"{self.run.root} (same experiment and seed as {self.kept.root}, newer)"


def distinct_trials(found: list[Run]) -> tuple[list[Run], list[LeftOut]]:
    """The newest run of each trial (trial_key), in the place of its first; and the others."""
    keys = [trial_key(run) for run in found]
    newest: dict[tuple, Run] = {}
    for key, run in zip(keys, found, strict=True):
        if key not in newest or age(run) > age(newest[key]):
            newest[key] = run
    kept = list({key: newest[key] for key in keys}.values())
    pairs = zip(keys, found, strict=True)
    return kept, [LeftOut(run, newest[key]) for key, run in pairs if run is not newest[key]]


def age(run: Run) -> tuple[str, str]:
    """Oldest first: by the time it started, then the folder's name."""
    return run.started, run.root.name


def trial_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs, one per trial, grouped by experiment and weights left, in order of appearance."""
    groups: dict[tuple[tuple, tuple[float, ...]], list[Run]] = {}
    for run in distinct_trials(runs)[0]:
        key = (identity(run.args), tuple(run.weights_left()))
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def group_labels(groups: list[list[Run]]) -> list[str]:
    """One label per group: what differs between groups (seed for a lone run), `(N trials)`."""
    names = differing_args([group[0] for group in groups])
    found = []
    for group in groups:
        shown = [n for n in names if n != "seed" or len(group) == 1]
        if not shown:
            shown = ["prune_type", "prune_percent"] if len(group) > 1 else []
        label = describe(group[0].args, shown) if shown else group[0].root.name
        found.append(label + (f" ({len(group)} trials)" if len(group) > 1 else ""))
    if len(set(found)) < len(found):
        found = [f"{lb} ({g[0].root.name})" for lb, g in zip(found, groups, strict=True)]
    return found


@dataclass
class Trials:
    """The trials of one experiment: one row per run, one column per level."""

    label: str
    runs: list[Run]
    weights_left: np.ndarray  # percent of the prunable weights left at each level
    early_stop: bool  # accuracy and epoch are the early-stop ones (validation) or the best test
    accuracy: np.ndarray  # test accuracy: at the early stop, or the best of the level
    epoch: np.ndarray  # the early-stop epoch, or the epoch of the best test accuracy

    @classmethod
    def of(cls, label: str, group: list[Run]) -> "Trials":
        summaries = [run.summary() for run in group]
        early_stop = all(all(c in s[0] for c in EARLY_STOP) for s in summaries if s)
        accuracy, epoch = EARLY_STOP if early_stop else ("best_accuracy", "best_epoch")
        found = [np.array([[r[c] for r in s] for s in summaries], float) for c in (accuracy, epoch)]
        return cls(label, group, group[0].weights_left(), early_stop, *found)

    def rows(self) -> list[dict]:
        """One row per level: the accuracy's and the epoch's mean, minimum and maximum."""
        measure = "early_stop" if self.early_stop else "best"
        rows = []
        for level, left in enumerate(self.weights_left):
            row = {"line": self.label, "level": level, "weights_left": left}
            row |= {"trials": len(self.runs), "measure": measure}
            for name, values in (("accuracy", self.accuracy), ("epoch", self.epoch)):
                column = values[:, level]
                # the mean to 6 decimals: no float noise such as 87.52599999999998 in the table
                row |= {f"{name}_mean": round(float(column.mean()), 6)}
                row |= {f"{name}_min": float(column.min()), f"{name}_max": float(column.max())}
            rows.append(row)
        return rows


def trials(runs: list[Run]) -> list[Trials]:
    groups = trial_groups(runs)
    return [Trials.of(lb, g) for lb, g in zip(group_labels(groups), groups, strict=True)]


def table(rows: list[dict], columns: list[str]) -> str:
    """Rows of text as an aligned plain-text table with a header line."""
    cells = [columns] + [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def batch_record_folders(path: Path | str) -> list[str]:
    """The run folders the batch record at `path` names in order; [] when it is not main.py's."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    entries = record.get("runs") if isinstance(record, dict) else None
    if not isinstance(entries, list):
        return []
    folders = [entry.get("folder") if isinstance(entry, dict) else None for entry in entries]
    return folders if all(isinstance(folder, str) for folder in folders) else []
