"""One model trained alone through the project's one training path (a stack of one trains the
module itself): what the tests of single networks call instead of a solo loop of their own."""

import torch
from torch import nn

from lth import stack, train
from lth.data import Split
from lth.pruning import Mask, prunable
from lth.record import TrialRandom


def device_masks(model: nn.Module, mask: Mask) -> list[torch.Tensor]:
    """The mask as tensors beside the weights they freeze, a list aligned with
    `prunable_weights(model)`: what `epoch_alone` takes."""
    return [
        torch.from_numpy(mask[name]).to(p.device, p.dtype) for name, p in prunable(model).items()
    ]


def epoch_alone(
    model: nn.Module,
    data: Split,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    masks: list[torch.Tensor],
    **options,
) -> float:
    """One `train.train_epoch` of `model` alone (in place; `optimizer` over its parameters),
    `masks` aligned with its prunable weights, `options` those of `train.Batches` (`compiled`,
    `augmented`); returns the mean loss.

    Its draws are those of a textbook loop run from the process's generators: the data order
    from their state now, dropout after it (the process's generators are moved past the order's
    draw first, as `torch.randperm` there would move them)."""
    by_name = {name: m.unsqueeze(0) for name, m in zip(prunable(model), masks, strict=True)}
    random = TrialRandom.from_state(TrialRandom.process_states())
    torch.randperm(len(data))  # the process's generator where the textbook loop's order left it
    trials = train.Trials(by_name, [random])
    batches = train.Batches(batch_size, **options)
    (loss,) = train.train_epoch(alone(model), data, batches, trials, train.Stepper(optimizer))
    return loss


_LAST: list[stack.StackedModel] = []  # the newest stack only: it holds its model


def alone(model: nn.Module) -> stack.StackedModel:
    """The stack of one that trains `model` itself, the same object for calls in a row on one
    model (so that a compiled loss is reused, as main.py reuses its stack from level to level)."""
    if not _LAST or _LAST[0].net is not model:
        _LAST[:] = [stack.StackedModel([model])]
    return _LAST[0]


def evaluate_alone(model: nn.Module, data: Split, batch_size: int = train.EVAL_BATCH) -> float:
    (accuracy,) = train.evaluate(alone(model), data, batch_size)
    return accuracy


def measures_alone(
    model: nn.Module, data: Split, batch_size: int = train.EVAL_BATCH
) -> tuple[float, float]:
    (loss,), (accuracy,) = train.loss_and_accuracy(alone(model), data, batch_size)
    return loss, accuracy
