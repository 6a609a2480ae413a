"""Every figure the runner draws, shared by main.py and combine_plots.py."""

import gc
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


class Line(NamedTuple):
    """One line; with `low` and `high`, a shaded band between them."""

    label: str
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None


Lines = Sequence[Line | tuple[str, np.ndarray, np.ndarray]]


def loss_vs_accuracy(
    all_loss: np.ndarray,
    all_accuracy: np.ndarray,
    dataset: str,
    arch_type: str,
    first_epoch: int = 1,
) -> Figure:
    """Training loss (rescaled to 0..100) and test accuracy against epochs from `first_epoch`,
    as the original drew; a constant loss is drawn at 0 instead of dividing by zero."""
    epochs = np.arange(first_epoch, first_epoch + len(all_loss))
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
    lines: Lines,
    dataset: str,
    arch_type: str,
    ylabel: str = "test accuracy",
    full_scale: bool = True,
) -> Figure:
    """Best test accuracy against the percentage of weights left (`against_weights`); with one
    line the original's AccuracyVsWeights figure. `full_scale`: the original's 0-100 axis."""
    fig, ax = against_weights(lines)
    ax.set_title(f"Test Accuracy vs Unpruned Weights Percentage ({dataset},{arch_type})")
    ax.set_ylabel(ylabel)
    if full_scale:
        ax.set_ylim(0, 100)
    fig.tight_layout()
    return fig


def best_epoch_vs_weights(
    lines: Lines, dataset: str, arch_type: str, ylabel: str = "epoch of best test accuracy"
) -> Figure:
    """The epoch of the best test accuracy against the percentage of weights left."""
    fig, ax = against_weights(lines)
    ax.set_title(f"Early-Stopping Epoch vs Unpruned Weights % ({dataset},{arch_type})")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


class PathLine(NamedTuple):
    """One level's path: its errors at each alpha, the straight line between its ends' errors,
    and the index where the errors rise highest above that line."""

    label: str
    x: np.ndarray
    y: np.ndarray
    straight: np.ndarray
    peak: int


def error_along_path(lines: Sequence[PathLine], dataset: str, arch_type: str) -> Figure:
    """Test error along the straight line between two trained copies of a subnetwork, against
    the interpolation weight alpha; dashed, the straight line between the ends' errors, with
    the excess over it marked where it peaks."""
    fig, ax = plt.subplots()
    for line in lines:
        (drawn,) = ax.plot(line.x, line.y, marker=".", label=line.label)
        color, at = drawn.get_color(), line.peak
        ax.plot(line.x, line.straight, linestyle="--", c=color)
        ax.vlines(line.x[at], line.straight[at], line.y[at], colors=color, linewidth=3)
    ax.set_title(f"Test Error Between Two Trained Copies ({dataset},{arch_type})")
    ax.set_xlabel("alpha: the network (1 - alpha) w1 + alpha w2")
    ax.set_ylabel("test error (%)")
    ax.set_xlim(0, 1)
    ax.legend()
    ax.grid(color="gray")
    fig.tight_layout()
    return fig


PANELS_PER_ROW = 4


def layer_shares(
    panels: Sequence[tuple[str, np.ndarray, Lines]], dataset: str, arch_type: str
) -> Figure:
    """The share of each layer's weights kept against the weights left in all, one panel per
    (title, weights left at each level, lines), the whole network's share dashed in each."""
    columns = min(PANELS_PER_ROW, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(
        rows, columns, sharey=True, squeeze=False, figsize=(1 + 4.5 * columns, 4.8 * rows)
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, left, lines) in zip(axes.flat, panels, strict=False):
        positions = np.arange(len(left))
        for i, line in enumerate(Line(*line) for line in lines):
            ax.plot(positions, line.y, marker=".", c=colors[i % 10], label=line.label)
            shade(ax, positions, line, colors[i % 10])
        ax.plot(positions, left, c="black", linestyle="--", label="all layers")
        ax.set_xticks(positions, [tick_label(c) for c in left], rotation="vertical")
        ax.set_title(title)
        ax.set_xlabel("Unpruned Weights Percentage")
        ax.set_ylim(0, 100)
        ax.grid(color="gray")
        ax.legend(fontsize="small")
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    for row in axes:
        row[0].set_ylabel("weights of the layer kept (%)")
    fig.suptitle(f"Weights Kept per Layer ({dataset},{arch_type})")
    fig.tight_layout()
    return fig


def tick_label(value: float) -> str:
    """A weights-left tick's text: the original's "64.1" for one-decimal figures, else `:g`."""
    text = f"{value:.1f}"
    return text if float(text) == value else f"{value:g}"


def against_weights(lines: Lines) -> tuple[Figure, Axes]:
    """Axes with one line per (label, weights left, values) or `Line`, its band shaded: levels
    evenly spaced when the lines share them, else on a log axis of the weights left."""
    lines = [Line(*line) for line in lines]
    fig, ax = plt.subplots()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(lines) == 1 or all(np.array_equal(lines[0].x, line.x) for line in lines):
        comp = lines[0].x
        positions = np.arange(len(comp))
        for i, line in enumerate(lines):
            color = "blue" if len(lines) == 1 else colors[i % 10]
            ax.plot(positions, line.y, c=color, label=line.label)
            shade(ax, positions, line, color)
        ax.set_xticks(positions, [tick_label(c) for c in comp], rotation="vertical")
    else:
        for i, line in enumerate(lines):
            ax.plot(line.x, line.y, marker=".", c=colors[i % 10], label=line.label)
            shade(ax, line.x, line, colors[i % 10])
        ax.set_xscale("log")
        ax.invert_xaxis()
    ax.set_xlabel("Unpruned Weights Percentage")
    ax.legend()
    ax.grid(color="gray")
    return fig, ax


def shade(ax: Axes, x: np.ndarray, line: Line, color: str) -> None:
    """The line's band from `low` to `high` (the minimum and maximum over the trials), if any."""
    if line.low is not None and line.high is not None:
        ax.fill_between(x, line.low, line.high, color=color, alpha=0.2, linewidth=0)


COLLECT_RASTER_BYTES = 16 * 2**20  # `close` runs the collector after a raster this large


def close(fig: Figure, dpi: float) -> None:
    """Close `fig`, saved at `dpi`; after a large raster, run the garbage collector.

    A figure is a reference cycle, so a closed figure's raster (about 180 MB at 1200 dpi) stays
    until the collector runs; a full collection costs more than saving a small figure.
    """
    width, height = fig.get_size_inches()
    plt.close(fig)
    if width * height * dpi * dpi * 4 >= COLLECT_RASTER_BYTES:
        gc.collect()
