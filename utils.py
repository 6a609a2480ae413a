"""Small helpers shared by the runner: the user-error type, folder creation, the nonzeros table."""

import os

import numpy as np
import torch
from torch import nn


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file); printed as one line, exit status 2."""


def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped (`\\n`), so that a message
    quoting a user's value stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def checkdir(directory: str) -> None:
    """Create `directory` (and its parents) if it does not exist yet."""
    os.makedirs(directory, exist_ok=True)


def print_nonzeros(model: nn.Module, mask: list[np.ndarray] | None = None) -> float:
    """Print a per-parameter table of nonzero counts; return the percentage of weights left.

    The original returned the nonzero share of every parameter, biases included. Here the
    percentage counts the prunable weights only (those the mask covers), rounded to one
    decimal as the original printed it, so `{comp}` means "weights left" exactly.
    """
    total_nonzero = total = 0
    for name, param in model.named_parameters():
        count = int(torch.count_nonzero(param.detach()))
        size = param.numel()
        total_nonzero += count
        total += size
        print(
            f"{name:32} | nonzeros = {count:9} / {size:9} ({100 * count / size:6.2f}%)"
            f" | total_pruned = {size - count:9} | shape = {tuple(param.shape)}"
        )
    print(
        f"alive: {total_nonzero}, pruned : {total - total_nonzero}, total: {total}, "
        f"Compression rate : {total / max(total_nonzero, 1):10.2f}x "
        f"({100 * (total - total_nonzero) / total:6.2f}% pruned)"
    )
    return weights_left(mask) if mask is not None else round(100 * total_nonzero / total, 1)


def weights_left(mask: list[np.ndarray]) -> float:
    """Percentage of prunable weights the mask keeps, one decimal (the `{comp}` of file names)."""
    kept = sum(int(m.sum()) for m in mask)
    total = sum(m.size for m in mask)
    return round(100 * kept / total, 1)
