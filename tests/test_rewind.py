"""Late rewinding (--rewind_iter, --rewind_epoch): level 0 keeps its state after N optimiser
steps; every later level rewinds to it and trains from step N to the end, its learning-rate
schedule continued at step N."""

import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from lth import train
from tests.resultfiles import (
    assert_same_results,
    files_under,
    keep_checkpoints,
    scalars,
    stopped_after,
)
from tests.test_bad_input import check_refused
from tests.test_main import TINY, load_dump, only_run, run_main

LR = 1e-3
EPOCH_STEPS = 4  # the session's 120 training images in batches of 32 (TINY): the last holds 24
DUMPS = Path("dumps/lt/fc1/mnist")
SAVES = Path("saves/fc1/mnist")


@pytest.fixture
def data(mnist_data) -> list[str]:
    return mnist_data


class Steps:
    """Every optimiser step of a run, per optimiser (one per level): the rate it used and the
    parameters it left."""

    def __init__(self) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []  # kept, so that no two share an id
        self.rates: list[list[float]] = []
        self.params: list[list[list[torch.Tensor]]] = []

    def __call__(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if not self.optimizers or self.optimizers[-1] is not optimizer:
            self.optimizers.append(optimizer)
            self.rates.append([])
            self.params.append([])
        self.rates[-1].append(optimizer.param_groups[0]["lr"])
        self.params[-1].append([p.detach().clone() for p in optimizer.param_groups[0]["params"]])


def run_counting_steps(cwd: Path, *flags: str) -> Steps:
    steps = Steps()
    handle = register_optimizer_step_post_hook(steps)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert run_main(cwd, *TINY, f"--lr={LR}", *flags) == 0
    finally:
        handle.remove()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)], caught
    return steps


def factor(step: int) -> float:
    """The schedule of the runs below: warm-up over 8 steps, the rate halved from epoch 2."""
    return train.Schedule(warmup_iters=8, drops=(2,), gamma=0.5, epoch_steps=EPOCH_STEPS).factor(
        step
    )


SCHEDULE = ["--warmup_iters=8", "--lr_drops=2", "--lr_gamma=0.5"]


def test_rewound_levels_train_from_step_n_with_the_schedule_continued_there(tmp_path, data):
    n, epochs = 6, 4  # step 6: batch 2 of epoch 1, still in the warm-up
    flags = [f"--end_iter={epochs}", "--prune_iterations=3", f"--rewind_iter={n}", *SCHEDULE]
    steps = run_counting_steps(tmp_path, *flags, *data)
    run = only_run(tmp_path)
    total = epochs * EPOCH_STEPS

    # level 0: every step from step 0; levels 1 and 2: steps n..total-1, at the rates of those
    assert [len(rates) for rates in steps.rates] == [total, total - n, total - n]
    assert steps.rates[0] == pytest.approx([LR * factor(s) for s in range(total)], rel=1e-12)
    for rates in steps.rates[1:]:
        assert rates == pytest.approx([LR * factor(n + i) for i in range(total - n)], rel=1e-12)
    assert steps.rates[1][0] == steps.rates[0][n] != steps.rates[0][0]  # warm-up not repeated
    assert steps.rates[1][-1] == steps.rates[0][-1]  # the drop at the same epoch

    # the rewind state is the model after exactly n steps of level 0 (inside epoch 1)
    saved = torch.load(run / SAVES / "rewind_state_dict_lt.pth.tar", weights_only=False)
    saved_params = list(saved.parameters())
    for i, after in enumerate(steps.params[0][n - 2 : n + 1], start=n - 1):
        same = all(torch.equal(a, b) for a, b in zip(saved_params, after, strict=True))
        assert same == (i == n), f"the rewind state against the model after step {i}"

    # the dumps hold the epochs each level trained: all 4 for level 0, epochs 1..3 after it
    rows = list(csv.DictReader(open(run / "summary.csv")))
    for row in rows:
        tag = f"{float(row['params_left']):.1f}"
        length = epochs if row["level"] == "0" else epochs - n // EPOCH_STEPS
        assert len(load_dump(run / DUMPS / f"lt_all_loss_{tag}.dat")) == length
        assert len(load_dump(run / DUMPS / f"lt_all_accuracy_{tag}.dat")) == length
        # epochs from step 0: a rewound level's tests are at epochs 1..4
        low = 0 if row["level"] == "0" else n // EPOCH_STEPS
        assert low <= int(row["best_epoch"]) <= epochs
    # TensorBoard: each level's epochs at level * end_iter + the epoch from step 0
    logged = [step for step, _ in scalars(run / "tensorboard")["Loss/train"]]
    assert logged == [0, 1, 2, 3, 5, 6, 7, 9, 10, 11]


def test_rewind_epoch_k_is_rewind_iter_k_times_the_steps_of_an_epoch(tmp_path, data):
    folders = {}
    for flag in ("--rewind_epoch=1", f"--rewind_iter={EPOCH_STEPS}"):
        folders[flag] = tmp_path / flag.split("=")[0].strip("-")
        folders[flag].mkdir()
        flags = ["--end_iter=3", "--prune_iterations=2", flag, *SCHEDULE]
        assert run_main(folders[flag], *TINY, f"--lr={LR}", *flags, *data) == 0
    by_epoch, by_iter = (only_run(folder) for folder in folders.values())
    names = files_under(by_epoch, skip=("tensorboard", "checkpoints"))
    assert names == files_under(by_iter, skip=("tensorboard", "checkpoints"))
    assert any(name.endswith("rewind_state_dict_lt.pth.tar") for name in names)
    for name in sorted(names - {"args.json"}):
        if name.endswith(".pth.tar"):
            a = torch.load(by_epoch / name, weights_only=False).state_dict()
            b = torch.load(by_iter / name, weights_only=False).state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a), name
        elif not name.endswith(".png"):
            assert (by_epoch / name).read_bytes() == (by_iter / name).read_bytes(), name
    # a rewound level trains epochs 1 and 2 only
    assert len(load_dump(by_iter / DUMPS / "lt_all_loss_90.0.dat")) == 2
    recorded = [json.loads((run / "args.json").read_text())["args"] for run in (by_epoch, by_iter)]
    assert [(r["rewind_epoch"], r["rewind_iter"]) for r in recorded] == [(1, 0), (0, EPOCH_STEPS)]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--rewind_iter=3", "--rewind_epoch=1"], ["--rewind_iter 3", "--rewind_epoch 1"]),
        (["--rewind_iter=8"], ["--rewind_iter", "0..7", "--end_iter 2", "4 steps"]),
        # 64 of the 120 images left after --val_size: 2 steps per epoch
        (["--rewind_iter=4", "--val_size=56"], ["--rewind_iter", "0..3", "2 steps", "got 4"]),
        (["--rewind_iter=-1"], ["--rewind_iter", "-1"]),
        (["--rewind_iter=2", "--prune_type=reinit"], ["--rewind_iter", "reinit"]),
    ],
)
def test_bad_rewind_flags_are_refused_in_one_line_before_a_run_folder(
    tmp_path, capsys, data, flags, words
):
    check_refused(tmp_path, capsys, [*TINY, *data, *flags], *words)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("flag", ["--rewind_iter=5", "--rewind_epoch=1"])
def test_resumed_after_level_0_the_run_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch, data, flag
):
    """With --rewind_iter; and with --rewind_epoch in the args.json of an earlier version,
    which had no --rewind_iter."""
    keep_checkpoints(monkeypatch, tmp_path / "kept")
    flags = ["--end_iter=3", "--prune_iterations=2", flag, *SCHEDULE]
    (tmp_path / "work").mkdir()
    assert run_main(tmp_path / "work", *TINY, f"--lr={LR}", *flags, *data) == 0
    run = only_run(tmp_path / "work")
    if flag.startswith("--rewind_epoch"):
        record = json.loads((run / "args.json").read_text())
        del record["args"]["rewind_iter"]
        (run / "args.json").write_text(json.dumps(record))
    reference = tmp_path / "reference"
    shutil.copytree(run, reference)
    stopped_after(run, tmp_path / "kept", 0)  # level 1 reads the rewind state from its file
    assert run_main(tmp_path / "work", "--resume", str(run)) == 0
    assert_same_results(run, reference)
