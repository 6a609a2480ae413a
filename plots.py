"""Every figure the runner draws, shared by main.py and combine_plots.py."""

import gc
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def loss_vs_accuracy(
    all_loss: np.ndarray, all_accuracy: np.ndarray, dataset: str, arch_type: str
) -> Figure:
    """Training loss (rescaled to 0..100) and test accuracy against epochs, as the original drew.

    A constant loss (one epoch) is drawn at 0 instead of the original's division by zero.
    """
    epochs = np.arange(1, len(all_loss) + 1)
    spread = np.ptp(all_loss)
    scaled = 100 * (all_loss - np.min(all_loss)) / spread if spread > 0 else 0 * all_loss
    fig, ax = plt.subplots()
    ax.plot(epochs, scaled, c="blue", label="Loss")
    ax.plot(epochs, all_accuracy, c="red", label="Accuracy")
    ax.set_title(f"Loss Vs Accuracy Vs Iterations ({dataset},{arch_type})")
    ax.set_xlabel("Iterations")
    ax.set_ylabel("Loss and Accuracy")
    ax.legend()
    ax.grid(color="gray")
    return fig


def accuracy_vs_weights(
    lines: Sequence[tuple[str, np.ndarray, np.ndarray]], dataset: str, arch_type: str
) -> Figure:
    """Best test accuracy against the percentage of weights left, one line per (label, comp, acc).

    With one line this is the original's AccuracyVsWeights figure: levels evenly spaced, each
    tick labelled with its weights left. Lines whose levels differ are drawn against their own
    weights-left values on a log axis, so they still line up where they agree.
    """
    fig, ax = against_weights(lines)
    ax.set_title(f"Test Accuracy vs Unpruned Weights Percentage ({dataset},{arch_type})")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    return fig


def best_epoch_vs_weights(
    lines: Sequence[tuple[str, np.ndarray, np.ndarray]], dataset: str, arch_type: str
) -> Figure:
    """The early-stopping epoch (epochs trained when the best test accuracy was measured)
    against the percentage of weights left, one line per (label, comp, epochs)."""
    fig, ax = against_weights(lines)
    ax.set_title(f"Early-Stopping Epoch vs Unpruned Weights % ({dataset},{arch_type})")
    ax.set_ylabel("epoch of best test accuracy")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def against_weights(lines: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> tuple[Figure, Axes]:
    """Axes with one line per (label, weights left, values); see accuracy_vs_weights."""
    fig, ax = plt.subplots()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(lines) == 1 or all(np.array_equal(lines[0][1], c) for _, c, _ in lines):
        comp = lines[0][1]
        positions = np.arange(len(comp))
        for i, (label, _, values) in enumerate(lines):
            ax.plot(positions, values, c="blue" if len(lines) == 1 else colors[i % 10], label=label)
        ax.set_xticks(positions, [f"{c:g}" for c in comp], rotation="vertical")
    else:
        for i, (label, comp, values) in enumerate(lines):
            ax.plot(comp, values, marker=".", c=colors[i % 10], label=label)
        ax.set_xscale("log")
        ax.invert_xaxis()
    ax.set_xlabel("Unpruned Weights Percentage")
    ax.legend()
    ax.grid(color="gray")
    return fig, ax


def close(fig: Figure) -> None:
    """Close `fig` and free its raster now: a figure is a reference cycle, and at 1200 dpi its
    raster (about 180 MB) would otherwise stay until the garbage collector happens to run."""
    plt.close(fig)
    gc.collect()
