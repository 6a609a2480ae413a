"""Whether a batch of trials fits in memory: a generous estimate made before any run folder is
written. A trial takes its parameters about nine times over (stacked, gradient, Adam's moments,
its module, initial, best and rewind states, mask), the activations of one training batch three
times over and those of one evaluation batch; the shared data sets are not counted.
"""

import contextlib
import os

import torch
from torch import nn

from lth.errors import UserError

PARAMETER_COPIES = 9
ACTIVATION_COPIES = 3
HEADROOM = 0.8  # the share of the free memory a batch may plan to use


def activation_count(model: nn.Module, sample: torch.Tensor) -> int:
    """The number of values every module's output holds for `sample` (one image, batch
    dimension included), measured by one forward pass in eval mode."""
    count = 0

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal count
        if isinstance(output, torch.Tensor):
            count += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return count


def trial_bytes(model: nn.Module, sample: torch.Tensor, batch_size: int, eval_batch: int) -> int:
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    activations = activation_count(model, sample) * 4
    samples = ACTIVATION_COPIES * batch_size + eval_batch  # activations held at once
    return PARAMETER_COPIES * parameters + samples * activations


def available_bytes(device: torch.device) -> int:
    """The memory free for a batch: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_batch_fits(trials: int, per_trial: int, device: torch.device, flag: str) -> None:
    """UserError naming how many trials would fit, when `trials` trials of `per_trial` bytes
    do not fit in HEADROOM of the memory free on `device`."""
    free = available_bytes(device)
    budget = int(free * HEADROOM)
    if trials * per_trial <= budget:
        return
    fits = budget // per_trial
    gib = 2**30
    raise UserError(
        f"a batch of {trials} trials needs about {trials * per_trial / gib:.1f} GiB and"
        f" {free / gib:.1f} GiB of {device.type} memory is free: at most {fits} trial(s) fit;"
        f" {flag}"
    )
