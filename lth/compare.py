"""Comparing runs (combine_plots.py, sweep.py): their trials' lines in one figure, its table, and
each layer's share of weights kept."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

import archs
from lth import layer_shares, plots, runs
from lth.results import save_png, write_csv
from lth.settings import Recipe

TABLE_FIELDS = ["line", "level", "weights_left", "trials", "measure"] + [
    f"{what}_{stat}" for what in ("accuracy", "epoch") for stat in ("mean", "min", "max")
]


def combine(
    group: list[runs.Run], out: Path, dpi: int, best_epoch: bool = False, layers: bool = False
) -> list[Path]:
    """Draw the group's figures into `out` and write their tables; return the paths written.
    Prints a line for each run left out as the same trial as a newer one. `layers`: also the
    share of each layer kept, every mask read before anything is written."""
    arch, dataset = group[0].args["arch_type"], group[0].args["dataset"]
    stem = f"combined_{arch}_{dataset}"
    kept, left_out = runs.distinct_trials(group)
    for duplicate in left_out:
        print(f"left out: {duplicate}")
    trials = runs.trials(kept)
    shares = [layer_shares.LayerShares.of(t, network_layout) for t in trials] if layers else []
    accuracy_label, epoch_label = axis_labels({t.early_stop for t in trials})
    accuracy = [line(t, t.accuracy) for t in trials]
    figure = plots.accuracy_vs_weights(accuracy, dataset, arch, accuracy_label, full_scale=False)
    figures = {stem: figure}
    if best_epoch:
        epochs = [line(t, t.epoch) for t in trials]
        figure = plots.best_epoch_vs_weights(epochs, dataset, arch, epoch_label)
        figures[f"{stem}_best_epoch"] = figure
    if shares:
        panels = [(s.label, s.weights_left, s.lines()) for s in shares]
        figures[f"{stem}_layers"] = plots.layer_shares(panels, dataset, arch)
    written = [out / f"{name}.png" for name in figures]
    for path, figure in zip(written, figures.values(), strict=True):
        save_png(figure, path, dpi)
        plots.close(figure, dpi)
    written.append(out / f"{stem}.csv")
    write_csv(written[-1], TABLE_FIELDS, [row for t in trials for row in t.rows()])
    print(accuracy_table(trials))
    if shares:
        written.append(out / f"{stem}_layers.csv")
        write_csv(written[-1], layer_shares.TABLE_FIELDS, [row for s in shares for row in s.rows()])
    return written


def accuracy_table(trials: list[runs.Trials]) -> str:
    """The figure's lines as text: per level each line's mean accuracy (minimum-maximum); one row
    per line and level where the lines' weights left differ."""

    def cell(t: runs.Trials, level: int) -> str:
        column = t.accuracy[:, level]
        spread = f" ({column.min():.2f}-{column.max():.2f})" if len(column) > 1 else ""
        return f"{column.mean():.2f}{spread}"

    first = trials[0].weights_left
    if all(np.array_equal(t.weights_left, first) for t in trials):
        columns = ["level", "weights_left", *(t.label for t in trials)]
        rows = [
            {"level": level, "weights_left": left} | {t.label: cell(t, level) for t in trials}
            for level, left in enumerate(first)
        ]
    else:
        columns = ["line", "level", "weights_left", "accuracy"]
        rows = [
            {"line": t.label, "level": level, "weights_left": left, "accuracy": cell(t, level)}
            for t in trials
            for level, left in enumerate(t.weights_left)
        ]
    return runs.table(rows, columns)


def axis_labels(early_stop: set[bool]) -> tuple[str, str]:
    """The y-axis labels of the accuracy and epoch figures, for lines that stopped early or not."""
    if early_stop == {True}:
        return (
            "test accuracy at the early stop (least validation loss)",
            "early-stopping epoch (least validation loss)",
        )
    if early_stop == {False}:
        return "test accuracy", "epoch of best test accuracy"
    return "test accuracy: best, or at the early stop", "epoch of best accuracy, or early stop"


def line(trials: runs.Trials, values: np.ndarray) -> plots.Line:
    """The trials' `values` (a row each) as their mean, banded by their minimum and maximum."""
    if len(values) == 1:
        return plots.Line(trials.label, trials.weights_left, values[0])
    low, high = values.min(axis=0), values.max(axis=0)
    return plots.Line(trials.label, trials.weights_left, values.mean(axis=0), low, high)


def network_layout(run: runs.Run) -> nn.Module:
    """The run's network on the meta device: its layer names and shapes, no memory, no data."""
    with torch.device("meta"):
        return archs.build(
            run.args["dataset"],
            run.args["arch_type"],
            **Recipe.read(run.args).arch_options(),
        )


def announce(paths: list[Path]) -> None:
    for path in paths:
        print(f"combined {'table' if path.suffix == '.csv' else 'plot'}: {path}")
