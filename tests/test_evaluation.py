"""Evaluation runs the model in eval mode: BatchNorm uses its running statistics, dropout drops
nothing, and measuring changes nothing in the model.

Each case labels its images with the eval-mode model's own predictions, so that the eval-mode
accuracy is 100% by construction, and first checks that the same model in training mode (batch
statistics, random drops) gets most of them wrong: an `evaluate` or `loss_and_accuracy` that
left the model in training mode would measure far less than 100%.
"""

import copy

import pytest
import torch
from torch import nn

import archs
from lth.data import Split
from lth.initialization import initialize
from lth.train import add_input_dropout
from tests.solo import evaluate_alone, measures_alone

COUNT = 200


def batchnorm_network() -> nn.Module:
    """ResNet-20, BatchNorm after every convolution, with random scales, shifts and running
    statistics (as after training on other data), far from the shifted images' own statistics."""
    model = initialize(archs.build("cifar10", "resnet20"))
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for values in (module.weight.data, module.bias.data, module.running_mean):
                values.copy_(torch.randn(values.shape, generator=generator))
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


def dropout_network() -> nn.Module:
    """fc1 with `--dropout 0.5` on every layer's input."""
    return add_input_dropout(initialize(archs.build("mnist", "fc1")), 0.5)


def labelled_by_eval_mode(model: nn.Module, shape: tuple[int, ...], shift: float) -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(COUNT, *shape, generator=generator) + shift
    model.eval()
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    return Split(images, labels)


def train_mode_agreement(model: nn.Module, split: Split) -> float:
    """Percent of the split that the model in training mode predicts as its labels (in batches
    of evaluate's size, on a copy, so that BatchNorm's running statistics stay untouched)."""
    training = copy.deepcopy(model).train()
    with torch.no_grad():
        batches = [split.images[i : i + 1000] for i in range(0, len(split), 1000)]
        predicted = torch.cat([training(batch).argmax(dim=1) for batch in batches])
    return 100.0 * (predicted == split.labels).float().mean().item()


CASES = {
    "batchnorm": (batchnorm_network, (3, 32, 32), 3.0),
    "dropout": (dropout_network, (1, 28, 28), 0.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("measure", ["evaluate", "loss_and_accuracy"])
def test_evaluation_is_in_eval_mode_and_changes_nothing(case, measure):
    torch.manual_seed(0)
    build, shape, shift = CASES[case]
    model = build()
    split = labelled_by_eval_mode(model, shape, shift)
    assert train_mode_agreement(model, split) < 60, "training mode must tell the cases apart"
    model.train()  # as training leaves it
    before = {name: value.clone() for name, value in model.state_dict().items()}
    if measure == "evaluate":
        accuracy = evaluate_alone(model, split)
    else:
        loss, accuracy = measures_alone(model, split)
        with torch.no_grad():
            expected = nn.functional.cross_entropy(model.eval()(split.images), split.labels)
        assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert accuracy == 100.0
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before), "running stats moved"
