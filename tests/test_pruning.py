"""Pruning arithmetic, freezing and rewinding on small real models; the original's rule and figure."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import archs
from lth.data import Split
from lth.initialization import initialize
from lth.pruning import (
    make_mask,
    prunable,
    prunable_weights,
    prune_by_percentile,
    reinitialize,
    rewind,
    state_copy,
    weights_left,
)
from lth.results import level_tag, mask_to_list
from tests.solo import device_masks, epoch_alone
from utils import print_nonzeros


def fc1() -> nn.Module:
    torch.manual_seed(0)
    return initialize(archs.build("mnist", "fc1"))


def random_split(count: int, shape=(1, 28, 28), classes: int = 10, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, *shape, generator=generator)
    labels = torch.randint(0, classes, (count,), generator=generator)
    return Split(images=images, labels=labels)


# -- the original's rules, written from its description --------------------------------------


def original_prune(model: nn.Module, mask: list[np.ndarray], percent: float) -> list[np.ndarray]:
    """The original's prune_by_percentile: for every parameter whose name contains 'weight', the
    threshold is np.percentile of the magnitudes of its nonzero values; the values strictly below
    it are pruned (mask and weight)."""
    new = []
    for name, param in model.named_parameters():
        if "weight" in name:
            tensor = param.data.cpu().numpy()
            alive = tensor[np.nonzero(tensor)]
            percentile_value = np.percentile(abs(alive), percent)
            new_mask = np.where(abs(tensor) < percentile_value, 0, mask[len(new)])
            param.data = torch.from_numpy(tensor * new_mask)
            new.append(new_mask)
    return new


def original_comp(model: nn.Module) -> np.float64:
    """The original's print_nonzeros figure: nonzero values among all parameters, in percent."""
    nonzero = total = 0
    for _, p in model.named_parameters():
        tensor = p.data.cpu().numpy()
        nonzero += np.count_nonzero(tensor)
        total += np.prod(tensor.shape)
    return round((nonzero / total) * 100, 1)


def small_layers() -> nn.Module:
    """Layers of very different sizes, tiny ones included (2 weights, 1 weight)."""
    return nn.Sequential(
        nn.Linear(40, 30), nn.Conv2d(3, 4, 3), nn.Linear(2, 1), nn.Linear(1, 1), nn.Linear(3, 2)
    )


def tied_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Random weights from a few magnitudes (many ties), some exactly 0.0 in the largest layer;
    pruned weights stay 0 (as training leaves them)."""
    with torch.no_grad():
        for i, p in enumerate(prunable_weights(model)):
            steps = torch.randint(1, 41, p.shape, generator=generator)
            signs = torch.randint(0, 2, p.shape, generator=generator) * 2 - 1
            values = 0.01 * steps * signs
            if i == 0:
                values[torch.rand(p.shape, generator=generator) < 0.02] = 0.0
            p.copy_(values * (p != 0))


@pytest.mark.parametrize("percent", [10.0, 20.0, 33.3, 50.0])
def test_layer_pruning_makes_the_original_masks_bit_for_bit(percent):
    torch.manual_seed(0)
    ours, theirs = small_layers(), small_layers()
    generator = torch.Generator().manual_seed(int(percent * 10))
    mask = make_mask(ours)
    their_mask = mask_to_list(ours, mask)
    largest = [1200]
    for _ in range(6):
        tied_weights(ours, generator)  # new weights each level, as if trained
        theirs.load_state_dict(ours.state_dict())
        mask = prune_by_percentile(ours, mask, percent)
        their_mask = original_prune(theirs, their_mask, percent)
        mine = mask_to_list(ours, mask)
        assert len(mine) == len(their_mask)
        for a, b in zip(mine, their_mask, strict=True):
            assert a.dtype == b.dtype == np.float32
            assert np.array_equal(a, b)
        for name, value in ours.state_dict().items():
            assert torch.equal(value, theirs.state_dict()[name]), name
        largest.append(int(mask["0.weight"].sum()))
    assert all(a > b for a, b in zip(largest[:-1], largest[1:], strict=True)), (
        "each level pruned the large layer"
    )
    survivors = [int(m.sum()) for m in mask.values()]
    assert survivors[2:4] == [1, 1], "the tiny layers keep their last weight, as the original"


def test_comp_is_the_original_figure_for_fc1_over_35_levels():
    model = fc1()
    initial = state_copy(model)
    generator = torch.Generator().manual_seed(1)
    mask, tags, weights_figures = make_mask(model), [], []
    for level in range(35):
        if level > 0:
            with torch.no_grad():  # "training": the survivors move
                for p in prunable_weights(model):
                    p.mul_(1 + 0.5 * torch.randn(p.shape, generator=generator))
            mask = prune_by_percentile(model, mask, 10.0)
            rewind(model, mask, initial)
        tags.append(level_tag(print_nonzeros(model), level, tags))
        weights_figures.append(weights_left(mask))

        carrying = fc1()  # a model whose weights carry the mask, counted the original's way
        for name, p in carrying.named_parameters():
            p.data = initial[name] * torch.from_numpy(mask[name]) if name in mask else initial[name]
        assert tags[-1] == f"{original_comp(carrying)}", level
    assert tags[:3] == ["100.0", "90.0", "81.0"]
    differing = sum(f"{w:.1f}" != t for w, t in zip(weights_figures, tags, strict=True))
    assert differing > 17, "the weights-only figure would name most levels differently"


@pytest.mark.parametrize("percent", [10, 20, 33.3])
def test_each_layer_keeps_the_expected_share_after_k_levels(percent):
    model = fc1()
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    mask = make_mask(model)
    assert list(mask) == list(prunable(model))
    sizes = [m.size for m in mask.values()]
    levels = 6
    for level in range(1, levels + 1):
        previous = copy.deepcopy(mask)
        mask = prune_by_percentile(model, mask, percent)
        assert list(mask) == list(previous)
        for name, after in mask.items():
            assert not np.any(after > previous[name]), "a mask may only lose ones"
            assert set(np.unique(after)) <= {0.0, 1.0}
        for size, layer_mask in zip(sizes, mask.values(), strict=True):
            expected = size * (1 - percent / 100) ** level
            assert abs(layer_mask.sum() - expected) <= level, (level, layer_mask.sum(), expected)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(param, biases[name]), "biases are never pruned"


def test_pruning_removes_the_smallest_survivors_of_each_layer():
    model = fc1()
    mask = prune_by_percentile(model, make_mask(model), 30)
    for param, layer_mask in zip(prunable_weights(model), mask.values(), strict=True):
        magnitude = param.detach().abs().numpy()
        assert magnitude[layer_mask == 0].max() <= magnitude[layer_mask == 1].min()
        assert np.all(magnitude[layer_mask == 0] == 0), "pruned weights are zeroed in the model"


def test_only_linear_and_conv_weights_are_prunable():
    torch.manual_seed(0)
    model = archs.build("cifar10", "resnet20")
    names = list(prunable(model))
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
    epoch_alone(model, random_split(300), 60, optimizer, device_masks(model, mask))
    for param, old, layer_mask in zip(prunable_weights(model), before, mask.values(), strict=True):
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
    epoch_alone(model, random_split(120), 60, optimizer, device_masks(model, mask))
    mask = prune_by_percentile(model, mask, 40)
    rewind(model, mask, initial)
    for name, param in model.named_parameters():
        kept = torch.from_numpy(mask[name]) if name in mask else torch.tensor(1.0)
        assert torch.equal(param, initial[name] * kept)


def test_reinitialize_draws_new_values_and_keeps_the_mask():
    model = fc1()
    initial = [p.detach().clone() for p in prunable_weights(model)]
    mask = prune_by_percentile(model, make_mask(model), 40)
    reinitialize(model, mask, initialize)
    for param, old, layer_mask in zip(prunable_weights(model), initial, mask.values(), strict=True):
        new = param.detach()
        assert torch.all(new[torch.from_numpy(layer_mask) == 0] == 0)
        alive = torch.from_numpy(layer_mask) == 1
        assert not torch.equal(new[alive], old[alive])
