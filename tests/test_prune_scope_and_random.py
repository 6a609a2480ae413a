"""--prune_scope global, --prune_percent_output and --prune_type random."""

import numpy as np
import pytest
import torch

from pruning import (
    layer_prune_count,
    make_mask,
    prunable_weights,
    prune_at_random,
    prune_by_percentile,
)
from tests.test_pruning import fc1


def alive(mask) -> list[int]:
    return [int(m.sum()) for m in mask]


def magnitudes(model) -> list[np.ndarray]:
    return [p.detach().abs().numpy() for p in prunable_weights(model)]


@pytest.mark.parametrize("percent", [20, 33.3])
def test_global_pruning_removes_exactly_the_count_of_all_layers_smallest_first(percent):
    model = fc1()
    mask = make_mask(model)
    for _ in range(3):
        before = magnitudes(model)
        total = sum(alive(mask))
        new = prune_by_percentile(model, mask, percent, scope="global")
        assert total - sum(alive(new)) == layer_prune_count(total, percent)
        removed = np.concatenate(
            [w[(m == 1) & (n == 0)] for w, m, n in zip(before, mask, new, strict=True)]
        )
        kept = np.concatenate([w[n == 1] for w, n in zip(before, new, strict=True)])
        assert removed.max() <= kept.min(), "one threshold across all layers"
        for weight, layer_mask in zip(magnitudes(model), new, strict=True):
            assert np.all(weight[layer_mask == 0] == 0)
        mask = new


def test_global_pruning_differs_from_layer_pruning_per_layer():
    model = fc1()
    by_layer = prune_by_percentile(fc1(), make_mask(model), 20)
    by_all = prune_by_percentile(model, make_mask(model), 20, scope="global")
    assert sum(alive(by_layer)) == sum(alive(by_all))
    assert alive(by_layer) != alive(by_all)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_output_layer_gets_its_own_rate(scope):
    model = fc1()
    mask = make_mask(model)
    sizes = alive(mask)
    new = prune_by_percentile(model, mask, 20, scope=scope, output_percent=10)
    assert sizes[-1] - alive(new)[-1] == layer_prune_count(sizes[-1], 10)
    body_removed = sum(sizes[:-1]) - sum(alive(new)[:-1])
    assert body_removed == (
        layer_prune_count(sum(sizes[:-1]), 20)
        if scope == "global"
        else sum(layer_prune_count(s, 20) for s in sizes[:-1])
    )


@pytest.mark.parametrize(
    "options", [{}, {"scope": "global"}, {"output_percent": 5.0}], ids=["layer", "global", "output"]
)
def test_random_pruning_keeps_the_magnitude_counts_per_layer(options):
    model = fc1()
    mask = make_mask(model)
    np.random.seed(0)
    for _ in range(3):
        by_magnitude = prune_by_percentile(fc1_like(model), mask, 20, **options)
        at_random = prune_at_random(model, mask, 20, **options)
        assert alive(at_random) == alive(by_magnitude)
        for before, after in zip(mask, at_random, strict=True):
            assert not np.any(after > before), "only survivors are removed"
        assert any(
            not np.array_equal(a, b) for a, b in zip(at_random, by_magnitude, strict=True)
        ), "random pruning chose exactly the smallest weights"
        for param, layer_mask in zip(prunable_weights(model), at_random, strict=True):
            assert torch.all(param.detach()[torch.from_numpy(layer_mask) == 0] == 0)
        mask = at_random


def test_random_pruning_is_reproducible_from_the_seed():
    masks = []
    for _ in range(2):
        np.random.seed(7)
        model = fc1()
        masks.append(prune_at_random(model, make_mask(model), 30))
    assert all(np.array_equal(a, b) for a, b in zip(*masks, strict=True))


def fc1_like(model):
    """A copy of `model` (same weights), so magnitude pruning does not touch `model` itself."""
    twin = fc1()
    twin.load_state_dict(model.state_dict())
    return twin
