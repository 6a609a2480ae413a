"""The fast training steps against autograd and torch.optim.Adam: same losses, same weights,
same masks, pruned weights frozen; and each model gets the step it should."""

import numpy as np
import pytest
import torch
from torch import nn

import archs
from initialization import initialize
from pruning import device_masks, make_mask, prunable_weights, prune_by_percentile
from steps import AutogradStep, FusedAdam, LinearReluStep, training_step
from tests.test_train import small_split
from train import adam, add_input_dropout

LR, WEIGHT_DECAY = 1e-2, 1e-4


def fast_path_fc1(model: nn.Module) -> nn.Module:
    """fc1 with a Flatten first in its classifier, the layout the fast step recognises (the
    network as built flattens in its forward, so it gets the autograd step)."""
    model.classifier = nn.Sequential(nn.Flatten(), *model.classifier)
    return model


def twin_models(arch: str, dataset: str = "mnist", percent: float = 50):
    """Two identical pruned models, their mask and its device copy."""
    torch.manual_seed(0)
    layout = fast_path_fc1 if arch == "fc1" else (lambda model: model)
    first = initialize(layout(archs.build(dataset, arch)))
    second = initialize(layout(archs.build(dataset, arch)))
    second.load_state_dict(first.state_dict())
    mask = prune_by_percentile(first, make_mask(first), percent)
    prune_by_percentile(second, make_mask(second), percent)
    return first, second, mask, device_masks(first, mask)


def run_steps(step, data, batch_sizes):
    """Apply `step` to consecutive batches of `data`; return the losses read back."""
    losses, start = [], 0
    for size in batch_sizes:
        x, y = data.images[start : start + size], data.labels[start : start + size]
        losses.append(step(x, y).item())
        start += size
    return losses


def plain_step(model, optimizer, masks):
    """Autograd and torch.optim.Adam's own step(), as a reference."""
    weights = prunable_weights(model)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        torch._foreach_mul_([w.grad for w in weights], masks)
        optimizer.step()
        return loss.detach()

    return step


# percent pruned -> how FusedAdam freezes fc1's three weights: nothing to freeze, gradients
# zeroed by the mask, or the survivors updated on their own
FREEZING = {0: (0, 0), 50: (3, 0), 90: (0, 3)}  # (masked, compact)


@pytest.mark.parametrize("dataset, percent", [("mnist", 0), ("mnist", 50), ("cifar10", 90)])
def test_hand_written_fc1_step_matches_autograd_and_adam(dataset, percent):
    fast, plain, mask, masks = twin_models("fc1", dataset, percent)
    data = small_split(230, (1, 28, 28) if dataset == "mnist" else (3, 32, 32))
    fast_optimizer = adam(fast.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    plain_optimizer = adam(plain.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    fast.train(), plain.train()
    step = training_step(fast, fast_optimizer, nn.CrossEntropyLoss(), masks)
    assert isinstance(step, LinearReluStep)
    assert (len(step.adam.masked), len(step.adam.compact)) == FREEZING[percent]
    sizes = [60, 60, 60, 50]  # a smaller last batch, as at the end of an epoch
    fast_losses = run_steps(step, data, sizes * 2)
    step.finish()
    plain_losses = run_steps(plain_step(plain, plain_optimizer, masks), data, sizes * 2)

    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-5)
    assert fast_losses[0] == plain_losses[0], "the first forward pass is the same computation"
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        assert a.grad is None, "the fast step keeps its gradients in its own buffers"
    for weight, layer_mask in zip(prunable_weights(fast), mask.values(), strict=True):
        assert torch.all(weight.detach()[torch.from_numpy(layer_mask) == 0] == 0)
    for a, b in zip(
        prune_by_percentile(fast, mask, 30).values(),
        prune_by_percentile(plain, mask, 30).values(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # the optimiser's own state was kept: the same moments, one step count per batch
    for p, q in zip(fast.parameters(), plain.parameters(), strict=True):
        assert fast_optimizer.state[p]["step"].item() == len(sizes) * 2
        torch.testing.assert_close(
            fast_optimizer.state[p]["exp_avg_sq"], plain_optimizer.state[q]["exp_avg_sq"]
        )


@pytest.mark.parametrize("percent", [50, 90])
def test_fused_adam_step_is_the_optimizer_step(percent):
    """The plain autograd step with FusedAdam (every model but fc1) against Adam's step(),
    with the pruned weights' gradients zeroed (50%) or only the survivors updated (90%)."""
    fast, plain, mask, masks = twin_models("lenet5", "cifar10", percent=percent)
    data = small_split(120, (3, 32, 32))
    fast_optimizer = adam(fast.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    plain_optimizer = adam(plain.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    step = training_step(fast, fast_optimizer, nn.CrossEntropyLoss(), masks)
    assert isinstance(step, AutogradStep) and isinstance(step.optimizer, FusedAdam)
    assert (step.optimizer.compact != []) == (percent == 90)
    fast_losses = run_steps(step, data, [40, 40, 40])
    step.finish()
    plain_losses = run_steps(plain_step(plain, plain_optimizer, masks), data, [40, 40, 40])
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-6)
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for weight, layer_mask in zip(prunable_weights(fast), mask.values(), strict=True):
        assert torch.all(weight.detach()[torch.from_numpy(layer_mask) == 0] == 0)
    for p, q in zip(fast.parameters(), plain.parameters(), strict=True):
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                fast_optimizer.state[p][moment], plain_optimizer.state[q][moment]
            )


def test_fused_adam_skips_parameters_without_a_gradient_like_the_optimizer():
    torch.manual_seed(0)
    used, unused = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))
    model = nn.Module()
    model.used, model.unused = used, unused
    optimizer = adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    before = unused.detach().clone()
    used.grad = torch.ones(3)
    FusedAdam.for_optimizer(optimizer, model).step()
    assert torch.equal(unused.detach(), before)
    assert not torch.equal(used.detach(), before)


def test_each_model_and_optimizer_gets_the_right_step():
    def chosen(model, optimizer=None, criterion=None):
        optimizer = optimizer or adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        masks = device_masks(model, make_mask(model))
        return training_step(model, optimizer, criterion or nn.CrossEntropyLoss(), masks)

    fc1 = fast_path_fc1(archs.build("mnist", "fc1")).train()
    assert isinstance(chosen(fc1), LinearReluStep)
    sgd = torch.optim.SGD(fc1.parameters(), lr=LR)
    assert isinstance(chosen(fc1, sgd), AutogradStep), "only Adam has a hand-written update"
    assert chosen(fc1, sgd).optimizer is sgd
    plain_adam = torch.optim.Adam(fc1.parameters(), lr=LR, foreach=False)
    assert chosen(fc1, plain_adam).optimizer is plain_adam, "not the fused configuration"
    amsgrad = torch.optim.Adam(fc1.parameters(), lr=LR, amsgrad=True, fused=True)
    assert chosen(fc1, amsgrad).optimizer is amsgrad
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.1)
    assert isinstance(chosen(fc1, criterion=smoothed), AutogradStep)
    dropout = add_input_dropout(fast_path_fc1(archs.build("mnist", "fc1")).train(), 0.1)
    assert isinstance(chosen(dropout), AutogradStep), "--dropout's hooks need the plain step"
    assert isinstance(chosen(archs.build("mnist", "lenet5").train()), AutogradStep)
    assert isinstance(chosen(archs.build("cifar10", "fclin").train()), AutogradStep)
