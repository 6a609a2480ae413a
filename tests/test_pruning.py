"""Pruning arithmetic, freezing and rewinding on small real models."""

import numpy as np
import pytest
import torch
from torch import nn

import archs
from data import Split
from initialization import initialize
from pruning import (
    device_masks,
    layer_prune_count,
    make_mask,
    prunable_names,
    prunable_weights,
    prune_by_percentile,
    reinitialize,
    rewind,
)
from train import train_epoch


def fc1() -> nn.Module:
    torch.manual_seed(0)
    return initialize(archs.build("mnist", "fc1"))


def random_split(count: int, shape=(1, 28, 28), classes: int = 10, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, *shape, generator=generator)
    labels = torch.randint(0, classes, (count,), generator=generator)
    return Split(images=images, labels=labels)


@pytest.mark.parametrize("percent", [10, 20, 33.3])
def test_each_layer_keeps_the_expected_share_after_k_levels(percent):
    model = fc1()
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    mask = make_mask(model)
    sizes = [m.size for m in mask]
    levels = 6
    for level in range(1, levels + 1):
        previous = [m.copy() for m in mask]
        mask = prune_by_percentile(model, mask, percent)
        for before, after in zip(previous, mask, strict=True):
            assert not np.any(after > before), "a mask may only lose ones"
            assert set(np.unique(after)) <= {0.0, 1.0}
        for size, layer_mask in zip(sizes, mask, strict=True):
            expected = size * (1 - percent / 100) ** level
            assert abs(layer_mask.sum() - expected) <= level, (level, layer_mask.sum(), expected)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(param, biases[name]), "biases are never pruned"


def test_pruning_removes_the_smallest_survivors_of_each_layer():
    model = fc1()
    mask = prune_by_percentile(model, make_mask(model), 30)
    for param, layer_mask in zip(prunable_weights(model), mask, strict=True):
        magnitude = param.detach().abs().numpy()
        assert magnitude[layer_mask == 0].max() <= magnitude[layer_mask == 1].min()
        assert np.all(magnitude[layer_mask == 0] == 0), "pruned weights are zeroed in the model"
    again = prune_by_percentile(model, mask, 30)
    for first, second in zip(mask, again, strict=True):
        alive = int(first.sum())
        assert first.sum() - second.sum() == layer_prune_count(alive, 30)


def test_only_linear_and_conv_weights_are_prunable():
    torch.manual_seed(0)
    model = archs.build("cifar10", "resnet20")
    names = prunable_names(model)
    assert names and all(n.endswith("weight") for n in names)
    modules = dict(model.named_modules())
    for name in names:
        assert isinstance(modules[name.rsplit(".", 1)[0]], (nn.Linear, nn.Conv2d))
    batch_norm_weights = [
        f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
    ]
    assert batch_norm_weights and not set(batch_norm_weights) & set(names)


def test_pruned_weights_stay_zero_and_every_unpruned_negative_weight_trains():
    model = fc1()
    mask = prune_by_percentile(model, make_mask(model), 50)
    before = [p.detach().clone() for p in prunable_weights(model)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    train_epoch(
        model, random_split(300), 60, optimizer, nn.CrossEntropyLoss(), device_masks(model, mask)
    )
    for param, old, layer_mask in zip(prunable_weights(model), before, mask, strict=True):
        new = param.detach()
        pruned = torch.from_numpy(layer_mask) == 0
        assert torch.all(new[pruned] == 0), "a pruned weight moved"
        negative_alive = (~pruned) & (old < 0)
        assert negative_alive.any()
        assert torch.all(new[negative_alive] != old[negative_alive]), "a live negative weight froze"


def test_rewind_restores_the_initial_values_of_the_survivors():
    model = fc1()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    mask = make_mask(model)
    train_epoch(
        model, random_split(120), 60, optimizer, nn.CrossEntropyLoss(), device_masks(model, mask)
    )
    mask = prune_by_percentile(model, mask, 40)
    rewind(model, mask, initial)
    for name, param in model.named_parameters():
        assert torch.equal(param, initial[name] * _mask_for(model, mask, name))


def test_reinitialize_draws_new_values_and_keeps_the_mask():
    model = fc1()
    initial = [p.detach().clone() for p in prunable_weights(model)]
    mask = prune_by_percentile(model, make_mask(model), 40)
    reinitialize(model, mask, initialize)
    for param, old, layer_mask in zip(prunable_weights(model), initial, mask, strict=True):
        new = param.detach()
        assert torch.all(new[torch.from_numpy(layer_mask) == 0] == 0)
        alive = torch.from_numpy(layer_mask) == 1
        assert not torch.equal(new[alive], old[alive])


def _mask_for(model: nn.Module, mask, name: str) -> torch.Tensor:
    names = prunable_names(model)
    return torch.from_numpy(mask[names.index(name)]) if name in names else torch.tensor(1.0)
