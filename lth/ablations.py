"""Masks that keep a method's counts without its choice of weights: the random baselines and
the sanity checks of Frankle, Dziugaite, Roy & Carbin (ICLR 2021, "Pruning Neural Networks at
Initialization: Why Are We Missing the Mark?").

- `random_together`: random scores ranked together within each group of layers of one rate,
  so each layer keeps about the same share (Synaptic-Flow's random pruner; the 2021 paper's
  random baseline).
- `random_at_counts`: each layer pruned at random to exactly the count another mask keeps
  there (a ticket's layer-wise proportions without its choice of weights).
- `shuffled`: each layer's mask permuted at random within the layer, its count kept.
- `keep_lowest`: per group, the same count kept, but the lowest scores instead of the highest.

Every draw comes from numpy's global generator: a method calls these inside its trial's
`TrialRandom.active()`, so a trial draws what it would draw alone.
"""

from collections.abc import Mapping

import numpy as np

from lth.pruning import Mask, prune_count

Groups = list[tuple[list[str], float]]  # layers ranked together, with their rate (percent)


def random_together(mask: Mask, groups: Groups) -> Mask:
    """`mask` less round(rate %) of the survivors of each group, chosen uniformly at random
    from the group's survivors taken together."""
    new_mask = {name: m.copy() for name, m in mask.items()}
    for layers, rate in groups:
        alive = [np.flatnonzero(mask[name]) for name in layers]
        total = sum(a.size for a in alive)
        chosen = np.random.permutation(total)[: prune_count(total, rate)]
        start = 0
        for name, kept in zip(layers, alive, strict=True):
            mine = chosen[(chosen >= start) & (chosen < start + kept.size)] - start
            new_mask[name].reshape(-1)[kept[mine]] = 0
            start += kept.size
    return new_mask


def random_at_counts(mask: Mask, counts_of: Mask) -> Mask:
    """Each layer of `mask` pruned at random to exactly the count `counts_of` keeps in it.
    ValueError when `counts_of` keeps more of a layer than `mask` does."""
    new_mask = {}
    for name, before in mask.items():
        alive = np.flatnonzero(before)
        count = int(counts_of[name].sum())
        if count > alive.size:
            raise ValueError(f"{name}: {count} weights asked, {alive.size} left to choose from")
        layer = np.zeros_like(before)
        layer.reshape(-1)[np.random.permutation(alive)[:count]] = 1
        new_mask[name] = layer
    return new_mask


def shuffled(mask: Mask) -> Mask:
    """Each layer's mask with its entries permuted at random: the same count, new positions."""
    return {
        name: np.random.permutation(m.reshape(-1)).reshape(m.shape).astype(m.dtype, copy=False)
        for name, m in mask.items()
    }


def keep_lowest(scores: Mapping[str, np.ndarray], mask: Mask, kept: Mask, groups: Groups) -> Mask:
    """Per group of layers, as many of `mask`'s survivors as `kept` keeps there, those with the
    lowest `scores` (ties by layer order, then position): the complement, among the
    survivors, of the highest scores that `kept` did not keep."""
    new_mask = {name: np.zeros_like(m) for name, m in mask.items()}
    for layers, _ in groups:
        alive = [np.flatnonzero(mask[name]) for name in layers]
        flat = np.concatenate(
            [scores[name].reshape(-1)[a] for name, a in zip(layers, alive, strict=True)]
        )
        count = int(sum(kept[name].sum() for name in layers))
        chosen = np.argsort(flat, kind="stable")[:count]
        start = 0
        for name, a in zip(layers, alive, strict=True):
            mine = chosen[(chosen >= start) & (chosen < start + a.size)] - start
            new_mask[name].reshape(-1)[a[mine]] = 1
            start += a.size
    return new_mask
