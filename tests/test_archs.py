"""The architecture registry: every pair builds the original's network (module tree, state_dict
keys and shapes, parameter count, forward computation) or the paper's, and trains one step.

tests/original_networks/<family>_<arch>.txt are the original runner's networks as measured from
its own files (`print(model)`, `state_dict` keys and shapes, parameter count).
"""

import importlib
import importlib.util
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import archs
from lth.errors import UserError
from lth.pruning import prunable_weights

ORIGINAL = {"fc1", "lenet5", "alexnet", "vgg16", "resnet18"}
PAPER = {"conv2", "conv4", "conv6", "vgg19", "resnet20"}
EXPECTED = {
    "mnist": ORIGINAL,
    "fashionmnist": ORIGINAL,
    "cifar10": ORIGINAL | {"densenet121", "fclin"} | PAPER,
    "cifar100": ORIGINAL | {"fclin"} | PAPER,
}
SHAPES = {  # family -> (input shape, classes)
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}
SPEC_DIR = Path(__file__).parent / "original_networks"
ORIGINAL_PAIRS = sorted(tuple(p.stem.split("_")) for p in SPEC_DIR.glob("*.txt"))
PAPER_PAIRS = [(family, arch) for family in ("cifar10", "cifar100") for arch in sorted(PAPER)]


@dataclass
class Spec:
    modules: list[str]  # print(model), without the first line (the class's own name)
    keys: list[tuple[str, tuple[int, ...]]]
    parameters: int


def read_spec(family: str, arch: str) -> Spec:
    text = (SPEC_DIR / f"{family}_{arch}.txt").read_text()
    parameters = int(re.search(r"# parameters: ([\d,]+)", text)[1].replace(",", ""))
    modules = text.split("## modules (repr)\n")[1].split("\n\n## state_dict")[0]
    keys = []
    for line in text.split("## state_dict (key, shape)\n")[1].strip().splitlines():
        key, shape = line.split(" ", 1)
        keys.append((key, tuple(int(n) for n in shape.strip("(,)").split(",") if n)))
    return Spec(modules.splitlines()[1:], keys, parameters)


def fixed_spec(family: str, arch: str) -> Spec:
    """The spec with the two documented fixes applied, nothing else changed."""
    spec = read_spec(family, arch)
    if (family, arch) == ("mnist", "resnet18"):  # built with the data set's 10 outputs, not 1000
        spec.modules = [
            line.replace("out_features=1000", "out_features=10") for line in spec.modules
        ]
        spec.keys = [(k, (10, *s[1:]) if k.startswith("fc.") else s) for k, s in spec.keys]
        spec.parameters -= (1000 - 10) * (512 + 1)
    if (family, arch) == ("mnist", "vgg16"):  # the fifth pool rounds up; then pooling to 7x7
        fifth_pool = max(i for i, line in enumerate(spec.modules) if "MaxPool2d" in line)
        spec.modules[fifth_pool] = spec.modules[fifth_pool].replace(
            "ceil_mode=False", "ceil_mode=True"
        )
        dense1 = next(i for i, line in enumerate(spec.modules) if "(dense1)" in line)
        spec.modules.insert(dense1, "  (avgpool): AdaptiveAvgPool2d(output_size=(7, 7))")
    return spec


def resnet_block(block: nn.Module, x: Tensor) -> Tensor:
    """A BasicBlock's forward as the spec says: conv-BN-ReLU-conv-BN, plus the shortcut, ReLU."""
    out = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    if hasattr(block, "shortcut"):
        return F.relu(out + block.shortcut(x))
    return F.relu(out + (block.downsample(x) if block.downsample is not None else x))


def stages(model: nn.Module, x: Tensor) -> Tensor:
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            x = resnet_block(block, x)
    return x


def reference_forward(family: str, arch: str, m: nn.Module, x: Tensor) -> Tensor:
    """The original's forward computation, written out from its description (eval mode)."""
    flat = torch.flatten
    if arch == "fc1":
        w = [m.classifier[i] for i in (0, 2, 4)]
        h = F.relu(F.linear(flat(x, 1), w[0].weight, w[0].bias))
        return F.linear(F.relu(F.linear(h, w[1].weight, w[1].bias)), w[2].weight, w[2].bias)
    if arch == "lenet5" and family == "mnist":
        conv1, conv2 = m.features[0], m.features[2]
        h = F.relu(F.conv2d(x, conv1.weight, conv1.bias, padding=1))
        h = F.max_pool2d(F.relu(F.conv2d(h, conv2.weight, conv2.bias, padding=1)), 2)
        fc = [m.classifier[i] for i in (0, 2, 4)]
        h = F.relu(F.linear(flat(h, 1), fc[0].weight, fc[0].bias))
        return F.linear(F.relu(F.linear(h, fc[1].weight, fc[1].bias)), fc[2].weight, fc[2].bias)
    if arch == "lenet5":
        h = F.max_pool2d(F.relu(F.conv2d(x, m.conv1.weight, m.conv1.bias)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, m.conv2.weight, m.conv2.bias)), 2)
        h = F.relu(F.linear(flat(h, 1), m.fc1.weight, m.fc1.bias))
        return F.linear(F.relu(F.linear(h, m.fc2.weight, m.fc2.bias)), m.fc3.weight, m.fc3.bias)
    if arch == "alexnet":
        return m.classifier(flat(F.adaptive_avg_pool2d(m.features(x), 6), 1))
    if arch == "vgg16" and family == "mnist":
        h = x
        for index, block in enumerate(m.features):
            for conv in block[:-2]:
                h = conv(h)
            h = F.max_pool2d(F.relu(h), 2, ceil_mode=index == 4)
        h = flat(F.adaptive_avg_pool2d(h, 7), 1)
        return m.dense3(F.relu(m.dense2(F.relu(m.dense1(h)))))
    if arch == "vgg16":
        return m.classifier(flat(F.adaptive_avg_pool2d(m.features(x), 7), 1))
    if arch == "resnet18" and family == "cifar10":
        h = stages(m, F.relu(m.bn1(m.conv1(x))))
        return m.linear(flat(F.avg_pool2d(h, 4), 1))
    if arch == "resnet18":
        h = F.max_pool2d(F.relu(m.bn1(m.conv1(x))), 3, stride=2, padding=1)
        return m.fc(flat(F.adaptive_avg_pool2d(stages(m, h), 1), 1))
    if arch == "densenet121":
        return m.classifier(flat(F.adaptive_avg_pool2d(F.relu(m.features(x)), 1), 1))
    raise AssertionError(f"no reference forward for {family} {arch}")


def forward_and_backward(model: nn.Module, family: str) -> None:
    """One training step's forward and backward at the data set's input size (batch 2: BatchNorm
    needs two values per channel); every parameter gets a finite gradient."""
    shape, classes = SHAPES[family]
    model.train()
    output = model(torch.randn(2, *shape))
    assert output.shape == (2, classes)
    F.cross_entropy(output, torch.tensor([0, classes - 1])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_available_lists_exactly_the_expected_archs(dataset: str) -> None:
    assert set(archs.available(dataset)) == EXPECTED[dataset]


def test_fashionmnist_builds_the_mnist_family() -> None:
    assert archs.available("fashionmnist") == archs.available("mnist")


def test_every_original_pair_has_its_spec() -> None:
    originals = {(f, a) for f in SHAPES for a in archs.available(f) if a in ORIGINAL}
    assert originals | {("cifar10", "densenet121")} == set(ORIGINAL_PAIRS)


# A real forward and backward at full size costs seconds for the largest networks (alexnet's 57M,
# vgg16's 134M parameters): in the fast tier only below this size, the rest in the slow tier. Their
# layout is checked in the fast tier on the meta device, where building them allocates nothing.
FAST_FORWARD_PARAMETERS = 20_000_000


def by_size(pairs: list[tuple[str, str]], parameters) -> list:
    """`pairs` as pytest parameters, those of `parameters(pair)` at least FAST_FORWARD_PARAMETERS
    marked slow."""
    return [
        pytest.param(
            *pair,
            id="-".join(pair),
            marks=() if parameters(pair) < FAST_FORWARD_PARAMETERS else pytest.mark.slow,
        )
        for pair in pairs
    ]


@pytest.mark.parametrize(
    ("family", "arch"), ORIGINAL_PAIRS, ids=["-".join(p) for p in ORIGINAL_PAIRS]
)
def test_original_network_layout(family: str, arch: str) -> None:
    """Module tree, keys and shapes (in order: the masks follow it) and parameter count are the
    original's; built on the meta device, so even vgg16 costs nothing."""
    spec = fixed_spec(family, arch)
    with torch.device("meta"):
        model = archs.build(family, arch)
    assert repr(model).splitlines()[1:] == spec.modules
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == spec.keys
    assert sum(p.numel() for p in model.parameters()) == spec.parameters


@pytest.mark.parametrize(
    ("family", "arch"), by_size(ORIGINAL_PAIRS, lambda pair: fixed_spec(*pair).parameters)
)
def test_original_network_computes(family: str, arch: str) -> None:
    """The forward computation is the original's; then one training step runs."""
    torch.manual_seed(0)
    model = archs.build(family, arch)
    model.eval()
    x = torch.randn(2, *SHAPES[family][0])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(family, arch, model, x))
    forward_and_backward(model, family)


# Conv weights (the 1x1 shortcuts included) on CIFAR-10; the paper's Figure 2 says 38K, 260K,
# 1.1M, and 270K for ResNet-20 (its "Resnet-18"); VGG-19's 20.0M weights are these and its 5,120
# linear ones.
PAPER_CONV_WEIGHTS = {
    "conv2": 9 * (3 * 64 + 64 * 64),  # 38,592
    "conv4": 9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128),  # 259,776
    "conv6": 9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 256 * 256),  # 1,144,512
    "vgg19": 9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 3 * 256 * 256)
    + 9 * (256 * 512 + 7 * 512 * 512),  # 20,018,880
    "resnet20": 9 * (3 * 16 + 6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64)
    + 16 * 32
    + 32 * 64,  # 270,256
}
PAPER_LINEAR = {  # (inputs, outputs) of the Linear layers
    "conv2": [(64 * 16 * 16, 256), (256, 256), (256, None)],
    "conv4": [(128 * 8 * 8, 256), (256, 256), (256, None)],
    "conv6": [(256 * 4 * 4, 256), (256, 256), (256, None)],
    "vgg19": [(512, None)],
    "resnet20": [(64, None)],
}


def openlth_resnet20_keys() -> list[str]:
    """OpenLTH's `cifar_resnet_20` parameter names (conv, bn, blocks.0-8, fc)."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv.weight", *(f"bn.{b}" for b in bn)]
    for i in range(9):
        keys += [f"blocks.{i}.conv1.weight", *(f"blocks.{i}.bn1.{b}" for b in bn)]
        keys += [f"blocks.{i}.conv2.weight", *(f"blocks.{i}.bn2.{b}" for b in bn)]
        if i in (3, 6):
            keys += [f"blocks.{i}.shortcut.0.weight", *(f"blocks.{i}.shortcut.1.{b}" for b in bn)]
    return [*keys, "fc.weight", "fc.bias"]


def openlth_vgg19_keys() -> list[str]:
    """OpenLTH's `cifar_vgg_19` parameter names: layers.<i>.conv/bn (max-pools at 2, 5, 10, 15), fc."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = []
    for i in range(20):
        if i not in (2, 5, 10, 15):
            keys += [f"layers.{i}.conv.weight", f"layers.{i}.conv.bias"]
            keys += [f"layers.{i}.bn.{b}" for b in bn]
    return [*keys, "fc.weight", "fc.bias"]


@pytest.mark.parametrize(("family", "arch"), PAPER_PAIRS, ids=["-".join(p) for p in PAPER_PAIRS])
def test_paper_network(family: str, arch: str) -> None:
    classes = SHAPES[family][1]
    torch.manual_seed(0)
    model = archs.build(family, arch)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size in ((3, 3), (1, 1)) for c in convs)
    assert all(c.padding == (c.kernel_size[0] // 2,) * 2 for c in convs), "'same' convolutions"
    assert sum(c.weight.numel() for c in convs) == PAPER_CONV_WEIGHTS[arch]
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(n, out or classes) for n, out in PAPER_LINEAR[arch]]
    assert len(prunable_weights(model)) == len(convs) + len(linears)
    keys = list(model.state_dict())
    if arch.startswith("conv"):
        pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
        assert len(pools) == len(convs) // 2, "a 2x2 max-pool after each pair"
        assert keys[-6:] == [f"classifier.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    if arch == "vgg19":
        assert keys == openlth_vgg19_keys()
        assert len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]) == 16
    if arch == "resnet20":
        assert keys == openlth_resnet20_keys()
    forward_and_backward(model, family)


@pytest.mark.parametrize(("arch", "count"), [("resnet20", 272_474), ("vgg19", 20_040_522)])
def test_openlth_networks_parameter_counts(arch: str, count: int) -> None:
    """All parameters on CIFAR-10: the weights above, the linear and convolution biases (VGG's
    convolutions have them), two per BatchNorm channel."""
    with torch.device("meta"):
        model = archs.build("cifar10", arch)
    assert sum(p.numel() for p in model.parameters()) == count


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
