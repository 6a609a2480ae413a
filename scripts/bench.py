"""Speed benchmark: training epochs against this machine's arithmetic limit, per-level overhead,
peak memory of a short run. Prints one JSON line per case, then a table.

Usage: python scripts/bench.py [--quick] [--repeats N] [--threads N] [--device cpu|cuda]
                               [--skip-memory]

Training cases (batch 60, the default): fc1 on mnist-shaped data (60000 x 1x28x28), fc1 on
cifar10-shaped data (50000 x 3x32x32) and lenet5 on mnist-shaped data, each with the plain step
and with its model and loss compiled (`torch.compile`, what `--compile on` does; `compile_s` is
the first epoch's time beyond a later one's, the compiling), and fc1 on cifar10-shaped data with
`--augment`'s crops and flips too (step `plain augmented`). Each compiled case starts from an
empty compile cache, as a new process does. Mnist-shaped cases use the real Fashion-MNIST when
Debian's copy is installed, random data of the same shape otherwise; the cifar10-shaped case
always uses random data. The `data` field says which. The timing does not depend on the values,
nor on how much is pruned (the step's work is dense either way).

FLOPs are counted from the layer shapes (Linear and Conv layers, seen by forward hooks): per
multiply-add 2 FLOPs for the forward product, 2 for the weight gradient, and 2 for the input
gradient of every layer whose input needs one (not the first layer, whose input is the data).
This is what a step actually computes; the usual "3 x forward" rule overcounts fc1 by about 40%,
because fc1's first layer holds most of the work and needs no input gradient. Element-wise work
(activations, loss, Adam) is not counted.

Two matmul rates are measured in the same run. `peak`: a large square float32 GEMM, the faster
of every core and one core (on a busy machine one thread can be faster); this is the machine's
arithmetic limit, which `limit_s` and `ratio` use. `shapes`: the model's own layers at batch 60,
each run alone forward and backward, which is what the library reaches on those small shapes;
`ratio_shapes` compares the epoch with the time every layer would take at that rate.

The default experiment's minutes are estimated from the fc1 epoch of the step `--compile auto`
picks on this device, the test pass and the work between levels at 1200 dpi
(`default_experiment`).

Timings are wall-clock medians after one warm-up; on a machine shared with other jobs they are
noisy (`load_average` is recorded), and `epoch_cpu_s`, this process's CPU time, helps read them.
"""

import argparse
import contextlib
import gzip
import io
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import archs  # noqa: E402
from lth import data, lottery, plots, stack  # noqa: E402
from lth.experiment import Trial  # noqa: E402
from lth.initialization import initialize  # noqa: E402
from lth.layers import CONV_OR_LINEAR  # noqa: E402
from lth.pruning import make_mask, prune_by_percentile  # noqa: E402
from lth.record import TrialRandom  # noqa: E402
from lth.results import RunDir  # noqa: E402
from lth.steps import use_compile  # noqa: E402
from lth.train import (  # noqa: E402
    WEIGHT_DECAY,
    Batches,
    LevelHistory,
    Stepper,
    Trials,
    adam,
    evaluate,
    flush_denormals,
    steps_per_epoch,
    train_epoch,
)

BATCH = 60
CASES = (  # name, dataset (for the architecture), arch, train shape, test size, compiled,
    # augmented (--augment)
    ("fc1-mnist", "mnist", "fc1", (60000, 1, 28, 28), 10000, False, False),
    ("fc1-mnist", "mnist", "fc1", (60000, 1, 28, 28), 10000, True, False),
    ("fc1-cifar10", "cifar10", "fc1", (50000, 3, 32, 32), 10000, False, False),
    ("fc1-cifar10", "cifar10", "fc1", (50000, 3, 32, 32), 10000, True, False),
    ("fc1-cifar10", "cifar10", "fc1", (50000, 3, 32, 32), 10000, False, True),
    ("lenet5-mnist", "mnist", "lenet5", (60000, 1, 28, 28), 10000, False, False),
    ("lenet5-mnist", "mnist", "lenet5", (60000, 1, 28, 28), 10000, True, False),
)
DEFAULT_LEVELS, DEFAULT_EPOCHS, DEFAULT_RATE = 35, 100, 0.2  # main.py's defaults
# Trials trained as one batch (main.py --seed 0 1 ...): name, dataset, arch, train shape, the
# numbers of trials, the share of the data an epoch takes (the conv nets' full epochs take
# minutes on a CPU; the time per image does not depend on how many there are).
BATCHED = (
    ("fc1-mnist", "mnist", "fc1", (60000, 1, 28, 28), (1, 5, 15), 1),
    ("conv2-cifar10", "cifar10", "conv2", (50000, 3, 32, 32), (1, 5), 50),
    ("lenet5-mnist", "mnist", "lenet5", (60000, 1, 28, 28), (1,), 50),
)


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/10 of the data")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per case (>= 3)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-memory", action="store_true", help="no peak-memory run")
    parser.add_argument("--skip-batched", action="store_true", help="no batched-trials section")
    parser.add_argument(
        "--only-batched", action="store_true", help="the batched-trials section alone"
    )
    args = parser.parse_args(argv)
    flush_denormals()  # as main.py does, before any parallel work
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (the epoch time is their median)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    share = 10 if args.quick else 1

    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    # The machine's limit: the faster of every core and one core (on a busy machine one thread
    # can be faster); on CUDA the thread count does not matter.
    info = machine(device)
    peak = peak_matmul_rate(device, args.quick, threads=cores)
    info["peak_gflops_all_cores"] = round(peak / 1e9, 1)
    if device.type == "cpu" and cores > 1:
        one = peak_matmul_rate(device, args.quick, threads=1)
        info["peak_gflops_1thread"] = round(one / 1e9, 1)
        peak = max(peak, one)
    print(json.dumps({"case": "machine", **info}), flush=True)
    cases = [(*case, threads) for case in CASES]
    if device.type == "cpu" and threads > 1:  # is one thread faster for a small network?
        cases += [(*CASES[0], 1), (*CASES[1], 1)]
    if args.only_batched:
        cases = []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        real = real_fashion_mnist(Path(tmp) / "data", device)
        for name, dataset, arch, shape, test_count, compiled, augmented, case_threads in cases:
            torch.set_num_threads(case_threads)
            row = training_case(
                name,
                dataset,
                arch,
                shape,
                test_count,
                compiled,
                share,
                real,
                device,
                peak,
                args.repeats,
                augmented,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
        torch.set_num_threads(threads)
        if not args.skip_batched:
            for name, dataset, arch, shape, counts, part in BATCHED:
                for trials in counts:
                    row = batched_case(
                        name, dataset, arch, shape, trials, share * part, real, device, args.repeats
                    )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        for dpi in () if args.only_batched else (1200, 100):
            row = level_overhead(Path(tmp) / f"level{dpi}", dpi, device, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not args.only_batched:
            rows.append(default_experiment(rows, threads, use_compile("auto", device)))
            print(json.dumps(rows[-1]), flush=True)
        if not args.skip_memory and not args.only_batched:
            row = peak_memory(Path(tmp) / "memory", args.threads, args.quick)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(table(rows))
    return 0


# --- the machine ------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(run: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of `repeats` calls after one warm-up call."""
    run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def peak_matmul_rate(device: torch.device, quick: bool, threads: int) -> float:
    """FLOP/s of a large square float32 GEMM (TF32 off) on `threads` threads."""
    n = 8192 if device.type == "cuda" else (1024 if quick else 2048)
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = median_time(lambda: torch.mm(a, b, out=out), 7, device)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / statistics.median(times)


# --- training epochs --------------------------------------------------------------------------


def real_fashion_mnist(data_dir: Path, device: torch.device) -> tuple | None:
    """The real Fashion-MNIST (train, test) splits when Debian's copy is installed, else None."""
    if not Path(data.DEBIAN_FASHION_MNIST).is_dir():
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        return data.load("fashionmnist", str(data_dir), None, device)


def random_split(shape: tuple[int, ...], classes: int, device: torch.device) -> data.Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(shape, generator=generator)
    labels = torch.randint(0, classes, (shape[0],), generator=generator)
    return data.Split(images.to(device), labels.to(device))


def first_share(split: data.Split, share: int) -> data.Split:
    """The first 1/`share` of `split`, stored as it is."""
    count = len(split) // share
    return data.Split(split.stored[:count], split.labels[:count], split.mean, split.std)


def layer_flops(model: nn.Module, sample: torch.Tensor) -> tuple[int, list[tuple]]:
    """Training FLOPs of one forward+backward pass on `sample`, and each layer's (module, input).

    Counted per Linear/Conv layer from its shapes: forward, weight gradient, and input gradient
    unless the layer's input is the data (it needs none).
    """
    layers: list[tuple] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        layers.append((module, inputs[0].detach(), inputs[0].requires_grad, output.shape))

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CONV_OR_LINEAR)
    ]
    try:
        model(sample)
    finally:
        for handle in handles:
            handle.remove()
    total = 0
    for module, _, needs_input_grad, out_shape in layers:
        macs = multiply_adds(module, out_shape)
        total += 2 * macs * (3 if needs_input_grad else 2)
    return total, [(m, x, g) for m, x, g, _ in layers]


def multiply_adds(module: nn.Module, out_shape: torch.Size) -> int:
    if isinstance(module, nn.Linear):
        return out_shape.numel() * module.in_features
    kernel = module.weight.shape[1:].numel()  # (in_channels / groups) x kernel size
    return out_shape.numel() * kernel


def shapes_matmul_rate(layers: list[tuple], flops: int, device: torch.device) -> float:
    """FLOP/s of the model's own layers at batch 60, each run alone forward and backward."""

    def run() -> None:
        for module, x, needs_input_grad in layers:
            x = x.clone().requires_grad_(needs_input_grad)
            out = module(x)
            out.backward(torch.ones_like(out))

    loops = 20
    times = median_time(lambda: [run() for _ in range(loops)], 5, device)
    return flops * loops / statistics.median(times)


def kernel_floor(
    model: nn.Module, batch: int, device: torch.device, trials: int = 1
) -> float | None:
    """Seconds per step of the bare kernels a step of a Linear stack needs at this batch size,
    each timed alone and warm: forward, weight-gradient and input-gradient matmuls of every
    layer, and the fused Adam update of their weights and biases (`optimizer.step()`). What a
    step would cost with no other work at all; None for models with other prunable layers than
    Linear.

    `trials` > 1: the step of that many trials stacked as `lth.stack`'s `bmm` path computes it
    (one batched product per layer, features first) and one Adam over the stacked parameters;
    1: the module's own products."""
    layers = [m for m in model.modules() if isinstance(m, CONV_OR_LINEAR)]
    if not all(type(m) is nn.Linear and m.bias is not None for m in layers):
        return None
    generator = torch.Generator().manual_seed(0)
    kernels: list[Callable[[], object]] = []
    weights = []  # copies, which the timed update changes
    for i, layer in enumerate(layers):
        out_features, in_features = layer.weight.shape
        if trials == 1:
            x = torch.randn(batch, in_features, generator=generator).to(device)
            g = torch.randn(batch, out_features, generator=generator).to(device)
            w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
            kernels.append(lambda x=x, w=w, b=b: torch.addmm(b, x, w.t()))
            kernels.append(lambda x=x, g=g: torch.mm(g.t(), x))
            if i > 0:
                kernels.append(lambda g=g, w=w: torch.mm(g, w))
        else:
            x = torch.randn(trials, in_features, batch, generator=generator).to(device)
            g = torch.randn(trials, out_features, batch, generator=generator).to(device)
            w = layer.weight.detach().expand(trials, -1, -1).clone()
            b = layer.bias.detach().expand(trials, -1).clone()
            kernels.append(lambda x=x, w=w, b=b: torch.baddbmm(b.unsqueeze(2), w, x))
            kernels.append(lambda x=x, g=g: torch.bmm(g, x.transpose(1, 2)))
            if i > 0:
                kernels.append(lambda g=g, w=w: torch.bmm(w.transpose(1, 2), g))
        weights += [w, b]
    optimizer = adam(weights, lr=1.2e-3, weight_decay=WEIGHT_DECAY)  # the update, as the step's
    for p in weights:
        p.grad = torch.randn_like(p) * 1e-3
    kernels.append(optimizer.step)
    loops = 50

    def repeat(kernel: Callable[[], object]) -> None:
        for _ in range(loops):
            kernel()  # the result is dropped at once, as in a step

    return sum(
        statistics.median(median_time(lambda k=k: repeat(k), 5, device)) / loops for k in kernels
    )


def training_case(
    name: str,
    dataset: str,
    arch: str,
    shape: tuple[int, ...],
    test_count: int,
    compiled: bool,
    share: int,
    real: tuple | None,
    device: torch.device,
    peak: float,
    repeats: int,
    augmented: bool = False,
) -> dict:
    torch.manual_seed(0)
    model = initialize(archs.build(dataset, arch)).to(device)
    classes = 10
    if real is not None and shape[1:] == (1, 28, 28):
        train_set, test_set, source = real[0], real[1], "fashion-mnist (real)"
    else:
        train_set = random_split(shape, classes, device)
        test_set = random_split((test_count, *shape[1:]), classes, device)
        source = "random"
    if share > 1:
        train_set, test_set = first_share(train_set, share), first_share(test_set, share)
    samples = len(train_set)

    step_flops, layers = layer_flops(model, train_set.between(0, BATCH)[0])
    epoch_flops = step_flops * samples // BATCH
    shapes_rate = shapes_matmul_rate(layers, step_flops, device)

    floor = kernel_floor(model, BATCH, device)
    alone = stack.StackedModel([model])  # a run alone: a batch of one, the module itself
    masks = stack.stack_masks(alone, [make_mask(model)])
    stepper = Stepper(adam(alone.parameters(), lr=1.2e-3, weight_decay=WEIGHT_DECAY))
    trials = Trials(masks, [TrialRandom(0)])
    batches = Batches(BATCH, augmented=augmented, compiled=compiled)
    cpu_times: list[float] = []

    def epoch() -> None:
        start = time.process_time()
        train_epoch(alone, train_set, batches, trials, stepper)
        cpu_times.append(time.process_time() - start)

    torch.compiler.reset()  # compile from nothing, as a new process would
    start = time.perf_counter()
    epoch()  # the first epoch: compiling, when compiled
    synchronize(device)
    first_s = time.perf_counter() - start
    epoch_times = median_time(epoch, repeats, device)
    test_times = median_time(lambda: evaluate(alone, test_set), repeats, device)
    epoch_s = statistics.median(epoch_times)
    limit_s = epoch_flops / peak
    return {
        "case": name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "data": source,
        "step": ("compiled" if compiled else "plain") + (" augmented" if augmented else ""),
        "samples": samples,
        "batch_size": BATCH,
        "epoch_s": round(epoch_s, 4),
        "epoch_s_all": [round(t, 4) for t in epoch_times],
        "epoch_cpu_s": round(statistics.median(cpu_times[2:]), 4),
        "first_epoch_s": round(first_s, 4),
        "compile_s": round(max(first_s - epoch_s, 0.0), 2) if compiled else 0.0,
        "test_s": round(statistics.median(test_times), 4),
        "test_samples": len(test_set),
        "samples_per_s": round(samples / epoch_s),
        "gflop_per_epoch": round(epoch_flops / 1e9, 2),
        "peak_gflops": round(peak / 1e9, 1),
        "shapes_gflops": round(shapes_rate / 1e9, 1),
        "limit_s": round(limit_s, 4),
        "ratio": round(epoch_s / limit_s, 2),
        "ratio_shapes": round(epoch_s / (epoch_flops / shapes_rate), 2),
        "kernels_s": None if floor is None else round(floor * samples / BATCH, 4),
    }


def batched_case(
    name: str,
    dataset: str,
    arch: str,
    shape: tuple[int, ...],
    trials: int,
    share: int,
    real: tuple | None,
    device: torch.device,
    repeats: int,
) -> dict:
    """One epoch of `trials` trials trained as one batch (lth.stack, as main.py trains them):
    the whole batch's epoch and each trial's share of it, `per_trial_s`. One trial is a run
    alone (the `module` path)."""
    if real is not None and shape[1:] == (1, 28, 28):
        train_set, source = real[0], "fashion-mnist (real)"
    else:
        train_set, source = random_split(shape, 10, device), "random"
    if share > 1:
        train_set = first_share(train_set, share)
    modules = []
    for trial in range(trials):
        torch.manual_seed(trial)
        modules.append(initialize(archs.build(dataset, arch)).to(device))
    stacked = stack.StackedModel(modules)
    masks = stack.stack_masks(stacked, [make_mask(m) for m in modules])
    stepper = Stepper(adam(stacked.parameters(), lr=1.2e-3, weight_decay=WEIGHT_DECAY))
    batch = Trials(masks, [TrialRandom(trial) for trial in range(trials)])

    def epoch() -> None:
        train_epoch(stacked, train_set, Batches(BATCH), batch, stepper)

    epoch()  # warm-up
    epoch_times = median_time(epoch, repeats, device)
    epoch_s = statistics.median(epoch_times)
    # the kernels of the paths kernel_floor times: a module alone, or the stack's batched products
    timed = stacked.path in ("module", "bmm")
    floor = kernel_floor(modules[0], BATCH, device, trials) if timed else None
    steps = steps_per_epoch(len(train_set), BATCH)
    return {
        "case": f"batched-{name}",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "data": source,
        "samples": len(train_set),
        "trials": trials,
        "path": stacked.path,
        "epoch_s": round(epoch_s, 4),
        "epoch_s_all": [round(t, 4) for t in epoch_times],
        "per_trial_s": round(epoch_s / trials, 4),
        "per_trial_per_1k_samples_s": round(1000 * epoch_s / trials / len(train_set), 5),
        "kernels_per_trial_s": None if floor is None else round(floor * steps / trials, 4),
    }


# --- per-level overhead -----------------------------------------------------------------------


def level_overhead(folder: Path, dpi: int, device: torch.device, repeats: int) -> dict:
    """Seconds main.py spends between two levels of fc1 (MNIST-sized), by part, at `dpi`.

    prune: prune_by_percentile; rewind: back to the initial state; setup: optimizer, nonzeros
    table, device masks; files: write_level (model, dumps, mask, summary, the LossVsAccuracy
    figure) and the checkpoint; plot: the figure alone (drawn and encoded), part of files.
    """
    torch.manual_seed(0)
    model = initialize(archs.build("mnist", "fc1")).to(device)
    progress = lottery.fresh_progress(model, 1000)
    run_dir = RunDir.create(str(folder), "fc1", "mnist", "lt")
    experiment = argparse.Namespace(dataset="mnist", arch_type="fc1", plot_dpi=dpi)
    shared = argparse.Namespace(experiment=experiment)  # what write_level reads of lottery.Shared
    trial = lottery.TrialRun(Trial(0, "lt"), model, TrialRandom(0), run_dir, progress)
    epochs = 100
    rng = np.random.default_rng(0)
    history = LevelHistory(
        all_loss=np.sort(rng.random(epochs))[::-1].copy(),
        all_accuracy=np.sort(rng.random(epochs) * 100),
        best_accuracy=97.0,
        best_epoch=epochs,
        best_state={k: v.clone() for k, v in model.state_dict().items()},
        final_accuracy=97.0,
    )
    parts: dict[str, list[float]] = {k: [] for k in ("prune", "rewind", "setup", "files", "plot")}
    writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def timed(part: str, run: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = run()
        synchronize(device)
        parts[part].append(time.perf_counter() - start)
        return result

    def draw() -> None:
        figure = plots.loss_vs_accuracy(history.all_loss, history.all_accuracy, "mnist", "fc1")
        figure.savefig(io.BytesIO(), format="png", dpi=dpi)
        plots.close(figure, dpi)

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            alone = stack.StackedModel([model])  # main.py keeps its stack from level to level
            for level in range(1, repeats + 2):  # the first level is the warm-up
                progress.mask = timed(
                    "prune", lambda: prune_by_percentile(model, progress.mask, 10)
                )
                timed("rewind", lambda: lottery.reset_survivors(trial, initialize))
                timed(
                    "setup",
                    lambda: (
                        alone.load_trial(0, model.state_dict()),
                        adam(alone.parameters(), lr=1.2e-3, weight_decay=WEIGHT_DECAY),
                        lottery.print_nonzeros(model),
                        stack.stack_masks(alone, [progress.mask]),
                    ),
                )
                comp = 100.0 * 0.9**level
                timed(
                    "files",
                    lambda lv=level, c=comp: (
                        lottery.write_level(
                            shared,
                            trial,
                            lv,
                            lottery.LevelInTraining([trial], [c], [history], [writer]),
                            0,
                        ),
                        run_dir.save_checkpoint(lottery.checkpoint(lv, trial)),
                    ),
                )
                timed("plot", draw)
    finally:
        writer.close()
    medians = {part: statistics.median(times[1:]) for part, times in parts.items()}
    total = sum(v for k, v in medians.items() if k != "plot")
    return {
        "case": f"level-overhead-dpi{dpi}",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "level_s": round(total, 3),
        **{f"{part}_s": round(value, 4) for part, value in medians.items()},
    }


# --- peak memory of a whole short run ---------------------------------------------------------


# A tiny parent for the measured run: a child's peak RSS includes its parent's at the moment it
# was started (fork and exec keep the larger high-water mark), so the benchmark process, with torch
# loaded, must not start `main.py` itself.
PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # KiB on Linux
)


def peak_rss_mb(command: list[str], env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.split()[-1]) / 1024


def peak_memory(folder: Path, threads: int | None, quick: bool) -> dict:
    """Peak resident memory of `main.py` on fc1 Fashion-MNIST (2 levels x 1 epoch, default dpi),
    and of importing what it imports; random idx files of the full size stand in for the data
    when Debian's copy is absent."""
    command = [
        sys.executable,
        str(ROOT / "main.py"),
        "--dataset=fashionmnist",
        "--arch_type=fc1",
        "--prune_iterations=2",
        "--end_iter=1",
        "--seed=0",
        f"--data_dir={folder / 'data'}",
        f"--results_root={folder / 'results'}",
    ]
    dpi = 100 if quick else 1200
    command.append(f"--plot_dpi={dpi}")
    source = "fashion-mnist (real)"
    if not Path(data.DEBIAN_FASHION_MNIST).is_dir():
        command.append(f"--data_source={write_random_idx(folder / 'source')}")
        source = "random"
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    peak = peak_rss_mb(command, env)
    wall = time.perf_counter() - start
    imports = peak_rss_mb(
        [sys.executable, "-c", "import torch, torchvision, matplotlib.pyplot, tensorboard"], env
    )
    return {
        "case": "memory-fc1-fashionmnist",
        "data": source,
        "run": f"2 levels x 1 epoch, plot_dpi {dpi}",
        "peak_rss_mb": round(peak, 1),
        "imports_rss_mb": round(imports, 1),
        "wall_s": round(wall, 2),
    }


def write_random_idx(folder: Path) -> Path:
    """Full-size Fashion-MNIST idx files (gzipped) with random pixels, for --data_source."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 60000), ("t10k", 10000)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        for kind, magic, dims, body in (
            ("images", 2051, (count, 28, 28), images),
            ("labels", 2049, (count,), labels),
        ):
            header = struct.pack(f">{1 + len(dims)}I", magic, *dims)
            name = f"{split}-{kind}-idx{len(dims)}-ubyte.gz"
            (folder / name).write_bytes(gzip.compress(header + body.tobytes(), compresslevel=1))
    return folder


# --- the table --------------------------------------------------------------------------------


def default_experiment(rows: list[dict], threads: int, compiled: bool) -> dict:
    """Minutes of main.py's default run (35 levels x 100 epochs of fc1 on an MNIST-sized set, a
    test every epoch, 1200-dpi figures), estimated from the measured rows: every level's epoch
    costs what the dense epoch of the step `--compile auto` picks costs (pruning leaves the
    step's work dense), plus its compiling once, plus the work between levels. An estimate."""
    step = "compiled" if compiled else "plain"
    by_case = {(r["case"], r.get("threads", threads), r.get("step")): r for r in rows}
    dense = by_case[("fc1-mnist", threads, step)]
    overhead = by_case[("level-overhead-dpi1200", threads, None)]["level_s"]
    scale = 60000 / dense["samples"]  # 1, or 10 with --quick
    epochs = DEFAULT_LEVELS * DEFAULT_EPOCHS
    seconds = epochs * (dense["epoch_s"] + dense["test_s"]) * scale
    seconds += dense.get("compile_s", 0.0) + DEFAULT_LEVELS * overhead
    return {
        "case": "default-experiment-estimate",
        "threads": threads,
        "step": step,
        "levels": DEFAULT_LEVELS,
        "epochs": DEFAULT_EPOCHS,
        "minutes": round(seconds / 60, 1),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| case | threads | data | step | compile s | epoch s | test s | samples/s "
        "| GFLOP/epoch | peak GFLOP/s | limit s | ratio | shapes GFLOP/s | kernels s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "samples_per_s" in r:  # a training case
            lines.append(
                f"| {r['case']} | {r['threads']} | {r['data']} | {r['step']} "
                f"| {r['compile_s']:.1f} "
                f"| {r['epoch_s']:.3f} | {r['test_s']:.3f} "
                f"| {r['samples_per_s']} | {r['gflop_per_epoch']:.1f} | {r['peak_gflops']:.0f} "
                f"| {r['limit_s']:.3f} | {r['ratio']:.2f} | {r['shapes_gflops']:.0f} "
                f"| {'-' if r['kernels_s'] is None else format(r['kernels_s'], '.3f')} |"
            )
    if not any("samples_per_s" in r for r in rows):
        lines = []
    batched = [r for r in rows if "trials" in r]
    if batched:
        lines += [
            "",
            "| batched case | threads | data | samples | trials | path | epoch s | per trial s"
            " | per trial / one trial | kernels per trial s |",
            "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
        ]
    for r in batched:
        one = next(b for b in batched if b["case"] == r["case"] and b["trials"] == 1)
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['data']} | {r['samples']} | {r['trials']}"
            f" | {r['path']} | {r['epoch_s']:.3f} | {r['per_trial_s']:.3f}"
            f" | {r['per_trial_s'] / one['per_trial_s']:.2f}"
            f" | {'-' if r['kernels_per_trial_s'] is None else r['kernels_per_trial_s']} |"
        )
    if any("level_s" in r for r in rows):
        lines += [
            "",
            "| per level | total s | prune s | rewind s | setup s | files s | of which plot s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    for r in rows:
        if "level_s" in r:
            lines.append(
                f"| {r['case']} | {r['level_s']:.3f} | {r['prune_s']:.3f} | {r['rewind_s']:.3f} "
                f"| {r['setup_s']:.3f} | {r['files_s']:.3f} | {r['plot_s']:.3f} |"
            )
    for r in rows:
        if r["case"] == "default-experiment-estimate":
            lines.append(
                f"\ndefault experiment ({r['levels']} levels x {r['epochs']} epochs of fc1,"
                f" {r['step']} step, estimated from the rows above): {r['minutes']:.0f} minutes"
            )
    for r in rows:
        if "peak_rss_mb" in r:
            lines.append(
                f"\npeak RSS of a short run ({r['run']}, {r['data']}): {r['peak_rss_mb']:.0f} MB"
                f" (importing torch, torchvision, matplotlib alone: {r['imports_rss_mb']:.0f} MB)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main_())
