"""Pruning at initialisation: the scores of SNIP, GraSP and SynFlow, and the masks they give.

The weights of the initial network with the highest scores are kept, as many as the magnitude
rule keeps after as many levels (`level_counts`). Every score is computed in eval mode; SNIP and
GraSP score on SCORE_IMAGES_PER_CLASS x classes training images.

- SNIP (Lee et al. 2019): |g * w|, g the gradient of the training loss.
- GraSP (Wang et al. 2020): the kept weights have the highest w * (H g), H the Hessian of the
  loss and g its gradient, the logits divided by a temperature of 200.
- SynFlow (Tanaka et al. 2020): w * dR/dw, R the summed output of the network made positive on
  an input of ones, in double precision, pruned over 100 rounds of growing sparsity.
"""

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lth.data import Split
from lth.pruning import Mask, apply_mask, conv_names, prunable, prune_count, rate_groups

SCORE_IMAGES_PER_CLASS = 10
GRASP_TEMPERATURE = 200.0
SYNFLOW_ROUNDS = 100

Scores = dict[str, torch.Tensor]
Counts = list[tuple[list[str], int]]  # layers ranked together -> how many of them are kept


def layer_prune_count(alive: int, percent: float) -> int:
    """How many of a layer's `alive` survivors the layer-wise magnitude rule removes when their
    magnitudes are distinct: ceil(percent / 100 * (alive - 1)), as numpy computes it."""
    if alive < 1:
        return 0
    return math.ceil(float(np.float64(percent) / 100 * (alive - 1)))


def level_counts(
    model: nn.Module,
    level: int,
    percent: float,
    *,
    scope: str = "layer",
    output_percent: float | None = None,
    conv_percent: float | None = None,
) -> Counts:
    """The weights kept after `level` levels of the magnitude rule from a dense `model`."""
    sizes = {name: p.numel() for name, p in prunable(model).items()}
    groups = rate_groups(list(sizes), conv_names(model), percent, output_percent, conv_percent)
    if scope == "layer":
        groups = [([name], rate) for layers, rate in groups for name in layers]
    removed = layer_prune_count if scope == "layer" else prune_count
    counts = []
    for layers, rate in groups:
        alive = sum(sizes[name] for name in layers)
        for _ in range(level):
            alive -= removed(alive, rate)
        counts.append((layers, alive))
    return counts


def keep_highest(scores: Scores, counts: Counts) -> Mask:
    """The mask keeping each group's count of highest-scoring weights (stable on ties)."""
    mask = {}
    for layers, kept in counts:
        flat = torch.cat([scores[name].detach().reshape(-1).double().cpu() for name in layers])
        chosen = torch.argsort(flat, descending=True, stable=True)[:kept]
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[chosen] = True
        start = 0
        for name in layers:
            size = scores[name].numel()
            layer = keep[start : start + size].reshape(scores[name].shape)
            mask[name] = layer.numpy().astype(np.float32)
            start += size
    return {name: mask[name] for name in scores}


def score_sample(train_set: Split, classes: int, device: torch.device) -> torch.Tensor:
    """The indices of the training images SNIP and GraSP score on, from the current generator."""
    count = min(len(train_set), SCORE_IMAGES_PER_CLASS * classes)
    return torch.randperm(len(train_set))[:count].to(device)


def _loss_gradient(
    model: nn.Module, chunks: Sequence[tuple[torch.Tensor, torch.Tensor, float]], scale: float = 1.0
) -> Scores:
    """The prunable weights' gradient of the mean loss over `chunks`, logits divided by `scale`."""
    weights = prunable(model)
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    for images, labels, share in chunks:
        loss = nn.functional.cross_entropy(model(images) / scale, labels) * share
        grads = torch.autograd.grad(loss, list(weights.values()))
        for name, grad in zip(weights, grads, strict=True):
            total[name] += grad
    return total


def snip_scores(model: nn.Module, chunks: Sequence[tuple]) -> Scores:
    """|g * w| for each prunable weight, g the gradient of the mean loss over `chunks`."""
    gradient = _loss_gradient(model, chunks)
    return {name: (gradient[name] * w).abs().detach() for name, w in prunable(model).items()}


def grasp_scores(
    model: nn.Module, chunks: Sequence[tuple], temperature: float = GRASP_TEMPERATURE
) -> Scores:
    """w * (H g) for each prunable weight (the negated GraSP score), the logits divided by
    `temperature`; H g as the gradient of g . grad(loss), g held constant."""
    gradient = _loss_gradient(model, chunks, temperature)
    weights = prunable(model)
    product = {name: torch.zeros_like(w) for name, w in weights.items()}
    for images, labels, share in chunks:
        loss = nn.functional.cross_entropy(model(images) / temperature, labels) * share
        grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
        inner = sum(
            (gradient[name] * grad).sum() for name, grad in zip(weights, grads, strict=True)
        )
        parts = torch.autograd.grad(inner, list(weights.values()))
        for name, part in zip(weights, parts, strict=True):
            product[name] += part
    return {name: (w * product[name]).detach() for name, w in weights.items()}


def synflow_scores(model: nn.Module, input_shape: Sequence[int]) -> Scores:
    """w * dR/dw for each prunable weight of `model` made positive (pass a copy in double
    precision and eval mode), R the sum of its output on one input of ones."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.abs_()
    weights = prunable(model)
    device = next(iter(weights.values())).device
    ones = torch.ones(1, *input_shape, dtype=torch.float64, device=device)
    total = model(ones).sum()
    grads = torch.autograd.grad(total, list(weights.values()))
    return {name: (w * g).detach() for (name, w), g in zip(weights.items(), grads, strict=True)}


def synflow_mask(
    model: nn.Module, counts: Counts, input_shape: Sequence[int], rounds: int = SYNFLOW_ROUNDS
) -> Mask:
    """SynFlow's mask: round r of `rounds` keeps n (kept / n)^(r / rounds) of each group's n
    weights by the scores of the network pruned so far."""
    scored = copy.deepcopy(model).double().eval()
    weights = prunable(scored)
    sizes = [sum(weights[name].numel() for name in layers) for layers, _ in counts]
    mask = {name: np.ones(tuple(w.shape), dtype=np.float32) for name, w in weights.items()}
    for r in range(1, rounds + 1):
        apply_mask(scored, mask)
        scores = synflow_scores(scored, input_shape)
        for name, layer_mask in mask.items():  # the pruned stay pruned
            gone = torch.from_numpy(layer_mask == 0).to(scores[name].device)
            scores[name] = scores[name].masked_fill(gone, -math.inf)
        target = [
            (layers, round(n * (kept / n) ** (r / rounds)))
            for (layers, kept), n in zip(counts, sizes, strict=True)
        ]
        mask = keep_highest(scores, target)
    return mask


def initial_network(model: nn.Module, initial_state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A dense copy of `model` at `initial_state`, in eval mode."""
    scored = copy.deepcopy(model)
    scored.load_state_dict(initial_state)
    scored.eval()
    return scored


def scored_mask(
    score: Callable[[nn.Module, Sequence[tuple]], Scores],
    network: nn.Module,
    counts: Counts,
    train_set: Split,
    batch_size: int,
    classes: int,
) -> Mask:
    """The mask keeping `counts` of `network`'s weights with the highest `score` on a sample."""
    index = score_sample(train_set, classes, next(network.parameters()).device)
    chunks = [  # (images, labels, share of the sample)
        (*train_set.batch(part), part.numel() / index.numel())
        for part in torch.split(index, batch_size)
    ]
    return keep_highest(score(network, chunks), counts)
