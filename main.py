"""lth: find lottery tickets by iterative magnitude pruning (Frankle & Carbin, ICLR 2019).

Reads top to bottom like the original runner: check the flags, load the data and the
architecture, save the initial state, then for every pruning level prune, rewind (or
re-initialise) and train, writing the original's result files as each level ends.
The flags beyond the original's (README) choose the initialisation, the rewind point, the
pruning scope and the optimiser; their defaults give the original's run. With `--masks_from`,
a `reinit` run prunes nothing itself: each level takes the mask an `lt` run saved for it, and
its pruning rates (runs.MASK_ARGS) are that run's.
"""

import argparse
import copy
import datetime
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import archs
from lth import cli, data, plots, resume, runs
from lth.errors import UserError, one_line
from lth.initialization import Initializer, initializer
from lth.pretrain import pretrain_zae
from lth.pruning import (
    Mask,
    apply_mask,
    device_masks,
    make_mask,
    prune_at_random,
    prune_by_percentile,
    reinitialize,
    rewind,
    state_copy,
    weights_left,
)
from lth.record import (
    choose_seed,
    deterministic_algorithms,
    restore_rng_states,
    rng_states,
    run_record,
    seed_everything,
    with_resume,
)
from lth.results import RunDir, level_tag, read_mask
from lth.steps import use_compile
from lth.train import (
    InputDropout,
    LevelHistory,
    add_input_dropout,
    build_optimizer,
    flush_denormals,
    lr_schedule,
    steps_per_epoch,
    train_level,
)
from utils import print_nonzeros


@dataclass
class Progress:
    """Everything a level hands to the next; the checkpoint keeps it (resume.checkpoint_progress)."""

    mask: Mask  # parameter name -> array of ones and zeros, for each prunable weight
    initial_state: dict[str, torch.Tensor]
    comp: np.ndarray  # nonzero parameters (%) at the start of each level: the original's figure
    bestacc: np.ndarray  # best test accuracy of each level
    tags: list[str] = field(default_factory=list)  # the `{comp}` text of each finished level
    summary: list[dict] = field(default_factory=list)  # rows of summary.csv
    rewind_state: dict[str, torch.Tensor] | None = None  # after cli.rewind_step steps of level 0


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv)
    try:
        run(args, cli.explicit_flags(argv))
    except resume.RunFinished as finished:
        print(f"nothing to do: {finished}")
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished levels are kept; `python main.py --resume` with the same"
            " --dataset, --arch_type and --prune_type continues the newest such run",
            file=sys.stderr,
        )
        return 130
    return 0


def run(args: argparse.Namespace, explicit: set[str]) -> None:
    flush_denormals()  # first: CPU threads started before it would keep denormals
    resumed = resume.locate(args, explicit) if args.resume is not None else None
    if resumed is not None:
        args = resumed.args
    cli.validate(args)
    if args.masks_from is not None:
        args.masks_from = str(runs.mask_source(args.masks_from, args))
        if resumed is None:  # a resumed run keeps the rates it recorded
            runs.take_mask_args(args, explicit)
    args.seed = choose_seed(args.seed)
    print(f"seed: {args.seed}")
    device = select_device(args.gpu)
    deterministic_algorithms(device)  # before any cuBLAS work

    train_set, test_set = data.load(args.dataset, args.data_dir, args.data_source, device)
    val_set = None
    if args.val_size > 0:  # before the run folder exists: a bad --val_size creates nothing
        train_set, val_set = data.hold_out(train_set, args.val_size, args.batch_size)
    epoch_steps = steps_per_epoch(len(train_set), args.batch_size)
    cli.validate_rewind_step(args, epoch_steps)
    seed_everything(args.seed)
    init = initializer(args.init, train_set)
    model = build_model(args, train_set, init).to(device)
    if resumed is not None and resumed.checkpoint is not None:  # before anything is written
        resumed.checkpoint = resume.whole_checkpoint(
            resumed.checkpoint,
            resumed.run_dir,
            rewinds_late=cli.rewind_step(args, epoch_steps) > 0,
            classes=saved_model_classes(model),
        )
    if args.masks_from is not None:
        check_saved_masks(model, args)
    if args.pretrain == "zae" and (resumed is None or resumed.checkpoint is None):
        pretrain_zae(
            model, train_set.images, epochs=args.pretrain_epochs, batch_size=args.batch_size
        )

    if resumed is None:
        run_dir = RunDir.create(args.results_root, args.arch_type, args.dataset, args.prune_type)
    else:
        run_dir = resumed.run_dir
    with run_dir.locked():
        if resumed is None:
            record_run(run_dir, args, device, model)
            progress, start = fresh_progress(model, args.prune_iterations), 0
        else:
            run_dir.write_json(
                "args.json", with_resume(resumed.record, resumed.start, resumed.changed, device)
            )
            progress = restore(run_dir, model, resumed, args.prune_iterations)
            start = resumed.start
        for level in range(start, args.prune_iterations):
            run_level(run_dir, args, level, model, progress, train_set, test_set, init, val_set)
            run_dir.save_checkpoint(checkpoint(level, model, progress))
    print(f"\nresults: {run_dir.root}\nplots: {run_dir.plots}")


def run_level(
    run_dir: RunDir,
    args: argparse.Namespace,
    level: int,
    model: nn.Module,
    progress: Progress,
    train_set: data.Split,
    test_set: data.Split,
    init: Initializer,
    val_set: data.Split | None = None,
) -> None:
    """Prune and reset (after level 0), train, and write the level's files.

    Level 0 trains every step and keeps its state after the rewind step N (`cli.rewind_step`)
    when N > 0. Every later level is reset to step N (its initial weights when N is 0) and
    trains from step N to the end, with a fresh optimiser and the learning-rate schedule
    continued at step N (restarted when N is 0, as in the paper; as OpenLTH when N > 0).
    """
    if level > 0:
        progress.mask = prune(model, progress.mask, args, level)
        reset_survivors(model, progress, args.prune_type, init)
    elif args.masks_from is not None:  # that run's level-0 mask: dense, for runs of this program
        progress.mask = prune(model, progress.mask, args, level)
    epoch_steps = steps_per_epoch(len(train_set), args.batch_size)
    rewind_at = cli.rewind_step(args, epoch_steps)
    start = 0 if level == 0 else rewind_at  # level 0 runs whole; N = 0: no rewind state kept
    keep = (rewind_at, rewind_keeper(run_dir, model, progress)) if level == 0 else None
    optimizer = build_optimizer(args, model)
    schedule = lr_schedule(
        optimizer,
        warmup_iters=args.warmup_iters,
        drops=cli.lr_drop_epochs(args),
        gamma=1.0 if args.lr_gamma is None else args.lr_gamma,  # None: no drops (cli.py)
        epoch_steps=epoch_steps,
        start_step=start,
    )

    print(f"\n--- Pruning Level [0:{level}/{args.prune_iterations}]: ---")
    comp = print_nonzeros(model)
    suffix = run_dir.events_suffix(level)
    with SummaryWriter(str(run_dir.tensorboard), filename_suffix=suffix) as writer:
        history = train_level(
            model,
            train_set,
            test_set,
            optimizer,
            device_masks(model, progress.mask),
            epochs=args.end_iter,
            batch_size=args.batch_size,
            valid_freq=args.valid_freq,
            print_freq=args.print_freq,
            description=f"[level {level}] ",
            on_epoch=epoch_hook(writer, args, level),
            compiled=use_compile(args.compile, train_set.labels.device),
            val_set=val_set,
            schedule=schedule,
            start_step=start,
            after_steps=keep,
        )
        write_level(run_dir, args, level, comp, history, model, progress, writer)
    if level == args.prune_iterations - 1:
        write_final(run_dir, args, progress)


def select_device(gpu: str) -> torch.device:
    """CUDA device number `gpu` when CUDA is there, else the CPU with a one-line notice."""
    if not torch.cuda.is_available():
        print("notice: CUDA is not available, running on the CPU")
        return torch.device("cpu")
    if int(gpu) >= torch.cuda.device_count():
        raise UserError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(f"cuda:{int(gpu)}")


def build_model(args: argparse.Namespace, train_set: data.Split, init: Initializer) -> nn.Module:
    """The architecture, fitted to the training data if it needs them, initialised (`--init`),
    with `--dropout` on every layer's input."""
    model = archs.build(args.dataset, args.arch_type, **cli.arch_options(args))
    archs.fit_to_data(model, train_set)
    return add_input_dropout(init(model), args.dropout)


def saved_model_classes(model: nn.Module) -> list[type]:
    """The classes a whole model this run saved holds (results.RunDir.save_model): those of
    `model`'s modules, and --dropout's hook. Reading a saved model back allows these only."""
    return [*dict.fromkeys(type(module) for module in model.modules()), InputDropout]


def record_run(
    run_dir: RunDir, args: argparse.Namespace, device: torch.device, model: nn.Module
) -> None:
    """args.json and the initial state, saved before any training."""
    record = run_record(args, device)
    record["started"] = datetime.datetime.now().isoformat()
    run_dir.write_json("args.json", record)
    run_dir.save_model(model, run_dir.initial_state_path())
    print(f"run folder: {run_dir.root}")


def fresh_progress(model: nn.Module, levels: int) -> Progress:
    initial_state = state_copy(model)
    return Progress(
        make_mask(model), initial_state, np.zeros(levels, float), np.zeros(levels, float)
    )


def restore(run_dir: RunDir, model: nn.Module, resumed: resume.Resumed, levels: int) -> Progress:
    """Put the model, the progress and every random generator where the run's last checkpoint
    left them.

    Without a checkpoint (stopped in level 0, or --start_iter 0) the run starts again from its
    seed: the model built from it is the same initial model, and its file is written again.
    """
    run_dir.remove_leftovers(resumed.start, levels)
    print(f"resuming {run_dir.root} at level {resumed.start}")
    if resumed.checkpoint is None:
        run_dir.save_model(model, run_dir.initial_state_path())
        return fresh_progress(model, levels)
    model.load_state_dict(resumed.checkpoint["model_state"])
    restore_rng_states(resumed.checkpoint["rng"])
    return Progress(**resumed.checkpoint["progress"])


def prune(model: nn.Module, mask: Mask, args: argparse.Namespace, level: int) -> Mask:
    """One level's pruning: by magnitude; at random with the same per-layer counts (`random`);
    or, with --masks_from, by nothing of this run's: the mask that run saved for `level`."""
    if args.masks_from is not None:
        saved = saved_mask(model, args, level)
        apply_mask(model, saved)
        return saved
    how = prune_at_random if args.prune_type == "random" else prune_by_percentile
    return how(
        model,
        mask,
        args.prune_percent,
        scope=args.prune_scope,
        output_percent=args.prune_percent_output,
        conv_percent=args.prune_percent_conv,
    )


def saved_mask(model: nn.Module, args: argparse.Namespace, level: int) -> Mask:
    """The mask of `level` in the run --masks_from names (its `{pt}_mask_{comp}.pkl`, found by
    the `{comp}` its summary.csv gives that level)."""
    return read_mask(runs.read_run(args.masks_from).mask_path(level), model)


def check_saved_masks(model: nn.Module, args: argparse.Namespace) -> None:
    """Read every level's mask of the --masks_from run before anything is written: UserError
    when one is missing or does not fit `model`."""
    for level in range(args.prune_iterations):
        saved_mask(model, args, level)


def reset_survivors(
    model: nn.Module, progress: Progress, prune_type: str, init: Initializer
) -> None:
    """`lt` and `random` rewind the survivors to their initial values (or, with --rewind_iter
    or --rewind_epoch, to those after that many steps or epochs of level 0); `reinit` draws new
    random ones."""
    if prune_type == "reinit":
        model.load_state_dict(progress.initial_state)  # buffers (BatchNorm statistics) too
        reinitialize(model, progress.mask, init)
    else:
        late = progress.rewind_state
        rewind(model, progress.mask, progress.initial_state if late is None else late)


def epoch_hook(writer: SummaryWriter, args: argparse.Namespace, level: int) -> Callable[..., None]:
    """What happens after each epoch: log it at TensorBoard step level * --end_iter + epoch
    (epochs counted from step 0, a rewound level's too)."""

    def on_epoch(
        epoch: int,
        loss: float,
        accuracy: float,
        val_loss: float | None = None,
        val_accuracy: float | None = None,
    ) -> None:
        log_epoch(writer, args, level, epoch, loss, accuracy)
        if val_loss is not None and val_accuracy is not None:
            step = level * args.end_iter + epoch
            writer.add_scalar("Loss/validation", val_loss, step)
            writer.add_scalar("Accuracy/validation", val_accuracy, step)

    return on_epoch


def rewind_keeper(run_dir: RunDir, model: nn.Module, progress: Progress) -> Callable[[], None]:
    """What level 0 does once it has done the rewind step's optimiser steps: keep the weights
    that later levels rewind to, in the progress and in their result file."""

    def keep() -> None:
        progress.rewind_state = state_copy(model)
        run_dir.save_model(model, run_dir.rewind_state_path())

    return keep


def log_epoch(
    writer: SummaryWriter, args: argparse.Namespace, level: int, epoch: int, loss: float, acc: float
) -> None:
    step = level * args.end_iter + epoch
    writer.add_scalar("Loss/train", loss, step)
    writer.add_scalar("Accuracy/test", acc, step)


def write_level(
    run_dir: RunDir,
    args: argparse.Namespace,
    level: int,
    comp: float,
    history: LevelHistory,
    model: nn.Module,
    progress: Progress,
    writer: SummaryWriter,
) -> None:
    """The level's files: best model, loss/accuracy dumps and plot, mask, summary row.

    `comp` (the `{comp}` of the file names) is the original's figure, the share of nonzero
    parameters; summary.csv has it as `params_left` beside `weights_left`, the share of the
    prunable weights the mask keeps.
    """
    tag = level_tag(comp, level, progress.tags)
    left = weights_left(progress.mask)
    progress.tags.append(tag)
    progress.comp[level], progress.bestacc[level] = comp, history.best_accuracy

    best_model = copy.deepcopy(model)
    best_model.load_state_dict(history.best_state)
    run_dir.save_model(best_model, run_dir.model_path(level))
    run_dir.dump_array(history.all_loss, run_dir.dump_path("all_loss", tag))
    run_dir.dump_array(history.all_accuracy, run_dir.dump_path("all_accuracy", tag))
    if history.all_val_loss is not None and history.all_val_accuracy is not None:
        run_dir.dump_array(history.all_val_loss, run_dir.dump_path("all_val_loss", tag))
        run_dir.dump_array(history.all_val_accuracy, run_dir.dump_path("all_val_accuracy", tag))
    run_dir.dump_mask(model, progress.mask, run_dir.dump_path("mask", tag, ".pkl"))
    figure = plots.loss_vs_accuracy(
        history.all_loss,
        history.all_accuracy,
        args.dataset,
        args.arch_type,
        first_epoch=history.first_epoch + 1,
    )
    run_dir.save_figure(figure, run_dir.loss_plot_path(tag), args.plot_dpi)
    plots.close(figure)

    progress.summary.append(summary_row(level, left, comp, history))
    run_dir.write_summary(progress.summary)
    writer.add_scalar("Accuracy/best_by_level", history.best_accuracy, level)
    writer.add_scalar("Accuracy/best_vs_weights_left_x10", history.best_accuracy, round(left * 10))
    writer.flush()


def summary_row(level: int, left: float, comp: float, history: LevelHistory) -> dict:
    """The level's row of summary.csv; with a validation set, the early stop's columns too
    (best_accuracy and best_epoch are then the test accuracy and epoch of the early stop)."""
    row = {
        "level": level,
        "weights_left": left,
        "params_left": comp,
        "best_accuracy": history.best_accuracy,
        "best_epoch": history.best_epoch,
        "final_accuracy": history.final_accuracy,
        "final_loss": float(history.all_loss[-1]),
    }
    if history.early_stop_epoch is not None:
        row["early_stop_epoch"] = history.early_stop_epoch
        row["val_loss"] = history.val_loss
        row["val_accuracy"] = history.val_accuracy
        row["test_accuracy"] = history.best_accuracy
    return row


def write_final(run_dir: RunDir, args: argparse.Namespace, progress: Progress) -> None:
    """The whole run's files: the original's `comp` and best accuracy per level, and their plot."""
    run_dir.dump_array(progress.comp, run_dir.dump_path("compression"))
    run_dir.dump_array(progress.bestacc, run_dir.dump_path("bestaccuracy"))
    figure = plots.accuracy_vs_weights(
        [("Winning tickets", progress.comp, progress.bestacc)], args.dataset, args.arch_type
    )
    run_dir.save_figure(figure, run_dir.accuracy_plot_path(), args.plot_dpi)
    plots.close(figure)


def checkpoint(level: int, model: nn.Module, progress: Progress) -> dict:
    """The state at the end of `level` that the next level needs, each part stored once."""
    return {
        "level": level,
        "model_state": model.state_dict(),
        "progress": resume.checkpoint_progress(vars(progress)),
        "rng": rng_states(),
    }


if __name__ == "__main__":
    sys.exit(main())
