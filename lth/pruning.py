"""Iterative magnitude pruning: masks, pruning by percentile, rewinding.

A mask is a dict: parameter name -> float32 numpy array of ones and zeros, one entry per weight
of a Linear or Conv layer, in `named_parameters()` order; biases, BatchNorm parameters and
buffers are never pruned. Masks are computed on the host once per level.
"""

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from lth.layers import CONV, CONV_OR_LINEAR

Mask = dict[str, np.ndarray]


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight of every Linear and Conv layer, in `named_parameters()` order."""
    wanted = {id(m.weight) for m in model.modules() if isinstance(m, CONV_OR_LINEAR)}
    return {name: p for name, p in model.named_parameters() if id(p) in wanted}


def prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    return list(prunable(model).values())


def conv_names(model: nn.Module) -> set[str]:
    """The names of the prunable weights that belong to Conv layers."""
    conv = {id(m.weight) for m in model.modules() if isinstance(m, CONV)}
    return {name for name, p in prunable(model).items() if id(p) in conv}


def make_mask(model: nn.Module) -> Mask:
    return {name: np.ones(tuple(p.shape), dtype=np.float32) for name, p in prunable(model).items()}


def weights_left(mask: Mask) -> float:
    """Percentage of the prunable weights the mask keeps, one decimal."""
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.size for m in mask.values())
    return round(100 * kept / total, 1)


def percentile_prune(weights: np.ndarray, layer_mask: np.ndarray, percent: float) -> np.ndarray:
    """`layer_mask` without the survivors strictly below the `percent` percentile of the nonzero
    survivors' magnitudes; a layer with no nonzero survivor keeps its mask."""
    alive = weights[(layer_mask != 0) & (weights != 0)]
    if alive.size == 0:
        return layer_mask.copy()
    threshold = np.percentile(np.abs(alive), percent)
    return np.where(np.abs(weights) < threshold, 0, layer_mask).astype(np.float32, copy=False)


def prune_count(alive: int, percent: float) -> int:
    """How many of `alive` survivors ranked together a level removes (half rounds up)."""
    return int(np.floor(alive * percent / 100 + 0.5))


def prune_by_percentile(
    model: nn.Module,
    mask: Mask,
    percent: float,
    *,
    scope: str = "layer",
    output_percent: float | None = None,
    conv_percent: float | None = None,
) -> Mask:
    """Prune the survivors by magnitude, zeroed in `model`, per layer or per group of layers of
    one rate (`scope="global"`); Conv and last layers may have their own rates."""
    new_mask = magnitude_mask(model, mask, percent, scope, output_percent, conv_percent)
    apply_mask(model, new_mask)
    return new_mask


def prune_at_random(
    model: nn.Module,
    mask: Mask,
    percent: float,
    *,
    scope: str = "layer",
    output_percent: float | None = None,
    conv_percent: float | None = None,
) -> Mask:
    """Per layer, as many random survivors as `prune_by_percentile` removes, zeroed in `model`."""
    by_magnitude = magnitude_mask(model, mask, percent, scope, output_percent, conv_percent)
    new_mask = {}
    for name, before in mask.items():
        alive = np.flatnonzero(before)
        count = int(before.sum() - by_magnitude[name].sum())
        layer_mask = before.copy()
        layer_mask.reshape(-1)[np.random.permutation(alive)[:count]] = 0
        new_mask[name] = layer_mask
    apply_mask(model, new_mask)
    return new_mask


def magnitude_mask(
    model: nn.Module,
    mask: Mask,
    percent: float,
    scope: str,
    output_percent: float | None,
    conv_percent: float | None = None,
) -> Mask:
    """The mask `prune_by_percentile` makes, without touching `model`."""
    weights = {name: p.detach().cpu().numpy() for name, p in prunable(model).items()}
    groups = rate_groups(list(mask), conv_names(model), percent, output_percent, conv_percent)
    if scope == "layer":
        rates = {name: rate for layers, rate in groups for name in layers}
        return {name: percentile_prune(weights[name], m, rates[name]) for name, m in mask.items()}
    new_mask = {name: m.copy() for name, m in mask.items()}
    for layers, rate in groups:
        _prune_together(weights, mask, new_mask, layers, rate)
    return {name: new_mask[name] for name in mask}


def rate_groups(
    names: list[str],
    conv: set[str],
    percent: float,
    output_percent: float | None,
    conv_percent: float | None,
) -> list[tuple[list[str], float]]:
    """The non-empty groups of layers of one rate: Conv layers at `conv_percent`, the last at
    `output_percent`, the others (and those whose rate is None) at `percent`."""
    output = names[-1:] if output_percent is not None else []
    own_conv = [n for n in names if n in conv and n not in output and conv_percent is not None]
    body = [n for n in names if n not in own_conv and n not in output]
    groups = [(body, percent), (own_conv, conv_percent), (output, output_percent)]
    return [(layers, rate) for layers, rate in groups if layers]


def _prune_together(
    weights: Mapping[str, np.ndarray], mask: Mask, new_mask: Mask, layers: list[str], percent: float
) -> None:
    """Zero in `new_mask` the smallest `percent` % of the survivors of `layers` taken together
    (ties by layer order, then position)."""
    alive = [np.flatnonzero(mask[name]) for name in layers]
    magnitudes = np.concatenate(
        [np.abs(weights[name].reshape(-1)[kept]) for name, kept in zip(layers, alive, strict=True)]
    )
    chosen = np.argsort(magnitudes, kind="stable")[: prune_count(magnitudes.size, percent)]
    start = 0
    for name, kept in zip(layers, alive, strict=True):
        mine = chosen[(chosen >= start) & (chosen < start + kept.size)] - start
        new_mask[name].reshape(-1)[kept[mine]] = 0
        start += kept.size


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights of `model` in place."""
    for name, param in prunable(model).items():
        param.mul_(torch.from_numpy(mask[name]).to(param.device, param.dtype))


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer of `model`."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def rewind(model: nn.Module, mask: Mask, initial_state: Mapping[str, torch.Tensor]) -> None:
    """Every parameter back to `initial_state`, the mask applied."""
    model.load_state_dict(initial_state)
    apply_mask(model, mask)


def reinitialize(model: nn.Module, mask: Mask, init: Callable[[nn.Module], object]) -> None:
    """Fresh random weights, the mask applied."""
    init(model)
    apply_mask(model, mask)


def print_nonzeros(model: nn.Module) -> float:
    """Print a per-parameter table of nonzero counts; return the percentage of nonzero values
    among all parameters, one decimal (`{comp}`, rounded as a numpy float64)."""
    nonzero = total = 0
    for name, param in model.named_parameters():
        tensor = param.detach().cpu().numpy()
        count = np.count_nonzero(tensor)
        size = np.prod(tensor.shape, dtype=np.int64)
        nonzero += count
        total += size
        print(
            f"{name:32} | nonzeros = {count:9} / {size:9} ({100 * count / size:6.2f}%)"
            f" | total_pruned = {size - count:9} | shape = {tuple(tensor.shape)}"
        )
    print(
        f"alive: {nonzero}, pruned : {total - nonzero}, total: {total}, "
        f"Compression rate : {total / max(nonzero, 1):10.2f}x "
        f"({100 * (total - nonzero) / total:6.2f}% pruned)"
    )
    return float(round(np.float64(nonzero / total) * 100, 1))
