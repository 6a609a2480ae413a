"""The loss of a training batch, plain or compiled with `torch.compile` (`--compile`).

`--compile auto` compiles nowhere (`COMPILE_PAYS_BACK_ON`): on the CPU the compile time never
pays back (docs/performance.md). `--compile on` on CUDA uses `mode="reduce-overhead"`, which
replays the step's kernels as CUDA graphs, since a small step on a GPU is bound by launches.
"""

from collections.abc import Callable

import torch
from torch import nn

from lth.experiment import COMPILE_CHOICES

BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


COMPILE_PAYS_BACK_ON: frozenset[str] = frozenset()  # devices where compiling pays back


def use_compile(choice: str, device: torch.device) -> bool:
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
    return sample_losses(logits, labels).mean(dim=1)


def batch_losses(stacked: nn.Module, compiled: bool = False) -> BatchLoss:
    """Each trial's mean cross-entropy on its batch, [k], of a `stack.StackedModel` given the
    trials' images [k, B, ...] and labels [k, B]; compiled (static shapes) when `compiled`."""

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
