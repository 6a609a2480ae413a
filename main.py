"""lth: find lottery tickets by iterative magnitude pruning (Frankle & Carbin, ICLR 2019).

Reads top to bottom like the original runner: check the flags, load the data and the
architecture, save the initial state, then for every pruning level prune, rewind (or
re-initialise) and train, writing the original's result files as each level ends.

Every run is a batch of trials (one trial: the original's run). `--seed 0 1 2` and
`--prune_type lt reinit_ticket random` ask for several, which train together as one stacked
model (lth.stack), each writing the run folder it would write alone. Each trial has its own
module, generators (lth.record.TrialRandom), mask, progress and folder; they share the data, the
optimiser step and the level loop. The flags beyond the original's (README) choose the
initialisation, the rewind point, the pruning scope and the optimiser; their defaults give the
original's run. A `reinit` control prunes nothing itself: each level takes the mask of an `lt`
run (`--masks_from`) or of the batch's `lt` trial of its seed (`reinit_ticket`).
"""

import argparse
import contextlib
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import archs
from lth import cli, data, memory, plots, resume, runs, stack
from lth.errors import UserError, one_line
from lth.experiment import AT_INIT, KEEP_TRAINED, Experiment, Trial, identity
from lth.initialization import Initializer, initializer
from lth.pretrain import pretrain_zae
from lth.pruning import (
    Mask,
    apply_mask,
    make_mask,
    prune_at_random,
    prune_by_percentile,
    reinitialize,
    rewind,
    state_copy,
    weights_left,
)
from lth.record import (
    RunRecord,
    TrialRandom,
    choose_seed,
    deterministic_algorithms,
    restore_rng_states,
    rng_states,
    seed_everything,
)
from lth.results import RunDir, level_tag, read_mask
from lth.saliency import at_init_mask, level_counts
from lth.steps import use_compile
from lth.train import (
    EVAL_BATCH,
    InputDropout,
    LevelHistory,
    add_input_dropout,
    flush_denormals,
    level_optimizer,
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


@dataclass
class TrialRun:
    """One trial of the batch: what it is, its own module and generators, where it writes, what
    it has done, and why it stopped (None while it runs)."""

    trial: Trial
    model: nn.Module
    random: TrialRandom
    run_dir: RunDir | None = None
    progress: Progress | None = None
    failure: str | None = None

    @property
    def name(self) -> str:
        return f"{self.trial.prune_type} seed {self.trial.seed}"


@dataclass(frozen=True)
class Data:
    train: data.Split
    test: data.Split
    val: data.Split | None


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv)
    try:
        failures = run(args, cli.explicit_flags(argv))
    except resume.RunFinished as finished:
        print(f"nothing to do: {finished}")
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished levels are kept; `python main.py --resume RUN_DIR` (any run"
            " folder of the batch) continues it, alone the newest run of that --dataset,"
            " --arch_type and --prune_type",
            file=sys.stderr,
        )
        return 130
    else:
        for line in failures:
            print(f"error: {line}", file=sys.stderr)
        return 2 if failures else 0
    return 0


def run(args: argparse.Namespace, explicit: set[str]) -> list[str]:
    """The whole batch; returns one line for each trial that stopped (its loss not finite)."""
    flush_denormals()  # first: CPU threads started before it would keep denormals
    resumed = resume.locate(args, explicit, cli.validate) if args.resume is not None else None
    if resumed is None:
        experiment, trials = describe_batch(args, explicit)
    else:
        experiment, trials = resumed.experiment, resumed.trials
    print(f"seed: {' '.join(str(t.seed) for t in trials)}")
    device = select_device(experiment.gpu)
    deterministic_algorithms(device)  # before any cuBLAS work

    loaded = load_data(experiment, device)  # before any folder exists: bad data create nothing
    epoch_steps = steps_per_epoch(len(loaded.train), experiment.batch_size)
    cli.validate_rewind_step(experiment, epoch_steps)
    seed_everything(trials[0].seed)  # the batch's shared draws (dropout) start from its first seed
    init = initializer(experiment.init, loaded.train)
    batch = [build_trial(experiment, trial, loaded.train, init, device) for trial in trials]
    check_memory(experiment, batch, loaded.train, device)
    if resumed is not None:  # before anything is written
        rewinds_late = cli.rewind_step(experiment, epoch_steps) > 0
        restore_batch(batch, resumed, rewinds_late, experiment.prune_iterations)
    for trial_run in batch:
        if trial_run.trial.masks_from is not None:
            check_saved_masks(trial_run.model, trial_run.trial.masks_from, experiment)
    if experiment.pretrain == "zae":
        pretrain(batch, experiment, loaded.train)

    print_layers(batch[0].model)
    start = 0 if resumed is None else resumed.start
    if resumed is None:
        create_run_dirs(experiment, batch)
    with contextlib.ExitStack() as locks:
        for trial_run in batch:
            locks.enter_context(trial_run.run_dir.locked())
        if resumed is None:
            record_batch(experiment, batch, device)
        else:
            record_resume(batch, resumed, device, experiment.prune_iterations)
        stacked = None
        for level in range(start, experiment.prune_iterations):
            running = [t for t in batch if t.failure is None]
            if not running:
                break
            if stacked is None or stacked.trials != len(running):
                stacked = stack.StackedModel([t.model for t in running])
            run_level(experiment, level, running, batch, stacked, loaded, init)
            commit_checkpoints(level, [t for t in running if t.failure is None])
    for trial_run in batch:
        print(f"\nresults: {trial_run.run_dir.root}\nplots: {trial_run.run_dir.plots}")
    return [f"{t.run_dir.root}: {t.failure}" for t in batch if t.failure is not None]


def print_layers(model: nn.Module) -> None:
    """The original's "Layer Looper": each parameter's name and shape (the batch's trials share
    them, so once)."""
    for name, param in model.named_parameters():
        print(name, param.size())


def restore_batch(
    batch: list[TrialRun], resumed: resume.Resumed, rewinds_late: bool, levels: int
) -> None:
    """Each trial of a resumed batch back in its folder and, where it has a checkpoint, where
    that left it (its initial and rewind states read from their result files), once every
    checkpoint is known to fit its trial (`resume.check_checkpoint`)."""
    for trial_run, run_dir, saved in zip(batch, resumed.run_dirs, resumed.checkpoints, strict=True):
        trial_run.run_dir = run_dir
        if saved is not None:
            resume.check_checkpoint(saved, run_dir.checkpoint_path(), trial_run.model, levels)
            classes = saved_model_classes(trial_run.model)
            restore_trial(trial_run, resume.whole_checkpoint(saved, run_dir, rewinds_late, classes))


def pretrain(batch: list[TrialRun], experiment: Experiment, train_set: data.Split) -> None:
    """`--pretrain zae` of every trial starting afresh, each from its own generators."""
    for trial_run in batch:
        if trial_run.progress is None:
            with trial_run.random.active():
                pretrain_zae(
                    trial_run.model,
                    train_set.images,
                    epochs=experiment.pretrain_epochs,
                    batch_size=experiment.batch_size,
                )


def describe_batch(args: argparse.Namespace, explicit: set[str]) -> tuple[Experiment, list[Trial]]:
    """The Experiment every trial shares and the Trials, from the command line: each trial's
    arguments checked (cli.validate), a random seed drawn when none is given (one for all the
    batch's prune types, so that a control pairs with its ticket), a --masks_from run checked."""
    specs = cli.trial_specs(args)
    seeds = {seed: choose_seed(seed) for _, seed in specs}
    experiments, trials = [], []
    for prune_type, seed in specs:
        arguments = cli.trial_namespace(args, prune_type, seeds[seed])
        cli.validate(arguments)
        if arguments.masks_from is not None:
            arguments.masks_from = str(runs.mask_source(arguments.masks_from, arguments))
            runs.take_mask_args(arguments, explicit)
        experiments.append(Experiment.of(vars(arguments)))
        ticket = None
        if prune_type == cli.CONTROL:
            ticket = specs.index(("lt", seed))
        trials.append(Trial(seeds[seed], arguments.prune_type, arguments.masks_from, ticket))
    shared = [identity(e.settings(), e.settings()) for e in experiments]
    assert all(s == shared[0] for s in shared), "the trials of a batch share a recipe"
    return experiments[0], trials


def select_device(gpu: str) -> torch.device:
    """CUDA device number `gpu` when CUDA is there, else the CPU with a one-line notice."""
    if not torch.cuda.is_available():
        print("notice: CUDA is not available, running on the CPU")
        return torch.device("cpu")
    if int(gpu) >= torch.cuda.device_count():
        raise UserError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(f"cuda:{int(gpu)}")


def load_data(experiment: Experiment, device: torch.device) -> Data:
    """The data set on the device, with the --val_size images held out for validation."""
    train_set, test_set = data.load(
        experiment.dataset, experiment.data_dir, experiment.data_source, device
    )
    val_set = None
    if experiment.val_size > 0:
        train_set, val_set = data.hold_out(train_set, experiment.val_size, experiment.batch_size)
    return Data(train_set, test_set, val_set)


def build_model(experiment: Experiment, train_set: data.Split, init: Initializer) -> nn.Module:
    """The architecture, fitted to the training data if it needs them, initialised (`--init`),
    with `--dropout` on every layer's input."""
    model = archs.build(experiment.dataset, experiment.arch_type, **cli.arch_options(experiment))
    archs.fit_to_data(model, train_set)
    return add_input_dropout(init(model), experiment.dropout)


def build_trial(
    experiment: Experiment,
    trial: Trial,
    train_set: data.Split,
    init: Initializer,
    device: torch.device,
) -> TrialRun:
    """The trial's own module, built and initialised on the CPU from its own generators (what a
    run of its seed alone draws), then moved to the device."""
    random = TrialRandom(trial.seed)
    with random.active():
        model = build_model(experiment, train_set, init)
    return TrialRun(trial, model.to(device), random)


def check_memory(
    experiment: Experiment, batch: list[TrialRun], train_set: data.Split, device: torch.device
) -> None:
    """UserError, before any folder is written, when the batch would not fit in memory."""
    if len(batch) == 1:
        return  # a run alone is the original's: nothing to split
    sample = train_set.batch(torch.zeros(1, dtype=torch.long, device=device))[0]
    per_trial = memory.trial_bytes(batch[0].model, sample, experiment.batch_size, EVAL_BATCH)
    memory.check_batch_fits(
        len(batch),
        per_trial,
        device,
        "give fewer --seed or --prune_type values, or sweep.py --batch",
    )


def create_run_dirs(experiment: Experiment, batch: list[TrialRun]) -> None:
    """One new run folder per trial, in the batch's order."""
    for trial_run in batch:
        trial_run.run_dir = RunDir.create(
            experiment.results_root,
            experiment.arch_type,
            experiment.dataset,
            trial_run.trial.prune_type,
        )


def record_batch(experiment: Experiment, batch: list[TrialRun], device: torch.device) -> None:
    """Each trial's args.json (its arguments, with the batch it runs in) and initial state, saved
    before any training."""
    names = [t.run_dir.root.name for t in batch]
    for index, trial_run in enumerate(batch):
        trial = trial_run.trial
        ticket = batch[trial.ticket].run_dir.root.resolve() if trial.ticket is not None else None
        arguments = trial.args(experiment, str(ticket) if ticket is not None else None)
        entry = {"runs": names, "index": index, "ticket": trial.ticket}
        RunRecord.new(trial_run.run_dir.root, arguments, device, entry).write()
        trial_run.run_dir.save_model(trial_run.model, trial_run.run_dir.initial_state_path())
        trial_run.progress = fresh_progress(trial_run.model, experiment.prune_iterations)
        print(f"run folder: {trial_run.run_dir.root}")


def record_resume(
    batch: list[TrialRun], resumed: resume.Resumed, device: torch.device, levels: int
) -> None:
    """Each trial's args.json with this resume added; the leftovers of the interrupted level
    removed; trials resumed without a checkpoint start again from their seeds."""
    for trial_run, record in zip(batch, resumed.records, strict=True):
        run_dir = trial_run.run_dir
        record.resumed(resumed.start, resumed.changed, device).write()
        run_dir.remove_leftovers(resumed.start, levels)
        print(f"resuming {run_dir.root} at level {resumed.start}")
        if trial_run.progress is None:
            run_dir.save_model(trial_run.model, run_dir.initial_state_path())
            trial_run.progress = fresh_progress(trial_run.model, levels)


def saved_model_classes(model: nn.Module) -> list[type]:
    """The classes a whole model this run saved holds (results.RunDir.save_model): those of
    `model`'s modules, and --dropout's hook. Reading a saved model back allows these only."""
    return [*dict.fromkeys(type(module) for module in model.modules()), InputDropout]


def fresh_progress(model: nn.Module, levels: int) -> Progress:
    initial_state = state_copy(model)
    return Progress(
        make_mask(model), initial_state, np.zeros(levels, float), np.zeros(levels, float)
    )


def restore_trial(trial_run: TrialRun, checkpoint: dict) -> None:
    """Put the trial's module, progress and generators where its checkpoint left them; the
    process's generators (the batch's shared draws) where the batch's left them.

    A checkpoint written before batches has no "trial_rng": that run drew everything from the
    process's generators, which its "rng" holds.
    """
    trial_run.model.load_state_dict(checkpoint["model_state"])
    path = trial_run.run_dir.checkpoint_path()
    try:  # the generators' states are checked by restoring them
        restore_rng_states(checkpoint["rng"])
        own = checkpoint.get("trial_rng", checkpoint["rng"])
        trial_run.random = TrialRandom.from_state(own)
        trial_run.progress = Progress(**checkpoint["progress"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
        raise UserError(
            f"checkpoint {path} does not fit this run: its generators' or progress' states"
            f" cannot be restored ({type(error).__name__}); {resume.RESTART}"
        ) from None


def run_level(
    experiment: Experiment,
    level: int,
    running: list[TrialRun],
    batch: list[TrialRun],
    stacked: stack.StackedModel,
    loaded: Data,
    init: Initializer,
) -> None:
    """Prune and reset every running trial (after level 0), train them together, and write each
    one's files.

    Level 0 trains every step and keeps each trial's state after the rewind step N
    (`cli.rewind_step`) when N > 0. Every later level is reset to step N (its initial weights
    when N is 0; `lrr` and `finetune` keep their trained weights) and trains from step N to the
    end, with a fresh optimiser and the learning-rate schedule continued at step N (restarted
    when N is 0, as in the paper; as OpenLTH when N > 0); `finetune` trains at the schedule's
    final rate (cli.trains_apart keeps it from sharing a batch with a schedule of its own). A
    control takes its ticket's mask of the level, so tickets are pruned first.
    """
    for trial_run in sorted(running, key=lambda t: t.trial.ticket is not None):
        trial_run.progress.mask = prune(trial_run, experiment, level, batch, loaded.train)
        if level > 0:
            reset_survivors(trial_run, init)
    running = [t for t in running if t.failure is None]
    if len(running) != stacked.trials:
        stacked = stack.StackedModel([t.model for t in running])
    for index, trial_run in enumerate(running):
        stacked.load_trial(index, trial_run.model.state_dict())
    epoch_steps = steps_per_epoch(len(loaded.train), experiment.batch_size)
    rewind_at = cli.rewind_step(experiment, epoch_steps)
    start = 0 if level == 0 else rewind_at  # level 0 runs whole; N = 0: no rewind state kept
    finetuning = level > 0 and any(t.trial.prune_type == "finetune" for t in running)
    keep = (rewind_at, rewind_keeper(running, stacked)) if level == 0 else None
    optimizer, schedule = level_optimizer(
        experiment,
        stacked,
        drops=cli.lr_drop_epochs(experiment),
        epoch_steps=epoch_steps,
        start_step=start,
        hold_at=experiment.end_iter * epoch_steps - 1 if finetuning else None,
    )

    print(f"\n--- Pruning Level [0:{level}/{experiment.prune_iterations}]: ---")
    comps = []
    for trial_run in running:
        if len(running) > 1:
            print(f"{trial_run.name}: {trial_run.run_dir.root}")
        comps.append(print_nonzeros(trial_run.model))
    with contextlib.ExitStack() as writers:
        opened = [
            writers.enter_context(
                SummaryWriter(
                    str(t.run_dir.tensorboard), filename_suffix=t.run_dir.events_suffix(level)
                )
            )
            for t in running
        ]
        histories = train_level(
            stacked,
            loaded.train,
            loaded.test,
            optimizer,
            stack.stack_masks(stacked, [t.progress.mask for t in running]),
            [t.random for t in running],
            epochs=experiment.end_iter,
            batch_size=experiment.batch_size,
            valid_freq=experiment.valid_freq,
            print_freq=experiment.print_freq,
            description=f"[level {level}] ",
            on_epoch=[epoch_hook(writer, experiment, level) for writer in opened],
            compiled=use_compile(experiment.compile, loaded.train.labels.device),
            augmented=experiment.augment,
            val_set=loaded.val,
            schedule=schedule,
            start_step=start,
            after_steps=keep,
        )
        for index, (trial_run, history) in enumerate(zip(running, histories, strict=True)):
            if history.failure is not None:
                stop(trial_run, level, history.failure)
                continue
            trial_run.model.load_state_dict(stacked.trial_state(index))
            write_level(experiment, trial_run, level, comps[index], history, opened[index])
            if level == experiment.prune_iterations - 1:
                write_final(experiment, trial_run)


def stop(trial_run: TrialRun, level: int, line: str) -> None:
    """The trial runs no more: its folder's failure.txt says why, in one line."""
    trial_run.failure = line
    trial_run.run_dir.write_failure(level, line)
    print(f"stopped {trial_run.run_dir.root}: {line}")


def commit_checkpoints(level: int, running: list[TrialRun]) -> None:
    """Every running trial's checkpoint of `level`, committed together: all are staged before
    any replaces its previous one, so a kill leaves no trial a level ahead (resume.settle)."""
    for trial_run in running:
        trial_run.run_dir.stage_checkpoint(checkpoint(level, trial_run))
    for trial_run in running:
        trial_run.run_dir.commit_checkpoint()


def prune(
    trial_run: TrialRun,
    experiment: Experiment,
    level: int,
    batch: list[TrialRun],
    train_set: data.Split,
) -> Mask:
    """One level's mask: dense at level 0; by magnitude (`lt`, `lrr`, `finetune`); at random
    with the same per-layer counts (`random`, from the trial's own generator); by the scores of
    a method of pruning at initialisation (`snip`, `grasp`, `synflow`: the initial network pruned
    to the level's counts, its sample drawn from the trial's own generator); or, for a control,
    by nothing of its own: the mask its ticket has for `level` (from memory for a ticket in the
    batch, else the mask that --masks_from run saved for it)."""
    trial, model, mask = trial_run.trial, trial_run.model, trial_run.progress.mask
    if trial.ticket is not None:
        ticket = batch[trial.ticket]
        if ticket.failure is not None:
            stop(
                trial_run, level, f"its lt trial ({ticket.run_dir.root}) stopped: {ticket.failure}"
            )
            return mask
        taken = {name: m.copy() for name, m in ticket.progress.mask.items()}
        apply_mask(model, taken)
        return taken
    if trial.masks_from is not None:
        saved = saved_mask(model, trial.masks_from, level)
        apply_mask(model, saved)
        return saved
    if level == 0:
        return mask
    rates = {
        "scope": experiment.prune_scope,
        "output_percent": experiment.prune_percent_output,
        "conv_percent": experiment.prune_percent_conv,
    }
    if trial.prune_type in AT_INIT:
        counts = level_counts(model, level, experiment.prune_percent, **rates)
        with trial_run.random.active():
            new_mask = at_init_mask(
                trial.prune_type,
                model,
                trial_run.progress.initial_state,
                counts,
                train_set,
                experiment.batch_size,
                data.DATASETS[experiment.dataset].num_classes,
            )
        apply_mask(model, new_mask)
        return new_mask
    how = prune_at_random if trial.prune_type == "random" else prune_by_percentile
    with trial_run.random.active():
        return how(model, mask, experiment.prune_percent, **rates)


def saved_mask(model: nn.Module, masks_from: str, level: int) -> Mask:
    """The mask of `level` in the run --masks_from names (its `{pt}_mask_{comp}.pkl`, found by
    the `{comp}` its summary.csv gives that level)."""
    return read_mask(runs.read_run(masks_from).mask_path(level), model)


def check_saved_masks(model: nn.Module, masks_from: str, experiment: Experiment) -> None:
    """Read every level's mask of the --masks_from run before anything is written: UserError
    when one is missing or does not fit `model`."""
    for level in range(experiment.prune_iterations):
        saved_mask(model, masks_from, level)


def reset_survivors(trial_run: TrialRun, init: Initializer) -> None:
    """`lt` and `random` rewind the survivors to their initial values (or, with --rewind_iter
    or --rewind_epoch, to those after that many steps or epochs of level 0), as the methods of
    pruning at initialisation do; `reinit` draws new random ones from the trial's own
    generator; `lrr` and `finetune` keep the trained ones (pruned in place by `prune`)."""
    model, progress = trial_run.model, trial_run.progress
    if trial_run.trial.prune_type in KEEP_TRAINED:
        return
    if trial_run.trial.prune_type == "reinit":
        model.load_state_dict(progress.initial_state)  # buffers (BatchNorm statistics) too
        device = next(model.parameters()).device
        with trial_run.random.active():  # drawn on the CPU, as the trial's module was built
            reinitialize(model.cpu(), progress.mask, init)
        model.to(device)
    else:
        late = progress.rewind_state
        rewind(model, progress.mask, progress.initial_state if late is None else late)


def epoch_hook(writer: SummaryWriter, experiment: Experiment, level: int) -> Callable[..., None]:
    """What happens after each epoch of one trial: log it at TensorBoard step
    level * --end_iter + epoch (epochs counted from step 0, a rewound level's too). The epoch's
    test accuracy is `Accuracy/test_by_epoch`: `Accuracy/test` is the original's per-level tag
    (`write_level`)."""

    def on_epoch(
        epoch: int,
        loss: float,
        accuracy: float,
        val_loss: float | None = None,
        val_accuracy: float | None = None,
    ) -> None:
        step = level * experiment.end_iter + epoch
        writer.add_scalar("Loss/train", loss, step)
        writer.add_scalar("Accuracy/test_by_epoch", accuracy, step)
        if val_loss is not None and val_accuracy is not None:
            writer.add_scalar("Loss/validation", val_loss, step)
            writer.add_scalar("Accuracy/validation", val_accuracy, step)

    return on_epoch


def rewind_keeper(running: list[TrialRun], stacked: stack.StackedModel) -> Callable[[], None]:
    """What level 0 does once it has done the rewind step's optimiser steps: keep each trial's
    weights that later levels rewind to, in its progress and in its result file."""

    def keep() -> None:
        for index, trial_run in enumerate(running):
            state = stacked.trial_state(index)
            trial_run.progress.rewind_state = state
            rewound = copy.deepcopy(trial_run.model)
            rewound.load_state_dict(state)
            trial_run.run_dir.save_model(rewound, trial_run.run_dir.rewind_state_path())

    return keep


def write_level(
    experiment: Experiment,
    trial_run: TrialRun,
    level: int,
    comp: float,
    history: LevelHistory,
    writer: SummaryWriter,
) -> None:
    """The trial's files of the level: best model, loss/accuracy dumps and plot, mask, summary row.

    `comp` (the `{comp}` of the file names) is the original's figure, the share of nonzero
    parameters; summary.csv has it as `params_left` beside `weights_left`, the share of the
    prunable weights the mask keeps.
    """
    run_dir, progress, model = trial_run.run_dir, trial_run.progress, trial_run.model
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
        experiment.dataset,
        experiment.arch_type,
        first_epoch=history.first_epoch + 1,
    )
    run_dir.save_figure(figure, run_dir.loss_plot_path(tag), experiment.plot_dpi)
    plots.close(figure, experiment.plot_dpi)

    progress.summary.append(summary_row(level, left, comp, history))
    run_dir.write_summary(progress.summary)
    # The original's tag: the level's best accuracy at step {comp}, which TensorBoard stores as
    # an integer (int(64.1) = 64), so levels below 1% share step 0; the two tags after it keep
    # every level apart.
    writer.add_scalar("Accuracy/test", history.best_accuracy, int(comp))
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


def write_final(experiment: Experiment, trial_run: TrialRun) -> None:
    """The whole run's files: the original's `comp` and best accuracy per level, and their plot."""
    run_dir, progress = trial_run.run_dir, trial_run.progress
    run_dir.dump_array(progress.comp, run_dir.dump_path("compression"))
    run_dir.dump_array(progress.bestacc, run_dir.dump_path("bestaccuracy"))
    figure = plots.accuracy_vs_weights(
        [("Winning tickets", progress.comp, progress.bestacc)],
        experiment.dataset,
        experiment.arch_type,
    )
    run_dir.save_figure(figure, run_dir.accuracy_plot_path(), experiment.plot_dpi)
    plots.close(figure, experiment.plot_dpi)


def checkpoint(level: int, trial_run: TrialRun) -> dict:
    """The trial's state at the end of `level` that the next level needs, each part stored once:
    its own generators apart from the process's (the batch's shared draws)."""
    return {
        "level": level,
        "model_state": trial_run.model.state_dict(),
        "progress": resume.checkpoint_progress(vars(trial_run.progress)),
        "rng": rng_states(),
        "trial_rng": trial_run.random.state(),
    }


if __name__ == "__main__":
    sys.exit(main())
