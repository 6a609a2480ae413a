"""Reading run folders back: their recorded arguments, whether they finished, their results.

Used by combine_plots.py and sweep.py. A run folder is one `main.py` made: it has `args.json`.
It is complete when the whole-run dumps (`{pt}_compression.dat`, `{pt}_bestaccuracy.dat`,
written at the last level only) exist and its checkpoint is the last level's.
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import NEUTRAL
from results import RunDir
from utils import UserError

# Arguments that do not tell runs apart: the resume flags and the result-neutral ones.
BOOKKEEPING = ("resume", "start_iter", *NEUTRAL)

INTEGER_FIELDS = ("level", "best_epoch", "early_stop_epoch")


@dataclass
class Run:
    root: Path
    args: dict  # the arguments recorded in args.json
    started: str  # ISO time the run was created

    @property
    def files(self) -> RunDir:
        a = self.args
        return RunDir(self.root, a["arch_type"], a["dataset"], a["prune_type"])

    @property
    def complete(self) -> bool:
        files = self.files
        dumps = (files.dump_path("compression"), files.dump_path("bestaccuracy"))
        last = self.args["prune_iterations"] - 1
        return all(path.exists() for path in dumps) and files.checkpoint_level() == last

    def weights_left(self) -> np.ndarray:
        """Percent of the prunable weights left at each level (`weights_left` of summary.csv;
        `{pt}_compression.dat` holds the original's figure, which counts every parameter)."""
        return np.array([row["weights_left"] for row in self.summary()])

    def best_accuracy(self) -> np.ndarray:
        return np.load(self.files.dump_path("bestaccuracy"), allow_pickle=True)

    def summary(self) -> list[dict]:
        """The rows of summary.csv, numbers as numbers."""
        try:
            with open(self.root / "summary.csv", newline="") as file:
                return [
                    {k: int(v) if k in INTEGER_FIELDS else float(v) for k, v in row.items()}
                    for row in csv.DictReader(file)
                ]
        except (OSError, ValueError) as error:
            raise UserError(f"{self.root / 'summary.csv'} cannot be read ({error})") from None


def read_run(folder: Path | str) -> Run | None:
    """The run in `folder`, or None when `folder` holds no readable args.json."""
    folder = Path(folder)
    try:
        record = json.loads((folder / "args.json").read_text())
        return Run(folder, record["args"], record.get("started", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_run(folder: Path | str) -> Run:
    """The complete run in `folder`; UserError when it is not a run folder or not finished."""
    run = read_run(folder)
    if run is None:
        raise UserError(f"{folder} is not a run folder (no readable args.json)")
    if not run.complete:
        raise UserError(
            f"{folder} is not complete (its last level, {run.args['prune_iterations'] - 1},"
            " has not finished); resume it with: python main.py --resume " + str(folder)
        )
    return run


def all_runs(results_root: Path | str) -> list[Run]:
    """Every run folder directly under `results_root`, oldest first."""
    root = Path(results_root)
    found = [read_run(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    return sorted((r for r in found if r is not None), key=lambda r: (r.started, r.root.name))


def newest_complete(results_root: Path | str) -> dict[tuple[str, str], list[Run]]:
    """For each (arch_type, dataset): the newest complete run of each prune type, lt first."""
    newest: dict[tuple[str, str, str], Run] = {}
    for run in all_runs(results_root):
        if run.complete:
            a = run.args
            newest[(a["arch_type"], a["dataset"], a["prune_type"])] = run
    groups: dict[tuple[str, str], list[Run]] = {}
    for (arch, dataset, _), run in sorted(newest.items()):
        groups.setdefault((arch, dataset), []).append(run)
    return groups


def differing_args(runs: list[Run]) -> list[str]:
    """Names of the recorded arguments whose values are not the same in every run."""
    names = sorted({name for run in runs for name in run.args} - set(BOOKKEEPING))
    first = ["prune_type", "prune_percent", "seed"]
    differ = [n for n in names if len({repr(run.args.get(n)) for run in runs}) > 1]
    return [n for n in first if n in differ] + [n for n in differ if n not in first]


def describe(args: dict, names: list[str]) -> str:
    """A short label from the arguments `names`: `lt, 20% pruned, seed 0, lr=0.001`."""
    parts = []
    for name in names:
        value = args.get(name)
        if name == "prune_type":
            parts.append(str(value))
        elif name == "prune_percent":
            parts.append(f"{value:g}% pruned")
        elif name == "seed":
            parts.append(f"seed {value}")
        else:
            parts.append(f"{name}={value}")
    return ", ".join(parts)


def labels(runs: list[Run]) -> list[str]:
    """One label per run naming what differs between them; the folder name where nothing does."""
    names = differing_args(runs)
    found = [describe(run.args, names) if names else run.root.name for run in runs]
    if len(set(found)) < len(found):
        found = [f"{label} ({run.root.name})" for label, run in zip(found, runs, strict=True)]
    return found


def table(rows: list[dict], columns: list[str]) -> str:
    """Rows of text as an aligned plain-text table with a header line."""
    cells = [columns] + [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )
