"""The lottery loop: a batch of trials, created or resumed, whose levels are pruned, trained,
recorded and committed together. The trials share the recipe, the data and the optimiser step;
each has its own module, generators, mask, progress and run folder (the one it would write
alone), and they train as one `stack.StackedModel`.

    batch = Batch.open(start)
    with batch.held():
        for level in batch.levels():
            batch.prune(level); batch.train(level); batch.record(level); batch.commit(level)
"""

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import archs
from lth import data, memory, methods, plots, resume, runs, stack
from lth.errors import UserError
from lth.experiment import Experiment, Trial
from lth.initialization import Initializer, initializer
from lth.pretrain import pretrain_zae
from lth.pruning import Mask, make_mask, print_nonzeros, state_copy, weights_left
from lth.record import (
    RunRecord,
    TrialRandom,
    deterministic_algorithms,
    restore_rng_states,
    rng_states,
    seed_everything,
)
from lth.results import RunDir, level_tag, read_mask, write_json
from lth.train import (
    EVAL_BATCH,
    Callbacks,
    InputDropout,
    LevelData,
    LevelHistory,
    LevelPlan,
    Trials,
    add_input_dropout,
    flush_denormals,
    steps_per_epoch,
    train_level,
)


@dataclass
class Progress:
    """Everything a level hands to the next; the checkpoint keeps it."""

    mask: Mask
    initial_state: dict[str, torch.Tensor]
    comp: np.ndarray  # nonzero parameters (%) at the start of each level: the original's figure
    bestacc: np.ndarray  # best test accuracy of each level
    tags: list[str] = field(default_factory=list)  # the `{comp}` text of each finished level
    summary: list[dict] = field(default_factory=list)  # rows of summary.csv
    rewind_state: dict[str, torch.Tensor] | None = None  # after the rewind step of level 0


@dataclass
class TrialRun:
    """One trial of the batch; `failure`: why it stopped (None while it runs)."""

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
class BatchStart:
    """Which batch to open: a new one, or the one `resumed` names."""

    experiment: Experiment
    trials: list[Trial]
    resumed: resume.Resumed | None = None
    record_to: str | None = None


@dataclass(frozen=True)
class Shared:
    """What every trial of a batch shares."""

    experiment: Experiment
    device: torch.device
    loaded: LevelData
    init: Initializer
    epoch_steps: int

    @classmethod
    def of(cls, experiment: Experiment) -> "Shared":
        """The device chosen and the data loaded on it, before any folder exists."""
        device = select_device(experiment.gpu)
        deterministic_algorithms(device)  # before any cuBLAS work
        loaded = load_data(experiment, device)
        epoch_steps = steps_per_epoch(len(loaded.train), experiment.batch_size)
        experiment.check_rewind_step(epoch_steps)
        init = initializer(experiment.init, loaded.train)
        return cls(experiment, device, loaded, init, epoch_steps)

    @property
    def rewind_at(self) -> int:
        return self.experiment.rewind_step(self.epoch_steps)


@dataclass
class LevelInTraining:
    """A level between `Batch.train` and `Batch.record`."""

    running: list[TrialRun]
    comps: list[float]
    histories: list[LevelHistory]
    writers: list[SummaryWriter]


class Batch:
    """The trials of one batch and their level loop (the module docstring shows it)."""

    def __init__(self, shared: Shared, trial_runs: list[TrialRun], opened: BatchStart) -> None:
        self.shared = shared
        self.trial_runs = trial_runs
        self.opened = opened
        self.start = 0 if opened.resumed is None else opened.resumed.start
        self.stacked: stack.StackedModel | None = None
        self.level: LevelInTraining | None = None
        self._writers = contextlib.ExitStack()

    @classmethod
    def open(cls, opened: BatchStart) -> "Batch":
        """Every trial built, restored, checked and pre-trained; run folders created last."""
        flush_denormals()  # first: CPU threads started before it would keep denormals
        trials = opened.trials
        print(f"seed: {' '.join(str(t.seed) for t in trials)}")
        shared = Shared.of(opened.experiment)
        seed_everything(trials[0].seed)  # the batch's shared draws (dropout): its first seed
        trial_runs = [build_trial(shared, trial) for trial in trials]
        check_memory(shared, trial_runs)
        if opened.resumed is not None:  # before anything is written
            restore_batch(trial_runs, opened.resumed, shared)
        for trial_run in trial_runs:  # every mask of a --masks_from run read before any write
            if trial_run.trial.masks_from is not None:
                for level in range(shared.experiment.prune_iterations):
                    saved_mask(trial_run.model, trial_run.trial.masks_from, level)
        if shared.experiment.pretrain == "zae":
            pretrain(trial_runs, shared)
        for name, param in trial_runs[0].model.named_parameters():  # the trials share them
            print(name, param.size())
        if opened.resumed is None:
            create_run_dirs(shared.experiment, trial_runs)
        return cls(shared, trial_runs, opened)

    @contextlib.contextmanager
    def held(self) -> Iterator["Batch"]:
        """The batch's folders locked and their args.json written while the levels run."""
        with contextlib.ExitStack() as locks:
            for trial_run in self.trial_runs:
                locks.enter_context(trial_run.run_dir.locked())
            if self.opened.resumed is None:
                record_batch(self.shared, self.trial_runs)
            else:
                record_resume(self.trial_runs, self.opened.resumed, self.shared)
            self.write_record()
            try:
                yield self
            finally:
                self._writers.close()

    def running(self) -> list[TrialRun]:
        return [t for t in self.trial_runs if t.failure is None]

    def levels(self) -> Iterator[int]:
        for level in range(self.start, self.shared.experiment.prune_iterations):
            if not self.running():
                return
            yield level

    def prune(self, level: int) -> None:
        """Each running trial's mask of the level (tickets first) and its survivors reset."""
        for trial_run in sorted(self.running(), key=lambda t: t.trial.ticket is not None):
            trial_run.progress.mask = prune(trial_run, self.shared, level, self.trial_runs)
            if level > 0:
                reset_survivors(trial_run, self.shared.init)

    def train(self, level: int) -> None:
        running = self.running()
        if self.stacked is None or self.stacked.trials != len(running):
            self.stacked = stack.StackedModel([t.model for t in running])
        for index, trial_run in enumerate(running):
            self.stacked.load_trial(index, trial_run.model.state_dict())
        self.level = train_trials(self.shared, level, running, self.stacked, self._writers)

    def record(self, level: int) -> None:
        """Each trial's files of the level (or its failure.txt), and the run's after the last."""
        assert self.level is not None and self.stacked is not None
        trained = self.level
        last = level == self.shared.experiment.prune_iterations - 1
        with self._writers:
            for index, trial_run in enumerate(trained.running):
                history = trained.histories[index]
                if history.failure is not None:
                    stop(trial_run, level, history.failure)
                    continue
                trial_run.model.load_state_dict(self.stacked.trial_state(index))
                write_level(self.shared, trial_run, level, trained, index)
                if last:
                    write_final(self.shared.experiment, trial_run)
        self._writers = contextlib.ExitStack()
        self.level = None

    def commit(self, level: int) -> None:
        """Every running trial's checkpoint, all staged before any is committed, so that a kill
        leaves no trial a level ahead."""
        running = self.running()
        for trial_run in running:
            trial_run.run_dir.stage_checkpoint(checkpoint(level, trial_run))
        for trial_run in running:
            trial_run.run_dir.commit_checkpoint()
        self.write_record(level + 1)

    def write_record(self, done: int | None = None) -> None:
        """The batch's record for sweep.py: each trial's folder, levels done and failure."""
        if self.opened.record_to is None:
            return
        done = self.start if done is None else done
        write_json(
            Path(self.opened.record_to),
            {
                "levels": self.shared.experiment.prune_iterations,
                "runs": [
                    {
                        "folder": str(t.run_dir.root),
                        "levels_done": done if t.failure is None else len(t.progress.tags),
                        "failure": t.failure,
                    }
                    for t in self.trial_runs
                ],
            },
        )

    def finish(self) -> list[str]:
        """Print where each trial's results are; one line for each trial that stopped."""
        for trial_run in self.trial_runs:
            print(f"\nresults: {trial_run.run_dir.root}\nplots: {trial_run.run_dir.plots}")
        return [f"{t.run_dir.root}: {t.failure}" for t in self.trial_runs if t.failure is not None]


def restore_batch(trial_runs: list[TrialRun], resumed: resume.Resumed, shared: Shared) -> None:
    """Each trial of a resumed batch back in its folder and where its checkpoint left it."""
    levels = shared.experiment.prune_iterations
    rewinds_late = shared.rewind_at > 0
    pairs = zip(trial_runs, resumed.run_dirs, resumed.checkpoints, strict=True)
    for trial_run, run_dir, saved in pairs:
        trial_run.run_dir = run_dir
        if saved is not None:
            resume.check_checkpoint(saved, run_dir.checkpoint_path(), trial_run.model, levels)
            classes = saved_model_classes(trial_run.model)
            restore_trial(trial_run, resume.whole_checkpoint(saved, run_dir, rewinds_late, classes))


def pretrain(trial_runs: list[TrialRun], shared: Shared) -> None:
    """`--pretrain zae` of every trial starting afresh."""
    experiment = shared.experiment
    for trial_run in trial_runs:
        if trial_run.progress is None:
            with trial_run.random.active():
                pretrain_zae(
                    trial_run.model,
                    shared.loaded.train.images,
                    epochs=experiment.pretrain_epochs,
                    batch_size=experiment.batch_size,
                )


def select_device(gpu: str) -> torch.device:
    """CUDA device number `gpu` when CUDA is there, else the CPU with a one-line notice."""
    if not torch.cuda.is_available():
        print("notice: CUDA is not available, running on the CPU")
        return torch.device("cpu")
    if int(gpu) >= torch.cuda.device_count():
        raise UserError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(f"cuda:{int(gpu)}")


def load_data(experiment: Experiment, device: torch.device) -> LevelData:
    train_set, test_set = data.load(
        experiment.dataset, experiment.data_dir, experiment.data_source, device
    )
    val_set = None
    if experiment.val_size > 0:
        train_set, val_set = data.hold_out(train_set, experiment.val_size, experiment.batch_size)
    return LevelData(train_set, test_set, val_set)


def build_model(experiment: Experiment, train_set: data.Split, init: Initializer) -> nn.Module:
    model = archs.build(experiment.dataset, experiment.arch_type, **experiment.arch_options())
    archs.fit_to_data(model, train_set)
    return add_input_dropout(init(model), experiment.dropout)


def build_trial(shared: Shared, trial: Trial) -> TrialRun:
    """The trial's module, built on the CPU from its own generators, moved to the device."""
    random = TrialRandom(trial.seed)
    with random.active():
        model = build_model(shared.experiment, shared.loaded.train, shared.init)
    return TrialRun(trial, model.to(shared.device), random)


def check_memory(shared: Shared, trial_runs: list[TrialRun]) -> None:
    """UserError when the batch would not fit in memory."""
    if len(trial_runs) == 1:
        return
    train_set, device = shared.loaded.train, shared.device
    sample = train_set.batch(torch.zeros(1, dtype=torch.long, device=device))[0]
    batch_size = shared.experiment.batch_size
    per_trial = memory.trial_bytes(trial_runs[0].model, sample, batch_size, EVAL_BATCH)
    hint = "give fewer --seed or --prune_type values, or sweep.py --batch"
    memory.check_batch_fits(len(trial_runs), per_trial, device, hint)


def create_run_dirs(experiment: Experiment, trial_runs: list[TrialRun]) -> None:
    for trial_run in trial_runs:
        trial_run.run_dir = RunDir.create(
            experiment.results_root,
            experiment.arch_type,
            experiment.dataset,
            trial_run.trial.prune_type,
        )


def record_batch(shared: Shared, trial_runs: list[TrialRun]) -> None:
    """Each trial's args.json and initial state, saved before any training."""
    names = [t.run_dir.root.name for t in trial_runs]
    levels = shared.experiment.prune_iterations
    for index, trial_run in enumerate(trial_runs):
        trial = trial_run.trial
        ticket = None
        if trial.ticket is not None:
            ticket = str(trial_runs[trial.ticket].run_dir.root.resolve())
        batch = {"runs": names, "index": index, "ticket": trial.ticket}
        arguments = trial.args(shared.experiment, ticket)
        RunRecord.new(trial_run.run_dir.root, arguments, shared.device, batch).write()
        trial_run.run_dir.save_model(trial_run.model, trial_run.run_dir.initial_state_path())
        trial_run.progress = fresh_progress(trial_run.model, levels)
        print(f"run folder: {trial_run.run_dir.root}")


def record_resume(trial_runs: list[TrialRun], resumed: resume.Resumed, shared: Shared) -> None:
    """Each trial's args.json with this resume added, the interrupted level's leftovers removed."""
    levels = shared.experiment.prune_iterations
    for trial_run, record in zip(trial_runs, resumed.records, strict=True):
        run_dir = trial_run.run_dir
        record.resumed(resumed.start, resumed.changed, shared.device).write()
        run_dir.remove_leftovers(resumed.start, levels)
        print(f"resuming {run_dir.root} at level {resumed.start}")
        if trial_run.progress is None:
            run_dir.save_model(trial_run.model, run_dir.initial_state_path())
            trial_run.progress = fresh_progress(trial_run.model, levels)


def saved_model_classes(model: nn.Module) -> list[type]:
    """The only classes a saved whole model may hold: `model`'s modules and --dropout's hook."""
    return [*dict.fromkeys(type(module) for module in model.modules()), InputDropout]


def fresh_progress(model: nn.Module, levels: int) -> Progress:
    return Progress(
        make_mask(model), state_copy(model), np.zeros(levels, float), np.zeros(levels, float)
    )


def restore_trial(trial_run: TrialRun, checkpoint: dict) -> None:
    """Put the trial's module, progress and generators, and the process's, where the
    checkpoint left them; one without "trial_rng" drew everything from its "rng"."""
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


def train_trials(
    shared: Shared,
    level: int,
    running: list[TrialRun],
    stacked: stack.StackedModel,
    writers: contextlib.ExitStack,
) -> LevelInTraining:
    """Train the running trials together for one level, their TensorBoard writers opened into
    `writers`. Level 0 trains every step and keeps each trial's state after the rewind step N
    when N > 0; every later level trains from step N to the end, the schedule continued there."""
    experiment, rewind_at = shared.experiment, shared.rewind_at
    start = 0 if level == 0 else rewind_at
    held = level > 0 and any(methods.get(t.trial.prune_type).holds_final_rate for t in running)
    plan = LevelPlan.of(
        experiment,
        shared.loaded.train,
        experiment.lr_drop_epochs(),
        start_step=start,
        held=held,
        description=f"[level {level}] ",
    )
    print(f"\n--- Pruning Level [0:{level}/{experiment.prune_iterations}]: ---")
    comps = []
    for trial_run in running:
        if len(running) > 1:
            print(f"{trial_run.name}: {trial_run.run_dir.root}")
        comps.append(print_nonzeros(trial_run.model))
    opened = [
        writers.enter_context(
            SummaryWriter(
                str(t.run_dir.tensorboard), filename_suffix=t.run_dir.events_suffix(level)
            )
        )
        for t in running
    ]
    keep = (rewind_at, rewind_keeper(running, stacked)) if level == 0 else None
    masks = stack.stack_masks(stacked, [t.progress.mask for t in running])
    trials = Trials(masks, [t.random for t in running])
    hooks = Callbacks([epoch_hook(writer, experiment, level) for writer in opened], keep)
    histories = train_level(stacked, shared.loaded, plan, trials, hooks)
    return LevelInTraining(running, comps, histories, opened)


def stop(trial_run: TrialRun, level: int, line: str) -> None:
    """The trial runs no more; its failure.txt says why."""
    trial_run.failure = line
    trial_run.run_dir.write_failure(level, line)
    print(f"stopped {trial_run.run_dir.root}: {line}")


def prune(trial_run: TrialRun, shared: Shared, level: int, trial_runs: list[TrialRun]) -> Mask:
    """One level's mask, by the trial's prune method. A control takes its ticket's: from memory
    for a ticket in the batch (stopping when it stopped), else from the --masks_from run."""
    trial, model, progress = trial_run.trial, trial_run.model, trial_run.progress
    experiment, taken = shared.experiment, None
    if trial.ticket is not None:
        ticket = trial_runs[trial.ticket]
        if ticket.failure is not None:
            line = f"its {ticket.trial.prune_type} trial ({ticket.run_dir.root}) stopped:"
            stop(trial_run, level, f"{line} {ticket.failure}")
            return progress.mask
        taken = {name: m.copy() for name, m in ticket.progress.mask.items()}
    elif trial.masks_from is not None:
        taken = saved_mask(model, trial.masks_from, level)
    rates = methods.Rates(experiment.prune_percent, **experiment.rates())
    classes = data.DATASETS[experiment.dataset].num_classes
    sample = methods.Sample(shared.loaded.train, experiment.batch_size, classes)
    state = methods.TrialState(model, progress.mask, progress.initial_state, trial_run.random)
    return methods.get(trial.prune_type).mask(methods.Level(level, state, rates, sample, taken))


def saved_mask(model: nn.Module, masks_from: str, level: int) -> Mask:
    return read_mask(runs.read_run(masks_from).mask_path(level), model)


def reset_survivors(trial_run: TrialRun, init: Initializer) -> None:
    """The survivors where the trial's prune method starts the next level."""
    progress = trial_run.progress
    state = methods.TrialState(
        trial_run.model,
        progress.mask,
        progress.initial_state,
        trial_run.random,
        progress.rewind_state,
    )
    methods.get(trial_run.trial.prune_type).start(state, init)


def epoch_hook(writer: SummaryWriter, experiment: Experiment, level: int) -> Callable[..., None]:
    """Log each epoch of one trial at TensorBoard step level * --end_iter + epoch."""

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
    """Keep each trial's weights that later levels rewind to, in its progress and its file."""

    def keep() -> None:
        for index, trial_run in enumerate(running):
            state = stacked.trial_state(index)
            trial_run.progress.rewind_state = state
            rewound = copy.deepcopy(trial_run.model)
            rewound.load_state_dict(state)
            trial_run.run_dir.save_model(rewound, trial_run.run_dir.rewind_state_path())

    return keep


def write_level(
    shared: Shared, trial_run: TrialRun, level: int, trained: LevelInTraining, index: int
) -> None:
    """The trial's files of the level: best model, dumps, plot, mask and summary row."""
    run_dir, progress, model = trial_run.run_dir, trial_run.progress, trial_run.model
    comp, history = trained.comps[index], trained.histories[index]
    tag = level_tag(comp, level, progress.tags)
    left = weights_left(progress.mask)
    progress.tags.append(tag)
    progress.comp[level], progress.bestacc[level] = comp, history.best_accuracy

    best_model = copy.deepcopy(model)
    best_model.load_state_dict(history.best_state)
    run_dir.save_model(best_model, run_dir.model_path(level))
    for name in ("all_loss", "all_accuracy", "all_val_loss", "all_val_accuracy"):
        if getattr(history, name) is not None:  # the validation ones: with --val_size only
            run_dir.dump_array(getattr(history, name), run_dir.dump_path(name, tag))
    run_dir.dump_mask(model, progress.mask, run_dir.dump_path("mask", tag, ".pkl"))
    experiment = shared.experiment
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
    # TensorBoard stores the step {comp} as an integer; the two tags after it keep levels apart.
    writer = trained.writers[index]
    writer.add_scalar("Accuracy/test", history.best_accuracy, int(comp))
    writer.add_scalar("Accuracy/best_by_level", history.best_accuracy, level)
    writer.add_scalar("Accuracy/best_vs_weights_left_x10", history.best_accuracy, round(left * 10))
    writer.flush()


def summary_row(level: int, left: float, comp: float, history: LevelHistory) -> dict:
    """The level's row of summary.csv; with a validation set, the early stop's columns too."""
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
    """The run's `comp` and best accuracy per level, and their plot."""
    run_dir, progress = trial_run.run_dir, trial_run.progress
    run_dir.dump_array(progress.comp, run_dir.dump_path("compression"))
    run_dir.dump_array(progress.bestacc, run_dir.dump_path("bestaccuracy"))
    curves = [("Winning tickets", progress.comp, progress.bestacc)]
    figure = plots.accuracy_vs_weights(curves, experiment.dataset, experiment.arch_type)
    run_dir.save_figure(figure, run_dir.accuracy_plot_path(), experiment.plot_dpi)
    plots.close(figure, experiment.plot_dpi)


def checkpoint(level: int, trial_run: TrialRun) -> dict:
    """The trial's state at the end of `level` that the next level needs."""
    return {
        "level": level,
        "model_state": trial_run.model.state_dict(),
        "progress": resume.checkpoint_progress(vars(trial_run.progress)),
        "rng": rng_states(),
        "trial_rng": trial_run.random.state(),
    }
