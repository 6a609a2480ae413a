"""Instability analysis of a finished run's subnetworks (Frankle et al., ICML 2020).

    python instability.py RUN                 # every finished level of RUN
    python instability.py RUN --levels 0 3    # these levels only

Each level's subnetwork at the run's rewind point trains twice, on the data orders of seeds S
and S+1, with the run's recipe; the test error is measured at --points points of the line
between the two copies. Writes into RUN/instability/ `instability_seed{S}.csv` (every point),
`instability_seed{S}_barriers.csv` (barrier and excess per level), `.png` and `.json` (the
analysis's arguments, seeds and versions), replacing an earlier analysis with the same seed.
"""

import argparse
import datetime
import sys

import numpy as np
import torch
from torch import nn

from lth import cli, methods, plots, runs
from lth.errors import UserError, one_line
from lth.experiment import Experiment
from lth.initialization import initializer
from lth.instability import (
    POINTS,
    SEED_RANGE,
    Outputs,
    PathErrors,
    Subnetwork,
    alphas,
    copy_seeds,
    errors_along_path,
    table,
    train_copies,
    write_tables,
)
from lth.lottery import build_model, load_data, saved_model_classes, select_device
from lth.pruning import Mask, weights_left
from lth.record import RunRecord, choose_seed, deterministic_algorithms, run_record
from lth.results import read_mask, save_png, write_json
from lth.resume import saved_state
from lth.train import LevelData, flush_denormals, steps_per_epoch


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="instability.py",
        description="Train each level's subnetwork twice, on two data orders, from the run's rewind point, and measure the test error on the straight line between the two.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("run_dir", metavar="RUN", help="a run folder of main.py (an lt or random run)")
    add(
        "--levels",
        nargs="+",
        type=int,
        metavar="L",
        help="levels to analyse; None means every finished one",
    )
    add(
        "--points", default=POINTS, type=int, help="evenly spaced points on the path, ends included"
    )
    add(
        "--seed",
        default=None,
        type=int,
        metavar="S",
        help="the copies train on the data orders of seeds S and S+1; None means the run's seed",
    )
    add("--gpu", default="0", help="index of the CUDA device to use")
    add("--data_dir", default=None, help="where the data set lives; None means the run's")
    add("--plot_dpi", default=None, type=int, help="resolution of the figure; None means the run's")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        analyse(args)
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    return 0


def analyse(args: argparse.Namespace) -> None:
    """Every check before any training; the files only once every level is measured."""
    check_flags(args)
    run = runs.read_run(args.run_dir)
    if run is None:
        raise UserError(f"{args.run_dir} is not a run folder (no readable args.json)")
    check_rewind_point(run)
    recipe = recorded_recipe(run, args)
    levels = chosen_levels(run, args.levels)
    seed = choose_seed(args.seed if args.seed is not None else run.args.get("seed"))
    flush_denormals()  # before any parallel CPU work, as main.py
    device = select_device(args.gpu)
    deterministic_algorithms(device)
    loaded = load_data(recipe, device)
    rewind_at = recipe.rewind_step(steps_per_epoch(len(loaded.train), recipe.batch_size))
    model = build_model(recipe, loaded.train, initializer(recipe.init, loaded.train)).to(device)
    start = rewind_point(run, model, rewind_at > 0)
    masks = {level: read_mask(run.mask_path(level), model) for level in levels}
    print(
        f"seed: {seed} (the copies' data orders: seeds {' and '.join(map(str, copy_seeds(seed)))})"
    )

    points = alphas(args.points)
    results = [
        analyse_level(level, masks[level], model, start, seed, recipe, loaded, rewind_at, points)
        for level in levels
    ]
    outputs = Outputs.of(run.root, seed)
    replaced = outputs.existing()
    write_tables(outputs, results)
    figure = plots.error_along_path(
        [
            plots.PathLine(
                f"{r.weights_left:g}% weights left", r.alphas, r.errors, r.straight, r.peak
            )
            for r in results
        ],
        recipe.dataset,
        recipe.arch_type,
    )
    save_png(figure, outputs.figure, recipe.plot_dpi)
    plots.close(figure, recipe.plot_dpi)
    write_json(outputs.record, analysis_record(args, run, levels, seed, rewind_at, device))
    for result in results:
        print(result.verdict())
    print("\n".join(table(results)))
    if replaced:
        print(f"replaced the earlier analysis with seed {seed}: {', '.join(map(str, replaced))}")
    for path in outputs.all():
        print(f"written: {path}")


def check_rewind_point(run: runs.Run) -> None:
    """UserError when the run's prune method (lth.methods, among the registered ones) starts
    its levels from no state of level 0, naming what they start from and the methods whose
    runs can be analysed. A prune type no registered method records is left to
    `recorded_recipe`, which refuses it."""
    prune_type = run.args.get("prune_type")
    method = {m.name: m for m in methods.recordable()}.get(prune_type)
    if method is not None and not method.has_rewind_point:
        analysable = [m.name for m in methods.recordable() if m.has_rewind_point]
        choices = f"{', '.join(analysable[:-1])} or {analysable[-1]}"
        raise UserError(
            f"{run.root} is a --prune_type {prune_type} run: {method.no_rewind_point}, so it has"
            f" no rewind point to train copies from; analyse an {choices} run"
        )


def check_flags(args: argparse.Namespace) -> None:
    if args.points < 2:
        raise UserError(f"--points must be at least 2 (the two ends), got {args.points}")
    if args.seed is not None and not 0 <= args.seed < SEED_RANGE:
        raise UserError(f"--seed must be in 0..{SEED_RANGE - 1}, got {args.seed}")
    if args.plot_dpi is not None and args.plot_dpi < 1:
        raise UserError(f"--plot_dpi must be at least 1, got {args.plot_dpi}")


def recorded_recipe(run: runs.Run, args: argparse.Namespace) -> Experiment:
    """The run's recipe as its latest resume left it, checked as main.py checks it, with this
    command's --gpu, --data_dir and --plot_dpi."""
    arguments = argparse.Namespace(**run.args)
    arguments.resume, arguments.start_iter, arguments.gpu = None, 0, args.gpu
    if args.data_dir is not None:
        arguments.data_dir, arguments.data_source = args.data_dir, None
    if args.plot_dpi is not None:
        arguments.plot_dpi = args.plot_dpi
    try:
        cli.validate(arguments)
    except UserError as error:
        raise UserError(f"{RunRecord.path(run.root)}: {error}") from None
    return Experiment.of(vars(arguments))


def chosen_levels(run: runs.Run, wanted: list[int] | None) -> list[int]:
    """--levels (each once, in order), each a finished level; without it, every finished one."""
    done = run.finished_levels()
    if done == 0:
        raise UserError(f"{run.root} has no finished level yet")
    if wanted is None:
        return list(range(done))
    for level in wanted:
        if not 0 <= level < done:
            raise UserError(
                f"--levels {level}: {run.root} has finished levels 0..{done - 1}; choose among them"
            )
    return list(dict.fromkeys(wanted))


def rewind_point(run: runs.Run, model: nn.Module, late: bool) -> dict[str, torch.Tensor]:
    """The copies' start: the run's rewind state when it rewound late, else its initial state,
    read allowing only the classes `model` is made of."""
    files = run.files
    if late:
        path, what = files.rewind_state_path(), "rewind state"
    else:
        path, what = files.initial_state_path(), "initial state"
    hint = "instability.py trains each level's copies from it"
    return saved_state(path, what, saved_model_classes(model), hint)


def analyse_level(
    level: int,
    mask: Mask,
    model: nn.Module,
    start: dict[str, torch.Tensor],
    seed: int,
    recipe: Experiment,
    loaded: LevelData,
    rewind_at: int,
    points: np.ndarray,
) -> PathErrors:
    """Two copies of the level's subnetwork trained as one batch, then the path between them."""
    first, second = train_copies(
        Subnetwork(model, start, mask),
        copy_seeds(seed),
        recipe,
        loaded,
        start_step=rewind_at,
        description=f"[level {level}: two copies] ",
    )
    errors = errors_along_path(
        model, first, second, loaded.test, points, description=f"[level {level}: path] "
    )
    return PathErrors(level, weights_left(mask), points, errors)


def analysis_record(
    args: argparse.Namespace,
    run: runs.Run,
    levels: list[int],
    seed: int,
    rewind_at: int,
    device: torch.device,
) -> dict:
    """What the analysis ran (`record.run_record`), with its levels, seeds and start step."""
    arguments = argparse.Namespace(**{**vars(args), "levels": levels, "seed": seed})
    return {
        **run_record(vars(arguments), device),
        "run_dir": str(run.root.resolve()),
        "run_seed": run.args.get("seed"),
        "copy_seeds": copy_seeds(seed),
        "start_step": rewind_at,
        "finished": datetime.datetime.now().isoformat(),
    }


if __name__ == "__main__":
    sys.exit(main())
