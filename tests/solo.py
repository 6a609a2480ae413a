"""One model trained alone through the project's one training path (a stack of one trains the
module itself): what the tests of single networks call instead of a solo loop of their own."""

import weakref

import torch
from torch import nn

from lth import stack, train
from lth.data import Split
from lth.pruning import prunable
from lth.record import TrialRandom


def epoch_alone(
    model: nn.Module,
    data: Split,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    masks: list[torch.Tensor],
    **options,
) -> float:
    """One `train.train_epoch` of `model` alone (in place; `optimizer` over its parameters),
    `masks` aligned with its prunable weights, its data order drawn from the process's generators
    as a run alone draws it (the trial's generators are the process's, and left where the epoch
    leaves them); returns the mean loss."""
    by_name = {name: m.unsqueeze(0) for name, m in zip(prunable(model), masks, strict=True)}
    random = TrialRandom.from_state(TrialRandom.process_states())
    (loss,) = train.train_epoch(
        alone(model), data, batch_size, optimizer, by_name, [random], **options
    )
    TrialRandom.restore_process(random.state())
    return loss


_STACKS: "weakref.WeakKeyDictionary[nn.Module, stack.StackedModel]" = weakref.WeakKeyDictionary()


def alone(model: nn.Module) -> stack.StackedModel:
    """The stack of one that trains `model` itself, the same object for every call (so that a
    compiled loss is reused, as main.py reuses its stack from level to level)."""
    if model not in _STACKS:
        _STACKS[model] = stack.StackedModel([model])
    return _STACKS[model]


def evaluate_alone(model: nn.Module, data: Split, batch_size: int = train.EVAL_BATCH) -> float:
    (accuracy,) = train.evaluate(alone(model), data, batch_size)
    return accuracy


def measures_alone(
    model: nn.Module, data: Split, batch_size: int = train.EVAL_BATCH
) -> tuple[float, float]:
    (loss,), (accuracy,) = train.loss_and_accuracy(alone(model), data, batch_size)
    return loss, accuracy
