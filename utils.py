"""The original's small helpers, kept where its users look for them: the nonzeros table."""

import numpy as np
from torch import nn


def print_nonzeros(model: nn.Module) -> float:
    """Print a per-parameter table of nonzero counts; return the percentage of nonzero values
    among all parameters (biases and BatchNorm parameters included), one decimal.

    The returned figure is the original's `{comp}`, computed as it did: numpy counts, the share
    times 100, then numpy's rounding of a float64.
    """
    nonzero = total = 0
    for name, param in model.named_parameters():
        tensor = param.detach().cpu().numpy()
        count = np.count_nonzero(tensor)
        size = np.prod(tensor.shape, dtype=np.int64)
        nonzero += count
        total += size
        print(
            f"{name:32} | nonzeros = {count:9} / {size:9} ({100 * count / size:6.2f}%)"
            f" | total_pruned = {size - count:9} | shape = {tuple(tensor.shape)}"
        )
    print(
        f"alive: {nonzero}, pruned : {total - nonzero}, total: {total}, "
        f"Compression rate : {total / max(nonzero, 1):10.2f}x "
        f"({100 * (total - nonzero) / total:6.2f}% pruned)"
    )
    return float(round(np.float64(nonzero / total) * 100, 1))
