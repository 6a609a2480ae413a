"""Training and evaluation of a batch of trials on in-memory tensors.

The trials of a batch (one trial is a batch of one) train as one `stack.StackedModel`, each with
its own data order, mask, best state, early stop and failure, under one optimiser and schedule.
The entry is `train_level(stacked, data, plan, trials, callbacks)`.
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
    """Treat denormal floats as zero in this thread and those it starts later; call it before
    any parallel CPU work. Weight decay drives the weights of constant inputs (the blank border
    of MNIST-like images) into the denormal range, where CPU arithmetic is many times slower."""
    torch.set_flush_denormal(True)


def adam(
    parameters: Iterable[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adam with L2 weight decay, in one fused kernel where the devices allow it."""
    parameters = list(parameters)
    fused = all(p.device.type in FUSED_ADAM_DEVICES for p in parameters)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)


class OptimizerChoice(Protocol):
    """What `build_optimizer` reads: a recipe's or a plan's optimiser, rate and momentum."""

    optimizer: str
    lr: float
    momentum: float


def build_optimizer(choice: OptimizerChoice, model: nn.Module) -> torch.optim.Optimizer:
    """A fresh optimiser for one level: `--optimizer adam` or `sgd` with `--momentum`, both with
    `--lr` and weight decay. A pruned weight (zero, its gradient zeroed) gets no update."""
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
    """`--dropout p` on the input of every Linear and Conv layer, as a hook so that parameter
    names, masks and saved states are unchanged."""
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
    """The learning-rate schedule of `--warmup_iters`, `--lr_drops` and `--lr_gamma`."""

    warmup_iters: int
    drops: tuple[int, ...]  # the epochs of --lr_drops
    gamma: float  # 1.0 without drops
    epoch_steps: int  # optimiser steps per epoch

    def factor(self, step: int) -> float:
        """The multiple of --lr of optimiser step `step`: warm-up min(1, step / warmup_iters)
        (OpenLTH's), times `gamma` for each epoch of `drops` that has begun."""
        factor = min(1.0, step / self.warmup_iters) if self.warmup_iters > 0 else 1.0
        epoch = step // self.epoch_steps
        return factor * self.gamma ** sum(1 for drop in self.drops if epoch >= drop)

    def attach(
        self, optimizer: torch.optim.Optimizer, start_step: int = 0, hold_at: int | None = None
    ) -> LambdaLR | None:
        """A fresh schedule for one level's optimiser, starting at step `start_step` (or held at
        step `hold_at`'s rate: `finetune`); None when the rate is constant."""
        if self.warmup_iters == 0 and not self.drops:
            return None

        def factor(step: int) -> float:
            return self.factor(start_step + step if hold_at is None else hold_at)

        return LambdaLR(optimizer, factor)


@dataclass
class Stepper:
    """A level's optimiser and schedule, stepped together; `done` counts steps from step 0 of the
    schedule, and `at` = (n, call) calls call() once step n is done."""

    optimizer: torch.optim.Optimizer
    schedule: LambdaLR | None = None
    done: int = 0
    at: tuple[int, Callable[[], None]] | None = None

    def step(self) -> None:
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        self.done += 1
        if self.at is not None and self.done == self.at[0]:
            self.at[1]()


@dataclass(frozen=True)
class Batches:
    """An epoch's batches: `size` images per step, `--augment` and `--compile`."""

    size: int
    augmented: bool = False
    compiled: bool = False


@dataclass(frozen=True)
class LevelPlan:
    """How one level trains: from step `start_step` of the schedule to the end of epoch
    `epochs`; `hold_at`: at that step's rate throughout (`finetune`)."""

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
        """The plan of a level of `recipe` on `train_set`; `held`: at the schedule's last rate."""
        epoch_steps = steps_per_epoch(len(train_set), recipe.batch_size)
        gamma = 1.0 if recipe.lr_gamma is None else recipe.lr_gamma  # None: no drops
        compiled = use_compile(recipe.compile, train_set.labels.device)
        return cls(
            epochs=recipe.end_iter,
            optimizer=recipe.optimizer,
            lr=recipe.lr,
            momentum=recipe.momentum,
            schedule=Schedule(recipe.warmup_iters, tuple(drops), gamma, epoch_steps),
            batches=Batches(recipe.batch_size, augmented=recipe.augment, compiled=compiled),
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
        return self.start_step // self.epoch_steps

    def stepper(
        self, model: nn.Module, at_step: tuple[int, Callable[[], None]] | None = None
    ) -> Stepper:
        optimizer = build_optimizer(self, model)
        schedule = self.schedule.attach(optimizer, self.start_step, self.hold_at)
        return Stepper(optimizer, schedule, done=self.start_step, at=at_step)


@dataclass(frozen=True)
class LevelData:
    """A level's splits; with `val` (`--val_size`) it stops early at the minimum validation loss."""

    train: Split
    test: Split
    val: Split | None = None


@dataclass(frozen=True)
class Trials:
    """Each trial's mask (stacked, `stack.stack_masks`) and generators, in the stack's order."""

    masks: StackedMasks
    randoms: Sequence[TrialRandom]


@dataclass(frozen=True)
class Callbacks:
    """`on_epoch[i](epoch, loss, accuracy, ...)` after each epoch of trial i; `at_step` = (n, call):
    call() once optimiser step n is done."""

    on_epoch: Sequence[Callable[..., None]] | None = None
    at_step: tuple[int, Callable[[], None]] | None = None


def trial_draws(
    randoms: Sequence[TrialRandom], draw: Callable[[], torch.Tensor], device: torch.device
) -> torch.Tensor:
    """[k, ...]: `draw()` once per trial from its own generator, moved to `device` in one copy."""
    draws = []
    for random in randoms:
        with random.active():
            draws.append(draw())
    return torch.stack(draws).to(device)


def trial_batch(
    data: Split, index: torch.Tensor, draws: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """index [k, B] -> images [k, B, ...], labels [k, B] in one gather; with `draws` [k, B, 3],
    each image cropped and flipped before it is normalised."""
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
    """One pass of every trial over its own fresh permutation of `data`, the last smaller batch
    included; returns each trial's mean training loss. The gradient of the summed losses is
    each trial's own (the trials share no tensor). `skip`: the first batches are not trained
    (a level that starts inside an epoch)."""
    if len(trials.randoms) != stacked.trials:
        raise ValueError(f"{len(trials.randoms)} generators for {stacked.trials} trials")
    stacked.train()
    losses_of = batch_losses(stacked, batches.compiled)
    pairs = gradient_masks(stacked, trials.masks)
    device = data.labels.device
    count = len(data)
    orders = trial_draws(trials.randoms, lambda: torch.randperm(count), device)
    draws = None
    if batches.augmented:  # each trial's crop and flip of each position, after its permutation
        draws = trial_draws(trials.randoms, lambda: augment.draw(count), device)
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
    """Each trial's mean cross-entropy loss and accuracy in percent over the split, in eval mode."""
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
    """What one level's training produced for one trial. The best model is the one of the best
    test accuracy or, with a validation set, of the minimum validation loss. Epochs count from
    step 0 of the schedule; the per-epoch arrays hold epochs `first_epoch` to the last.
    `failure`: why the trial stopped in this level (its loss not finite), else None."""

    all_loss: np.ndarray  # mean training loss of each epoch the level trained
    all_accuracy: np.ndarray  # latest test accuracy at each of them
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    final_accuracy: float = 0.0  # after the last epoch
    # with a validation set only (else None)
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
    """Train every trial of `stacked` as `plan` says, testing before training, every
    `plan.valid_freq` epochs and once after; one history per trial. An epoch without a test
    repeats the latest accuracy. A level that starts at step N > 0 trains its first epoch from
    batch N % steps per epoch of that epoch's permutation. A trial whose loss is not finite
    stops there and the others go on."""
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
    """The histories of one level's trials as `train_level` trains them."""

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
        # the latest test accuracy and validation (loss, accuracy) of each trial
        self.accuracy, self.val = [0.0] * k, [(0.0, 0.0)] * k

    def running(self) -> list[int]:
        return [i for i, history in enumerate(self.histories) if history.failure is None]

    def measure(self, epoch: int) -> list[float]:
        """Test (and validate) every trial, keeping its best state; returns the accuracies."""
        accuracies = evaluate(self.stacked, self.data.test)
        measured = self.val
        if self.data.val is not None:
            measured = list(zip(*loss_and_accuracy(self.stacked, self.data.val), strict=True))
        for i in self.running():
            history = self.histories[i]
            if self.data.val is None:
                better = accuracies[i] > history.best_accuracy
            else:
                better = history.best_state is None or measured[i][0] < history.val_loss
            if better:
                history.best_accuracy, history.best_epoch = accuracies[i], epoch
                history.best_state = self.stacked.trial_state(i)
                if self.data.val is not None:
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
        """Each running trial's loss and latest measures of `epoch`, or its failure."""
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
        """The progress bar's text; for several trials, the mean loss and the accuracies' range."""
        histories, accuracy, epochs = self.histories, self.accuracy, self.plan.epochs
        if len(histories) == 1:
            shown = f"Val Loss: {self.val[0][0]:.4f} " if self.data.val is not None else ""
            return (
                f"Train Epoch: {epoch}/{epochs} Loss: {losses[0]:.6f} {shown}"
                f"Accuracy: {accuracy[0]:.2f}% Best Accuracy: {histories[0].best_accuracy:.2f}%"
            )
        live = self.running()

        def span(values: list[float]) -> str:
            return f"{min(values):.2f}-{max(values):.2f}%"

        mean_loss = sum(losses[i] for i in live) / len(live)
        return (
            f"Train Epoch: {epoch}/{epochs} trials: {len(live)}/{len(histories)} Mean Loss:"
            f" {mean_loss:.6f} Accuracy: {span([accuracy[i] for i in live])} Best Accuracy:"
            f" {span([histories[i].best_accuracy for i in live])}"
        )

    def finish(self) -> list[LevelHistory]:
        """The histories, with each running trial's final accuracy."""
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
