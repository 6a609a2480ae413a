"""Iterative magnitude pruning: masks, pruning by percentile, rewinding and freezing.

A mask is what the original runner made it: a list of float32 numpy arrays of ones and zeros,
one per prunable weight tensor, in `named_parameters()` order. Only the weights of Linear and
Conv layers are prunable; biases, BatchNorm parameters and buffers never are. Masks are
computed on the host once per level; the training step uses device copies (`device_masks`).
Survivors are ranked per layer (the original) or across all layers (`scope="global"`), with an
optional separate rate for the output layer; `prune_at_random` is the random control.
"""

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from initialization import CONV_OR_LINEAR

Mask = list[np.ndarray]


def prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight tensors of Linear and Conv layers, in `named_parameters()` order."""
    wanted = {id(m.weight) for m in model.modules() if isinstance(m, CONV_OR_LINEAR)}
    return [p for _, p in model.named_parameters() if id(p) in wanted]


def prunable_names(model: nn.Module) -> list[str]:
    """Parameter names matching `prunable_weights`, for messages and tables."""
    wanted = {id(p) for p in prunable_weights(model)}
    return [name for name, p in model.named_parameters() if id(p) in wanted]


def make_mask(model: nn.Module) -> Mask:
    """A mask that keeps every prunable weight."""
    return [np.ones(tuple(p.shape), dtype=np.float32) for p in prunable_weights(model)]


def layer_prune_count(alive: int, percent: float) -> int:
    """How many of `alive` surviving weights a level removes at `percent` % (half rounds up)."""
    return int(np.floor(alive * percent / 100 + 0.5))


def prune_layer(weights: np.ndarray, layer_mask: np.ndarray, count: int) -> np.ndarray:
    """Return a copy of `layer_mask` without the `count` smallest-magnitude survivors.

    Ties are broken by position (stable sort), so the result is deterministic.
    """
    alive = np.flatnonzero(layer_mask)
    order = np.argsort(np.abs(weights.reshape(-1)[alive]), kind="stable")
    new_mask = layer_mask.copy()
    new_mask.reshape(-1)[alive[order[:count]]] = 0
    return new_mask


def prune_by_percentile(
    model: nn.Module,
    mask: Mask,
    percent: float,
    *,
    scope: str = "layer",
    output_percent: float | None = None,
) -> Mask:
    """Remove `percent` % of the surviving weights by magnitude; zero them in `model`.

    `scope="layer"` (the original) ranks each layer's survivors on their own; `"global"` ranks
    the survivors of all layers together. `output_percent` prunes the output layer (the last
    prunable one) at its own rate, ranked on its own; None: it is treated like the others.

    The original took `np.percentile` of the nonzero weights and dropped those below it; counting
    survivors through the mask instead gives the same count (within one weight) and never
    confuses a weight that trained to exactly zero with a pruned one.
    """
    new_mask = magnitude_mask(model, mask, percent, scope, output_percent)
    apply_mask(model, new_mask)
    return new_mask


def prune_at_random(
    model: nn.Module,
    mask: Mask,
    percent: float,
    *,
    scope: str = "layer",
    output_percent: float | None = None,
) -> Mask:
    """The random control: per layer, as many survivors as `prune_by_percentile` would remove,
    chosen uniformly at random (numpy's seeded generator); zero them in `model`."""
    by_magnitude = magnitude_mask(model, mask, percent, scope, output_percent)
    new_mask = []
    for before, after in zip(mask, by_magnitude, strict=True):
        alive = np.flatnonzero(before)
        count = int(before.sum() - after.sum())
        layer_mask = before.copy()
        layer_mask.reshape(-1)[np.random.permutation(alive)[:count]] = 0
        new_mask.append(layer_mask)
    apply_mask(model, new_mask)
    return new_mask


def magnitude_mask(
    model: nn.Module, mask: Mask, percent: float, scope: str, output_percent: float | None
) -> Mask:
    """The mask `prune_by_percentile` makes, without touching `model`."""
    weights = [p.detach().cpu().numpy() for p in prunable_weights(model)]
    new_mask = [m.copy() for m in mask]
    for layers, rate in pruning_groups(len(mask), percent, scope, output_percent):
        _prune_group(weights, mask, new_mask, layers, rate)
    return new_mask


def pruning_groups(
    layers: int, percent: float, scope: str, output_percent: float | None
) -> list[tuple[list[int], float]]:
    """The sets of layers ranked together, each with its rate (layer indices in mask order)."""
    separate_output = output_percent is not None
    body = list(range(layers - 1 if separate_output else layers))
    groups = [([i], percent) for i in body] if scope == "layer" else [(body, percent)]
    if separate_output:
        groups.append(([layers - 1], output_percent))
    return [(group, rate) for group, rate in groups if group]


def _prune_group(
    weights: list[np.ndarray], mask: Mask, new_mask: Mask, layers: list[int], percent: float
) -> None:
    """Zero in `new_mask` the smallest-magnitude `percent` % of the survivors of `layers` taken
    together (ties by layer order, then position)."""
    if len(layers) == 1:  # the common case, without the concatenation
        i = layers[0]
        count = layer_prune_count(int(mask[i].sum()), percent)
        new_mask[i] = prune_layer(weights[i], mask[i], count)
        return
    alive = [np.flatnonzero(mask[i]) for i in layers]
    magnitudes = np.concatenate(
        [np.abs(weights[i].reshape(-1)[kept]) for i, kept in zip(layers, alive, strict=True)]
    )
    count = layer_prune_count(magnitudes.size, percent)
    chosen = np.argsort(magnitudes, kind="stable")[:count]
    start = 0
    for i, kept in zip(layers, alive, strict=True):
        mine = chosen[(chosen >= start) & (chosen < start + kept.size)] - start
        new_mask[i].reshape(-1)[kept[mine]] = 0
        start += kept.size


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights of `model` in place."""
    for param, layer_mask in zip(prunable_weights(model), mask, strict=True):
        param.mul_(torch.from_numpy(layer_mask).to(param.device, param.dtype))


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


def device_masks(model: nn.Module, mask: Mask) -> list[torch.Tensor]:
    """The mask as tensors beside the weights they freeze (built once per level)."""
    return [
        torch.from_numpy(m).to(p.device, p.dtype)
        for p, m in zip(prunable_weights(model), mask, strict=True)
    ]


def freeze_pruned(weights: list[nn.Parameter], masks: list[torch.Tensor]) -> None:
    """Zero the gradients of pruned weights so they receive no update, whatever their sign.

    With zero gradients and zero weights, Adam's moments and its L2 weight decay stay zero
    too, so a pruned weight stays exactly 0. One fused multiply over all layers.
    """
    torch._foreach_mul_([w.grad for w in weights], masks)
