"""The GPU check's benchmark (step 2 of scripts/gpu_check.sh, docs/gpu.md): one epoch of lth's
own training on this device, per network, plain and compiled, and trials trained batched.

Usage: python scripts/gpu_bench.py --data-source DIR --data-dir DIR --out FILE
                                   [--dry-run] [--budget SECONDS]

Writes one JSON line per case to FILE (and to stdout) as soon as the case is done, so a bench
stopped from outside keeps what it measured.

Solo cases (`kind: solo`): fc1 on the real Fashion-MNIST (its 60,000 training images, from
--data-source), conv2, resnet20 and vgg19 on CIFAR-10-shaped random data (50,000 x 3x32x32,
random uint8 pixels normalised as loaded data are), each trained by `train.train_epoch` with
Adam (`train.adam`) at its recipe's batch size (60, 60, 128, 64: the README's), the masks of a
dense level, as main.py trains a level; `plain` and `compiled` (`--compile on`:
`steps.batch_loss` through torch.compile, CUDA graphs on CUDA). Each case first trains two
passes over a warm-up subset (two full batches and a last batch of the epoch's last batch size,
so every batch shape is compiled, and on CUDA captured as a graph, before the timed epoch); the
first pass's time beyond the second's is `compile_s`. Then one whole epoch is timed, after
`torch.cuda.synchronize`: `epoch_s`, `samples_per_s`. `peak_mb`: torch.cuda.max_memory_allocated
over the case beyond what was allocated before it, plus the case's own data set (uint8 pixels
on the device), in MiB; none on the CPU. As main.py does on CUDA,
deterministic algorithms are on (`record.deterministic_algorithms`).

Batched cases (`kind: batched`): k trials of fc1 (the real Fashion-MNIST) and of conv2 (random,
on its first 3,000 images) as one stacked model (`lth.stack`), k = 1, 5, 15, 50: one epoch of
all trials, `epoch_s`, and `per_trial_epoch_s`, the epoch's time divided by k and scaled to the
whole training set (50,000 images for conv2) where fewer were trained.

Order: the plain cases, the batched ones, then the compiled ones (compiling costs most); a case
not begun before `--budget` seconds is written as skipped.

`--dry-run`: the same cases on the CPU at a tiny size: the data source is a tiny stand-in,
conv nets see 96-160 random images, resnet20 and vgg19 are their own classes at test size
(ResNet20 of width 4 and one block per stage, CifarVGG of five 8-channel layers), k = 1, 2,
and per-trial epochs are those of the images trained (not scaled).
"""

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import archs  # noqa: E402
from archs.models.resnet import ResNet20  # noqa: E402
from archs.models.vgg import CifarVGG  # noqa: E402
from lth import data, stack, train  # noqa: E402
from lth.initialization import initialize  # noqa: E402
from lth.pruning import make_mask  # noqa: E402
from lth.record import TrialRandom, deterministic_algorithms  # noqa: E402

LR = 1.2e-3
# name -> (dataset of the architecture, data, batch size): the README's recipes' batch sizes
NETWORKS = {
    "fc1": ("fashionmnist", "fashion-mnist", 60),
    "conv2": ("cifar10", "random", 60),
    "resnet20": ("cifar10", "random", 128),
    "vgg19": ("cifar10", "random", 64),
}
CIFAR_TRAIN = 50000
TRIALS = (1, 5, 15, 50)
BATCHED = ("fc1", "conv2")
BATCHED_IMAGES = {"conv2": 3000}  # conv2's batched epochs train these first images only
DRY = {
    "trials": (1, 2),
    "images": {"conv2": 96, "resnet20": 160, "vgg19": 96},
    "batched_images": {"conv2": 96},
}
TINY_VGG_PLAN = (8, "M", 8, "M", 8, "M", 8, "M", 8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-source", required=True, help="Fashion-MNIST's idx files")
    parser.add_argument("--data-dir", required=True, help="writable folder to import them to")
    parser.add_argument("--out", required=True, help="JSON-lines file of the rows")
    parser.add_argument("--dry-run", action="store_true", help="the CPU, at a tiny size")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for all cases")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    train.flush_denormals()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; --dry-run runs the cases on the CPU")
        return 2
    deterministic_algorithms(device)  # what main.py does, before any cuBLAS work
    fashion, _ = data.load("fashionmnist", args.data_dir, args.data_source, device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    trials = DRY["trials"] if args.dry_run else TRIALS

    cifar: dict[int, data.Split] = {}  # by image count, made once

    def split_for(name: str, batched: bool = False) -> tuple[data.Split, str]:
        if NETWORKS[name][1] == "fashion-mnist":
            kind = "fashion-mnist (tiny stand-in)" if args.dry_run else "fashion-mnist (real)"
            return fashion, kind
        if args.dry_run:
            count = DRY["batched_images" if batched else "images"][name]
        else:
            count = BATCHED_IMAGES[name] if batched else CIFAR_TRAIN
        if count not in cifar:
            cifar[count] = random_cifar(count, device)
        return cifar[count], "random"

    cases: list[tuple[dict, Callable[[], dict]]] = []
    for name in NETWORKS:
        label = {"kind": "solo", "case": name, "step": "plain"}
        cases.append((label, lambda n=name: solo_case(n, *split_for(n), False, args.dry_run)))
    for name in BATCHED:
        for k in trials:
            label = {"kind": "batched", "case": name, "k": k}
            cases.append(
                (label, lambda n=name, k=k: batched_case(n, *split_for(n, True), k, args.dry_run))
            )
    for name in NETWORKS:
        label = {"kind": "solo", "case": name, "step": "compiled"}
        cases.append((label, lambda n=name: solo_case(n, *split_for(n), True, args.dry_run)))

    for label, measure in cases:
        if time.perf_counter() - start > args.budget:
            row = {**label, "error": f"skipped: past the bench's budget of {args.budget:.0f} s"}
        else:
            try:
                row = {**label, **measure()}
            except Exception as error:  # one case failing must not lose the others
                traceback.print_exc()
                row = {**label, "error": f"{type(error).__name__}: {error}"[:300]}
        release(device)
        line = json.dumps(row)
        print(line, flush=True)
        with out.open("a") as file:
            file.write(line + "\n")
    return 0


# --- data and networks ----------------------------------------------------------------------


def random_cifar(count: int, device: torch.device) -> data.Split:
    """`count` CIFAR-10-shaped images of random uint8 pixels with random labels, normalised
    batch by batch with CIFAR-10's mean and std, as a loaded data set is."""
    spec = data.DATASETS["cifar10"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return data.Split(images.to(device), labels.to(device), mean.to(device), std.to(device))


def network(name: str, dry_run: bool, seed: int = 0) -> nn.Module:
    """The network, initialised as main.py does by default (Xavier); resnet20 and vgg19 at test
    size in the dry run (their own classes)."""
    torch.manual_seed(seed)
    if dry_run and name == "resnet20":
        return initialize(ResNet20(3, 10, width=4, blocks=1))
    if dry_run and name == "vgg19":
        return initialize(CifarVGG(3, 10, plan=TINY_VGG_PLAN))
    return initialize(archs.build(NETWORKS[name][0], name))


def warmup_subset(split: data.Split, batch: int) -> data.Split:
    """Two full batches and a last batch as long as the epoch's last one: every batch shape an
    epoch of `split` trains."""
    count = 2 * batch + len(split) % batch
    return split.subset(torch.arange(min(count, len(split))))


# --- timing ---------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def reset_peak(device: torch.device) -> int:
    """Start a case's peak-memory count; returns what is allocated already (data sets)."""
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_mb(device: torch.device, before: int, split: data.Split) -> float | None:
    """The case's peak GPU memory in MiB: the most allocated during it beyond what was there
    before it, plus its own data set (resident before, and needed by the case)."""
    if device.type != "cuda":
        return None
    own = split.stored.nbytes + split.labels.nbytes
    return round((torch.cuda.max_memory_allocated(device) - before + own) / 2**20, 1)


def release(device: torch.device) -> None:
    torch.compiler.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- the cases ------------------------------------------------------------------------------


def solo_case(
    name: str, split: data.Split, source: str, compiled: bool, dry_run: bool
) -> dict[str, object]:
    """One network trained alone by `train.train_epoch` (a batch of one), as main.py trains a
    level of a run alone."""
    device = split.labels.device
    batch = NETWORKS[name][2]
    torch.compiler.reset()  # compile from nothing, as a new process does
    before = reset_peak(device)
    model = network(name, dry_run).to(device)
    alone = stack.StackedModel([model])
    masks = stack.stack_masks(alone, [make_mask(model)])
    optimizer = train.adam(alone.parameters(), lr=LR, weight_decay=train.WEIGHT_DECAY)
    stepper, trials = train.Stepper(optimizer), train.Trials(masks, [TrialRandom(0)])
    batches = train.Batches(batch, compiled=compiled)

    def epoch(on: data.Split) -> None:
        train.train_epoch(alone, on, batches, trials, stepper)

    warm = warmup_subset(split, batch)
    first = timed(lambda: epoch(warm), device)
    second = timed(lambda: epoch(warm), device)
    epoch_s = timed(lambda: epoch(split), device)
    return {
        "data": source,
        "samples": len(split),
        "batch": batch,
        "epoch_s": round(epoch_s, 4),
        "samples_per_s": round(len(split) / epoch_s),
        "compile_s": round(max(first - second, 0.0), 2) if compiled else None,
        "peak_mb": peak_mb(device, before, split),
    }


def batched_epoch(
    modules: list[nn.Module], masks: list[dict], batch: int, device: torch.device
) -> Callable[[data.Split], list[float]]:
    """One epoch of k trials trained as one stacked model, as main.py trains a batch: a
    function of the split."""
    stacked = stack.StackedModel(modules)
    optimizer = train.build_optimizer(
        argparse.Namespace(optimizer="adam", lr=LR, momentum=0.0), stacked
    )
    trials = train.Trials(
        stack.stack_masks(stacked, masks), [TrialRandom(100 + i) for i in range(len(modules))]
    )
    stepper = train.Stepper(optimizer)
    return lambda split: train.train_epoch(stacked, split, train.Batches(batch), trials, stepper)


def batched_case(
    name: str, split: data.Split, source: str, k: int, dry_run: bool
) -> dict[str, object]:
    device = split.labels.device
    batch = NETWORKS[name][2]
    whole = NETWORKS[name][1] == "fashion-mnist" or dry_run  # else a share of CIFAR's size
    full = len(split) if whole else CIFAR_TRAIN
    before = reset_peak(device)
    modules = [network(name, dry_run, seed=trial).to(device) for trial in range(k)]
    epoch = batched_epoch(modules, [make_mask(m) for m in modules], batch, device)
    del modules
    timed(lambda: epoch(warmup_subset(split, batch)), device)
    epoch_s = timed(lambda: epoch(split), device)
    return {
        "data": source,
        "samples": len(split),
        "full_samples": full,
        "batch": batch,
        "epoch_s": round(epoch_s, 4),
        "per_trial_epoch_s": round(epoch_s / k * full / len(split), 4),
        "samples_per_s": round(k * len(split) / epoch_s),
        "peak_mb": peak_mb(device, before, split),
    }


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
