"""The loss of a training batch, plain or compiled with `torch.compile` (`--compile`).

The training step itself is written out in `train.train_epoch` on public APIs only: autograd,
the gradients of pruned weights zeroed by the mask, the optimiser's own `step()`. What this
module decides is whether the forward pass and the loss go through `torch.compile`.

`--compile auto` compiles nowhere yet (`COMPILE_PAYS_BACK_ON`). Measured on this project's
CPU machine (docs/performance.md): compiling fc1's model and loss costs about 20 s per process
plus a few seconds for each new batch shape, and the compiled step is no faster than the plain
one there, so it never pays back. `--compile on` on CUDA uses `mode="reduce-overhead"`, which
replays the step's kernels as CUDA graphs: a batch-60 step on a GPU is bound by kernel launches,
which is what graphs remove. Whether that pays back is not measured (no GPU was available).
"""

from collections.abc import Callable

import torch
from torch import nn

from lth.experiment import COMPILE_CHOICES

BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# Devices where compiling the batch loss was measured to pay back its compile time within a
# run: none yet (the module's docstring says why).
COMPILE_PAYS_BACK_ON: frozenset[str] = frozenset()


def use_compile(choice: str, device: torch.device) -> bool:
    """Whether `--compile choice` compiles the batch loss on `device`: `auto` where it was
    measured to pay back (`COMPILE_PAYS_BACK_ON`), `on` and `off` as they say."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile choice {choice!r} is not one of {COMPILE_CHOICES}")
    if choice == "auto":
        return device.type in COMPILE_PAYS_BACK_ON
    return choice == "on"


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of every trial's every sample, [k, B], of logits [k, B, C] and labels
    [k, B] (each trial's own) or [B] (shared)."""
    k, b = logits.shape[:2]
    if labels.dim() == 1:
        labels = labels.expand(k, b)
    losses = nn.functional.cross_entropy(
        logits.reshape(k * b, -1), labels.reshape(k * b), reduction="none"
    )
    return losses.view(k, b)


def trial_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each trial's mean cross-entropy over its batch, [k] (`sample_losses`)."""
    return sample_losses(logits, labels).mean(dim=1)


def batch_losses(stacked: nn.Module, compiled: bool = False) -> BatchLoss:
    """Each trial's mean cross-entropy on its batch, [k], of a `stack.StackedModel` given the
    trials' images [k, B, ...] and labels [k, B]; compiled when `compiled`.

    Compiled with static shapes: the last, smaller batch of an epoch gets a graph of its own,
    compiled once per process; later epochs and levels reuse both graphs (the same stacked model
    and parameters, so no guard fails). On CUDA, `mode="reduce-overhead"` captures CUDA graphs
    and each call marks a new step for them. Only training calls go through it: evaluation runs
    the model plainly, so switching to eval mode never recompiles.
    """

    def losses(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return trial_losses(stacked(x), y)

    if not compiled:
        return losses
    if any(p.is_cuda for p in stacked.parameters()):
        graphed = torch.compile(losses, mode="reduce-overhead", dynamic=False)

        def graphed_losses(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return graphed(x, y)

        return graphed_losses
    return torch.compile(losses, dynamic=False)
