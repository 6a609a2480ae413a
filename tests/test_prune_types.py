"""The prune types beyond the original's, end to end on the session's tiny MNIST: learning-rate
rewinding and fine-tuning keep the trained survivors, the methods of pruning at initialisation
train the pruned initial network, each level at the magnitude rule's counts."""

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from lth import lottery, runs
from lth.pruning import percentile_prune
from lth.safe_load import load_array_list
from tests.resultfiles import assert_same_results
from tests.test_bad_input import check_refused
from tests.test_batch import by_trial
from tests.test_main import TINY, run_main
from tests.test_resume import faulty_main

LR = 1e-3
EPOCH_STEPS = 4  # 120 training images in batches of 32
LEVELS = 3


class Levels:
    """What each level of a run got: every trial's state as its training began and ended, and
    the rate of every optimiser step."""

    def __init__(self, monkeypatch) -> None:
        self.starts: list[list[dict]] = []
        self.ends: list[list[dict]] = []
        self.rates: list[list[float]] = []
        original = lottery.train_level

        def recording(stacked, *args, **kwargs):
            self.starts.append([stacked.trial_state(i) for i in range(stacked.trials)])
            self.rates.append([])
            histories = original(stacked, *args, **kwargs)
            self.ends.append([stacked.trial_state(i) for i in range(stacked.trials)])
            return histories

        monkeypatch.setattr(lottery, "train_level", recording)

    def __call__(self, optimizer, args, kwargs) -> None:
        self.rates[-1].append(optimizer.param_groups[0]["lr"])


def run_recorded(tmp_path: Path, monkeypatch, *flags: str) -> tuple[Levels, list[Path]]:
    levels = Levels(monkeypatch)
    handle = register_optimizer_step_post_hook(levels)
    try:
        assert run_main(tmp_path, *TINY, f"--lr={LR}", f"--prune_iterations={LEVELS}", *flags) == 0
    finally:
        handle.remove()
    folders = sorted((tmp_path / "results").iterdir(), key=batch_index)
    return levels, folders


def batch_index(folder: Path) -> int:
    return json.loads((folder / "args.json").read_text())["batch"]["index"]


WEIGHTS = ("classifier.0.weight", "classifier.2.weight", "classifier.4.weight")


def magnitude_mask(state: dict, percent: float) -> dict[str, np.ndarray]:
    """The original's layer-wise rule on the weights of `state`, from a dense mask."""
    return {
        name: percentile_prune(state[name].numpy(), np.ones(state[name].shape, np.float32), percent)
        for name in WEIGHTS
    }


def test_lrr_and_finetune_train_each_level_from_the_trained_survivors(
    tmp_path, monkeypatch, mnist_data
):
    """A batch of lt and lrr, and finetune alone (its schedule differs): level 1 of lrr and
    finetune starts from level 0's trained weights with the smallest 20% of each layer zeroed,
    lt's from its initial weights; lrr restarts the schedule, finetune holds its final rate."""
    schedule = ["--lr_drops=1", "--lr_gamma=0.1", "--prune_percent=20"]
    (tmp_path / "batch").mkdir()
    (tmp_path / "alone").mkdir()
    batch, _ = run_recorded(
        tmp_path / "batch", monkeypatch, "--prune_type", "lt", "lrr", *schedule, *mnist_data
    )
    alone, _ = run_recorded(
        tmp_path / "alone", monkeypatch, "--prune_type", "finetune", *schedule, *mnist_data
    )
    initial_lt = batch.starts[0][0]
    for level in range(1, LEVELS):
        for states, index, kept in (
            (batch, 1, "trained"),
            (alone, 0, "trained"),
            (batch, 0, "initial"),
        ):
            before = states.ends[level - 1][index]
            mask = magnitude_mask(before, 20) if level == 1 else None
            start = states.starts[level][index]
            source = before if kept == "trained" else initial_lt
            for name, value in start.items():
                expected = source[name]
                if name in WEIGHTS:
                    zero = start[name] == 0
                    if mask is not None:
                        assert torch.equal(zero, torch.from_numpy(mask[name] == 0)), (kept, name)
                    expected = torch.where(zero, 0.0, expected)
                assert torch.equal(value, expected), (kept, level, name)
    full = [LR] * EPOCH_STEPS + [LR * 0.1] * EPOCH_STEPS  # TINY: 2 epochs, the drop at epoch 1
    for level in range(LEVELS):
        assert batch.rates[level] == pytest.approx(full, rel=1e-12)  # lt and lrr restart it
        held = full if level == 0 else [LR * 0.1] * (2 * EPOCH_STEPS)
        assert alone.rates[level] == pytest.approx(held, rel=1e-12)


def layer_counts(run: Path, level: int) -> list[int]:
    return [int(m.sum()) for m in load_array_list(runs.load_run(run).mask_path(level))]


def test_pruning_at_initialization_trains_the_initial_network_pruned_to_the_levels_counts(
    tmp_path, monkeypatch, mnist_data
):
    flags = ["--prune_percent=30", "--prune_percent_output=15", *mnist_data]
    levels, folders = run_recorded(
        tmp_path, monkeypatch, "--prune_type", "lt", "snip", "grasp", "synflow", *flags
    )
    kinds = [runs.load_run(f).args["prune_type"] for f in folders]
    assert kinds == ["lt", "snip", "grasp", "synflow"]
    for level in range(LEVELS):
        ticket = layer_counts(folders[0], level)
        for index, folder in enumerate(folders[1:], start=1):
            assert layer_counts(folder, level) == ticket, (kinds[index], level)
            start, initial = levels.starts[level][index], levels.starts[0][index]
            for name, value in start.items():
                assert torch.equal(value, torch.where(value == 0, 0.0, initial[name])), name
    snip, grasp = (load_array_list(runs.load_run(f).mask_path(2)) for f in folders[1:3])
    assert any(not np.array_equal(a, b) for a, b in zip(snip, grasp, strict=True))


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--prune_type", "lt", "finetune", "--lr_drops=1"], ["finetune", "batch of its own"]),
        (["--prune_type", "lrr", "--rewind_iter=2"], ["--rewind_iter", "lrr keeps the trained"]),
        (["--prune_type", "snip", "--rewind_epoch=1"], ["--rewind_epoch", "snip trains the"]),
        (["--prune_type", "grasp", "--masks_from=x"], ["--masks_from", "not grasp"]),
    ],
)
def test_prune_types_refuse_what_they_cannot_do(tmp_path, capsys, mnist_data, flags, words):
    check_refused(tmp_path, capsys, [*TINY, *flags, *mnist_data], *words)


def test_a_batch_of_the_new_prune_types_killed_and_resumed_ends_as_if_uninterrupted(
    tmp_path, mnist_data
):
    """Killed in the first epoch of level 2, then resumed: `lrr` goes on from the trained weights
    its checkpoint holds, `snip` and `synflow` score the initial network again from the trial's
    generator as the checkpoint left it; every file equals the uninterrupted batch's."""
    flags = [*TINY, "--prune_percent=30", "--prune_iterations=3", *mnist_data]
    flags += ["--prune_type", "lrr", "snip", "synflow", "--seed", "3"]
    for name in ("reference", "chain"):
        (tmp_path / name).mkdir()
    assert run_main(tmp_path / "reference", *flags) == 0
    killed = faulty_main(tmp_path / "chain", "epoch:5", *flags)  # 2 epochs a level
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    chain, reference = by_trial(tmp_path / "chain"), by_trial(tmp_path / "reference")
    assert sorted(chain) == sorted(reference) == [("lrr", 3), ("snip", 3), ("synflow", 3)]
    assert {runs.read_run(run).files.checkpoint_level() for run in chain.values()} == {1}
    assert run_main(tmp_path / "chain", "--resume", str(chain[("snip", 3)])) == 0
    for key, run in reference.items():
        assert_same_results(chain[key], run)
