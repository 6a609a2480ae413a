"""Where the weights go: the share of each layer's weights a run's masks keep, level by level,
from each run's saved mask files; for several trials their mean, minimum and maximum.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from lth.errors import UserError
from lth.results import read_mask
from lth.runs import Run, Trials, describe

Counts = dict[str, tuple[int, int]]  # layer -> (weights kept, weights in all)

TABLE_FIELDS = ["line", "prune_type", "level", "weights_left", "layer", "trials", "total"] + [
    f"{what}_{stat}" for what in ("kept", "share") for stat in ("mean", "min", "max")
]


def layer_name(parameter: str) -> str:
    """A weight's layer (`classifier.0` for `classifier.0.weight`)."""
    return parameter.removesuffix(".weight")


def run_counts(run: Run, network: nn.Module, levels: int) -> list[Counts]:
    """Every prunable layer's kept and total weights at each of the run's first `levels` levels,
    from its mask files (`network`: the run's network, on the meta device is enough)."""
    counts = []
    for level in range(levels):
        path = run.mask_path(level)
        if not path.is_file():
            raise UserError(
                f"{run.root} has no mask file for level {level} ({path}): the share of each"
                " layer kept is read from a run's masks"
            )
        mask = read_mask(path, network)
        counts.append({layer_name(n): (int(m.sum()), int(m.size)) for n, m in mask.items()})
    return counts


def prune_type(args: dict) -> str:
    return describe(args, ["prune_type"])


@dataclass
class LayerShares:
    """Each layer's kept weights in every trial of one experiment, level by level."""

    label: str
    prune_type: str
    weights_left: np.ndarray  # percent of the prunable weights left at each level
    layers: list[str]
    kept: np.ndarray  # [trials, levels, layers]
    total: np.ndarray  # [layers]

    @classmethod
    def of(cls, trials: Trials, network_of: Callable[[Run], nn.Module]) -> "LayerShares":
        levels = len(trials.weights_left)
        per_run = [run_counts(run, network_of(run), levels) for run in trials.runs]
        layers = list(per_run[0][0])
        kept = np.array([[[c[layer][0] for layer in layers] for c in run] for run in per_run])
        total = np.array([per_run[0][0][layer][1] for layer in layers])
        return cls(
            trials.label, prune_type(trials.runs[0].args), trials.weights_left, layers, kept, total
        )

    @property
    def share(self) -> np.ndarray:
        """[trials, levels, layers]: percent of each layer's weights kept."""
        return 100 * self.kept / self.total

    def rows(self) -> list[dict]:
        rows = []
        for level, left in enumerate(self.weights_left):
            for index, layer in enumerate(self.layers):
                row = {"line": self.label, "prune_type": self.prune_type, "level": level}
                row |= {"weights_left": float(left), "layer": layer, "trials": len(self.kept)}
                row |= {"total": int(self.total[index])}
                for what, values in (("kept", self.kept), ("share", self.share)):
                    column = values[:, level, index]
                    for stat in ("mean", "min", "max"):
                        row[f"{what}_{stat}"] = round(float(getattr(column, stat)()), 6)
                rows.append(row)
        return rows

    def lines(self) -> list[tuple]:
        """One `plots.Line` per layer: the mean share kept, with its band over several trials."""
        lines, share = [], self.share
        for i, layer in enumerate(self.layers):
            kept = share[:, :, i]
            band = (kept.min(axis=0), kept.max(axis=0)) if len(kept) > 1 else (None, None)
            lines.append((layer, self.weights_left, kept.mean(axis=0), *band))
        return lines
