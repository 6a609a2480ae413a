"""Training and evaluation on in-memory tensors: no DataLoader, no per-sample work in the loop."""

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from lth.data import Split
from lth.errors import UserError
from lth.layers import CONV_OR_LINEAR
from lth.pruning import freeze_pruned, prunable_weights, state_copy
from lth.steps import batch_loss

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


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
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
) -> LambdaLR | None:
    """A fresh schedule for one level's optimiser (`--warmup_iters`, `--lr_drops`,
    `--lr_gamma`), stepped once after each optimiser step; None (a constant rate, the
    original's) when there is neither warm-up nor a drop.

    Built with the optimiser at the start of every level. The level's first step is step
    `start_step` of the schedule (`lr_factor(start_step + i)` for its i-th step): 0 restarts it,
    as the paper does; a level rewound to step N of level 0 (--rewind_iter) continues it there,
    as OpenLTH does. The constructor sets the rate of the first step; nothing warns, since the
    scheduler is stepped only after the optimiser.
    """
    if warmup_iters == 0 and not drops:
        return None

    def factor(step: int) -> float:
        return lr_factor(
            start_step + step,
            warmup_iters=warmup_iters,
            drops=drops,
            gamma=gamma,
            epoch_steps=epoch_steps,
        )

    return LambdaLR(optimizer, factor)


def train_epoch(
    model: nn.Module,
    data: Split,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    masks: list[torch.Tensor],
    *,
    compiled: bool = False,
    schedule: LambdaLR | None = None,
    skip: int = 0,
    after: tuple[int, Callable[[], None]] | None = None,
) -> float:
    """One pass over a fresh permutation of `data`; returns the mean training loss.

    Each step: the batch's loss (`steps.batch_loss`: compiled with torch.compile when
    `compiled`), its gradients through autograd, the pruned weights' gradients zeroed by
    `masks`, the optimiser's own `step()`. Each batch is gathered from the permutation and
    normalised (`Split.batch`). The loss is summed on the device and read once per epoch, so
    the step never waits on the host. The last, smaller batch is kept (the original's train
    loader did not drop it). `schedule` (`lr_schedule`), if any, is stepped after every
    optimiser step.

    `skip`: the first `skip` batches of the permutation are not trained (the first, partial
    epoch of a level that starts inside an epoch; the loss is then the mean over the batches
    trained). `after` = (k, call): call() once k optimiser steps of this pass are done (k from
    1), inside the loop, with the model as that step left it.
    """
    model.train()
    loss_of = batch_loss(model, criterion, compiled)
    weights = prunable_weights(model)
    count = len(data)
    order = torch.randperm(count, device=data.labels.device)
    total = torch.zeros((), device=data.labels.device)
    first = skip * batch_size
    at, call = after if after is not None else (-1, None)
    for step, start in enumerate(range(first, count, batch_size), start=1):
        x, y = data.batch(order[start : start + batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(x, y)
        loss.backward()
        freeze_pruned(weights, masks)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        total += loss.detach() * y.shape[0]
        if step == at and call is not None:
            call()
    return total.item() / (count - first)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int = EVAL_BATCH) -> float:
    """Test accuracy in percent over the whole split (the last partial batch included)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.labels.device)
    for start in range(0, len(data), batch_size):
        images, labels = data.between(start, start + batch_size)
        correct += (model(images).argmax(dim=1) == labels).sum()
    return 100.0 * correct.item() / len(data)


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module, data: Split, batch_size: int = EVAL_BATCH
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy in percent over the whole split (validation)."""
    model.eval()
    loss = torch.zeros((), device=data.labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.labels.device)
    for start in range(0, len(data), batch_size):
        images, labels = data.between(start, start + batch_size)
        outputs = model(images)
        loss += nn.functional.cross_entropy(outputs, labels, reduction="sum")
        correct += (outputs.argmax(dim=1) == labels).sum()
    return loss.item() / len(data), 100.0 * correct.item() / len(data)


@dataclass
class LevelHistory:
    """What one pruning level's training produced.

    The best model is, without a validation set, the one of the best test accuracy (the
    original's rule); with one, the one of the minimum validation loss (the paper's early
    stopping), and `best_accuracy` is then its test accuracy.

    Epochs are those of the whole schedule, counted from its step 0, so that they compare
    across levels. A level that starts at step N (rewound to step N of level 0, --rewind_iter)
    trains epochs `first_epoch` = N // steps per epoch to the last: the per-epoch arrays have
    one entry for each of those (end_iter - first_epoch entries; entry i is epoch
    first_epoch + i), the first of them possibly partial (its batches after step N only).
    Without rewinding, first_epoch is 0 and they have an entry for every epoch.
    """

    all_loss: np.ndarray  # mean training loss of each epoch the level trained
    all_accuracy: np.ndarray  # latest test accuracy at each of them, as the original kept it
    best_accuracy: float
    best_epoch: int  # epoch (from step 0) when the best model was measured: epochs done, or
    # first_epoch for the test at the level's start, which follows the N steps rewound to
    best_state: dict[str, torch.Tensor]
    final_accuracy: float  # after the last epoch
    # with a validation set only (else None): latest validation loss and accuracy at each epoch,
    # kept as all_accuracy is, and the early stop's epoch (= best_epoch) and validation figures
    all_val_loss: np.ndarray | None = None
    all_val_accuracy: np.ndarray | None = None
    early_stop_epoch: int | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    first_epoch: int = 0  # the epoch of the level's first step


def train_level(
    model: nn.Module,
    train_set: Split,
    test_set: Split,
    optimizer: torch.optim.Optimizer,
    masks: list[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    valid_freq: int,
    print_freq: int,
    description: str = "",
    on_epoch: Callable[..., None] | None = None,
    compiled: bool = False,
    val_set: Split | None = None,
    schedule: LambdaLR | None = None,
    start_step: int = 0,
    after_steps: tuple[int, Callable[[], None]] | None = None,
) -> LevelHistory:
    """Train from optimiser step `start_step` to the end of epoch `epochs`, testing before
    training, every `valid_freq` epochs and once after.

    As in the original, the test at epoch e measures the model after e epochs of training, and
    an epoch without a test repeats the latest accuracy. The best model's state is kept in
    memory; the caller writes it out once, at the end of the level. `compiled`: the batch loss
    goes through torch.compile (`--compile`, `steps.use_compile`). `schedule`: the level's
    learning-rate schedule (`lr_schedule`, started at `start_step` too).

    `start_step` = N (a level rewound to step N of level 0): the level starts in epoch
    N // steps per epoch, whose fresh permutation it draws and trains from batch
    N % steps per epoch on (the batches before it are not trained in that epoch), as OpenLTH
    does with its epoch's order. `after_steps` = (n, call): call() once n optimiser steps,
    counted from step 0 as `start_step` is, are done (level 0 keeps its rewind state so).

    With `val_set` (`--val_size`), every test also measures the validation loss and accuracy,
    and the best model is the one of the minimum validation loss (the earliest on a tie);
    `on_epoch` then gets them as the keywords `val_loss` and `val_accuracy`.
    """
    criterion = nn.CrossEntropyLoss()
    epoch_steps = steps_per_epoch(len(train_set), batch_size)
    first_epoch, skip = divmod(start_step, epoch_steps)
    trained = epochs - first_epoch
    all_loss = np.zeros(trained, float)
    all_accuracy = np.zeros(trained, float)
    validating = val_set is not None
    all_val_loss = np.zeros(trained, float) if validating else None
    all_val_accuracy = np.zeros(trained, float) if validating else None
    best_accuracy, best_epoch, best_state = -1.0, 0, None
    best_val: tuple[float, float] = (math.inf, 0.0)
    accuracy, val = 0.0, (0.0, 0.0)

    def consider(accuracy: float, epoch: int) -> None:
        nonlocal best_accuracy, best_epoch, best_state
        if accuracy > best_accuracy:
            best_accuracy, best_epoch = accuracy, epoch
            best_state = state_copy(model)

    def consider_validation(accuracy: float, val: tuple[float, float], epoch: int) -> None:
        nonlocal best_accuracy, best_epoch, best_state, best_val
        if best_state is None or val[0] < best_val[0]:
            best_accuracy, best_epoch, best_val = accuracy, epoch, val
            best_state = state_copy(model)

    def measure(epoch: int) -> tuple[float, tuple[float, float]]:
        accuracy = evaluate(model, test_set)
        if val_set is None:
            consider(accuracy, epoch)
            return accuracy, val
        measured = loss_and_accuracy(model, val_set)
        consider_validation(accuracy, measured, epoch)
        return accuracy, measured

    def within(done: int, end: int) -> tuple[int, Callable[[], None]] | None:
        """`after_steps` as train_epoch counts, if its step is among steps done+1..end."""
        if after_steps is None or not done < after_steps[0] <= end:
            return None
        return after_steps[0] - done, after_steps[1]

    bar = tqdm(range(first_epoch, epochs), desc=description, dynamic_ncols=True)
    for i, epoch in enumerate(bar):
        if i % valid_freq == 0:
            accuracy, val = measure(epoch)
        skipped = skip if i == 0 else 0
        done = epoch * epoch_steps + skipped
        loss = train_epoch(
            model,
            train_set,
            batch_size,
            optimizer,
            criterion,
            masks,
            compiled=compiled,
            schedule=schedule,
            skip=skipped,
            after=within(done, (epoch + 1) * epoch_steps),
        )
        if not math.isfinite(loss):
            bar.close()  # so that the message starts on a line of its own
            lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
            raise UserError(
                f"training diverged at epoch {epoch} ({description.strip()}): the loss is {loss};"
                f" try a lower --lr than {lr:g}"
            )
        all_loss[i], all_accuracy[i] = loss, accuracy
        if all_val_loss is not None and all_val_accuracy is not None:
            all_val_loss[i], all_val_accuracy[i] = val
        if on_epoch is not None:
            if validating:
                on_epoch(epoch, loss, accuracy, val_loss=val[0], val_accuracy=val[1])
            else:
                on_epoch(epoch, loss, accuracy)
        if epoch % print_freq == 0:
            shown = f"Val Loss: {val[0]:.4f} " if validating else ""
            bar.set_description(
                f"{description}Train Epoch: {epoch}/{epochs} Loss: {loss:.6f} {shown}"
                f"Accuracy: {accuracy:.2f}% Best Accuracy: {best_accuracy:.2f}%"
            )
    final_accuracy, _ = measure(epochs)
    assert best_state is not None  # the test before the first epoch, at least, was considered
    history = LevelHistory(
        all_loss, all_accuracy, best_accuracy, best_epoch, best_state, final_accuracy
    )
    history.first_epoch = first_epoch
    if validating:
        history.all_val_loss, history.all_val_accuracy = all_val_loss, all_val_accuracy
        history.early_stop_epoch = best_epoch
        history.val_loss, history.val_accuracy = best_val
    return history
