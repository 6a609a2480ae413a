"""The training step on public APIs against the plain formulation, on every architecture, plain
(equal to the bit) and compiled (equal within what rounding does to each network): same
losses, same frozen zeros, same next masks. And no private torch name anywhere in the project."""

import ast
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import DenseNet

import archs
from lth.data import Split
from lth.initialization import initialize
from lth.pruning import make_mask, prunable_weights, prune_by_percentile
from lth.steps import COMPILE_CHOICES, batch_losses, use_compile
from lth.train import adam
from tests.conftest import ROOT
from tests.solo import alone, device_masks, epoch_alone, evaluate_alone
from tests.test_train import small_split

LR, WEIGHT_DECAY = 1e-3, 1e-4
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
OPTIONS = {"fclin": {"depth": 1}}  # the shorter net: the same layers, a test-sized count
# One network for each kind of layer the step meets, in the fast tier: a Linear stack, convolutions
# with max-pooling, BatchNorm with residual connections, DenseNet's concatenations (densenet121's
# own class at test size: `at_test_size`). Every network at full size runs in the slow tier.
KINDS_OF_LAYER = [
    ("mnist", "fc1", "full"),
    ("cifar10", "conv2", "full"),
    ("cifar10", "resnet20", "full"),
    ("cifar10", "densenet121", "test size"),
]
# Two epochs compiled against plain, for the networks where rounding stays small over several
# Adam steps on random data: a Linear stack, convolutions with pooling, fclin's whitening
# buffers. Every network is compiled for one step in test_compiled_step_computes_the_plain_step
# (deep nets' gradients on random images are too sensitive to rounding to compare over epochs:
# see there); alexnet, once here too, added a minute of compiling and nothing else (its
# Dropout has to drop nothing for the comparison).
COMPILED = {("mnist", "fc1"), ("mnist", "lenet5"), ("cifar10", "fclin")}


def one_network_per_class() -> list[tuple[str, str]]:
    """Every architecture of CIFAR-10, and the MNIST ones that are other networks (CIFAR-100's
    are CIFAR-10's classes with more outputs, or MNIST's ResNet-18 with three input channels)."""
    return [("cifar10", arch) for arch in archs.available("cifar10")] + [
        ("mnist", arch) for arch in archs.available("mnist") if arch != "fc1"
    ]


def tiered(cases: list[tuple], fast: list[tuple]) -> list:
    """`cases` without repeats as pytest parameters, those not in `fast` marked slow (the tier
    `make test-all` adds)."""
    unique = list(dict.fromkeys(cases))
    return [pytest.param(*c, marks=() if c in fast else pytest.mark.slow) for c in unique]


def build(dataset: str, arch: str, data) -> nn.Module:
    model = archs.build(dataset, arch, **OPTIONS.get(arch, {}))
    archs.fit_to_data(model, data)
    return initialize(model)


def plain_epoch(model, data, batch_size, optimizer, mask) -> list[float]:
    """The textbook loop: index a permutation per batch, read every loss on the host, zero the
    gradients of pruned weights by boolean indexing, step `optimizer`."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    order = torch.randperm(len(data.labels))
    losses = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad()
        loss = criterion(model(data.images[batch]), data.labels[batch])
        loss.backward()
        for param, layer_mask in zip(prunable_weights(model), mask.values(), strict=True):
            param.grad[torch.from_numpy(layer_mask) == 0] = 0
        optimizer.step()
        losses.append(loss.item() * len(batch))
    return losses


def without_dropout(model: nn.Module) -> nn.Module:
    """Compiled code draws its own dropout masks (same distribution, other numbers): for the
    comparison, Dropout modules drop nothing."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def assert_within_adam_steps(model: nn.Module, other: nn.Module, steps: int) -> None:
    """Every weight of `model` equals `other`'s within 1e-3, or within `steps` Adam steps of
    `LR`: where a gradient is as small as its rounding, Adam can step it by up to `LR` either
    way."""
    for (name, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        named = lambda m, name=name: f"{name}: {m}"  # noqa: E731
        torch.testing.assert_close(a, b, rtol=1e-3, atol=steps * LR, msg=named)


@pytest.fixture
def fresh_compiler():
    """Each test compiles from a clean slate, so no test sees another's cached graphs."""
    torch.compiler.reset()
    yield
    torch.compiler.reset()


@pytest.mark.parametrize(
    "dataset, arch, size, compiled",
    tiered(
        [(*kind, False) for kind in KINDS_OF_LAYER]
        + [(d, a, "full", False) for d, a in [("mnist", "fc1"), *one_network_per_class()]]
        + [(d, a, "full", True) for d, a in sorted(COMPILED)],
        fast=[(*kind, False) for kind in KINDS_OF_LAYER],
    ),
)
def test_step_trains_as_the_plain_formulation(dataset, arch, size, compiled, fresh_compiler):
    """`train_epoch` against the textbook loop, both stepping the optimiser `adam` makes: the
    formulation of the step (batches gathered on the device, the mask multiplied into the
    gradients, the loss summed on the device) is exact, so uncompiled the weights end equal to
    the bit. Compiled, the kernels round otherwise, and Adam, which divides each gradient by its
    own size, turns a rounding into up to a whole step of `lr`: the bounds below allow that.
    `test_adam_steps_as_the_per_tensor_loop` compares the fused optimiser with the per-tensor one.
    """
    data = small_split(12, SHAPES[dataset], classes=100 if dataset == "cifar100" else 10)
    torch.manual_seed(0)
    sized = at_test_size if size == "test size" else build
    fast = sized(dataset, arch, data)
    plain = sized(dataset, arch, data)
    plain.load_state_dict(fast.state_dict())
    if compiled:
        without_dropout(fast), without_dropout(plain)
    mask = prune_by_percentile(fast, make_mask(fast), 60)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            mask.values(), prune_by_percentile(plain, make_mask(plain), 60).values(), strict=True
        )
    )
    fast_optimizer = adam(fast.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    assert fast_optimizer.defaults["fused"]
    plain_optimizer = adam(plain.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    masks = device_masks(fast, mask)
    for epoch in range(2):  # batches of 8 and 4: the last one has a shape of its own
        torch.manual_seed(100 + epoch)
        fast_loss = epoch_alone(fast, data, 8, fast_optimizer, masks, compiled=compiled)
        torch.manual_seed(100 + epoch)
        plain_loss = sum(plain_epoch(plain, data, 8, plain_optimizer, mask)) / len(data)
        # float32 sums on the device against float64 sums on the host; compiled, BatchNorm
        # sums reorder
        assert fast_loss == pytest.approx(plain_loss, rel=1e-3 if compiled else 1e-6)
    if compiled:
        assert_within_adam_steps(fast, plain, steps=4)
        for (name, a), b in zip(fast.named_buffers(), plain.buffers(), strict=True):
            atol = max(1e-3, 1e-2 * float(b.abs().max())) if b.is_floating_point() else 0
            torch.testing.assert_close(
                a, b, rtol=1e-2, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
            )
    else:
        for (name, a), b in zip(
            fast.state_dict().items(), plain.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), f"{name} differs"
    for param, layer_mask in zip(prunable_weights(fast), mask.values(), strict=True):
        pruned = torch.from_numpy(layer_mask) == 0
        assert torch.all(param.detach()[pruned] == 0), "a pruned weight moved"
        assert torch.all(fast_optimizer.state[param]["exp_avg"][pruned] == 0)
    # The next level's masks: the same, but compiled for weights at the cut whose magnitudes
    # differ by the rounding Adam amplified (above): at most 0.1% of the weights.
    next_fast = prune_by_percentile(fast, mask, 30)
    next_plain = prune_by_percentile(plain, mask, 30)
    differing = sum(
        int((a != b).sum()) for a, b in zip(next_fast.values(), next_plain.values(), strict=True)
    )
    assert differing <= (1e-3 if compiled else 0) * sum(m.size for m in mask.values())


@pytest.mark.parametrize(("dataset", "arch"), [("mnist", "fc1"), ("cifar10", "conv2")])
def test_adam_steps_as_the_per_tensor_loop(dataset, arch):
    """`adam` is torch's Adam with the fused kernel: its steps equal the per-tensor loop's
    (`foreach=False`) within what Adam makes of float rounding. Adam divides each gradient by
    the root of its running square, so where a gradient is as small as its rounding the two
    kernels can step a weight differently by up to `lr`; in deep BatchNorm networks such
    weights change the loss itself (vgg19, two epochs on 12 random images: 2e-3 apart on one
    machine), which is why the test above gives both loops the same optimiser."""
    data = small_split(12, SHAPES[dataset])
    torch.manual_seed(0)
    fused = build(dataset, arch, data)
    per_tensor = copy.deepcopy(fused)
    mask = prune_by_percentile(fused, make_mask(fused), 60)
    prune_by_percentile(per_tensor, make_mask(per_tensor), 60)
    fused_optimizer = adam(fused.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    assert isinstance(fused_optimizer, torch.optim.Adam)
    assert fused_optimizer.defaults["fused"]
    assert (fused_optimizer.defaults["lr"], fused_optimizer.defaults["weight_decay"]) == (
        LR,
        WEIGHT_DECAY,
    )
    per_tensor_optimizer = torch.optim.Adam(
        per_tensor.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, foreach=False
    )
    for epoch in range(2):
        losses = []
        for model, optimizer in ((fused, fused_optimizer), (per_tensor, per_tensor_optimizer)):
            torch.manual_seed(100 + epoch)
            losses.append(sum(plain_epoch(model, data, 8, optimizer, mask)) / len(data))
        assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    assert_within_adam_steps(fused, per_tensor, steps=4)


def at_test_size(dataset: str, arch: str, data) -> nn.Module:
    """The network of the pair, but densenet121 as its own class at test size, one layer per
    dense block: its concatenations and BatchNorms at a fraction of the cost (compiling the
    whole network takes 400 s on a 2-core CI machine, every other network 10 to 65 s). The full
    network's step is compared uncompiled in the slow tier, to the bit."""
    if arch != "densenet121":
        return build(dataset, arch, data)
    full = archs.build(dataset, arch)
    small = DenseNet(block_config=(1, 1, 1, 1), num_classes=full.classifier.out_features)
    assert type(small) is type(full)
    return initialize(small)


def one_sgd_step(model, data, mask, compiled: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of one `train_epoch` step (SGD, lr 0.1, the whole split as one batch) on a copy
    of `model`, and how the step changed each entry of its state dict."""
    model = copy.deepcopy(model)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    masks = device_masks(model, mask)
    loss = epoch_alone(model, data, len(data), optimizer, masks, compiled=compiled)
    for param, layer_mask in zip(prunable_weights(model), mask.values(), strict=True):
        assert torch.all(param.detach()[torch.from_numpy(layer_mask) == 0] == 0)
    changes = {
        name: (value - before[name]).double()
        for name, value in model.state_dict().items()
        if value.is_floating_point()
    }
    return loss, changes


@pytest.mark.parametrize(
    "dataset, arch", tiered([("mnist", "fc1"), *one_network_per_class()], fast=[("mnist", "fc1")])
)
def test_compiled_step_computes_the_plain_step(dataset, arch, fresh_compiler):
    """One training step through `torch.compile` (`--compile on`) against the plain step, on
    every network: the same loss, the same change of every weight and BatchNorm statistic
    within rounding, pruned weights exactly zero.

    Compiled kernels round otherwise, and how much that moves a step depends on the network:
    the gradient of a ReLU network switches where a unit's input crosses zero, and in a deep
    one on a few random images some unit always sits at zero within rounding. vgg19's plain
    float32 gradient on 8 images changes by up to 2.4% when the images are multiplied by
    1 + 1e-6 noise, and is 2.4% off its float64 gradient. So the test measures that
    sensitivity on the spot, the plain step on three such perturbed copies of the images, and
    lets the compiled step differ from the plain one by four times as much, plus 1e-3 of the
    change itself and 1e-6 of the tensor's size (a change at float32's rounding of the weight,
    as in a convolution's bias before BatchNorm, whose gradient is zero). A compiled step that
    trained other weights, missed a gradient, or left the BatchNorm statistics alone would be
    off by the whole change.
    """
    data = small_split(8, SHAPES[dataset])
    torch.manual_seed(0)
    model = without_dropout(at_test_size(dataset, arch, data))
    mask = prune_by_percentile(model, make_mask(model), 60)
    compiled_loss, compiled = one_sgd_step(model, data, mask, compiled=True)
    plain_loss, plain = one_sgd_step(model, data, mask, compiled=False)
    assert compiled_loss == pytest.approx(plain_loss, rel=1e-4)  # the forward pass: rounding
    spread = dict.fromkeys(plain, 0.0)
    for seed in range(3):
        noise = torch.randn(data.images.shape, generator=torch.Generator().manual_seed(seed))
        nudged = Split(images=data.images * (1 + 1e-6 * noise), labels=data.labels)
        for name, change in one_sgd_step(model, nudged, mask, compiled=False)[1].items():
            spread[name] = max(spread[name], float((change - plain[name]).norm()))
    size = {name: float(value.double().norm()) for name, value in model.state_dict().items()}
    for name, change in plain.items():
        off = float((compiled[name] - change).norm())
        allowed = 4 * spread[name] + 1e-3 * float(change.norm()) + 1e-6 * size[name]
        assert off <= allowed, f"{name}: compiled step {off:.3g} off the plain one, {allowed=:.3g}"


@pytest.mark.slow
def test_compiled_training_compiles_once_per_batch_shape(fresh_compiler):
    """After the first epoch (a full and a last, smaller batch), testing in eval mode, pruning,
    a new optimiser and criterion (a new level) and more epochs reuse the compiled graphs."""
    data = small_split(50, (1, 28, 28))
    torch.manual_seed(0)
    model = initialize(archs.build("mnist", "fc1"))
    mask = make_mask(model)
    optimizer = adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    epoch_alone(model, data, 20, optimizer, device_masks(model, mask), compiled=True)
    with torch.compiler.set_stance("fail_on_recompile"):
        evaluate_alone(model, data, 25)
        mask = prune_by_percentile(model, mask, 50)
        optimizer = adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        masks = device_masks(model, mask)
        for _ in range(2):
            epoch_alone(model, data, 20, optimizer, masks, compiled=True)
    for param, layer_mask in zip(prunable_weights(model), mask.values(), strict=True):
        assert torch.all(param.detach()[torch.from_numpy(layer_mask) == 0] == 0)


@pytest.mark.slow
def test_a_new_batch_shape_is_a_recompile(fresh_compiler):
    """The check above can fail: a batch size not seen before needs a graph of its own."""
    model = initialize(archs.build("mnist", "fc1")).train()
    loss = batch_losses(alone(model), compiled=True)
    data = small_split(30, (1, 28, 28))
    loss(data.images[None, :20], data.labels[None, :20])
    with torch.compiler.set_stance("fail_on_recompile"), pytest.raises(RuntimeError):
        loss(data.images[None, :30], data.labels[None, :30])


def test_compile_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    # auto: nowhere yet (the CPU measured not to pay back, CUDA not measured)
    assert [use_compile(choice, cpu) for choice in COMPILE_CHOICES] == [False, True, False]
    assert [use_compile(choice, cuda) for choice in COMPILE_CHOICES] == [False, True, False]
    with pytest.raises(ValueError):
        use_compile("yes", cpu)


# --- no private torch names -------------------------------------------------------------------

# A private-API path, if one is ever kept for a measured reason, lives in this one module
# (with a public fallback); none is kept now.
PRIVATE_TORCH_ALLOWED: set[str] = set()


def private_torch_uses(source: str) -> list[str]:
    """Private torch names a module's source uses: `torch._x` (at any depth, also through an
    alias of torch or of anything imported from it), `torch.ops` (aten's operators), and
    imports of either; each named up to its first private part."""
    tree = ast.parse(source)
    aliases = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                parts = name.name.split(".")
                if parts[0] == "torch":
                    aliases.add(name.asname or parts[0])
                    found.append(up_to_private(parts))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            for name in node.names:
                found.append(up_to_private([*node.module.split("."), name.name]))
                aliases.add(name.asname or name.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = attribute_chain(node)
            if chain and chain[0] in aliases:
                found.append(up_to_private(chain))
    return sorted({name for name in found if name})


def up_to_private(parts: list[str]) -> str:
    """The dotted name up to its first private part; "" when no part is private."""
    for i, part in enumerate(parts):
        if i > 0 and is_private(part):
            return ".".join(parts[: i + 1])
    return ""


def is_private(name: str) -> bool:
    return name == "ops" or (name.startswith("_") and not name.startswith("__"))


def attribute_chain(node: ast.Attribute) -> list[str]:
    """`a.b.c` as ["a", "b", "c"]; [] when it does not start at a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else []


def project_modules() -> list:
    skip = {".venv", ".git", "results", "build"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts))


def test_no_private_torch_name_outside_the_one_allowed_module():
    uses = {}
    for path in project_modules():
        name = str(path.relative_to(ROOT))
        found = private_torch_uses(path.read_text())
        if found and name not in PRIVATE_TORCH_ALLOWED:
            uses[name] = found
    assert uses == {}
    assert any(p.name == "train.py" for p in project_modules()), "the scan sees the project"


def test_the_scan_finds_private_torch_names():
    assert private_torch_uses("import torch\ntorch._foreach_mul_(a, b)") == ["torch._foreach_mul_"]
    assert private_torch_uses("import torch as t\nt.ops.aten.mm(a, b)") == ["t.ops"]
    assert private_torch_uses("import torch._dynamo") == ["torch._dynamo"]
    assert private_torch_uses("from torch._dynamo import config") == ["torch._dynamo"]
    assert private_torch_uses("from torch import _fused_adam_") == ["torch._fused_adam_"]
    assert private_torch_uses("from torch import nn\nnn._reduction.get_enum(1)") == [
        "nn._reduction"
    ]
    assert private_torch_uses("import torch\ntorch.__version__\nmodel._private") == []
    assert private_torch_uses("import torch\ntorch.compiler.reset()") == []
