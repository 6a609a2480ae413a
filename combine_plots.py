"""Compare runs in one figure: best test accuracy against weights left, one line per experiment.

    python combine_plots.py              # newest complete run of each prune type per arch/dataset
    python combine_plots.py RUN_DIR ...  # exactly these runs (same arch and dataset)

The trials of one experiment (runs differing only in --seed) are one line, their mean in a band
from their minimum to their maximum. Writes `combined_{arch}_{dataset}.png` and `.csv` (and the
--best_epoch and --layers figures) into `combined_plots/` beside the runs, or into --out.
"""

import argparse
import sys
from pathlib import Path

from lth import cli, compare, runs
from lth.cli import OneDefaultFormatter, OneLineParser, flag_group
from lth.errors import UserError, one_line
from lth.experiment import identity


def build_parser() -> argparse.ArgumentParser:
    """combine_plots.py's arguments, one --help heading per purpose."""
    parser = OneLineParser(
        prog="combine_plots.py",
        description="Draw the accuracy-vs-weights-left lines of several runs in one figure.",
        formatter_class=OneDefaultFormatter,
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        if args.run_dirs:
            groups = [check_same_experiment([runs.load_run(d) for d in args.run_dirs])]
            beside = Path(args.run_dirs[0]).resolve().parent
        else:
            groups = list(runs.newest_complete(args.results_root).values())
            if not groups:
                raise UserError(f"--results_root {args.results_root}: no complete run there")
            beside = Path(args.results_root)
        out = Path(args.out) if args.out else beside / "combined_plots"
        for group in groups:
            compare.announce(compare.combine(group, out, args.dpi, args.best_epoch, args.layers))
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


if __name__ == "__main__":
    sys.exit(main())
