"""--prune_scope global, --prune_percent_output, --prune_percent_conv and --prune_type random."""

import numpy as np
import pytest
import torch

import archs
from lth.initialization import initialize
from lth.pruning import (
    make_mask,
    percentile_prune,
    prunable,
    prunable_weights,
    prune_at_random,
    prune_by_percentile,
    prune_count,
)
from tests.test_pruning import fc1


def lenet5():
    torch.manual_seed(0)
    return initialize(archs.build("cifar10", "lenet5"))


def alive(mask) -> list[int]:
    return [int(m.sum()) for m in mask.values()]


def magnitudes(model) -> list[np.ndarray]:
    return [p.detach().abs().numpy() for p in prunable_weights(model)]


def weights(model) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy().copy() for name, p in prunable(model).items()}


@pytest.mark.parametrize("percent", [20, 33.3])
def test_global_pruning_removes_exactly_the_count_of_all_layers_smallest_first(percent):
    model = fc1()
    mask = make_mask(model)
    for _ in range(3):
        before = magnitudes(model)
        total = sum(alive(mask))
        new = prune_by_percentile(model, mask, percent, scope="global")
        assert total - sum(alive(new)) == prune_count(total, percent)
        removed = np.concatenate(
            [
                w[(m == 1) & (n == 0)]
                for w, m, n in zip(before, mask.values(), new.values(), strict=True)
            ]
        )
        kept = np.concatenate([w[n == 1] for w, n in zip(before, new.values(), strict=True)])
        assert removed.max() <= kept.min(), "one threshold across all layers"
        for weight, layer_mask in zip(magnitudes(model), new.values(), strict=True):
            assert np.all(weight[layer_mask == 0] == 0)
        mask = new


def test_global_pruning_differs_from_layer_pruning_per_layer():
    model = fc1()
    by_layer = prune_by_percentile(fc1(), make_mask(model), 20)
    by_all = prune_by_percentile(model, make_mask(model), 20, scope="global")
    assert abs(sum(alive(by_layer)) - sum(alive(by_all))) <= len(by_layer)
    assert alive(by_layer) != alive(by_all)


def test_layer_rates_output_layer_and_conv_layers_each_their_own():
    model = lenet5()
    names = list(make_mask(model))
    conv, linear, output = names[:2], names[2:-1], names[-1]
    assert [len(prunable(model)[n].shape) for n in names] == [4, 4, 2, 2, 2]
    mask = make_mask(model)
    for _ in range(3):
        before = weights(model)
        new = prune_by_percentile(model, mask, 20, output_percent=10, conv_percent=15)
        rates = {**dict.fromkeys(conv, 15), **dict.fromkeys(linear, 20), output: 10}
        for name in names:
            expected = percentile_prune(before[name], mask[name], rates[name])
            assert np.array_equal(new[name], expected), name
        mask = new
    # with the same weights, the default rates prune more of the conv layers
    default = prune_by_percentile(lenet5(), make_mask(model), 20)
    once = prune_by_percentile(lenet5(), make_mask(model), 20, conv_percent=15)
    assert all(a > b for a, b in zip(alive(once)[:2], alive(default)[:2], strict=True))
    assert alive(once)[2:] == alive(default)[2:]


def test_global_scope_ranks_the_conv_layers_together_at_their_rate():
    model = lenet5()
    mask = make_mask(model)
    sizes = alive(mask)
    new = prune_by_percentile(model, mask, 20, scope="global", output_percent=10, conv_percent=15)
    left = alive(new)
    assert sum(sizes[:2]) - sum(left[:2]) == prune_count(sum(sizes[:2]), 15)
    assert sum(sizes[2:4]) - sum(left[2:4]) == prune_count(sum(sizes[2:4]), 20)
    assert sizes[4] - left[4] == prune_count(sizes[4], 10)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_output_layer_gets_its_own_rate(scope):
    model = fc1()
    mask = make_mask(model)
    before = weights(model)
    names = list(mask)
    new = prune_by_percentile(model, mask, 20, scope=scope, output_percent=10)
    if scope == "layer":
        for name, rate in zip(names, [20, 20, 10], strict=True):
            assert np.array_equal(new[name], percentile_prune(before[name], mask[name], rate))
    else:
        sizes = alive(mask)
        assert sizes[-1] - alive(new)[-1] == prune_count(sizes[-1], 10)
        body_removed = sum(sizes[:-1]) - sum(alive(new)[:-1])
        assert body_removed == prune_count(sum(sizes[:-1]), 20)


@pytest.mark.parametrize(
    ("build", "options"),
    [
        (fc1, {}),
        (fc1, {"scope": "global"}),
        (fc1, {"output_percent": 5.0}),
        (lenet5, {"conv_percent": 10.0}),
    ],
    ids=["layer", "global", "output", "conv"],
)
def test_random_pruning_keeps_the_magnitude_counts_per_layer(build, options):
    model = build()
    mask = make_mask(model)
    np.random.seed(0)
    for _ in range(3):
        twin = build()  # same weights, so magnitude pruning does not touch `model` itself
        twin.load_state_dict(model.state_dict())
        by_magnitude = prune_by_percentile(twin, mask, 20, **options)
        at_random = prune_at_random(model, mask, 20, **options)
        assert alive(at_random) == alive(by_magnitude)
        for name, after in at_random.items():
            assert not np.any(after > mask[name]), "only survivors are removed"
        assert any(not np.array_equal(a, by_magnitude[name]) for name, a in at_random.items()), (
            "random pruning chose exactly the smallest weights"
        )
        for param, layer_mask in zip(prunable_weights(model), at_random.values(), strict=True):
            assert torch.all(param.detach()[torch.from_numpy(layer_mask) == 0] == 0)
        mask = at_random


def test_random_pruning_is_reproducible_from_the_seed():
    masks = []
    for _ in range(2):
        np.random.seed(7)
        model = fc1()
        masks.append(prune_at_random(model, make_mask(model), 30))
    assert all(np.array_equal(a, masks[1][name]) for name, a in masks[0].items())
