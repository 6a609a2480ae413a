"""Trials stacked into one model (lth/stack.py) against the same trials trained alone.

Three networks, one of each kind of layer the stack meets, at test size: fc1 itself (the Linear
chain, on the batched-matmul path), the Conv-2 class (`ConvNet`, convolutions and max-pooling,
its 64-64 convs and 256-256 classifier) on 8x8 images, and the ResNet-20 class (BatchNorm,
residual connections) at width 4 with one block per stage on 8x8 images; the last two take the
vmap path.

Float rounding: a stack of k > 1 trials computes each trial's products in other kernels than a
solo model does (batched matmuls, grouped convolutions under vmap, which block and sum in
another order), so results agree within rounding, not to the bit. Under SGD the difference
stays of the order of the weights' last bits. Under Adam an element whose gradient is itself
of the order of rounding (a nearly dead unit) may step by up to the learning rate in either
direction, so the bound there is one step's size for the worst element, and the last bits for
all but a few in ten thousand.
"""

import argparse
import copy

import numpy as np
import pytest
import torch
from torch import nn

import archs
from archs.models.convnet import CONV2, ConvNet
from archs.models.resnet import ResNet20
from lth import stack, train
from lth.data import Split
from lth.initialization import initialize
from lth.pruning import make_mask, prunable, prune_by_percentile
from lth.record import TrialRandom
from lth.steps import trial_losses
from lth.train import add_input_dropout, build_optimizer

K = 3
BATCH = 16
COUNT = 40  # 3 steps an epoch, the last one smaller (8)
NETS = {
    "fc1": (lambda: archs.build("mnist", "fc1"), (1, 28, 28)),
    "conv2": (lambda: ConvNet((3, 8, 8), 10, CONV2), (3, 8, 8)),
    "resnet20": (lambda: ResNet20(3, 10, width=4, blocks=1), (3, 8, 8)),
}
PATHS = {"fc1": "bmm", "conv2": "loop", "resnet20": "loop"}  # auto, K > 1, on the CPU
# every net on its auto path, and the conv nets on vmap too (what auto picks on a GPU)
NET_PATHS = [(net, "auto") for net in ("fc1", "conv2", "resnet20")]
NET_PATHS += [("conv2", "vmap"), ("resnet20", "vmap")]
OPTIMIZERS = {
    "adam": argparse.Namespace(optimizer="adam", lr=1e-3, momentum=0.0),
    "sgd": argparse.Namespace(optimizer="sgd", lr=0.05, momentum=0.9),
}
LAST_BITS = dict(rtol=1e-5, atol=1e-6)  # a few float32 ulps of weights of order 1


def pixels(count: int, shape: tuple[int, ...], seed: int = 0) -> Split:
    """uint8 pixels normalised batch by batch, as loaded data are."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    channels = shape[0]
    mean, std = torch.full((1, channels, 1, 1), 0.3), torch.full((1, channels, 1, 1), 0.35)
    return Split(images, labels, mean, std)


def trial_modules(net: str, prune: bool = True) -> tuple[list[nn.Module], list[dict]]:
    """K trials, each initialised from its own seed (the project's Xavier scheme) and, with
    `prune`, pruned by magnitude at its own rate (20, 40, 60 %): K different masks."""
    make = NETS[net][0]
    modules, masks = [], []
    for trial in range(K):
        torch.manual_seed(trial)
        module = initialize(make())
        mask = make_mask(module)
        if prune:
            mask = prune_by_percentile(module, mask, 20.0 * (trial + 1))
        modules.append(module)
        masks.append(mask)
    return modules, masks


def generators(seeds) -> list[TrialRandom]:
    return [TrialRandom(seed) for seed in seeds]


def order_seed(trial: int) -> int:
    return 100 + trial


def train_stacked(modules, masks, args, epochs, data, path="auto", trials=None):
    """Train the modules (copies) as one stack; return the stack and each epoch's losses."""
    trials = list(range(len(modules))) if trials is None else trials
    stacked = stack.StackedModel([copy.deepcopy(m) for m in modules], path=path)
    optimizer = build_optimizer(args, stacked)
    batch = train.Trials(
        stack.stack_masks(stacked, masks), generators(order_seed(t) for t in trials)
    )
    stepper = train.Stepper(optimizer)
    losses = [
        train.train_epoch(stacked, data, train.Batches(BATCH), batch, stepper)
        for _ in range(epochs)
    ]
    return stacked, losses


def train_solo(module, mask, args, epochs, data, trial):
    """The textbook loop on the module itself: its permutations drawn from the global generator
    seeded as the trial's own generator is, the pruned weights' gradients zeroed by hand."""
    module = copy.deepcopy(module)
    optimizer = build_optimizer(args, module)
    weights = prunable(module)
    torch.manual_seed(order_seed(trial))
    losses = []
    for _ in range(epochs):
        module.train()
        order, total = torch.randperm(len(data)), 0.0
        for start in range(0, len(data), BATCH):
            x, y = data.batch(order[start : start + BATCH])
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(module(x), y)
            loss.backward()
            for name, weight in weights.items():
                weight.grad.mul_(torch.from_numpy(mask[name]))
            optimizer.step()
            total += loss.item() * len(y)
        losses.append(total / len(data))
    return module, losses


@torch.no_grad()
def solo_measures(module, data, batch_size):
    """The textbook test pass: (mean loss, accuracy in percent) of the module in eval mode."""
    module.eval()
    logits = torch.cat(
        [module(data.between(s, s + batch_size)[0]) for s in range(0, len(data), batch_size)]
    )
    loss = nn.functional.cross_entropy(logits, data.labels).item()
    return loss, 100.0 * (logits.argmax(1) == data.labels).sum().item() / len(data)


def assert_states_close(got: dict, expected: dict, optimizer: str) -> None:
    """Equal within rounding (the module docstring's bounds): SGD every element to its last
    bits; Adam the worst element within one step (the learning rate), and all but one in ten
    thousand of the state's elements (at least one may differ) to their last bits."""
    assert list(got) == list(expected)
    far, elements = 0, 0
    for name, value in expected.items():
        if not value.is_floating_point():  # BatchNorm's num_batches_tracked
            assert torch.equal(got[name], value), name
            continue
        if optimizer == "sgd":
            torch.testing.assert_close(got[name], value, **LAST_BITS, msg=name)
            continue
        difference = (got[name] - value).abs()
        assert difference.max() <= OPTIMIZERS["adam"].lr, (name, difference.max())
        far += int((difference > LAST_BITS["atol"] + LAST_BITS["rtol"] * value.abs()).sum())
        elements += value.numel()
    assert far <= max(1, elements // 10_000), (far, elements)


# --- (1) a stack starts as its trials ------------------------------------------------------


@pytest.mark.parametrize("net", NETS)
def test_each_trial_of_a_stack_starts_bit_identical_to_its_module(net):
    modules, _ = trial_modules(net, prune=False)
    stacked = stack.StackedModel(modules)
    assert stacked.path == PATHS[net]
    assert stacked.trials == K
    for name, p in stacked.params.items():
        assert p.shape == (K, *modules[0].get_parameter(name).shape)
    for i, module in enumerate(modules):
        state = stacked.trial_state(i)
        expected = module.state_dict()
        assert list(state) == list(expected)
        for name in expected:
            assert torch.equal(state[name], expected[name]), name
        solo = NETS[net][0]()
        solo.load_state_dict(state)  # loadable into the solo module, strictly


def test_a_stack_copies_its_trials_and_writes_one_trial_at_a_time():
    modules, _ = trial_modules("resnet20", prune=False)
    before = [copy.deepcopy(m.state_dict()) for m in modules]
    stacked = stack.StackedModel(modules)
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(1.0)
    for module, state in zip(modules, before, strict=True):  # the trials' own modules untouched
        assert all(torch.equal(module.state_dict()[n], v) for n, v in state.items())
    stacked.load_trial(1, before[1])  # rewind trial 1 alone
    assert all(torch.equal(stacked.trial_state(1)[n], v) for n, v in before[1].items())
    assert not torch.equal(stacked.trial_state(0)["conv.weight"], before[0]["conv.weight"])
    with pytest.raises(KeyError):
        stacked.load_trial(0, {"conv.weight": before[0]["conv.weight"]})


@pytest.mark.parametrize("net", NETS)
def test_a_trial_s_output_is_its_module_s_output(net):
    modules, _ = trial_modules(net, prune=False)
    stacked = stack.StackedModel(modules)
    shape = NETS[net][1]
    x = torch.randn(K, 5, *shape, generator=torch.Generator().manual_seed(1))
    for module in modules:
        module.eval()
    stacked.eval()
    own, shared = stacked(x), stacked(x[0], shared=True)
    assert own.shape == shared.shape == (K, 5, 10)
    for i, module in enumerate(modules):
        torch.testing.assert_close(own[i], module(x[i]), **LAST_BITS)
        torch.testing.assert_close(shared[i], module(x[0]), **LAST_BITS)


# --- (2) training: each trial as it trains alone ---------------------------------------------


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("net, path", NET_PATHS)
def test_each_trial_trains_as_alone_in_a_stack_of_one_and_through_train_epoch(net, path, optimizer):
    """Two epochs (6 steps, the last batch of each smaller), each trial with its own mask and
    data order: trial i of the stack of 3 equals the same module trained in a stack of one (the
    `module` path) and by the textbook loop, within rounding (the module docstring's bounds)."""
    modules, masks = trial_modules(net)
    args, data, epochs = OPTIMIZERS[optimizer], pixels(COUNT, NETS[net][1]), 2
    stacked, stacked_losses = train_stacked(modules, masks, args, epochs, data, path=path)
    assert stacked.path == (PATHS[net] if path == "auto" else path)
    for i in range(K):
        one, one_losses = train_stacked([modules[i]], [masks[i]], args, epochs, data, trials=[i])
        assert one.path == "module"
        solo, solo_losses = train_solo(modules[i], masks[i], args, epochs, data, i)
        expected = solo.state_dict()
        assert_states_close(one.trial_state(0), expected, optimizer)
        assert_states_close(stacked.trial_state(i), expected, optimizer)
        for epoch in range(epochs):
            assert stacked_losses[epoch][i] == pytest.approx(solo_losses[epoch], rel=1e-5)
            assert one_losses[epoch][0] == pytest.approx(solo_losses[epoch], rel=1e-5)


def test_the_stacked_optimiser_is_the_project_s_on_the_stacked_parameters():
    modules, _ = trial_modules("fc1", prune=False)
    stacked = stack.StackedModel(modules)
    adam = build_optimizer(OPTIMIZERS["adam"], stacked)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["fused"]
    assert adam.defaults["weight_decay"] == 1e-4
    (group,) = adam.param_groups
    assert [p.shape for p in group["params"]] == [p.shape for p in stacked.params.values()]
    sgd = build_optimizer(OPTIMIZERS["sgd"], stacked)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


def test_the_epoch_reads_nothing_back_but_the_losses_once(host_reads):
    """As train_epoch: no read per step (so CUDA never waits in the loop), one per epoch."""
    modules, masks = trial_modules("fc1")
    stacked = stack.StackedModel(modules)
    optimizer = build_optimizer(OPTIMIZERS["adam"], stacked)
    stacked_masks = stack.stack_masks(stacked, masks)
    reads = host_reads
    per_epoch = []
    for count in (40, 80):
        reads.clear()
        trials = train.Trials(stacked_masks, generators(range(K)))
        split, stepper = pixels(count, (1, 28, 28)), train.Stepper(optimizer)
        train.train_epoch(stacked, split, train.Batches(8), trials, stepper)
        per_epoch.append(sorted(reads))
    assert per_epoch[0] == per_epoch[1] == ["tolist"]


# --- (3) masks per trial -----------------------------------------------------------------------


@pytest.mark.parametrize("net", NETS)
def test_pruned_weights_stay_exactly_zero_with_a_mask_per_trial(net):
    modules, masks = trial_modules(net)
    names = list(prunable(modules[0]))
    assert any((masks[0][n] != masks[1][n]).any() for n in names), (
        "the trials' masks differ from one another"
    )
    stacked, _ = train_stacked(modules, masks, OPTIMIZERS["adam"], 1, pixels(COUNT, NETS[net][1]))
    params = stacked.params
    for i, mask in enumerate(masks):
        for name in names:
            weight, keep = params[name][i], torch.from_numpy(mask[name])
            assert torch.all(weight[keep == 0] == 0), (i, name)
            assert torch.all(weight[keep == 1] != 0), (i, name)  # the survivors trained


# --- (4) evaluation per trial ----------------------------------------------------------------


@pytest.mark.parametrize("net, path", NET_PATHS)
def test_each_trial_s_evaluation_is_its_solo_evaluation(net, path):
    """After training (BatchNorm's running statistics moved), each trial's accuracy and loss in
    eval mode are those of its state loaded into a solo module."""
    modules, masks = trial_modules(net)
    shape = NETS[net][1]
    stacked, _ = train_stacked(
        modules, masks, OPTIMIZERS["adam"], 1, pixels(COUNT, shape), path=path
    )
    test_set = pixels(70, shape, seed=1)
    losses, accuracies = train.loss_and_accuracy(stacked, test_set, batch_size=32)
    assert train.evaluate(stacked, test_set, batch_size=32) == accuracies
    for i in range(K):
        solo = NETS[net][0]()
        solo.load_state_dict(stacked.trial_state(i))
        loss, accuracy = solo_measures(solo, test_set, 32)
        assert accuracies[i] == accuracy
        assert losses[i] == pytest.approx(loss, rel=1e-5)
        (alone,) = train.evaluate(stack.StackedModel([solo]), test_set, batch_size=32)
        assert alone == accuracy
    assert not stacked.training


@pytest.mark.parametrize("path", ["loop", "vmap"])
def test_batch_norm_trains_on_batch_statistics_and_tests_on_running_ones(path):
    modules, _ = trial_modules("resnet20", prune=False)
    stacked = stack.StackedModel(modules, path=path)
    x = torch.randn(K, 6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    before = stacked.buffers_by_name["bn.running_mean"].clone()
    stacked.train()
    stacked(x)
    after = stacked.buffers_by_name
    assert after["bn.num_batches_tracked"].tolist() == [1] * K
    for i, module in enumerate(modules):
        module.train()
        module(x[i])  # the solo module's own update of its running statistics
        torch.testing.assert_close(after["bn.running_mean"][i], module.bn.running_mean)
        torch.testing.assert_close(after["bn.running_var"][i], module.bn.running_var)
    assert not torch.equal(before, after["bn.running_mean"])
    stacked.eval()
    for i, module in enumerate(modules):
        module.eval()
        torch.testing.assert_close(stacked(x)[i], module(x[i]), **LAST_BITS)


@pytest.mark.parametrize("path", ["auto", "vmap"])
def test_dropout_draws_for_each_trial_and_leaves_the_chain(path):
    """--dropout's hooks: fc1 is then no plain chain (on the CPU it takes the loop); in training
    each trial drops its own inputs, in eval mode none."""
    modules, _ = trial_modules("fc1", prune=False)
    same = [add_input_dropout(copy.deepcopy(modules[0]), 0.5) for _ in range(K)]
    stacked = stack.StackedModel(same, path=path)
    assert stacked.path == ("loop" if path == "auto" else path)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    stacked.train()
    out = stacked(x, shared=True)
    assert not torch.equal(out[0], out[1])
    stacked.eval()
    out = stacked(x, shared=True)
    for i in range(K):
        torch.testing.assert_close(out[i], modules[0].eval()(x), **LAST_BITS)
    with pytest.raises(ValueError):
        stack.StackedModel(same, path="bmm")


# --- (5) the batched-matmul path is the vmap path --------------------------------------------


def test_the_linear_chain_is_found_only_where_it_is_one():
    chain = stack.linear_chain(archs.build("mnist", "fc1"))
    assert chain == [
        ("flatten",),
        ("linear", "classifier.0.weight", "classifier.0.bias"),
        ("relu",),
        ("linear", "classifier.2.weight", "classifier.2.bias"),
        ("relu",),
        ("linear", "classifier.4.weight", "classifier.4.bias"),
    ]
    sequential = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False), nn.ReLU())
    assert stack.linear_chain(sequential) == [("flatten",), ("linear", "1.weight", ""), ("relu",)]
    assert stack.linear_chain(NETS["conv2"][0]()) is None
    assert stack.linear_chain(NETS["resnet20"][0]()) is None
    assert stack.linear_chain(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh())) is None
    assert stack.linear_chain(nn.Sequential(nn.ReLU())) is None  # no Linear at all

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x

    assert stack.linear_chain(Residual()) is None


def test_the_batched_matmul_path_computes_the_vmap_path():
    modules, masks = trial_modules("fc1")
    bmm, vmapped = (stack.StackedModel(modules, path=p) for p in ("bmm", "vmap"))
    assert (bmm.path, vmapped.path) == ("bmm", "vmap")
    x = torch.randn(K, 7, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (K, 7), generator=torch.Generator().manual_seed(5))
    for model in (bmm, vmapped):
        trial_losses(model(x), y).sum().backward()
    torch.testing.assert_close(bmm(x), vmapped(x), **LAST_BITS)
    torch.testing.assert_close(bmm(x[0], shared=True), vmapped(x[0], shared=True), **LAST_BITS)
    for name, p in bmm.params.items():
        torch.testing.assert_close(p.grad, vmapped.params[name].grad, **LAST_BITS)
    data = pixels(COUNT, (1, 28, 28))
    for optimizer in OPTIMIZERS:
        args = OPTIMIZERS[optimizer]
        trained = [train_stacked(modules, masks, args, 2, data, path=p) for p in ("bmm", "vmap")]
        for i in range(K):
            expected = trained[1][0].trial_state(i)
            assert_states_close(trained[0][0].trial_state(i), expected, optimizer)
        for a, b in zip(trained[0][1], trained[1][1], strict=True):
            assert a == pytest.approx(b, rel=1e-5)


# --- (6) a stack of one is its module; a trial gone NaN reaches no other ----------------------


def test_a_stack_of_one_is_its_module_trained_in_place():
    modules, masks = trial_modules("conv2")
    module = modules[0]
    alone = stack.StackedModel([module])
    assert alone.path == "module" and alone.net is module
    assert list(alone.parameters()) == list(module.parameters())  # the optimiser's leaves
    for name, p in alone.params.items():
        assert p.shape == (1, *module.get_parameter(name).shape)
        assert p.data_ptr() == module.get_parameter(name).data_ptr()  # a view, not a copy
    x = torch.randn(1, 5, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    module.eval()
    assert torch.equal(alone(x)[0], module(x[0]))
    state = copy.deepcopy(module.state_dict())
    with torch.no_grad():
        module.get_parameter("features.0.weight").add_(1.0)
    alone.load_trial(0, state)  # writes into the module itself
    assert torch.equal(module.state_dict()["features.0.weight"], state["features.0.weight"])
    with pytest.raises(ValueError):
        stack.StackedModel(modules, path="module")


@pytest.mark.parametrize("net", ["fc1", "conv2"])
def test_a_trial_whose_weights_are_nan_leaves_the_others_as_they_train_without_it(net):
    """Trial 1's weights set to NaN: its loss is NaN, and trials 0 and 2 train exactly as in a
    stack where trial 1 is healthy (the trials share no tensor)."""
    modules, masks = trial_modules(net)
    sick = [copy.deepcopy(m) for m in modules]
    with torch.no_grad():
        for p in sick[1].parameters():
            p.fill_(float("nan"))
    data = pixels(COUNT, NETS[net][1])
    healthy, healthy_losses = train_stacked(modules, masks, OPTIMIZERS["adam"], 2, data)
    poisoned, poisoned_losses = train_stacked(sick, masks, OPTIMIZERS["adam"], 2, data)
    assert all(np.isnan(losses[1]) for losses in poisoned_losses)
    for i in (0, 2):
        for name, value in healthy.trial_state(i).items():
            assert torch.equal(poisoned.trial_state(i)[name], value), (i, name)
        assert [losses[i] for losses in poisoned_losses] == [losses[i] for losses in healthy_losses]
