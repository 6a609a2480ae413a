"""Many trials in one process: `main.py --seed 3 4 5` trains the three trials as one stacked
model, and each writes the run folder `main.py --seed s` alone would write.

What "the same" means here (the bound): a batch of several computes each trial's products in
other kernels than a run alone (batched matrix products for fc1, grouped convolutions under vmap
for the others), which sum in another order. So the initial states are equal bit for bit, and
the masks of every level exactly (pruning would have to fall within rounding of the threshold to
differ); losses are equal within a relative 1e-3: float32
rounding of about 1e-7 per product, grown over the run's steps (measured: about 1e-7 on fc1 and
on conv2 under gentle SGD; up to 3e-4 where training on these tiny data is chaotic, conv2 under
SGD with momentum 0.9 at rate 0.01). A test accuracy may differ by
one test image where two logits tie within rounding (the tiny networks below, near chance on
tiny data, make such ties), and the best epoch then with it. Adam divides each gradient by
its own running size, so a weight whose gradient is of the order of rounding may step by the
learning rate either way, and then land on the other side of the pruning threshold; chaotic
training grows rounding likewise. conv2's first Linear layer has 4.2 million weights, so a few
ulps of difference put some of them across the threshold: with Adam one of 4.3 million entries
differed (the slow test allows 2e-5 of them), under chaotic SGD 42. The fast tests train conv2
and resnet20 by gentle SGD (rate 0.001), where weights stay within 6e-7 of the run alone's and
the masks equal. A batch of one is the run alone, bit for bit
(the `module` path runs the module itself).
"""

import csv
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from lth import memory, runs, train
from lth.safe_load import load_array, load_array_list
from tests.datafiles import write_cifar_files
from tests.resultfiles import assert_same_results, files_under
from tests.test_resume import faulty_main, run_main

SEEDS = ("3", "4", "5")
COMMON = ["--plot_dpi", "20", "--end_iter", "2", "--prune_percent", "30"]
LOSS_BOUND = 1e-3
ACCURACY_COLUMNS = ("best_accuracy", "final_accuracy", "test_accuracy")


@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory) -> list[str]:
    """A tiny CIFAR-10 (60 training and 40 test images) in the original's files."""
    folder = tmp_path_factory.mktemp("cifar")
    source = write_cifar_files(folder / "source", n_train=60, n_test=40)
    return [f"--data_source={source}", f"--data_dir={folder / 'data'}"]


def by_trial(cwd: Path) -> dict[tuple[str, int], Path]:
    """Each run folder under cwd/results by (prune type, seed)."""
    found = {}
    for run in runs.all_runs(cwd / "results"):
        key = (
            run.args["prune_type"] + ("_ticket" if run.args["masks_from"] else ""),
            run.args["seed"],
        )
        assert key not in found, key
        found[key] = run.root
    return found


def summary(run: Path) -> list[dict]:
    with open(run / "summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def assert_trial_is_solo(
    trial: Path, solo: Path, mask_share: float = 0.0, one_image: float = 0.0
) -> None:
    """The module docstring's "the same": names and initial state exactly; masks but for
    `mask_share` of their entries; losses within LOSS_BOUND; accuracies within `one_image`
    (100 / test images; 0: exactly)."""
    assert files_under(trial, skip=("tensorboard",)) == files_under(solo, skip=("tensorboard",))
    for path in sorted(solo.rglob("*")):
        name = path.relative_to(solo)
        mine = trial / name
        if path.name.startswith("initial_state_dict"):
            a = torch.load(mine, weights_only=False).state_dict()
            b = torch.load(path, weights_only=False).state_dict()
            assert all(torch.equal(a[k], b[k]) for k in b), name
        elif path.suffix == ".pkl":
            pairs = list(zip(load_array_list(mine), load_array_list(path), strict=True))
            differing = sum(int((x != y).sum()) for x, y in pairs)
            assert differing <= mask_share * sum(y.size for _, y in pairs), (name, differing)
        elif path.suffix == ".dat":
            x, y = load_array(mine), load_array(path)
            if "loss" in path.name:
                np.testing.assert_allclose(x, y, rtol=LOSS_BOUND, err_msg=str(name))
            elif "accuracy" in path.name:
                assert np.abs(x - y).max() <= one_image, name
            else:
                assert np.array_equal(x, y), name
    for mine, theirs in zip(summary(trial), summary(solo), strict=True):
        for column, value in theirs.items():
            if "loss" in column:
                assert float(mine[column]) == pytest.approx(float(value), rel=LOSS_BOUND)
            elif column in ACCURACY_COLUMNS:
                assert abs(float(mine[column]) - float(value)) <= one_image, column
            elif column in ("best_epoch", "early_stop_epoch"):
                assert mine[column] == value or one_image > 0, column
            else:
                assert mine[column] == value, column
    recorded = json.loads((trial / "args.json").read_text())
    assert recorded["args"] == json.loads((solo / "args.json").read_text())["args"]


SGD = ["--optimizer", "sgd", "--lr", "0.001"]  # gentle: rounding stays at rounding


@pytest.mark.parametrize(
    "arch, dataset, optimizer, mask_share",
    [
        ("fc1", "mnist", [], 0.0),
        ("conv2", "cifar10", SGD, 0.0),
        pytest.param("conv2", "cifar10", [], 2e-5, marks=pytest.mark.slow),
        pytest.param("resnet20", "cifar10", SGD, 0.0, marks=pytest.mark.slow),
    ],
)
def test_each_trial_of_a_batch_writes_the_files_of_its_seed_alone(
    tmp_path, arch, dataset, optimizer, mask_share, mnist_data, cifar_data
):
    """fc1 (the batched-matmul path) with Adam: every accuracy exactly; conv2 and the
    BatchNorm network resnet20 (the vmap path) within one test image of 40."""
    data = mnist_data if dataset == "mnist" else cifar_data
    flags = [*COMMON, "--arch_type", arch, "--dataset", dataset, "--prune_iterations", "3", *data]
    flags += ["--batch_size", "20", *optimizer]
    (tmp_path / "batch").mkdir()
    (tmp_path / "solo").mkdir()
    assert run_main(tmp_path / "batch", *flags, "--seed", *SEEDS) == 0
    for seed in SEEDS:
        assert run_main(tmp_path / "solo", *flags, "--seed", seed) == 0
    batch, solo = by_trial(tmp_path / "batch"), by_trial(tmp_path / "solo")
    assert batch.keys() == solo.keys() == {("lt", int(s)) for s in SEEDS}
    names = sorted(path.name for path in batch.values())
    for index, seed in enumerate(SEEDS):
        run = batch[("lt", int(seed))]
        one_image = 0.0 if arch == "fc1" else 100 / 40
        assert_trial_is_solo(run, solo[("lt", int(seed))], mask_share, one_image)
        record = json.loads((run / "args.json").read_text())["batch"]
        assert sorted(record["runs"]) == names and record["index"] == index
        assert record["ticket"] is None


def test_a_batch_of_one_is_the_run_alone_bit_for_bit(tmp_path, mnist_data, reference_run):
    """The session's reference run (one seed) again, through the stack of one: every file."""
    from tests.conftest import REFERENCE_FLAGS

    assert run_main(tmp_path, *REFERENCE_FLAGS, *mnist_data) == 0
    (run,) = (tmp_path / "results").iterdir()
    assert json.loads((run / "args.json").read_text())["batch"]["runs"] == [run.name]
    assert_same_results(run, reference_run)


def test_each_prune_type_and_its_control_in_one_batch(tmp_path, mnist_data):
    """lt, reinit_ticket and random for two seeds in one batch: the lt and random trials are
    their runs alone, and each control is `reinit --masks_from` its lt trial's folder, with that
    trial's mask at every level, taken from memory."""
    flags = [*COMMON, "--prune_iterations", "3", "--batch_size", "32", *mnist_data]
    (tmp_path / "batch").mkdir()
    (tmp_path / "solo").mkdir()
    types = ["lt", "reinit_ticket", "random"]
    assert run_main(tmp_path / "batch", *flags, "--seed", "3", "4", "--prune_type", *types) == 0
    batch = by_trial(tmp_path / "batch")
    assert batch.keys() == {
        (t.replace("reinit_ticket", "reinit_ticket"), s) for t in types for s in (3, 4)
    }
    for seed in ("3", "4"):
        for prune_type in ("lt", "random"):
            assert (
                run_main(tmp_path / "solo", *flags, "--seed", seed, "--prune_type", prune_type) == 0
            )
        lt = batch[("lt", int(seed))]
        control = batch[("reinit_ticket", int(seed))]
        recorded = json.loads((control / "args.json").read_text())
        assert recorded["args"]["prune_type"] == "reinit"
        assert recorded["args"]["masks_from"] == str(lt.resolve())
        assert recorded["batch"]["ticket"] == recorded["batch"]["runs"].index(lt.name)
        lt_run, control_run = runs.load_run(lt), runs.load_run(control)
        for level in range(3):
            ticket = load_array_list(lt_run.mask_path(level))
            taken = load_array_list(control_run.mask_path(level))
            assert all(np.array_equal(a, b) for a, b in zip(ticket, taken, strict=True)), level
        # the control as its own run: reinit --masks_from the lt trial, alone
        alone = [*flags, "--seed", seed, "--prune_type", "reinit", "--masks_from", str(lt)]
        assert run_main(tmp_path / "solo", *alone) == 0
    solo = by_trial(tmp_path / "solo")
    for key, run in solo.items():
        name = "reinit_ticket" if key[0] == "reinit_ticket" else key[0]
        assert_trial_is_solo(batch[(name, key[1])], run)


def test_a_trial_whose_loss_is_not_finite_stops_alone(tmp_path, capsys, monkeypatch, mnist_data):
    """Trial 2 of 3 gets a NaN loss in level 1: its folder says why in one line and keeps its
    level 0; the others finish every level, and the command says so and exits 2."""
    real, calls = train.train_epoch, [0]

    def train_epoch(*args, **kwargs):
        calls[0] += 1
        losses = real(*args, **kwargs)
        if calls[0] == 3:  # level 1's first epoch
            losses[1] = float("nan")
        return losses

    monkeypatch.setattr(train, "train_epoch", train_epoch)
    flags = [*COMMON, "--prune_iterations", "3", "--batch_size", "32", *mnist_data]
    capsys.readouterr()
    assert run_main(tmp_path, *flags, "--seed", *SEEDS) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    found = by_trial(tmp_path)
    stopped = found[("lt", 4)]
    assert err == [
        f"error: results/{stopped.name}: training diverged at epoch 0 ([level 1]): the loss is"
        " nan; try a lower --lr than 0.0012"
    ]
    assert (stopped / "failure.txt").read_text() == f"level 1: {err[0].split(': ', 2)[2]}\n"
    assert [row["level"] for row in summary(stopped)] == ["0"]
    assert not runs.read_run(stopped).complete
    for seed in (3, 5):
        assert runs.read_run(found[("lt", seed)]).complete
        assert not (found[("lt", seed)] / "failure.txt").exists()


@pytest.mark.parametrize("kill_at", ["epoch:3", "stage:4", "commit:4"])
def test_a_batch_killed_and_resumed_from_any_folder_ends_as_if_uninterrupted(
    tmp_path, mnist_data, kill_at
):
    """Killed in level 1 (mid-level; after 4 of level 1's 3 + 3 checkpoints... see below), then
    `--resume` of the last trial's folder: every trial ends with the files of the uninterrupted
    batch. stage:4 dies with trial 0 of level 1 staged and 1, 2 not (the level is undone);
    commit:4 with trial 0's level-1 checkpoint committed and 1, 2 staged (the commit is
    finished)."""
    flags = [*COMMON, "--prune_iterations", "3", "--batch_size", "32", *mnist_data]
    flags += ["--seed", *SEEDS]
    (tmp_path / "reference").mkdir()
    (tmp_path / "chain").mkdir()
    assert run_main(tmp_path / "reference", *flags) == 0
    killed = faulty_main(tmp_path / "chain", kill_at, *flags)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    chain = by_trial(tmp_path / "chain")
    levels = {
        seed: runs.read_run(chain[("lt", int(seed))]).files.checkpoint_level() for seed in SEEDS
    }
    expected = {"epoch:3": [0, 0, 0], "stage:4": [0, 0, 0], "commit:4": [1, 0, 0]}[kill_at]
    assert list(levels.values()) == expected
    last = chain[("lt", int(SEEDS[-1]))]
    assert run_main(tmp_path / "chain", "--resume", str(last)) == 0
    reference = by_trial(tmp_path / "reference")
    for key, run in reference.items():
        assert_same_results(chain[key], run)
        assert not (chain[key] / "checkpoints" / "staged.pth").exists()


def test_a_batch_that_does_not_fit_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch, mnist_data
):
    one = {}

    def available(device):
        return int(2.5 * one["bytes"] / memory.HEADROOM)

    real = memory.trial_bytes

    def measured(*args, **kwargs):
        one["bytes"] = real(*args, **kwargs)
        return one["bytes"]

    monkeypatch.setattr(memory, "trial_bytes", measured)
    monkeypatch.setattr(memory, "available_bytes", available)
    flags = [*COMMON, "--prune_iterations", "2", *mnist_data, "--seed", "1", "2", "3", "4"]
    capsys.readouterr()
    assert run_main(tmp_path, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: a batch of 4 trials needs about")
    assert "at most 2 trial(s) fit" in err[0] and "--seed" in err[0]
    assert not (tmp_path / "results").exists()
    assert run_main(tmp_path, *flags[:-2]) == 0  # two fit


def test_with_dropout_a_batch_repeats_and_its_trials_drop_differently(tmp_path, mnist_data):
    """--dropout: the trials of a batch draw their dropout from the batch's shared generator (a
    trial of a batch is then its run alone in distribution only, README), so the same batch run
    again repeats file for file, and two trials of one seed would still drop differently."""
    flags = [*COMMON, "--prune_iterations", "2", "--batch_size", "32", "--dropout", "0.3"]
    flags += [*mnist_data, "--seed", "7", "8"]
    for name in ("first", "again"):
        (tmp_path / name).mkdir()
        assert run_main(tmp_path / name, *flags) == 0
    first, again = by_trial(tmp_path / "first"), by_trial(tmp_path / "again")
    assert first.keys() == again.keys() == {("lt", 7), ("lt", 8)}
    for key, run in first.items():  # a whole module saved with dropout hooks pickles their ids
        assert_trial_is_solo(again[key], run)  # so: states, masks, figures, one by one
        for path in run.rglob("*.dat"):
            assert path.read_bytes() == (again[key] / path.relative_to(run)).read_bytes()
        for path in run.rglob("*.pth.tar"):
            ours = torch.load(again[key] / path.relative_to(run), weights_only=False)
            theirs = torch.load(path, weights_only=False).state_dict()
            assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.items()), path


@pytest.mark.slow
def test_compiled_batch_trains_as_the_plain_batch(tmp_path, mnist_data):
    """--compile on compiles the batch's loss (the batched-matmul forward of fc1): each trial's
    figures equal the plain batch's within the compiled bound of tests/test_steps.py (Adam may
    turn a rounding into a step), the masks of the next level alike but for weights at the cut."""
    flags = [*COMMON, "--prune_iterations", "2", "--batch_size", "32", *mnist_data]
    flags += ["--seed", "3", "4"]
    for choice in ("off", "on"):
        (tmp_path / choice).mkdir()
        assert run_main(tmp_path / choice, *flags, "--compile", choice) == 0
    plain, compiled = by_trial(tmp_path / "off"), by_trial(tmp_path / "on")
    for key, run in plain.items():
        for mine, theirs in zip(summary(compiled[key]), summary(run), strict=True):
            assert float(mine["final_loss"]) == pytest.approx(float(theirs["final_loss"]), rel=1e-3)
            assert abs(float(mine["best_accuracy"]) - float(theirs["best_accuracy"])) <= 5.0
        dumps = Path("dumps/lt/fc1/mnist")
        for path in sorted((run / dumps).glob("*_mask_*.pkl")):
            ours, theirs = load_array_list(compiled[key] / dumps / path.name), load_array_list(path)
            differing = sum(int((a != b).sum()) for a, b in zip(ours, theirs, strict=True))
            assert differing <= 0.001 * sum(a.size for a in theirs), path.name
