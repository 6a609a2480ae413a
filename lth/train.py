"""Training and evaluation of a batch of trials on in-memory tensors: no DataLoader, no
per-sample work in the loop, one read back to the host per epoch.

The one training path: the trials of a batch (one trial is a batch of one) as a
`stack.StackedModel`, each trial with its own data order (drawn from its `TrialRandom`), its own
mask, its own best state, early stop and failure; one optimiser and one learning-rate schedule
for all of them (the trials of a batch share the recipe, so their schedules are the same).
"""

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from lth import augment
from lth.data import Split
from lth.layers import CONV_OR_LINEAR
from lth.record import TrialRandom
from lth.settings import Recipe
from lth.stack import StackedMasks, StackedModel, freeze_pruned_trials, gradient_masks
from lth.steps import batch_losses, sample_losses

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


def build_optimizer(args: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """A fresh optimiser for one level: `--optimizer adam` (the original) or `sgd` with
    `--momentum`; both with `--lr` and L2 weight decay 1e-4.

    With either, a pruned weight (zero, with its gradient zeroed) gets no update: its moments,
    momentum buffer and weight decay all stay zero.
    """
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=WEIGHT_DECAY
        )
    return adam(model.parameters(), lr=args.lr, weight_decay=WEIGHT_DECAY)


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


def lr_factor(
    step: int, *, warmup_iters: int, drops: list[int], gamma: float, epoch_steps: int
) -> float:
    """The multiple of --lr used by optimiser step `step` of a level (counted from 0).

    Warm-up: min(1, step / warmup_iters), the OpenLTH convention, so the first step of a level
    with warm-up has rate 0 and step `warmup_iters` the full rate. Drops: times `gamma` for each
    epoch E of `drops` that has begun, the epoch being step // epoch_steps.
    """
    factor = min(1.0, step / warmup_iters) if warmup_iters > 0 else 1.0
    epoch = step // epoch_steps
    return factor * gamma ** sum(1 for drop in drops if epoch >= drop)


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_iters: int,
    drops: list[int],
    gamma: float,
    epoch_steps: int,
    start_step: int = 0,
    hold_at: int | None = None,
) -> LambdaLR | None:
    """A fresh schedule for one level's optimiser (`--warmup_iters`, `--lr_drops`,
    `--lr_gamma`), stepped once after each optimiser step; None (a constant rate, the
    original's) when there is neither warm-up nor a drop.

    Built with the optimiser at the start of every level. The level's first step is step
    `start_step` of the schedule (`lr_factor(start_step + i)` for its i-th step): 0 restarts it,
    as the paper does; a level rewound to step N of level 0 (--rewind_iter) continues it there,
    as OpenLTH does. The constructor sets the rate of the first step; nothing warns, since the
    scheduler is stepped only after the optimiser. `hold_at`: every step at the rate of that
    step of the schedule instead (`finetune`: its last step's).
    """
    if warmup_iters == 0 and not drops:
        return None

    def factor(step: int) -> float:
        return lr_factor(
            start_step + step if hold_at is None else hold_at,
            warmup_iters=warmup_iters,
            drops=drops,
            gamma=gamma,
            epoch_steps=epoch_steps,
        )

    return LambdaLR(optimizer, factor)


def level_optimizer(
    recipe: Recipe,
    model: nn.Module,
    *,
    drops: list[int],
    epoch_steps: int,
    start_step: int,
    hold_at: int | None = None,
) -> tuple[torch.optim.Optimizer, LambdaLR | None]:
    """A level's fresh optimiser (`build_optimizer`) and its learning-rate schedule
    (`lr_schedule`, `drops` the epochs of --lr_drops) whose first step is step `start_step`, or
    held at the rate of step `hold_at`."""
    optimizer = build_optimizer(recipe, model)
    schedule = lr_schedule(
        optimizer,
        warmup_iters=recipe.warmup_iters,
        drops=drops,
        gamma=1.0 if recipe.lr_gamma is None else recipe.lr_gamma,  # None: no drops
        epoch_steps=epoch_steps,
        start_step=start_step,
        hold_at=hold_at,
    )
    return optimizer, schedule


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
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    masks: StackedMasks,
    randoms: Sequence[TrialRandom],
    *,
    compiled: bool = False,
    augmented: bool = False,
    schedule: LambdaLR | None = None,
    skip: int = 0,
    after: tuple[int, Callable[[], None]] | None = None,
) -> list[float]:
    """One pass of every trial over its own fresh permutation of `data`; returns each trial's
    mean training loss.

    Each step: every trial's batch loss (`steps.batch_losses`: compiled with torch.compile when
    `compiled`), the gradients of their sum through autograd (each trial's gradient is that of its
    own mean loss: the trials share no tensor), the pruned weights' gradients zeroed by `masks`,
    the optimiser's own `step()`. The losses are summed on the device and read once per epoch, so
    the step never waits on the host. The last, smaller batch is kept (the original's train
    loader did not drop it). `schedule` (`lr_schedule`), if any, is stepped after every
    optimiser step. `augmented` (`--augment`): every training image is cropped and flipped
    (`augment`), each trial drawing its epoch's crops and flips after its permutation.

    `skip`: the first `skip` batches of the permutation are not trained (the first, partial
    epoch of a level that starts inside an epoch; the loss is then the mean over the batches
    trained). `after` = (n, call): call() once n optimiser steps of this pass are done (n from
    1), inside the loop, with the trials as that step left them.
    """
    if len(randoms) != stacked.trials:
        raise ValueError(f"{len(randoms)} generators for {stacked.trials} trials")
    stacked.train()
    losses_of = batch_losses(stacked, compiled)
    pairs = gradient_masks(stacked, masks)
    device = data.labels.device
    count = len(data)
    orders = trial_orders(count, randoms, device)
    draws = trial_augmentations(count, randoms, device) if augmented else None
    total = torch.zeros(stacked.trials, device=device)
    first = skip * batch_size
    at, call = after if after is not None else (-1, None)
    for step, start in enumerate(range(first, count, batch_size), start=1):
        window = slice(start, start + batch_size)
        images, labels = trial_batch(
            data, orders[:, window], None if draws is None else draws[:, window]
        )
        optimizer.zero_grad(set_to_none=True)
        losses = losses_of(images, labels)
        losses.sum().backward()
        freeze_pruned_trials(pairs)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        total += losses.detach() * labels.shape[1]
        if step == at and call is not None:
            call()
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
    train_set: Split,
    test_set: Split,
    optimizer: torch.optim.Optimizer,
    masks: StackedMasks,
    randoms: Sequence[TrialRandom],
    *,
    epochs: int,
    batch_size: int,
    valid_freq: int,
    print_freq: int,
    description: str = "",
    on_epoch: Sequence[Callable[..., None]] | None = None,
    compiled: bool = False,
    augmented: bool = False,
    val_set: Split | None = None,
    schedule: LambdaLR | None = None,
    start_step: int = 0,
    after_steps: tuple[int, Callable[[], None]] | None = None,
) -> list[LevelHistory]:
    """Train every trial of `stacked` from optimiser step `start_step` to the end of epoch
    `epochs`, testing before training, every `valid_freq` epochs and once after; one history per
    trial.

    As in the original, the test at epoch e measures the model after e epochs of training, and
    an epoch without a test repeats the latest accuracy. Each trial's best state is kept in
    memory; the caller writes it out once, at the end of the level. `compiled`: the batch loss
    goes through torch.compile (`--compile`, `steps.use_compile`). `augmented` (`--augment`):
    the training images are cropped and flipped (`train_epoch`); the test and validation images
    never are. `schedule`: the level's learning-rate schedule (`lr_schedule`, started at
    `start_step` too).

    `start_step` = N (a level rewound to step N of level 0): the level starts in epoch
    N // steps per epoch, whose fresh permutation each trial draws and trains from batch
    N % steps per epoch on, as OpenLTH does with its epoch's order. `after_steps` = (n, call):
    call() once n optimiser steps, counted from step 0 as `start_step` is, are done (level 0
    keeps its rewind states so).

    With `val_set` (`--val_size`), every test also measures the validation loss and accuracy,
    and a trial's best model is the one of its minimum validation loss (the earliest on a tie);
    `on_epoch[i]` then gets them as the keywords `val_loss` and `val_accuracy`.

    A trial whose training loss is not finite stops there: its history's `failure` says so in one
    line, it is measured no more, and the others go on (its slices keep computing, unread: the
    trials share no tensor, so they cannot reach the others).
    """
    k = stacked.trials
    epoch_steps = steps_per_epoch(len(train_set), batch_size)
    first_epoch, skip = divmod(start_step, epoch_steps)
    trained = epochs - first_epoch
    validating = val_set is not None
    histories = [
        LevelHistory(
            np.zeros(trained, float),
            np.zeros(trained, float),
            all_val_loss=np.zeros(trained, float) if validating else None,
            all_val_accuracy=np.zeros(trained, float) if validating else None,
            first_epoch=first_epoch,
        )
        for _ in range(k)
    ]
    best_val = [math.inf] * k
    accuracy, val = [0.0] * k, [(0.0, 0.0)] * k

    def running() -> list[int]:
        return [i for i in range(k) if histories[i].failure is None]

    def measure(epoch: int) -> tuple[list[float], list[tuple[float, float]]]:
        accuracies = evaluate(stacked, test_set)
        measured = val
        if val_set is not None:
            measured = list(zip(*loss_and_accuracy(stacked, val_set), strict=True))
        for i in running():
            history = histories[i]
            if val_set is None:
                better = accuracies[i] > history.best_accuracy
            else:
                better = history.best_state is None or measured[i][0] < best_val[i]
            if better:
                history.best_accuracy, history.best_epoch = accuracies[i], epoch
                history.best_state = stacked.trial_state(i)
                if val_set is not None:
                    best_val[i] = measured[i][0]
                    history.val_loss, history.val_accuracy = measured[i]
                    history.early_stop_epoch = epoch
        return accuracies, measured

    def within(done: int, end: int) -> tuple[int, Callable[[], None]] | None:
        """`after_steps` as train_epoch counts, if its step is among steps done+1..end."""
        if after_steps is None or not done < after_steps[0] <= end:
            return None
        return after_steps[0] - done, after_steps[1]

    bar = tqdm(range(first_epoch, epochs), desc=description, dynamic_ncols=True)
    for e, epoch in enumerate(bar):
        if e % valid_freq == 0:
            accuracy, val = measure(epoch)
        skipped = skip if e == 0 else 0
        done = epoch * epoch_steps + skipped
        losses = train_epoch(
            stacked,
            train_set,
            batch_size,
            optimizer,
            masks,
            randoms,
            compiled=compiled,
            augmented=augmented,
            schedule=schedule,
            skip=skipped,
            after=within(done, (epoch + 1) * epoch_steps),
        )
        for i in running():
            history = histories[i]
            if not math.isfinite(losses[i]):
                history.failure = diverged(epoch, description, losses[i], optimizer)
                continue
            history.all_loss[e], history.all_accuracy[e] = losses[i], accuracy[i]
            if history.all_val_loss is not None and history.all_val_accuracy is not None:
                history.all_val_loss[e], history.all_val_accuracy[e] = val[i]
            if on_epoch is not None:
                extra = dict(val_loss=val[i][0], val_accuracy=val[i][1]) if validating else {}
                on_epoch[i](epoch, losses[i], accuracy[i], **extra)
        if not running():
            break
        if epoch % print_freq == 0:
            bar.set_description(
                description
                + progress_text(
                    epoch, epochs, histories, losses, accuracy, val if validating else None
                )
            )
    bar.close()
    if running():
        final, _ = measure(epochs)
        for i in running():
            histories[i].final_accuracy = final[i]
    return histories


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
