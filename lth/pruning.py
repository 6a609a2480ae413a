"""Iterative magnitude pruning: masks, pruning by percentile, rewinding and freezing.

Inside the program a mask is a dict: parameter name -> float32 numpy array of ones and zeros,
one entry per prunable weight tensor, in `named_parameters()` order. Only the weights of Linear
and Conv layers are prunable; biases, BatchNorm parameters and buffers never are. (The result
files hold the original's positional list instead: `results.mask_to_list` and
`results.mask_from_list` convert at that boundary.) Masks are computed on the host once per
level; the training step uses device copies beside the weights (`stack.stack_masks`).

Layer-wise pruning (the default) is the original's rule: per layer, the threshold is
`np.percentile` of the surviving weights' magnitudes and the survivors strictly below it go.
`scope="global"` ranks the survivors of several layers together and removes exactly
round(p %) of them. Conv layers and the output layer may have rates of their own;
`prune_at_random` is the random control.
"""

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from lth.layers import CONV, CONV_OR_LINEAR

Mask = dict[str, np.ndarray]


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight tensor of every Linear and Conv layer, in `named_parameters()` order."""
    wanted = {id(m.weight) for m in model.modules() if isinstance(m, CONV_OR_LINEAR)}
    return {name: p for name, p in model.named_parameters() if id(p) in wanted}


def prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight tensors of Linear and Conv layers, in `named_parameters()` order."""
    return list(prunable(model).values())


def conv_names(model: nn.Module) -> set[str]:
    """The names of the prunable weights that belong to Conv layers."""
    conv = {id(m.weight) for m in model.modules() if isinstance(m, CONV)}
    return {name for name, p in prunable(model).items() if id(p) in conv}


def make_mask(model: nn.Module) -> Mask:
    """A mask that keeps every prunable weight."""
    return {name: np.ones(tuple(p.shape), dtype=np.float32) for name, p in prunable(model).items()}


def weights_left(mask: Mask) -> float:
    """Percentage of the prunable weights the mask keeps, one decimal (`weights_left` of
    summary.csv)."""
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.size for m in mask.values())
    return round(100 * kept / total, 1)


def percentile_prune(weights: np.ndarray, layer_mask: np.ndarray, percent: float) -> np.ndarray:
    """The original's rule for one layer: `layer_mask` without the survivors whose magnitude is
    strictly below `np.percentile` (`percent`) of the surviving weights' magnitudes.

    As the original's `tensor[np.nonzero(tensor)]`, a survivor that is exactly 0.0 takes no part
    in the percentile (and, being below it, is pruned). A layer with no nonzero survivor keeps
    its mask (the original failed there).
    """
    alive = weights[(layer_mask != 0) & (weights != 0)]
    if alive.size == 0:
        return layer_mask.copy()
    threshold = np.percentile(np.abs(alive), percent)
    return np.where(np.abs(weights) < threshold, 0, layer_mask).astype(np.float32, copy=False)


def prune_count(alive: int, percent: float) -> int:
    """How many of `alive` survivors ranked together (`scope="global"`) a level removes at
    `percent` % (half rounds up)."""
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
    """Prune the surviving weights by magnitude and zero them in `model`; return the new mask.

    `scope="layer"` (the original) prunes each layer on its own by `percentile_prune`;
    `"global"` ranks the survivors of the layers of one rate together and removes exactly
    round(rate %) of them. `conv_percent` is the rate of the Conv layers and `output_percent`
    that of the output layer (the last prunable one, ranked on its own); None: `percent`.
    """
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
    """The random control: per layer, as many survivors as `prune_by_percentile` would remove,
    chosen uniformly at random (numpy's seeded generator); zero them in `model`."""
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
    """The layers of each rate, with the rate: the Conv layers (`conv`) at `conv_percent`, the
    output layer (the last) at `output_percent`, the others at `percent`. A rate that is None
    leaves its layers with the others. Empty groups are left out."""
    output = names[-1:] if output_percent is not None else []
    own_conv = (
        [n for n in names if n in conv and n not in output] if conv_percent is not None else []
    )
    body = [n for n in names if n not in own_conv and n not in output]
    groups = [(body, percent), (own_conv, conv_percent), (output, output_percent)]
    return [(layers, rate) for layers, rate in groups if layers]


def _prune_together(
    weights: Mapping[str, np.ndarray], mask: Mask, new_mask: Mask, layers: list[str], percent: float
) -> None:
    """Zero in `new_mask` the smallest-magnitude `percent` % of the survivors of `layers` taken
    together (ties by layer order, then position)."""
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
    """A detached copy of every parameter and buffer of `model`, safe from later training."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def rewind(model: nn.Module, mask: Mask, initial_state: Mapping[str, torch.Tensor]) -> None:
    """Lottery ticket (`lt`): survivors and every unpruned parameter back to their initial values."""
    model.load_state_dict(initial_state)
    apply_mask(model, mask)


def reinitialize(model: nn.Module, mask: Mask, init: Callable[[nn.Module], object]) -> None:
    """Random re-initialisation (`reinit`): fresh random weights, then the mask applied."""
    init(model)
    apply_mask(model, mask)


def print_nonzeros(model: nn.Module) -> float:
    """Print a per-parameter table of nonzero counts; return the percentage of nonzero values
    among all parameters (biases and BatchNorm parameters included), one decimal.

    The returned figure is the original's `{comp}`, computed as it did: numpy counts, the share
    times 100, then numpy's rounding of a float64.
    """
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
