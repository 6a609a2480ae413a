"""Compare runs in one figure: best test accuracy against weights left, one line per experiment.

    python combine_plots.py                  # newest complete run of each prune type (lt, reinit, random, the --masks_from control) per arch/dataset, with its trials
    python combine_plots.py RUN_DIR ...      # exactly these runs (same arch and dataset)

Runs that differ only in --seed (and, for the control, in --masks_from) are trials of one
experiment: one line, their mean, in a band from their minimum to their maximum, labelled
`(N trials)`, N the number of distinct seeds: of runs of one experiment with the same seed
(for the control, with masks of the same trial) the newest is drawn, and each other is named in
a line `left out: RUN (...)`. Runs that stopped early on a validation set (summary.csv has
`test_accuracy` and `early_stop_epoch`) are drawn by their early-stop figures.
Writes `combined_{arch}_{dataset}.png` (and, with --best_epoch, `combined_{arch}_{dataset}_best_epoch.png`)
and the table of the lines, `combined_{arch}_{dataset}.csv`, into `combined_plots/` beside the
runs, or into --out. With --layers also `combined_{arch}_{dataset}_layers.png` and `.csv`: the
share of each layer's weights kept at each level, one panel per line, from the runs' mask files.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import archs
from lth import cli, layer_shares, plots, runs
from lth.cli import OneDefaultFormatter, OneLineParser, flag_group
from lth.errors import UserError, one_line
from lth.experiment import identity
from lth.results import save_png, write_csv
from lth.settings import Recipe

TABLE_FIELDS = ["line", "level", "weights_left", "trials", "measure"] + [
    f"{what}_{stat}" for what in ("accuracy", "epoch") for stat in ("mean", "min", "max")
]


def build_parser() -> argparse.ArgumentParser:
    """combine_plots.py's arguments, one --help heading per purpose."""
    parser = OneLineParser(
        prog="combine_plots.py",
        description="Draw the accuracy-vs-weights-left lines of several runs in one figure.",
        formatter_class=OneDefaultFormatter,
    )
    for add_arguments in COMBINE_FLAG_GROUPS:
        add_arguments(parser)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Which runs are compared."""
    add = flag_group(parser, "runs")
    add(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="runs to compare, of one arch and dataset (default: those --results_root picks)",
    )
    add(
        "--results_root",
        default="results",
        help="without RUN_DIRs: compare the newest complete run of each prune type for each"
        " arch/dataset here",
    )


def add_figure_arguments(parser: argparse.ArgumentParser) -> None:
    """What is drawn, how finely, and where it goes."""
    add = flag_group(parser, "figures")
    add("--dpi", default=1200, type=int, help="resolution of the figures (as main.py's --plot_dpi)")
    add(
        "--best_epoch",
        action="store_true",
        help="also draw the early-stopping epoch vs weights left",
    )
    add("--layers", action="store_true", help="also draw each layer's share of weights kept")
    add(
        "--out",
        default=None,
        help="folder for the figures and tables (default: combined_plots/ beside the runs)",
    )


# The --help headings in their order; a new argument goes into the helper of its purpose.
COMBINE_FLAG_GROUPS = (add_run_arguments, add_figure_arguments)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        if args.run_dirs:
            groups = [check_same_experiment([runs.load_run(d) for d in args.run_dirs])]
            out = (
                Path(args.out)
                if args.out
                else Path(args.run_dirs[0]).resolve().parent / "combined_plots"
            )
        else:
            groups = list(runs.newest_complete(args.results_root).values())
            if not groups:
                raise UserError(f"--results_root {args.results_root}: no complete run there")
            out = Path(args.out) if args.out else Path(args.results_root) / "combined_plots"
        for group in groups:
            announce(combine(group, out, args.dpi, args.best_epoch, args.layers))
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    return 0


def check_flags(args: argparse.Namespace) -> None:
    """UserError for a flag that cannot work, before any run is read or anything drawn."""
    cli.check_dpi("--dpi", args.dpi)
    cli.check_not_empty("--results_root", args.results_root)
    if args.out is not None:
        cli.check_folder("--out", args.out)


def check_same_experiment(group: list[runs.Run]) -> list[runs.Run]:
    """The runs, when they share one arch and data set; UserError naming the first that does not."""
    first = group[0]
    for run in group[1:]:
        for name in ("arch_type", "dataset"):
            if identity(run.args, {name}) != identity(first.args, {name}):
                raise UserError(
                    f"{run.root} has --{name} {run.args[name]} but {first.root} has"
                    f" {first.args[name]}; compare runs of one arch and data set at a time"
                )
    return group


def combine(
    group: list[runs.Run], out: Path, dpi: int, best_epoch: bool = False, layers: bool = False
) -> list[Path]:
    """Draw the group's figures into `out`, each experiment's trials as one line with its band,
    and write their table; return the paths written. Prints a line for each run left out as
    the same trial as a newer one (runs.distinct_trials). `layers`: also the share of each
    layer kept (`combined_{arch}_{dataset}_layers.png` and `.csv`), every mask read before
    anything is written."""
    arch, dataset = group[0].args["arch_type"], group[0].args["dataset"]
    kept, left_out = runs.distinct_trials(group)
    for duplicate in left_out:
        print(f"left out: {duplicate}")
    trials = runs.trials(kept)
    shares = [layer_shares.LayerShares.of(t, network_layout) for t in trials] if layers else []
    accuracy_label, epoch_label = axis_labels({t.early_stop for t in trials})
    accuracy = [line(t, t.accuracy) for t in trials]
    figures = [
        (
            f"combined_{arch}_{dataset}.png",
            plots.accuracy_vs_weights(accuracy, dataset, arch, accuracy_label, full_scale=False),
        )
    ]
    if best_epoch:
        epochs = [line(t, t.epoch) for t in trials]
        figure = plots.best_epoch_vs_weights(epochs, dataset, arch, epoch_label)
        figures.append((f"combined_{arch}_{dataset}_best_epoch.png", figure))
    if shares:
        panels = [(s.label, s.weights_left, s.lines()) for s in shares]
        figures.append(
            (f"combined_{arch}_{dataset}_layers.png", plots.layer_shares(panels, dataset, arch))
        )
    written = []
    for name, figure in figures:
        path = out / name
        save_png(figure, path, dpi)
        plots.close(figure, dpi)
        written.append(path)
    table = out / f"combined_{arch}_{dataset}.csv"
    write_csv(table, TABLE_FIELDS, [row for t in trials for row in t.rows()])
    print(accuracy_table(trials))
    written.append(table)
    if shares:
        written.append(out / f"combined_{arch}_{dataset}_layers.csv")
        rows = [row for s in shares for row in s.rows()]
        write_csv(written[-1], layer_shares.TABLE_FIELDS, rows)
    return written


def accuracy_table(trials: list[runs.Trials]) -> str:
    """The figure's lines as text: per level the weights left and each line's mean accuracy,
    with the trials' minimum and maximum; one row per line and level where the lines' weights
    left differ."""

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
    """The y-axis labels of the accuracy and epoch figures, for lines that stopped early (on a
    validation set), did not, or both."""
    if early_stop == {True}:
        return (
            "test accuracy at the early stop (least validation loss)",
            "early-stopping epoch (least validation loss)",
        )
    if early_stop == {False}:
        return "test accuracy", "epoch of best test accuracy"
    return "test accuracy: best, or at the early stop", "epoch of best accuracy, or early stop"


def line(trials: runs.Trials, values: np.ndarray) -> plots.Line:
    """The trials' `values` (one row per trial) as a line: the mean, in a band from the minimum
    to the maximum where there are several trials."""
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


if __name__ == "__main__":
    sys.exit(main())
