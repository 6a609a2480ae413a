"""The training loop: nothing read back per step, uint8 batches, denormals flushed, and the
benchmark's helpers. (The step against the plain formulation: tests/test_steps.py.)"""

import importlib.util

import pytest
import torch

import archs
from lth.data import Split
from lth.initialization import initialize
from lth.pruning import make_mask, prune_by_percentile
from lth.train import adam
from tests.conftest import ROOT
from tests.datafiles import write_mnist_files
from tests.solo import device_masks, epoch_alone, evaluate_alone
from tests.test_main import TINY, run_main

LR, WEIGHT_DECAY = 1e-2, 1e-4


def small_split(count: int, shape: tuple[int, ...], seed: int = 0, classes: int = 10) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, *shape, generator=generator)
    labels = torch.randint(0, classes, (count,), generator=generator)
    return Split(images=images, labels=labels)


def test_the_step_reads_nothing_back_to_the_host(host_reads):
    """No read per step, so CUDA never waits in the loop: an epoch of 20 steps reads back what
    one of 10 does, the summed losses alone, once."""
    torch.manual_seed(0)
    model = initialize(archs.build("mnist", "fc1"))
    mask = prune_by_percentile(model, make_mask(model), 20)
    optimizer = adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    reads = host_reads
    masks = device_masks(model, mask)
    per_epoch = []
    for count in (600, 1200):
        reads.clear()
        data = small_split(count, (1, 28, 28))
        epoch_alone(model, data, 60, optimizer, masks)
        per_epoch.append(sorted(reads))
    assert per_epoch[0] == per_epoch[1] == ["tolist"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_times_the_work_between_levels_with_main_py_s_own_calls(tmp_path):
    """The benchmark drives main.py's level functions directly: it must keep up with them."""
    row = load_bench().level_overhead(tmp_path, dpi=20, device=torch.device("cpu"), repeats=1)
    assert row["case"] == "level-overhead-dpi20"
    parts = ("prune_s", "rewind_s", "setup_s", "files_s", "plot_s")
    assert all(row[part] >= 0 for part in parts)
    assert row["level_s"] == pytest.approx(sum(row[p] for p in parts if p != "plot_s"), abs=2e-3)
    assert list((tmp_path).glob("*/checkpoints/latest.pth")), "a level's files were written"


def test_benchmark_counts_flops_from_the_layer_shapes():
    bench = load_bench()
    batch = torch.zeros(60, 1, 28, 28)
    flops, layers = bench.layer_flops(archs.build("mnist", "fc1"), batch)
    # forward + weight gradient for all three layers, input gradient for the last two
    assert flops == 60 * (2 * 2 * 784 * 300 + 3 * 2 * (300 * 100 + 100 * 10))
    assert [needs_grad for _, _, needs_grad in layers] == [False, True, True]
    flops, _ = bench.layer_flops(archs.build("mnist", "lenet5"), batch)
    conv1 = 28 * 28 * 64 * 9  # the original's MNIST lenet5: 3x3 'same' convolutions, one input
    conv2 = 28 * 28 * 64 * 64 * 9
    linear = 64 * 14 * 14 * 256 + 256 * 256 + 256 * 10
    assert flops == 60 * (2 * 2 * conv1 + 3 * 2 * (conv2 + linear))


def test_main_runs_with_denormals_flushed_to_zero(tmp_path):
    """Denormal weights (weight decay pushes unused inputs' weights there) slow CPU matmuls
    tens of times; main.py has the CPU treat them as zero."""
    torch.set_flush_denormal(False)
    try:
        assert (torch.tensor([1e-39]) * 1.0).item() != 0
        source = write_mnist_files(tmp_path / "source", n_train=120, n_test=60)
        flags = [*TINY, "--prune_iterations=1", "--end_iter=1", f"--data_source={source}"]
        assert run_main(tmp_path, *flags, f"--data_dir={tmp_path / 'data'}") == 0
        assert (torch.tensor([1e-39]) * 1.0).item() == 0
    finally:
        torch.set_flush_denormal(False)


def test_an_epoch_on_uint8_pixels_is_the_epoch_on_normalised_images():
    """Loaded splits keep uint8 pixels and normalise each batch; that trains exactly as the
    whole set normalised up front, and tests the same."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (130, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (130,), generator=generator)
    mean, std = torch.tensor(0.2860).view(1, 1, 1, 1), torch.tensor(0.3530).view(1, 1, 1, 1)
    stored = Split(pixels, labels, mean, std)
    normalised = Split(stored.images, labels)
    assert normalised.stored.dtype == torch.float32
    torch.manual_seed(0)
    models = [initialize(archs.build("mnist", "fc1")) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    losses = []
    for model, split in zip(models, (stored, normalised), strict=True):
        optimizer = adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        masks = device_masks(model, make_mask(model))
        torch.manual_seed(1)
        losses.append(epoch_alone(model, split, 40, optimizer, masks))
    assert losses[0] == losses[1]
    for a, b in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(a, b)
    assert evaluate_alone(models[0], stored, 50) == evaluate_alone(models[1], normalised, 50)


def test_benchmark_estimates_the_default_experiment_from_its_rows():
    bench = load_bench()
    rows = [
        {
            "case": "fc1-mnist",
            "threads": 2,
            "step": "plain",
            "samples": 60000,
            "epoch_s": 1.0,
            "test_s": 0.5,
            "compile_s": 0.0,
        },
        {
            "case": "fc1-mnist",
            "threads": 2,
            "step": "compiled",
            "samples": 60000,
            "epoch_s": 0.5,
            "test_s": 0.5,
            "compile_s": 30.0,
        },
        {
            "case": "fc1-mnist",
            "threads": 1,
            "step": "plain",
            "samples": 60000,
            "epoch_s": 9.0,
            "test_s": 9.0,
            "compile_s": 0.0,
        },
        {"case": "level-overhead-dpi1200", "threads": 2, "level_s": 6.0},
    ]
    plain = bench.default_experiment(rows, 2, compiled=False)
    assert plain["minutes"] == round((35 * 100 * 1.5 + 35 * 6.0) / 60, 1)
    compiled = bench.default_experiment(rows, 2, compiled=True)
    assert compiled["minutes"] == round((35 * 100 * 1.0 + 30.0 + 35 * 6.0) / 60, 1)


def test_benchmark_prints_its_tables_from_every_kind_of_row(tmp_path):
    """The rows of a training case, batched cases (one trial and a stack, with the bare kernels'
    time), the work between levels and the default experiment's estimate, at a tiny size, make
    the bench's tables."""
    bench = load_bench()
    cpu, shape = torch.device("cpu"), (60000, 1, 28, 28)
    rows = [
        bench.training_case(
            "fc1-mnist", "mnist", "fc1", shape, 6000, False, 600, None, cpu, 1e11, 3
        )
    ]
    rows += [
        bench.batched_case("fc1-mnist", "mnist", "fc1", shape, trials, 600, None, cpu, 3)
        for trials in (1, 3)
    ]
    rows.append(bench.level_overhead(tmp_path, dpi=1200, device=cpu, repeats=1))
    rows.append(bench.default_experiment(rows, torch.get_num_threads(), compiled=False))
    text = bench.table(rows)
    assert "| fc1-mnist |" in text and "default experiment (35 levels x 100 epochs" in text
    batched = [line for line in text.splitlines() if line.startswith("| batched-fc1-mnist")]
    assert [line.split(" | ")[5] for line in batched] == ["module", "bmm"]
    assert all(float(line.split(" | ")[-1].rstrip(" |")) > 0 for line in batched)
