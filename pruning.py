"""Iterative magnitude pruning: masks, pruning by percentile, rewinding and freezing.

A mask is what the original runner made it: a list of float32 numpy arrays of ones and zeros,
one per prunable weight tensor, in `named_parameters()` order. Only the weights of Linear and
Conv layers are prunable; biases and BatchNorm parameters never are. Masks are computed on the
host once per level; the training step uses device copies (`device_masks`).
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


def prune_by_percentile(model: nn.Module, mask: Mask, percent: float) -> Mask:
    """Remove `percent` % of each layer's surviving weights by magnitude; zero them in `model`.

    The original took `np.percentile` of the nonzero weights and dropped those below it; counting
    survivors through the mask instead gives the same count (within one weight) and never
    confuses a weight that trained to exactly zero with a pruned one.
    """
    new_mask = []
    for param, layer_mask in zip(prunable_weights(model), mask, strict=True):
        weights = param.detach().cpu().numpy()
        count = layer_prune_count(int(layer_mask.sum()), percent)
        new_mask.append(prune_layer(weights, layer_mask, count))
    apply_mask(model, new_mask)
    return new_mask


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights of `model` in place."""
    for param, layer_mask in zip(prunable_weights(model), mask, strict=True):
        param.mul_(torch.from_numpy(layer_mask).to(param.device, param.dtype))


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
