"""Instability analysis (Frankle, Dziugaite, Roy & Carbin, ICML 2020, "Linear Mode Connectivity
and the Lottery Ticket Hypothesis"): train two copies of a subnetwork from the same starting
weights on two data orders, then measure the test error along the straight line between them.

A subnetwork is *stable* when the error barrier on that line (the highest error minus the mean
of its two ends) is under 2 percentage points, the paper's threshold: the two trainings ended in
one linearly connected minimum, so the outcome does not depend on the data order. Beside it
stands the excess over the straight line between the ends' errors (the highest error minus the
ends' interpolated error at the same point) and where it peaks: when the ends differ, the
barrier measures part of that difference as instability, the excess does not.

The copies train as one batch of two through the one training path (`train.train_level` over a
`stack.StackedModel`), with the run's optimiser and schedule, as `main.run_level` trains a level
after level 0. The command is `instability.py`.
"""

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    """(1 - alpha) * first + alpha * second for every float tensor of two states of one network
    (parameters and float buffers such as BatchNorm's running statistics); other tensors (the
    integer `num_batches_tracked`) are first's. A weight both hold at zero (pruned) stays zero,
    and the ends are the states themselves, bit for bit."""
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


def excess_over_line(weights: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """The highest test error on the path above the straight line between its ends' errors,
    and the interpolation weight where it peaks (the first, on a tie). Never negative: the
    ends lie on the line."""
    line = errors[0] + (errors[-1] - errors[0]) * weights
    peak = int(np.argmax(errors - line))
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
    """Test error in percent (100 - accuracy) of the network `model` is (a copy of it, left
    as it is) at each interpolation weight of `weights` between the states `first` and
    `second`."""
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
    """A level's subnetwork at its starting point: the network `model` is (left as it is), the
    state its copies start from, and the level's mask."""

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
    """One copy of the subnetwork per seed, each at its start state with its mask applied,
    trained together as one batch (one copy: alone) from optimiser step `start_step` to the end
    of the recipe's last epoch, on the plan a level of the run makes (`train.LevelPlan.of`):
    the run's optimiser, learning rate and schedule started at `start_step`, its batches and
    --augment, each copy with the data order of its own `TrialRandom(seed)`, without a
    validation set (`data.val` is not used). Returns each copy's state at the end of training
    (not its best).

    The batch's shared draws (dropout) start from the first seed, as a batch's in main.py.
    UserError when a copy's loss stops being finite.
    """
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

    @property
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
    """Percentages to 6 decimals for the tables: 33.333333, not 33.33333333333333."""
    return np.round(values, 6).tolist()


@dataclass(frozen=True)
class Outputs:
    """The files of one analysis, in the run folder's `instability/`, named by its seed so that
    analyses with other seeds sit beside it."""

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
