"""Learning-rate schedules: --warmup_iters, --lr_drops and --lr_gamma, restarted at every level."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lth import cli, train
from lth.data import Split
from lth.experiment import Experiment
from tests.datafiles import write_mnist_files
from tests.test_bad_input import check_refused
from tests.test_main import TINY, run_main

LR = 1e-3


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_mnist_files(tmp_path_factory.mktemp("mnist"), n_train=200, n_test=40)


def rates_of_each_step(tmp_path: Path, source: Path, *flags: str) -> list[list[float]]:
    """Run main.py for 2 levels of 4 epochs; the rate each optimiser step used, per level
    (each level has an optimiser of its own)."""
    optimizers: list[torch.optim.Optimizer] = []  # kept, so that no two share an id
    levels: list[list[float]] = []

    def record(optimizer, args, kwargs):
        if not optimizers or optimizers[-1] is not optimizer:
            optimizers.append(optimizer)
            levels.append([])
        levels[-1].append(optimizer.param_groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(record)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = run_main(
                tmp_path,
                *TINY,
                "--end_iter=4",
                "--prune_iterations=2",
                f"--lr={LR}",
                f"--data_source={source}",
                f"--data_dir={tmp_path / 'data'}",
                *flags,
            )
    finally:
        handle.remove()
    assert status == 0
    assert not [w for w in caught if "lr_scheduler" in str(w.message)], caught
    return levels


def expected(step: int, warmup: int, drops: tuple[int, ...], gamma: float, per_epoch: int):
    """The rate of step `step` of a level, written out from the documented formula."""
    rate = LR * (min(1.0, step / warmup) if warmup else 1.0)
    for drop in drops:
        if step // per_epoch >= drop:
            rate *= gamma
    return rate


@pytest.mark.parametrize(
    ("flags", "warmup", "drops", "gamma", "per_epoch"),
    [
        ([], 0, (), 1.0, 7),  # the original: constant
        (["--warmup_iters=10"], 10, (), 1.0, 7),  # 200 images in batches of 32: 7 steps
        (["--lr_drops=2,3", "--lr_gamma=0.5"], 0, (2, 3), 0.5, 7),
        (["--lr_drops=1"], 0, (1,), 0.1, 7),  # --lr_gamma's default
        # both, on the 160 images --val_size leaves: 5 steps per epoch; warm-up past epoch 1
        (
            ["--warmup_iters=8", "--lr_drops=1,3", "--lr_gamma=0.2", "--val_size=40"],
            8,
            (1, 3),
            0.2,
            5,
        ),
    ],
)
def test_the_rate_of_every_step_follows_the_formula_at_every_level(
    tmp_path, source, flags, warmup, drops, gamma, per_epoch
):
    levels = rates_of_each_step(tmp_path, source, *flags)
    assert len(levels) == 2
    for rates in levels:
        assert len(rates) == 4 * per_epoch
        wanted = [expected(s, warmup, drops, gamma, per_epoch) for s in range(len(rates))]
        assert rates == pytest.approx(wanted, rel=1e-12, abs=0)
    if warmup:
        assert levels[0][0] == levels[1][0] == 0.0  # the OpenLTH convention: step 0 at rate 0
        assert levels[0][warmup] == pytest.approx(
            LR * gamma ** sum(warmup // per_epoch >= d for d in drops)
        )


def test_chosen_steps_by_hand():
    """Warm-up over 4 steps, drops at epochs 1 and 2 of 3 steps each, gamma 0.5."""
    schedule = train.Schedule(warmup_iters=4, drops=(1, 2), gamma=0.5, epoch_steps=3)
    factor = {s: schedule.factor(s) for s in range(8)}
    assert factor == {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.375, 4: 0.5, 5: 0.5, 6: 0.25, 7: 0.25}


def test_no_flags_no_scheduler_and_steps_count_the_last_partial_batch():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=LR)
    assert (
        train.Schedule(warmup_iters=0, drops=(), gamma=0.1, epoch_steps=3).attach(optimizer) is None
    )
    assert optimizer.param_groups[0]["lr"] == LR and "initial_lr" not in optimizer.param_groups[0]
    assert train.steps_per_epoch(200, 32) == 7 and train.steps_per_epoch(192, 32) == 6


def test_the_plan_takes_the_recipe_and_what_the_level_adds():
    """`LevelPlan.of`: 200 images in batches of 32 are 7 steps an epoch; --lr_gamma's None is
    no drop; `held` holds the rate of the level's last step; a level starting at step 9 starts
    in epoch 1; the stepper counts from there and calls its call once, after step 16."""
    flags = ["--end_iter=4", "--batch_size=32", "--warmup_iters=3", "--optimizer=sgd"]
    recipe = Experiment.of(vars(cli.parse_args([*flags, "--lr=0.5", "--momentum=0.9"])))
    images = Split(torch.zeros(200, 1, 2, 2), torch.zeros(200, dtype=torch.int64))
    plan = train.LevelPlan.of(recipe, images, [], start_step=9, held=True, description="[x] ")
    assert plan.schedule == train.Schedule(warmup_iters=3, drops=(), gamma=1.0, epoch_steps=7)
    assert plan.batches == train.Batches(32, augmented=False, compiled=False)
    assert (plan.epochs, plan.first_epoch, plan.start_step, plan.hold_at) == (4, 1, 9, 27)
    assert (plan.valid_freq, plan.print_freq, plan.description) == (1, 1, "[x] ")
    calls = []
    stepper = plan.stepper(nn.Linear(2, 2), (16, lambda: calls.append(stepper.done)))
    assert isinstance(stepper.optimizer, torch.optim.SGD) and stepper.done == 9
    assert stepper.optimizer.defaults["momentum"] == 0.9
    for _ in range(19):
        stepper.step()
    assert calls == [16] and stepper.done == 28
    assert stepper.optimizer.param_groups[0]["lr"] == 0.5  # held at step 27: past the warm-up
    assert train.LevelPlan.of(recipe, images, []).hold_at is None


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--warmup_iters=-1"], ["--warmup_iters", "-1"]),
        (["--warmup_iters=1.5"], ["--warmup_iters", "1.5"]),
        (["--lr_drops=0"], ["--lr_drops", "increasing", "'0'"]),
        (["--lr_drops=3,2"], ["--lr_drops", "'3,2'"]),
        (["--lr_drops=2,2"], ["--lr_drops", "'2,2'"]),
        (["--lr_drops=100"], ["--lr_drops", "1..99", "--end_iter"]),
        (["--lr_drops=5", "--end_iter=5"], ["--lr_drops", "1..4"]),
        (["--lr_drops=a"], ["--lr_drops", "'a'"]),
        (["--lr_drops="], ["--lr_drops"]),
        (["--lr_drops=1,,2"], ["--lr_drops", "'1,,2'"]),
        (["--lr_drops=-1"], ["--lr_drops"]),
        (["--lr_drops=１"], ["--lr_drops"]),  # a full-width digit
        (["--lr_drops=5", "--lr_gamma=0"], ["--lr_gamma", "positive"]),
        (["--lr_drops=5", "--lr_gamma=-0.1"], ["--lr_gamma", "positive"]),
        (["--lr_drops=5", "--lr_gamma=nan"], ["--lr_gamma", "nan"]),
        (["--lr_drops=5", "--lr_gamma=inf"], ["--lr_gamma", "inf"]),
        (["--lr_gamma=0.5"], ["--lr_gamma", "--lr_drops"]),
    ],
)
def test_bad_schedule_flags_are_one_line(tmp_path, capsys, source, flags, words):
    base = [f"--data_source={source}", f"--data_dir={tmp_path / 'data'}"]
    check_refused(tmp_path, capsys, base + flags, *words)
    assert not (tmp_path / "results").exists()
