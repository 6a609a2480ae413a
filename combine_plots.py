"""Compare runs in one figure: best test accuracy against weights left, one line per run.

    python combine_plots.py                  # newest complete run of each prune type (lt, reinit, random) per arch/dataset
    python combine_plots.py RUN_DIR ...      # exactly these runs (same arch and dataset)

Writes `combined_{arch}_{dataset}.png` (and, with --best_epoch, `combined_{arch}_{dataset}_best_epoch.png`)
into `combined_plots/` beside the runs, or into --out.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import plots
import runs
from cli import OneLineParser
from results import save_png
from utils import UserError, one_line


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="combine_plots.py",
        description="Draw the accuracy-vs-weights-left lines of several runs in one figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="runs to compare (default: see --results_root)",
    )
    add(
        "--results_root",
        default="results",
        help="without RUN_DIRs: compare the newest complete run of each prune type for each arch/dataset here",
    )
    add("--dpi", default=1200, type=int, help="resolution of the figures (as main.py's --plot_dpi)")
    add(
        "--best_epoch",
        action="store_true",
        help="also draw the early-stopping epoch vs weights left",
    )
    add(
        "--out",
        default=None,
        help="folder for the figures (default: combined_plots/ beside the runs)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.dpi < 1:
            raise UserError(f"--dpi must be at least 1, got {args.dpi}")
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
            for path in combine(group, out, args.dpi, args.best_epoch):
                print(f"combined plot: {path}")
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    return 0


def check_same_experiment(group: list[runs.Run]) -> list[runs.Run]:
    """The runs, when they share one arch and data set; UserError naming the first that does not."""
    first = group[0]
    for run in group[1:]:
        for name in ("arch_type", "dataset"):
            if run.args[name] != first.args[name]:
                raise UserError(
                    f"{run.root} has --{name} {run.args[name]} but {first.root} has"
                    f" {first.args[name]}; compare runs of one arch and data set at a time"
                )
    return group


def combine(group: list[runs.Run], out: Path, dpi: int, best_epoch: bool = False) -> list[Path]:
    """Draw the group's figures into `out`; return their paths."""
    arch, dataset = group[0].args["arch_type"], group[0].args["dataset"]
    labels = runs.labels(group)
    accuracy = [
        (lb, r.weights_left(), r.best_accuracy()) for lb, r in zip(labels, group, strict=True)
    ]
    figures = [
        (f"combined_{arch}_{dataset}.png", plots.accuracy_vs_weights(accuracy, dataset, arch))
    ]
    if best_epoch:
        epochs = [(lb, *summary_columns(r)) for lb, r in zip(labels, group, strict=True)]
        figures.append(
            (
                f"combined_{arch}_{dataset}_best_epoch.png",
                plots.best_epoch_vs_weights(epochs, dataset, arch),
            )
        )
    written = []
    for name, figure in figures:
        path = out / name
        save_png(figure, path, dpi)
        plots.close(figure)
        written.append(path)
    return written


def summary_columns(run: runs.Run) -> tuple[np.ndarray, np.ndarray]:
    """Weights left and early-stopping epoch of each level, from summary.csv."""
    rows = run.summary()
    return np.array([r["weights_left"] for r in rows]), np.array([r["best_epoch"] for r in rows])


if __name__ == "__main__":
    sys.exit(main())
