"""Training and evaluation of a batch of trials on in-memory tensors: no DataLoader, no
per-sample work in the loop, one read back to the host per epoch.

The one training path: the trials of a batch (one trial is a batch of one) as a
`stack.StackedModel`, each trial with its own data order (drawn from its `TrialRandom`), its own
mask, its own best state, early stop and failure; one optimiser and one learning-rate schedule
for all of them (the trials of a batch share the recipe, so their schedules are the same).

Its one entry is `train_level(stacked, data, plan, trials, callbacks)`: the stacked model, the
splits (`LevelData`), the `LevelPlan` that `LevelPlan.of` makes of the recipe (steps, schedule,
start step, batches, augmentation), what each trial brings (`Trials`: masks and generators) and
what the level calls as it trains (`Callbacks`). main.py's levels and instability's copies make
their plans the same way.
"""

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from lth import augment
from lth.data import Split
from lth.experiment import Experiment
from lth.layers import CONV_OR_LINEAR
from lth.record import TrialRandom
from lth.stack import StackedMasks, StackedModel, freeze_pruned_trials, gradient_masks
from lth.steps import batch_losses, sample_losses, use_compile

EVAL_BATCH = 1000
WEIGHT_DECAY = 1e-4  # the original's, for every optimiser
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def flush_denormals() -> None:
    """Make this thread, and every thread it starts later, treat denormal floats (below about
    1.2e-38) as zero; call it before any parallel CPU work starts the thread pool.

    Weight decay drives the weights of inputs that never vary (the blank border of MNIST-like
    images) towards zero, into the denormal range, where CPU arithmetic is many times slower
    (measured on fc1 and Fashion-MNIST: the fourth epoch 8x slower, a test pass 37x). As zeros
    they change nothing measurable; pruned weights stay exactly zero either way.
    """
    torch.set_flush_denormal(True)


def adam(
    parameters: Iterable[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adam with L2 weight decay, updating all parameters in one fused kernel where it can.

    The fused kernel computes the same update as the plain per-tensor loop (equal within float
    rounding) at a fraction of its cost per step on small networks.
    """
    parameters = list(parameters)
    fused = all(p.device.type in FUSED_ADAM_DEVICES for p in parameters)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)


class OptimizerChoice(Protocol):
    """What `build_optimizer` reads: a recipe's or a plan's optimiser, rate and momentum."""

    optimizer: str
    lr: float
    momentum: float


def build_optimizer(choice: OptimizerChoice, model: nn.Module) -> torch.optim.Optimizer:
    """A fresh optimiser for one level: `--optimizer adam` (the original) or `sgd` with
    `--momentum`; both with `--lr` and L2 weight decay 1e-4.

    With either, a pruned weight (zero, with its gradient zeroed) gets no update: its moments,
    momentum buffer and weight decay all stay zero.
    """
    if choice.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=choice.lr, momentum=choice.momentum, weight_decay=WEIGHT_DECAY
        )
    return adam(model.parameters(), lr=choice.lr, weight_decay=WEIGHT_DECAY)


class InputDropout:
    """A forward pre-hook: dropout with probability `p` on a layer's input, in training only."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple:
        return (nn.functional.dropout(inputs[0], self.p, module.training), *inputs[1:])


def add_input_dropout(model: nn.Module, p: float) -> nn.Module:
    """`--dropout p`: dropout on the input of every Linear and Conv layer (none when p is 0).

    A hook rather than a new module, so parameter names, masks and saved states are unchanged.
    """
    if p > 0:
        for module in model.modules():
            if isinstance(module, CONV_OR_LINEAR):
                module.register_forward_pre_hook(InputDropout(p))
    return model


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of `count` images: the last, smaller batch is one too."""
    return len(range(0, count, batch_size))


@dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule of a recipe (`--warmup_iters`, `--lr_drops`, `--lr_gamma`):
    the multiple of --lr each optimiser step uses, steps counted from step 0 of level 0."""

    warmup_iters: int
    drops: tuple[int, ...]  # the epochs of --lr_drops
    gamma: float  # 1.0 without drops
    epoch_steps: int  # optimiser steps per epoch

    def factor(self, step: int) -> float:
        """The multiple of --lr used by optimiser step `step` (counted from 0).

        Warm-up: min(1, step / warmup_iters), the OpenLTH convention, so the first step of a
        level with warm-up has rate 0 and step `warmup_iters` the full rate. Drops: times
        `gamma` for each epoch E of `drops` that has begun, the epoch being step // epoch_steps.
        """
        factor = min(1.0, step / self.warmup_iters) if self.warmup_iters > 0 else 1.0
        epoch = step // self.epoch_steps
        return factor * self.gamma ** sum(1 for drop in self.drops if epoch >= drop)

    def attach(
        self, optimizer: torch.optim.Optimizer, start_step: int = 0, hold_at: int | None = None
    ) -> LambdaLR | None:
        """A fresh schedule for one level's optimiser, stepped once after each optimiser step;
        None (a constant rate, the original's) when there is neither warm-up nor a drop.

        The level's first step is step `start_step` of the schedule (`factor(start_step + i)`
        for its i-th step): 0 restarts it, as the paper does; a level rewound to step N of
        level 0 (--rewind_iter) continues it there, as OpenLTH does. The constructor sets the
        rate of the first step; nothing warns, since the scheduler is stepped only after the
        optimiser. `hold_at`: every step at the rate of that step of the schedule instead
        (`finetune`: its last step's).
        """
        if self.warmup_iters == 0 and not self.drops:
            return None

        def factor(step: int) -> float:
            return self.factor(start_step + step if hold_at is None else hold_at)

        return LambdaLR(optimizer, factor)


@dataclass
class Stepper:
    """A level's optimiser and its learning-rate schedule, stepped together, and the number of
    optimiser steps done, counted from step 0 of the schedule (a level rewound to step N starts
    at `done` = N). `at` = (n, call): call() once step n is done, with the trials as that step
    left them (level 0 keeps its rewind states so)."""

    optimizer: torch.optim.Optimizer
    schedule: LambdaLR | None = None
    done: int = 0
    at: tuple[int, Callable[[], None]] | None = None

    def step(self) -> None:
        """One optimiser step, then the schedule's, then the call if this step is its."""
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        self.done += 1
        if self.at is not None and self.done == self.at[0]:
            self.at[1]()


@dataclass(frozen=True)
class Batches:
    """How an epoch forms and computes its batches: `size` images per optimiser step (the last
    batch smaller), each cropped and flipped when `augmented` (`--augment`), the batch loss
    compiled with torch.compile when `compiled` (`--compile`, `steps.use_compile`)."""

    size: int
    augmented: bool = False
    compiled: bool = False


@dataclass(frozen=True)
class LevelPlan:
    """How one pruning level trains, made from the recipe by `LevelPlan.of`: the optimiser, the
    schedule, the batches, the steps it trains, how often it tests and reports.

    The level trains from optimiser step `start_step` of the schedule to the end of epoch
    `epochs`; `hold_at`: at the rate of that step of the schedule throughout (`finetune`).
    """

    epochs: int  # --end_iter
    optimizer: str
    lr: float
    momentum: float
    schedule: Schedule
    batches: Batches
    start_step: int
    hold_at: int | None
    valid_freq: int  # test every valid_freq epochs
    print_freq: int  # report on the progress bar every print_freq epochs
    description: str  # the progress bar's, and the divergence message's, name of the level

    @classmethod
    def of(
        cls,
        recipe: Experiment,
        train_set: Split,
        drops: Sequence[int],
        *,
        start_step: int = 0,
        held: bool = False,
        description: str = "",
    ) -> "LevelPlan":
        """The plan of a level of `recipe` on `train_set` (its length gives the steps per
        epoch, its device whether `--compile` compiles): `drops` the epochs of --lr_drops,
        starting at step `start_step` of the schedule; `held`: at the rate of the schedule's
        last step throughout (`finetune`)."""
        epoch_steps = steps_per_epoch(len(train_set), recipe.batch_size)
        return cls(
            epochs=recipe.end_iter,
            optimizer=recipe.optimizer,
            lr=recipe.lr,
            momentum=recipe.momentum,
            schedule=Schedule(
                warmup_iters=recipe.warmup_iters,
                drops=tuple(drops),
                gamma=1.0 if recipe.lr_gamma is None else recipe.lr_gamma,  # None: no drops
                epoch_steps=epoch_steps,
            ),
            batches=Batches(
                recipe.batch_size,
                augmented=recipe.augment,
                compiled=use_compile(recipe.compile, train_set.labels.device),
            ),
            start_step=start_step,
            hold_at=recipe.end_iter * epoch_steps - 1 if held else None,
            valid_freq=recipe.valid_freq,
            print_freq=recipe.print_freq,
            description=description,
        )

    @property
    def epoch_steps(self) -> int:
        return self.schedule.epoch_steps

    @property
    def first_epoch(self) -> int:
        """The epoch of the level's first step (0 unless it starts at a step N > 0)."""
        return self.start_step // self.epoch_steps

    def stepper(
        self, model: nn.Module, at_step: tuple[int, Callable[[], None]] | None = None
    ) -> Stepper:
        """The level's fresh optimiser over `model`'s parameters (`build_optimizer`) and its
        schedule (`Schedule.attach`) started at `start_step` or held at `hold_at`, counting
        from `start_step`; `at_step` = (n, call), n counted from step 0 as `start_step` is."""
        optimizer = build_optimizer(self, model)
        schedule = self.schedule.attach(optimizer, self.start_step, self.hold_at)
        return Stepper(optimizer, schedule, done=self.start_step, at=at_step)


@dataclass(frozen=True)
class LevelData:
    """The splits a level uses: it trains on `train`, tests on `test`, and with `val`
    (`--val_size`) stops early at the minimum validation loss."""

    train: Split
    test: Split
    val: Split | None = None


@dataclass(frozen=True)
class Trials:
    """What each trial of a batch brings to its training: its mask (stacked, `stack.stack_masks`)
    and its own generators, one `TrialRandom` per trial in the stack's order."""

    masks: StackedMasks
    randoms: Sequence[TrialRandom]


@dataclass(frozen=True)
class Callbacks:
    """What a level calls as it trains: `on_epoch[i](epoch, loss, accuracy, ...)` after each
    epoch trial i trains, and `at_step` = (n, call): call() once optimiser step n is done
    (`Stepper`)."""

    on_epoch: Sequence[Callable[..., None]] | None = None
    at_step: tuple[int, Callable[[], None]] | None = None


def trial_draws(
    randoms: Sequence[TrialRandom], draw: Callable[[], torch.Tensor], device: torch.device
) -> torch.Tensor:
    """[k, ...]: `draw()` once per trial, on the CPU from the trial's own generator, stacked and
    moved to `device` in one copy."""
    draws = []
    for random in randoms:
        with random.active():
            draws.append(draw())
    return torch.stack(draws).to(device)


def trial_orders(count: int, randoms: Sequence[TrialRandom], device: torch.device) -> torch.Tensor:
    """[k, count]: each trial's permutation of the training set (what `torch.randperm` alone
    draws from a run seeded as the trial), on `device`."""
    return trial_draws(randoms, lambda: torch.randperm(count), device)


def trial_augmentations(
    count: int, randoms: Sequence[TrialRandom], device: torch.device
) -> torch.Tensor:
    """[k, count, 3]: each trial's crop and flip (`augment.draw`) of each position of its epoch,
    drawn after its permutation (`trial_orders`), on `device` (once per epoch, so a step reads
    nothing from the host)."""
    return trial_draws(randoms, lambda: augment.draw(count), device)


def trial_batch(
    data: Split, index: torch.Tensor, draws: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The trials' own batches: index [k, B] -> normalised images [k, B, ...], labels [k, B],
    gathered in one `Split.batch` call; with `draws` [k, B, 3] (`trial_augmentations` of those
    positions), each image cropped and flipped before it is normalised."""
    k, b = index.shape
    transform = None
    if draws is not None:
        transform = functools.partial(augment.augmented, draws=draws.reshape(k * b, 3))
    images, labels = data.batch(index.reshape(-1), transform)
    return images.view(k, b, *images.shape[1:]), labels.view(k, b)


def train_epoch(
    stacked: StackedModel,
    data: Split,
    batches: Batches,
    trials: Trials,
    stepper: Stepper,
    skip: int = 0,
) -> list[float]:
    """One pass of every trial over its own fresh permutation of `data`; returns each trial's
    mean training loss.

    Each step: every trial's batch loss (`steps.batch_losses`: compiled with torch.compile when
    `batches.compiled`), the gradients of their sum through autograd (each trial's gradient is
    that of its own mean loss: the trials share no tensor), the pruned weights' gradients zeroed
    by the trials' masks, `stepper.step()` (the optimiser's own `step()`, then the schedule's).
    The losses are summed on the device and read once per epoch, so the step never waits on the
    host. The last, smaller batch is kept (the original's train loader did not drop it).
    `batches.augmented` (`--augment`): every training image is cropped and flipped (`augment`),
    each trial drawing its epoch's crops and flips after its permutation.

    `skip`: the first `skip` batches of the permutation are not trained (the first, partial
    epoch of a level that starts inside an epoch; the loss is then the mean over the batches
    trained).
    """
    if len(trials.randoms) != stacked.trials:
        raise ValueError(f"{len(trials.randoms)} generators for {stacked.trials} trials")
    stacked.train()
    losses_of = batch_losses(stacked, batches.compiled)
    pairs = gradient_masks(stacked, trials.masks)
    device = data.labels.device
    count = len(data)
    orders = trial_orders(count, trials.randoms, device)
    draws = trial_augmentations(count, trials.randoms, device) if batches.augmented else None
    total = torch.zeros(stacked.trials, device=device)
    first = skip * batches.size
    for start in range(first, count, batches.size):
        window = slice(start, start + batches.size)
        images, labels = trial_batch(
            data, orders[:, window], None if draws is None else draws[:, window]
        )
        stepper.optimizer.zero_grad(set_to_none=True)
        losses = losses_of(images, labels)
        losses.sum().backward()
        freeze_pruned_trials(pairs)
        stepper.step()
        total += losses.detach() * labels.shape[1]
    return [t / (count - first) for t in total.tolist()]


@torch.no_grad()
def loss_and_accuracy(
    stacked: StackedModel, data: Split, batch_size: int = EVAL_BATCH
) -> tuple[list[float], list[float]]:
    """Each trial's mean cross-entropy loss and accuracy in percent over the whole split (the
    last partial batch included), in eval mode, every batch shared by the trials."""
    stacked.eval()
    device = data.labels.device
    loss = torch.zeros(stacked.trials, device=device)
    correct = torch.zeros(stacked.trials, dtype=torch.int64, device=device)
    for start in range(0, len(data), batch_size):
        images, labels = data.between(start, start + batch_size)
        logits = stacked(images, shared=True)
        loss += sample_losses(logits, labels).sum(dim=1)
        correct += (logits.argmax(dim=2) == labels).sum(dim=1)
    count = len(data)
    return [v / count for v in loss.tolist()], [100.0 * c / count for c in correct.tolist()]


@torch.no_grad()
def evaluate(stacked: StackedModel, data: Split, batch_size: int = EVAL_BATCH) -> list[float]:
    """Each trial's test accuracy in percent over the whole split."""
    stacked.eval()
    correct = torch.zeros(stacked.trials, dtype=torch.int64, device=data.labels.device)
    for start in range(0, len(data), batch_size):
        images, labels = data.between(start, start + batch_size)
        correct += (stacked(images, shared=True).argmax(dim=2) == labels).sum(dim=1)
    return [100.0 * c / len(data) for c in correct.tolist()]


@dataclass
class LevelHistory:
    """What one pruning level's training produced for one trial.

    The best model is, without a validation set, the one of the best test accuracy (the
    original's rule); with one, the one of the minimum validation loss (the paper's early
    stopping), and `best_accuracy` is then its test accuracy.

    Epochs are those of the whole schedule, counted from its step 0, so that they compare
    across levels. A level that starts at step N (rewound to step N of level 0, --rewind_iter)
    trains epochs `first_epoch` = N // steps per epoch to the last: the per-epoch arrays have
    one entry for each of those (end_iter - first_epoch entries; entry i is epoch
    first_epoch + i), the first of them possibly partial (its batches after step N only).
    Without rewinding, first_epoch is 0 and they have an entry for every epoch.

    `failure`: why the trial stopped in this level (its loss not finite), else None; the other
    fields then hold what it did before.
    """

    all_loss: np.ndarray  # mean training loss of each epoch the level trained
    all_accuracy: np.ndarray  # latest test accuracy at each of them, as the original kept it
    best_accuracy: float = -1.0
    best_epoch: int = 0  # epoch (from step 0) when the best model was measured: epochs done, or
    # first_epoch for the test at the level's start, which follows the N steps rewound to
    best_state: dict[str, torch.Tensor] | None = None
    final_accuracy: float = 0.0  # after the last epoch
    # with a validation set only (else None): latest validation loss and accuracy at each epoch,
    # kept as all_accuracy is, and the early stop's epoch (= best_epoch) and validation figures
    all_val_loss: np.ndarray | None = None
    all_val_accuracy: np.ndarray | None = None
    early_stop_epoch: int | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    first_epoch: int = 0  # the epoch of the level's first step
    failure: str | None = None


def train_level(
    stacked: StackedModel,
    data: LevelData,
    plan: LevelPlan,
    trials: Trials,
    callbacks: Callbacks | None = None,
) -> list[LevelHistory]:
    """Train every trial of `stacked` on `data.train` as `plan` says, from optimiser step
    `plan.start_step` to the end of epoch `plan.epochs`, with a fresh optimiser and schedule
    (`plan.stepper`), testing before training, every `plan.valid_freq` epochs and once after;
    one history per trial.

    As in the original, the test at epoch e measures the model after e epochs of training, and
    an epoch without a test repeats the latest accuracy. Each trial's best state is kept in
    memory; the caller writes it out once, at the end of the level. The test and validation
    images are never augmented.

    A level that starts at step N > 0 (rewound to step N of level 0) starts in epoch
    N // steps per epoch, whose fresh permutation each trial draws and trains from batch
    N % steps per epoch on, as OpenLTH does with its epoch's order. `callbacks.at_step` =
    (n, call): call() once n optimiser steps, counted from step 0 as N is, are done (level 0
    keeps its rewind states so).

    With `data.val` (`--val_size`), every test also measures the validation loss and accuracy,
    and a trial's best model is the one of its minimum validation loss (the earliest on a tie);
    `callbacks.on_epoch[i]` then gets them as the keywords `val_loss` and `val_accuracy`.

    A trial whose training loss is not finite stops there: its history's `failure` says so in one
    line, it is measured no more, and the others go on (its slices keep computing, unread: the
    trials share no tensor, so they cannot reach the others).
    """
    callbacks = Callbacks() if callbacks is None else callbacks
    level = LevelRecord(stacked, data, plan)
    stepper = plan.stepper(stacked, callbacks.at_step)
    bar = tqdm(range(plan.first_epoch, plan.epochs), desc=plan.description, dynamic_ncols=True)
    for e, epoch in enumerate(bar):
        if e % plan.valid_freq == 0:
            level.measure(epoch)
        skip = plan.start_step % plan.epoch_steps if e == 0 else 0
        losses = train_epoch(stacked, data.train, plan.batches, trials, stepper, skip)
        level.record(epoch, losses, stepper.optimizer, callbacks.on_epoch)
        if not level.running():
            break
        if epoch % plan.print_freq == 0:
            bar.set_description(plan.description + level.progress(epoch, losses))
    bar.close()
    return level.finish()


class LevelRecord:
    """The histories of one level's trials as `train_level` trains them: it measures them,
    keeps each trial's best state, records each epoch, and stops a trial whose loss is not
    finite."""

    def __init__(self, stacked: StackedModel, data: LevelData, plan: LevelPlan) -> None:
        self.stacked, self.data, self.plan = stacked, data, plan
        k = stacked.trials
        trained = plan.epochs - plan.first_epoch
        validating = data.val is not None
        self.histories = [
            LevelHistory(
                np.zeros(trained, float),
                np.zeros(trained, float),
                all_val_loss=np.zeros(trained, float) if validating else None,
                all_val_accuracy=np.zeros(trained, float) if validating else None,
                first_epoch=plan.first_epoch,
            )
            for _ in range(k)
        ]
        self.best_val = [math.inf] * k
        # the latest test accuracy and validation (loss, accuracy) of each trial
        self.accuracy, self.val = [0.0] * k, [(0.0, 0.0)] * k

    def running(self) -> list[int]:
        return [i for i, history in enumerate(self.histories) if history.failure is None]

    def measure(self, epoch: int) -> list[float]:
        """Test (and validate) every trial after `epoch` epochs; keep each running trial's
        state if it is its best so far. Returns the test accuracies, kept as the latest."""
        accuracies = evaluate(self.stacked, self.data.test)
        measured = self.val
        if self.data.val is not None:
            measured = list(zip(*loss_and_accuracy(self.stacked, self.data.val), strict=True))
        for i in self.running():
            history = self.histories[i]
            if self.data.val is None:
                better = accuracies[i] > history.best_accuracy
            else:
                better = history.best_state is None or measured[i][0] < self.best_val[i]
            if better:
                history.best_accuracy, history.best_epoch = accuracies[i], epoch
                history.best_state = self.stacked.trial_state(i)
                if self.data.val is not None:
                    self.best_val[i] = measured[i][0]
                    history.val_loss, history.val_accuracy = measured[i]
                    history.early_stop_epoch = epoch
        self.accuracy, self.val = accuracies, measured
        return accuracies

    def record(
        self,
        epoch: int,
        losses: Sequence[float],
        optimizer: torch.optim.Optimizer,
        on_epoch: Sequence[Callable[..., None]] | None,
    ) -> None:
        """Each running trial's loss of `epoch` beside its latest measures, and its `on_epoch`
        call; a trial whose loss is not finite fails instead."""
        e = epoch - self.plan.first_epoch
        for i in self.running():
            history = self.histories[i]
            if not math.isfinite(losses[i]):
                history.failure = diverged(epoch, self.plan.description, losses[i], optimizer)
                continue
            history.all_loss[e], history.all_accuracy[e] = losses[i], self.accuracy[i]
            if history.all_val_loss is not None and history.all_val_accuracy is not None:
                history.all_val_loss[e], history.all_val_accuracy[e] = self.val[i]
            if on_epoch is not None:
                extra = {}
                if self.data.val is not None:
                    extra = dict(val_loss=self.val[i][0], val_accuracy=self.val[i][1])
                on_epoch[i](epoch, losses[i], self.accuracy[i], **extra)

    def progress(self, epoch: int, losses: Sequence[float]) -> str:
        """The progress bar's text after `epoch` (`progress_text`)."""
        val = self.val if self.data.val is not None else None
        return progress_text(epoch, self.plan.epochs, self.histories, losses, self.accuracy, val)

    def finish(self) -> list[LevelHistory]:
        """The histories, each running trial's final accuracy measured after the last epoch."""
        if self.running():
            final = self.measure(self.plan.epochs)
            for i in self.running():
                self.histories[i].final_accuracy = final[i]
        return self.histories


def diverged(epoch: int, description: str, loss: float, optimizer: torch.optim.Optimizer) -> str:
    """The one line that says a trial stopped because its loss is not finite."""
    lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    return (
        f"training diverged at epoch {epoch} ({description.strip()}): the loss is {loss};"
        f" try a lower --lr than {lr:g}"
    )


def progress_text(
    epoch: int,
    epochs: int,
    histories: Sequence[LevelHistory],
    losses: Sequence[float],
    accuracy: Sequence[float],
    val: Sequence[tuple[float, float]] | None,
) -> str:
    """The progress bar's text: the original's for one trial; for several, the mean loss and the
    range of the running trials' accuracies."""
    live = [i for i, history in enumerate(histories) if history.failure is None]
    if len(histories) == 1:
        shown = f"Val Loss: {val[0][0]:.4f} " if val is not None else ""
        return (
            f"Train Epoch: {epoch}/{epochs} Loss: {losses[0]:.6f} {shown}"
            f"Accuracy: {accuracy[0]:.2f}% Best Accuracy: {histories[0].best_accuracy:.2f}%"
        )

    def span(values: list[float]) -> str:
        return f"{min(values):.2f}-{max(values):.2f}%"

    mean_loss = sum(losses[i] for i in live) / len(live)
    return (
        f"Train Epoch: {epoch}/{epochs} trials: {len(live)}/{len(histories)} Mean Loss:"
        f" {mean_loss:.6f} Accuracy: {span([accuracy[i] for i in live])} Best Accuracy:"
        f" {span([histories[i].best_accuracy for i in live])}"
    )
