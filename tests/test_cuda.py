"""What only a GPU can show (marker `cuda`): on CUDA a seeded run repeats file for file, a run
killed and resumed ends with the files of an uninterrupted one, `--compile on` (CUDA graphs)
trains as `--compile off` within the bound the CPU tests use, and a run made on CUDA resumes on
a machine without it.

These run where CUDA is available and are skipped elsewhere, except under
LTH_GPU_CHECK_DRY_RUN=1 (`scripts/gpu_check.sh --dry-run`), which runs them on the CPU at the
same tiny size, so that their code is known to work before a GPU is at hand (on the CPU they
check what the CPU tests check already). main.py runs in its own processes, as a user runs it:
each run is a fresh process that sets up CUDA as main.py does (deterministic algorithms), and
the kill is a real SIGKILL (tests/faulty_main.py).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import archs
from lth.data import Split
from lth.initialization import initialize
from lth.pruning import make_mask, prunable_weights, prune_by_percentile
from lth.results import RunDir
from lth.safe_load import load_array_list
from lth.train import adam
from tests.conftest import REFERENCE_FLAGS, ROOT
from tests.resultfiles import assert_same_results, files_under
from tests.solo import device_masks, epoch_alone
from tests.test_steps import LR, WEIGHT_DECAY, assert_within_adam_steps
from tests.test_train import small_split

DRY_RUN = os.environ.get("LTH_GPU_CHECK_DRY_RUN") == "1"
HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda:0" if HAS_CUDA else "cpu")  # main.py's device at --gpu 0

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (HAS_CUDA or DRY_RUN),
        reason="needs CUDA, which this machine lacks (scripts/gpu_check.sh --dry-run runs these"
        " on the CPU)",
    ),
]

# The reference recipe of the CPU tests, 3 levels x 2 epochs of fc1 on the tiny MNIST, plain.
FLAGS = [*REFERENCE_FLAGS, "--prune_iterations", "3", "--compile", "off"]
DUMPS = "dumps/lt/fc1/mnist"
LEVEL_0_FILES = (
    "saves/fc1/mnist/initial_state_dict_lt.pth.tar",
    "saves/fc1/mnist/0_model_lt.pth.tar",
    f"{DUMPS}/lt_all_loss_100.0.dat",
    f"{DUMPS}/lt_all_accuracy_100.0.dat",
    f"{DUMPS}/lt_mask_100.0.pkl",
)
LEVEL_1_MASK = f"{DUMPS}/lt_mask_90.0.pkl"


def main_py(
    cwd: Path, *flags: str, kill_at: str | None = None, hide_cuda: bool = False
) -> subprocess.CompletedProcess:
    """main.py in a process of its own in `cwd`; with `kill_at`, through tests/faulty_main.py,
    SIGKILLed there (KILL_AT); with `hide_cuda`, on a machine without CUDA as far as it sees."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    script = ROOT / "main.py"
    if kill_at is not None:
        env["KILL_AT"] = kill_at
        script = ROOT / "tests" / "faulty_main.py"
    if hide_cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(script), *flags],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def finished(done: subprocess.CompletedProcess, cwd: Path) -> Path:
    """The one run folder under cwd/results of a main.py that exited 0."""
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run,) = (cwd / "results").iterdir()
    return run


def recorded(run: Path) -> dict:
    return json.loads((run / "args.json").read_text())


def decoded(path: Path) -> list[np.ndarray]:
    return list(load_array_list(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_data) -> Path:
    """A seeded run on the device, never interrupted; the tests compare against it."""
    cwd = tmp_path_factory.mktemp("cuda_reference")
    run = finished(main_py(cwd, *FLAGS, *mnist_data), cwd)
    assert recorded(run)["device"] == str(DEVICE)
    return run


@pytest.fixture(scope="module")
def killed(tmp_path_factory, mnist_data) -> Path:
    """The same run on the device, SIGKILLed in the first epoch of level 1 (the third epoch):
    its checkpoint is level 0's. Tests resume copies of it."""
    cwd = tmp_path_factory.mktemp("cuda_killed")
    done = main_py(cwd, *FLAGS, *mnist_data, kill_at="epoch:3")
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-3000:]
    (run,) = (cwd / "results").iterdir()
    assert RunDir(run, "fc1", "mnist", "lt").checkpoint_level() == 0
    assert not (run / "saves/fc1/mnist/1_model_lt.pth.tar").exists()
    assert recorded(run)["device"] == str(DEVICE)
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "results" / run.name))


def test_a_seeded_run_repeats_file_for_file_on_the_device(reference, tmp_path, mnist_data):
    run = finished(main_py(tmp_path, *FLAGS, *mnist_data), tmp_path)
    assert recorded(run)["device"] == str(DEVICE)
    assert_same_results(run, reference)  # figures included, byte for byte


def test_killed_and_resumed_on_the_device_ends_as_an_uninterrupted_run(reference, killed, tmp_path):
    run = copy_of(killed, tmp_path)
    done = main_py(tmp_path, "--resume", str(run))
    assert finished(done, tmp_path) == run
    assert "at level 1" in done.stdout
    assert_same_results(run, reference)
    (entry,) = recorded(run)["resumes"]
    assert (entry["at_level"], entry["device"]) == (1, str(DEVICE))


def test_a_run_made_on_the_device_resumes_on_a_machine_without_cuda(reference, killed, tmp_path):
    """The checkpoint written on CUDA loads where no CUDA is seen: the run finishes on the CPU
    with every file, level 0's exactly as the device wrote them and level 1's mask the one the
    device's weights give (the reference's: this part also needs the seeded repeat above).
    Later levels differ from the device's run (other kernels and, after the notice, other
    random draws), so only their presence and their masks are checked."""
    run = copy_of(killed, tmp_path)
    done = main_py(tmp_path, "--resume", str(run), hide_cuda=True)
    assert finished(done, tmp_path) == run
    assert "notice: CUDA is not available, running on the CPU" in done.stdout
    if HAS_CUDA:  # the device's random state cannot be restored on the CPU, and it says so
        assert re.search(
            r"random states of \d+ CUDA device\(s\) and this machine has 0", done.stdout
        )
    (entry,) = recorded(run)["resumes"]
    assert (entry["at_level"], entry["device"]) == (1, "cpu")
    skip = ("tensorboard",)
    assert files_under(run, skip) == files_under(reference, skip)
    for name in LEVEL_0_FILES:
        assert (run / name).read_bytes() == (killed / name).read_bytes(), name
    for got, expected in zip(
        decoded(run / LEVEL_1_MASK), decoded(reference / LEVEL_1_MASK), strict=True
    ):
        assert np.array_equal(got, expected)
    model = torch.load(run / "saves/fc1/mnist/2_model_lt.pth.tar", weights_only=False)
    mask = decoded(run / f"{DUMPS}/lt_mask_81.0.pkl")
    weights = [p for name, p in model.named_parameters() if "weight" in name]
    assert all(p.device.type == "cpu" for p in model.parameters())
    for weight, layer_mask in zip(weights, mask, strict=True):
        assert torch.all(weight.detach()[torch.from_numpy(layer_mask) == 0] == 0)
        assert 0.5 < layer_mask.mean() < 1  # pruned, not emptied


@pytest.fixture
def fresh_compiler():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def test_compiled_training_equals_plain_training_on_the_device(fresh_compiler):
    """tests/test_steps.py's bound for fc1 on the device: two epochs of `train_epoch` compiled
    (on CUDA: CUDA graphs, mode "reduce-overhead") and plain, from the same weights and batch
    orders, end with the same losses within 1e-3, every weight within four Adam steps, pruned
    weights zero, and the next masks equal but for at most 0.1% of the weights. The batches
    (32 and the last 24 of 120 images) have the shapes of the main.py runs here."""
    data = small_split(120, (1, 28, 28))
    data = Split(data.images.to(DEVICE), data.labels.to(DEVICE))
    torch.manual_seed(0)
    compiled = initialize(archs.build("mnist", "fc1")).to(DEVICE)
    plain = initialize(archs.build("mnist", "fc1")).to(DEVICE)
    plain.load_state_dict(compiled.state_dict())
    mask = prune_by_percentile(compiled, make_mask(compiled), 60)  # zeroes the pruned weights
    same = prune_by_percentile(plain, make_mask(plain), 60)
    assert all(np.array_equal(mask[name], same[name]) for name in mask)
    masks = device_masks(compiled, mask)
    optimizers = [adam(m.parameters(), lr=LR, weight_decay=WEIGHT_DECAY) for m in (compiled, plain)]
    for epoch in range(2):
        losses = []
        for model, optimizer, on in zip((compiled, plain), optimizers, (True, False), strict=True):
            torch.manual_seed(100 + epoch)
            losses.append(epoch_alone(model, data, 32, optimizer, masks, compiled=on))
        assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    assert_within_adam_steps(compiled.cpu(), plain.cpu(), steps=4)
    for param, layer_mask in zip(prunable_weights(compiled), mask.values(), strict=True):
        assert torch.all(param.detach()[torch.from_numpy(layer_mask) == 0] == 0)
    differing = sum(
        int((a != b).sum())
        for a, b in zip(
            prune_by_percentile(compiled, mask, 30).values(),
            prune_by_percentile(plain, mask, 30).values(),
            strict=True,
        )
    )
    assert differing <= 1e-3 * sum(m.size for m in mask.values())


def test_main_compile_on_equals_compile_off_on_the_device(reference, tmp_path, mnist_data):
    """A whole run with `--compile on` against the plain reference, within the same bound: the
    same files, level 0's test before training equal (evaluation is never compiled), its
    epochs' losses within 1e-3, level 1's mask equal but for at most 0.1% of the weights."""
    flags = [*FLAGS[:-1], "on"]
    run = finished(main_py(tmp_path, *flags, *mnist_data), tmp_path)
    assert recorded(run)["args"]["compile"] == "on"
    assert recorded(run)["device"] == str(DEVICE)
    skip = ("tensorboard",)
    assert files_under(run, skip) == files_under(reference, skip)
    loss, expected_loss = (
        np.load(folder / f"{DUMPS}/lt_all_loss_100.0.dat", allow_pickle=True)
        for folder in (run, reference)
    )
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-3)
    accuracy, expected_accuracy = (
        np.load(folder / f"{DUMPS}/lt_all_accuracy_100.0.dat", allow_pickle=True)
        for folder in (run, reference)
    )
    assert accuracy[0] == expected_accuracy[0]
    got, expected = decoded(run / LEVEL_1_MASK), decoded(reference / LEVEL_1_MASK)
    differing = sum(int((a != b).sum()) for a, b in zip(got, expected, strict=True))
    assert differing <= 1e-3 * sum(m.size for m in expected)
