"""The architecture registry: every dataset/arch pair trains, bad pairs fail clearly."""

import importlib
import importlib.util
import math
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import archs
from utils import UserError

COMMON = {"fc1", "lenet5", "alexnet", "vgg16", "resnet18"}
EXPECTED = {
    "mnist": COMMON,
    "fashionmnist": COMMON,
    "cifar10": COMMON | {"densenet121", "fclin"},
    "cifar100": COMMON | {"fclin"},
}
SHAPES = {  # dataset -> (input shape, classes)
    "mnist": ((1, 28, 28), 10),
    "fashionmnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}
PAIRS = [(dataset, arch) for dataset, names in EXPECTED.items() for arch in sorted(names)]


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_available_lists_exactly_the_expected_archs(dataset: str) -> None:
    assert set(archs.available(dataset)) == EXPECTED[dataset]


@pytest.mark.parametrize(("dataset", "arch"), PAIRS, ids=[f"{d}-{a}" for d, a in PAIRS])
def test_forward_and_backward(dataset: str, arch: str) -> None:
    torch.manual_seed(0)
    shape, classes = SHAPES[dataset]
    model = archs.build(dataset, arch)
    model.train()
    output = model(torch.randn(2, *shape))
    assert output.shape == (2, classes)
    nn.functional.cross_entropy(output, torch.tensor([0, classes - 1])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_fc1_layers(dataset: str) -> None:
    shape, classes = SHAPES[dataset]
    model = archs.build(dataset, "fc1")
    kinds = [type(m) for m in model.modules() if not list(m.children())]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (math.prod(shape), 300),
        (300, 100),
        (100, classes),
    ]


def test_bad_arch_for_dataset() -> None:
    with pytest.raises(UserError) as caught:
        archs.build("mnist", "densenet121")
    assert str(caught.value) == (
        "--arch_type densenet121 is not available for --dataset mnist;"
        " choose one of: alexnet, fc1, lenet5, resnet18, vgg16"
    )


@pytest.mark.parametrize("call", [archs.available, lambda d: archs.build(d, "fc1")])
def test_unknown_dataset(call: Callable[[str], object]) -> None:
    with pytest.raises(UserError) as caught:
        call("foo")
    assert str(caught.value) == (
        "--dataset foo is not supported; choose one of: cifar10, cifar100, fashionmnist, mnist"
    )


@pytest.fixture
def extra_module() -> Iterator[str]:
    """A throwaway module in archs/mnist/, removed (with its bytecode) whatever the test does."""
    name = f"tmp_arch_{uuid.uuid4().hex[:12]}"
    path = Path(archs.__file__).parent / "mnist" / f"{name}.py"
    path.write_text(
        "from torch import nn\n\n"
        "def tiny() -> nn.Module:\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))\n\n"
        'ARCHS = {"tiny_test_net": tiny}\n'
    )
    try:
        importlib.invalidate_caches()
        yield name
    finally:
        path.unlink(missing_ok=True)
        Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
        sys.modules.pop(f"archs.mnist.{name}", None)
        importlib.invalidate_caches()


def test_adding_a_file_adds_a_choice(extra_module: str) -> None:
    choices = archs.available("mnist")
    assert set(choices) == EXPECTED["mnist"] | {"tiny_test_net"}
    assert archs.build("fashionmnist", "tiny_test_net")(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert "tiny_test_net" not in archs.available("cifar10")
