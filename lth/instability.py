"""Instability analysis (Frankle, Dziugaite, Roy & Carbin, ICML 2020): two copies of a
subnetwork trained from the same weights on two data orders, and the test error on the straight
line between them. Under 2 points of error barrier (the highest error minus the ends' mean) is
stable. The excess over the straight line between the ends' errors stands beside it: when the
ends differ, the barrier counts part of that difference as instability, the excess does not.
The copies train as one batch through the one training path (`train.train_level`).
"""

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lth.data import Split
from lth.errors import UserError
from lth.experiment import Experiment
from lth.pruning import Mask, rewind
from lth.record import TrialRandom, seed_everything
from lth.results import write_csv
from lth.stack import StackedModel, stack_masks
from lth.train import LevelData, LevelPlan, Trials, evaluate, train_level

POINTS = 30  # the paper's number of points on the path
STABLE_BELOW = 2.0  # percentage points of error barrier: the paper's threshold
SEED_RANGE = 2**32  # seeds are 32-bit, as main.py's --seed
FOLDER = "instability"  # inside the run folder

POINT_FIELDS = ["level", "weights_left", "alpha", "test_error"]
BARRIER_FIELDS = [
    "level",
    "weights_left",
    "error_start",
    "error_end",
    "error_max",
    "barrier",
    "stable",
    "excess",
    "excess_alpha",
]


def alphas(points: int) -> np.ndarray:
    """`points` evenly spaced interpolation weights from 0 (the first copy) to 1 (the second)."""
    return np.linspace(0.0, 1.0, points)


def copy_seeds(seed: int) -> list[int]:
    """The seeds of the two copies' data orders: `seed` and the next one (32-bit, wrapping)."""
    return [seed, (seed + 1) % SEED_RANGE]


def interpolate(
    first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * first + alpha * second for every float tensor; integer buffers are first's.
    A weight pruned in both stays zero, and the ends are the states themselves, bit for bit."""
    if set(first) != set(second):
        raise ValueError("the two states are of different networks")
    return {
        name: (1 - alpha) * a + alpha * second[name] if a.is_floating_point() else a.clone()
        for name, a in first.items()
    }


def error_barrier(errors: Sequence[float] | np.ndarray) -> float:
    """The highest test error on the path minus the mean of its two ends (never negative)."""
    errors = np.asarray(errors, dtype=float)
    return float(errors.max() - (errors[0] + errors[-1]) / 2)


def straight_line(weights: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """The ends' errors interpolated at each weight: the path's reference for the excess."""
    return errors[0] + (errors[-1] - errors[0]) * weights


def excess_peak(errors: np.ndarray, line: np.ndarray) -> int:
    """Where the errors rise highest above `line` (the first, on a tie)."""
    return int(np.argmax(errors - line))


def excess_over_line(weights: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """The highest error above the straight line between the ends' errors, and the alpha where
    it peaks; never negative, the ends lie on the line."""
    line = straight_line(weights, errors)
    peak = excess_peak(errors, line)
    return float(errors[peak] - line[peak]), float(weights[peak])


def is_stable(barrier: float) -> bool:
    return barrier < STABLE_BELOW


@torch.no_grad()
def errors_along_path(
    model: nn.Module,
    first: Mapping[str, torch.Tensor],
    second: Mapping[str, torch.Tensor],
    test_set: Split,
    weights: np.ndarray,
    description: str = "",
) -> np.ndarray:
    """Test error in percent at each interpolation weight of `weights` (on a copy of `model`)."""
    probe = copy.deepcopy(model)
    alone = StackedModel([probe])  # a stack of one is the module itself
    errors = []
    for alpha in tqdm(weights, desc=description, dynamic_ncols=True):
        probe.load_state_dict(interpolate(first, second, float(alpha)))
        (accuracy,) = evaluate(alone, test_set)
        errors.append(100.0 - accuracy)
    return np.array(errors)


@dataclass(frozen=True)
class Subnetwork:
    """A level's subnetwork: its network (left as it is), the copies' start state and its mask."""

    model: nn.Module
    start: Mapping[str, torch.Tensor]
    mask: Mask


def train_copies(
    subnetwork: Subnetwork,
    seeds: Sequence[int],
    recipe: Experiment,
    data: LevelData,
    *,
    start_step: int,
    description: str = "",
) -> list[dict[str, torch.Tensor]]:
    """One copy per seed trained as one batch from `start_step` on the plan a level of the run
    makes (`LevelPlan.of`), each on the data order of its own seed, without validation; each
    copy's final state (not its best). UserError when a copy's loss stops being finite."""
    model, start, mask = subnetwork.model, subnetwork.start, subnetwork.mask
    copies = []
    for _ in seeds:
        one = copy.deepcopy(model)
        rewind(one, mask, start)
        copies.append(one)
    stacked = StackedModel(copies)
    seed_everything(seeds[0])
    drops = recipe.lr_drop_epochs()
    plan = LevelPlan.of(recipe, data.train, drops, start_step=start_step, description=description)
    histories = train_level(
        stacked,
        LevelData(data.train, data.test),
        plan,
        Trials(stack_masks(stacked, [mask] * len(seeds)), [TrialRandom(seed) for seed in seeds]),
    )
    for seed, history in zip(seeds, histories, strict=True):
        if history.failure is not None:
            raise UserError(f"the copy trained on the data order of seed {seed}: {history.failure}")
    return [stacked.trial_state(i) for i in range(len(seeds))]


@dataclass
class PathErrors:
    """One level's analysis: its test error at each interpolation weight."""

    level: int
    weights_left: float  # percent of the prunable weights the level's mask keeps
    alphas: np.ndarray
    errors: np.ndarray  # test error in percent at each of `alphas`

    @property
    def barrier(self) -> float:
        return error_barrier(self.errors)

    @property
    def stable(self) -> bool:
        return is_stable(self.barrier)

    @cached_property
    def straight(self) -> np.ndarray:
        return straight_line(self.alphas, self.errors)

    @cached_property
    def peak(self) -> int:
        """The index of the excess's peak."""
        return excess_peak(self.errors, self.straight)

    @cached_property
    def excess(self) -> tuple[float, float]:
        """(excess over the ends' straight line, the alpha where it peaks)."""
        return excess_over_line(self.alphas, self.errors)

    def point_rows(self) -> list[dict]:
        """Rows of the points table (POINT_FIELDS), one per interpolation weight."""
        return [
            {"level": self.level, "weights_left": self.weights_left, "alpha": a, "test_error": e}
            for a, e in zip(self.alphas.tolist(), rounded(self.errors), strict=True)
        ]

    def barrier_row(self) -> dict:
        """The level's row of the barriers table (BARRIER_FIELDS)."""
        return {
            "level": self.level,
            "weights_left": self.weights_left,
            "error_start": rounded(self.errors[0]),
            "error_end": rounded(self.errors[-1]),
            "error_max": rounded(self.errors.max()),
            "barrier": rounded(self.barrier),
            "stable": self.stable,
            "excess": rounded(self.excess[0]),
            "excess_alpha": rounded(self.excess[1]),
        }

    def verdict(self) -> str:
        """The line printed for the level."""
        return (
            f"level {self.level} ({self.weights_left:g}% of weights left): error barrier"
            f" {self.barrier:.2f} points (test error {self.errors[0]:.2f}% at alpha 0,"
            f" {self.errors[-1]:.2f}% at alpha 1, at most {self.errors.max():.2f}%):"
            f" {'stable' if self.stable else 'unstable'}"
        )


TABLE_HEADER = "| level | weights left | barrier | excess over the line | at alpha | stable |"


def table(results: Sequence[PathErrors]) -> list[str]:
    """The levels' measures as a Markdown table, printed after the verdicts."""
    rows = [TABLE_HEADER, "|---|---|---|---|---|---|"]
    for r in results:
        excess, at = r.excess
        rows.append(
            f"| {r.level} | {r.weights_left:g}% | {r.barrier:.2f} | {excess:.2f} | {at:.3f} |"
            f" {'stable' if r.stable else 'unstable'} |"
        )
    return rows


def rounded(values: np.ndarray | float) -> list[float] | float:
    """Percentages to 6 decimals for the tables."""
    return np.round(values, 6).tolist()


@dataclass(frozen=True)
class Outputs:
    """The files of one analysis in the run's `instability/`, named by its seed."""

    points: Path  # instability_seed{S}.csv: test error at every point of every level's path
    barriers: Path  # instability_seed{S}_barriers.csv: one row per level
    figure: Path  # instability_seed{S}.png
    record: Path  # instability_seed{S}.json: arguments, seeds, versions

    @classmethod
    def of(cls, run_root: Path, seed: int) -> "Outputs":
        stem = Path(run_root) / FOLDER / f"instability_seed{seed}"
        return cls(
            stem.with_suffix(".csv"),
            stem.with_name(stem.name + "_barriers.csv"),
            stem.with_suffix(".png"),
            stem.with_suffix(".json"),
        )

    def all(self) -> list[Path]:
        return [self.points, self.barriers, self.figure, self.record]

    def existing(self) -> list[Path]:
        return [path for path in self.all() if path.exists()]


def write_tables(outputs: Outputs, results: Sequence[PathErrors]) -> None:
    write_csv(outputs.points, POINT_FIELDS, [row for r in results for row in r.point_rows()])
    write_csv(outputs.barriers, BARRIER_FIELDS, [r.barrier_row() for r in results])
