"""--init, --optimizer/--momentum and --dropout: the schemes and the training they give."""

import argparse

import pytest
import torch
from torch import nn

import archs
from lth.initialization import initialize, initializer
from lth.pruning import make_mask, prunable_weights, prune_by_percentile
from lth.train import add_input_dropout, build_optimizer
from tests.solo import device_masks, epoch_alone
from tests.test_pruning import random_split


def optimizer_args(**overrides) -> argparse.Namespace:
    values = {"optimizer": "adam", "lr": 1.2e-3, "momentum": 0.0} | overrides
    return argparse.Namespace(**values)


@pytest.mark.parametrize(
    ("layer", "fan_in"),
    [(nn.Linear(2000, 1500), 2000), (nn.Conv2d(64, 256, 3), 64 * 9)],
    ids=["linear", "conv"],
)
def test_kaiming_has_he_variance_and_zero_biases(layer, fan_in):
    torch.manual_seed(0)
    nn.init.normal_(layer.bias)  # so zeroing them is visible
    initialize(layer, "kaiming")
    weights = layer.weight.detach().double().reshape(-1)
    expected = 2.0 / fan_in
    # ~150k-3M draws: the sample variance is within 2% of sigma^2 with overwhelming probability
    assert weights.var().item() == pytest.approx(expected, rel=0.02)
    assert abs(weights.mean().item()) < 0.01 * expected**0.5
    assert torch.all(layer.bias == 0)


def test_xavier_is_still_the_default_and_differs_from_kaiming():
    torch.manual_seed(0)
    default = initialize(nn.Linear(2000, 1000)).weight.detach().double()
    assert default.var().item() == pytest.approx(2.0 / (2000 + 1000), rel=0.02)
    torch.manual_seed(0)
    named = initializer("xavier", None)(nn.Linear(2000, 1000)).weight.detach()
    assert torch.equal(default.float(), named)


def test_build_optimizer_keeps_the_original_adam_by_default():
    model = nn.Linear(4, 2)
    optimizer = build_optimizer(optimizer_args(), model)
    assert type(optimizer) is torch.optim.Adam
    group = optimizer.param_groups[0]
    assert group["lr"] == 1.2e-3 and group["weight_decay"] == 1e-4


def test_sgd_with_momentum_trains_and_pruned_weights_stay_zero():
    torch.manual_seed(0)
    model = initialize(archs.build("mnist", "fc1"))
    mask = prune_by_percentile(model, make_mask(model), 50)
    args = optimizer_args(optimizer="sgd", momentum=0.9, lr=0.01)
    optimizer = build_optimizer(args, model)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["momentum"] == 0.9
    before = [p.detach().clone() for p in prunable_weights(model)]
    epoch_alone(model, random_split(300), 60, optimizer, device_masks(model, mask))
    for param, old, layer_mask in zip(prunable_weights(model), before, mask.values(), strict=True):
        pruned = torch.from_numpy(layer_mask) == 0
        assert torch.all(param.detach()[pruned] == 0), "a pruned weight moved under SGD"
        assert not torch.equal(param.detach()[~pruned], old[~pruned]), "nothing trained"


def test_dropout_acts_on_every_layer_input_in_training_only():
    torch.manual_seed(0)
    model = add_input_dropout(initialize(archs.build("mnist", "fc1")), 0.5)
    inputs = torch.randn(8, 1, 28, 28)
    model.train()
    assert not torch.equal(model(inputs), model(inputs))
    model.eval()
    assert torch.equal(model(inputs), model(inputs))
    hooked = [m for m in model.modules() if m._forward_pre_hooks]
    assert len(hooked) == 3 and all(isinstance(m, nn.Linear) for m in hooked)
    first = hooked[0]
    model.train()
    seen = []
    first.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    model(torch.ones(4, 1, 28, 28))
    dropped = (seen[0] == 0).float().mean().item()
    assert 0.4 < dropped < 0.6 and set(seen[0].unique().tolist()) <= {0.0, 2.0}


def test_no_dropout_adds_no_hooks():
    model = add_input_dropout(archs.build("mnist", "fc1"), 0.0)
    assert not any(m._forward_pre_hooks for m in model.modules())
