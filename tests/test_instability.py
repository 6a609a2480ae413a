"""Instability analysis: interpolation and the error barrier on hand-built networks, the two
copies trained as one batch against each copy alone, and instability.py on tiny finished runs."""

import argparse
import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import instability
import main
from lth import instability as instability_engine
from lth import lottery, runs, train
from lth.data import Split
from lth.initialization import initializer
from lth.instability import (
    Subnetwork,
    alphas,
    error_barrier,
    errors_along_path,
    excess_over_line,
    interpolate,
    is_stable,
    train_copies,
)
from lth.results import read_mask
from tests.conftest import ROOT
from tests.resultfiles import files_under
from tests.test_batch import LOSS_BOUND


def two_unit_net() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2))


def state(hidden: list[list[float]], output: list[list[float]]) -> dict[str, torch.Tensor]:
    """The two-unit net's state: no hidden bias, output bias 0.1 towards class 1."""
    return {
        "0.weight": torch.tensor(hidden),
        "0.bias": torch.zeros(2),
        "2.weight": torch.tensor(output),
        "2.bias": torch.tensor([0.0, 0.1]),
    }


def plus_and_minus_one() -> Split:
    """x = +1 is class 0, x = -1 class 1, two of each."""
    return Split(torch.tensor([[1.0], [1.0], [-1.0], [-1.0]]), torch.tensor([0, 0, 1, 1]))


def test_barrier_is_the_highest_error_above_the_mean_of_the_ends():
    assert error_barrier([10.0, 12.0, 30.0, 11.0]) == pytest.approx(30 - 10.5)
    assert error_barrier([5.0, 3.0, 4.0]) == pytest.approx(0.5)  # the highest is an end
    assert error_barrier([7.0] * 30) == 0.0
    assert is_stable(1.99) and not is_stable(2.0)  # the paper's 2 points


def test_the_excess_is_the_highest_error_above_the_straight_line_between_the_ends():
    """Ends at 10% and 20% error: the line is 10, 12.5, 15, 17.5, 20 at alpha 0, 1/4, .., 1.
    The path 10, 14, 16, 17, 20 rises 1.5, 1, -0.5 above it: the excess is 1.5 at alpha 1/4,
    where the barrier (highest minus the ends' mean, 20 - 15) counts the ends' gap as 5."""
    weights = alphas(5)
    errors = np.array([10.0, 14.0, 16.0, 17.0, 20.0])
    assert excess_over_line(weights, errors) == pytest.approx((1.5, 0.25))
    assert error_barrier(errors) == pytest.approx(5.0)
    # a path below its line everywhere but the ends: the excess is 0, at an end
    assert excess_over_line(weights, np.array([10.0, 9.0, 8.0, 9.0, 10.0])) == (0.0, 0.0)
    result = instability_engine.PathErrors(3, 12.5, weights, errors)
    row = result.barrier_row()
    assert (row["excess"], row["excess_alpha"], row["barrier"]) == (1.5, 0.25, 5.0)
    assert instability_engine.table([result])[2] == "| 3 | 12.5% | 5.00 | 1.50 | 0.250 | unstable |"


def test_identical_copies_have_a_flat_path_and_barrier_0():
    torch.manual_seed(0)
    model = two_unit_net()
    same = {name: value.clone() for name, value in model.state_dict().items()}
    test_set = Split(torch.randn(50, 1), torch.randint(0, 2, (50,)))
    errors = errors_along_path(model, same, same, test_set, alphas(30))
    assert len(errors) == 30 and np.all(errors == errors[0])
    assert error_barrier(errors) == 0.0


def test_two_correct_networks_whose_midpoints_are_wrong():
    """The same function twice, its hidden units swapped: w1 computes logits (relu(x),
    relu(-x) + 0.1), w2 the same with units 1 and 2 exchanged, so both classify x = +1 as 0 and
    x = -1 as 1. At alpha the hidden weights are (1 - 2 alpha)(1, -1) and the output mixes
    the units by 1 - alpha and alpha, so for x = +1 logit 0 - logit 1 = (1 - 2 alpha)^2 - 0.1:
    wrong where (1 - 2 alpha)^2 < 0.1. For x = -1 the difference is (1 - 2 alpha)^2 + 0.1, always
    right. At alpha = k / 29: |29 - 2k| < 29 sqrt(0.1) = 9.17, k = 10..19, error 50% (the two
    x = +1 of four), else 0: the barrier is 50 points."""
    first = state([[1.0], [-1.0]], [[1.0, 0.0], [0.0, 1.0]])
    second = state([[-1.0], [1.0]], [[0.0, 1.0], [1.0, 0.0]])
    errors = errors_along_path(two_unit_net(), first, second, plus_and_minus_one(), alphas(30))
    assert errors.tolist() == [50.0 if 10 <= k <= 19 else 0.0 for k in range(30)]
    assert error_barrier(errors) == 50.0 and not is_stable(error_barrier(errors))


def test_interpolation_mixes_float_tensors_keeps_integer_buffers_and_pruned_zeros():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    first = {k: v.clone() for k, v in net.state_dict().items()}
    second = {k: v.clone() + 1.0 if v.is_floating_point() else v + 7 for k, v in first.items()}
    for s in (first, second):
        s["0.weight"][:, 0] = 0.0  # pruned in both
    mid = interpolate(first, second, 0.25)
    assert torch.allclose(mid["0.bias"], 0.75 * first["0.bias"] + 0.25 * second["0.bias"])
    assert torch.allclose(mid["1.running_var"], first["1.running_var"] + 0.25)
    assert torch.equal(mid["1.num_batches_tracked"], first["1.num_batches_tracked"])
    assert torch.all(mid["0.weight"][:, 0] == 0)
    for alpha, end in ((0.0, first), (1.0, second)):
        ends = interpolate(first, second, alpha)
        assert all(torch.equal(ends[k], end[k]) for k in end if end[k].is_floating_point())


def recipe_of(run: Path) -> tuple:
    """The reference run's recipe, data on the CPU, network and initial state (as the command)."""
    found = runs.read_run(run)
    flags = argparse.Namespace(gpu="0", data_dir=None, plot_dpi=None)
    recipe = instability.recorded_recipe(found, flags)
    loaded = lottery.load_data(recipe, torch.device("cpu"))
    model = lottery.build_model(recipe, loaded.train, initializer(recipe.init, loaded.train))
    return found, recipe, loaded, model, instability.rewind_point(found, model, late=False)


def test_the_copies_train_as_a_batch_of_two_each_as_it_would_alone(reference_run):
    """The level-1 subnetwork of the reference run (fc1: the batched-matmul path) trained as a
    pair on seeds 3 and 4, and each copy alone (a stack of one, the module itself): the copies
    differ from each other; each equals its run alone within test_batch's bound (float rounding
    of the batched products, grown by Adam: measured 1.2e-5 against weights of size 3), its
    pruned weights stay zero, and its test error is the same to one test image."""
    run, recipe, loaded, model, start = recipe_of(reference_run)
    mask = read_mask(run.mask_path(1), model)
    subnetwork = Subnetwork(model, start, mask)
    pair = train_copies(subnetwork, [3, 4], recipe, loaded, start_step=0)
    alone = [train_copies(subnetwork, [seed], recipe, loaded, start_step=0)[0] for seed in (3, 4)]
    assert any(not torch.equal(pair[0][k], pair[1][k]) for k in pair[0])
    for copy, solo in zip(pair, alone, strict=True):
        for name, value in solo.items():
            bound = LOSS_BOUND * float(value.abs().max())
            torch.testing.assert_close(copy[name], value, rtol=0, atol=bound)
        for name, kept in mask.items():
            assert torch.all(copy[name][torch.from_numpy(kept) == 0] == 0)
        ends = errors_along_path(model, copy, solo, loaded.test, alphas(2))
        assert abs(ends[0] - ends[1]) <= 100 / len(loaded.test)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def verdicts(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("level ")]


def test_instability_py_on_the_reference_run_writes_30_points_per_level(
    reference_run, tmp_path, capsys
):
    run = Path(shutil.copytree(reference_run, tmp_path / reference_run.name))
    assert instability.main([str(run), "--plot_dpi", "20"]) == 0
    out = capsys.readouterr().out
    lines = verdicts(out)
    assert len(lines) == 2, out
    assert all(line.endswith((": stable", ": unstable")) for line in lines), lines
    table = out.splitlines()[out.splitlines().index(instability_engine.TABLE_HEADER) :][2:4]
    assert [row.split(" | ")[0] for row in table] == ["| 0", "| 1"]
    folder = run / "instability"
    assert files_under(folder) == {
        "instability_seed5.csv",
        "instability_seed5_barriers.csv",
        "instability_seed5.png",
        "instability_seed5.json",
    }
    points = read_csv(folder / "instability_seed5.csv")
    assert list(points[0]) == ["level", "weights_left", "alpha", "test_error"]
    summary = runs.read_run(run).summary()
    for level in (0, 1):
        mine = [row for row in points if int(row["level"]) == level]
        assert len(mine) == 30
        assert [float(r["alpha"]) for r in mine] == pytest.approx(np.linspace(0, 1, 30).tolist())
        assert {float(r["weights_left"]) for r in mine} == {summary[level]["weights_left"]}
    barriers = read_csv(folder / "instability_seed5_barriers.csv")
    for row, line in zip(barriers, lines, strict=True):
        errors = [float(r["test_error"]) for r in points if r["level"] == row["level"]]
        assert float(row["barrier"]) == pytest.approx(error_barrier(errors), abs=1e-6)
        assert (row["stable"] == "True") == (float(row["barrier"]) < 2)
        excess, at = excess_over_line(alphas(30), np.array(errors))
        assert float(row["excess"]) == pytest.approx(excess, abs=1e-5)
        assert float(row["excess_alpha"]) == pytest.approx(at, abs=1e-6)
        assert (
            0
            <= float(row["excess"])
            <= float(row["error_max"]) - min(float(row["error_start"]), float(row["error_end"]))
        )
        assert line.startswith(f"level {row['level']} ") and f"{float(row['barrier']):.2f}" in line
    record = json.loads((folder / "instability_seed5.json").read_text())
    assert record["seed"] == 5 and record["copy_seeds"] == [5, 6] and record["start_step"] == 0
    assert record["args"]["levels"] == [0, 1] and record["args"]["points"] == 30
    assert {"python", "torch", "numpy"} <= set(record["versions"]) and "git_commit" in record

    # the same seed again replaces the files, and says so; another seed writes beside them
    assert instability.main([str(run), "--levels", "1", "--points", "3", "--plot_dpi", "20"]) == 0
    assert "replaced the earlier analysis with seed 5" in capsys.readouterr().out
    assert len(read_csv(folder / "instability_seed5.csv")) == 3
    assert instability.main([str(run), "--levels", "1", "--seed", "9", "--points", "3"]) == 0
    assert "replaced" not in capsys.readouterr().out
    assert len(files_under(folder)) == 8


def test_a_late_rewound_run_trains_its_copies_from_the_rewind_state(
    tmp_path, mnist_data, monkeypatch, capsys
):
    """A run with --rewind_iter 2: every level's copies start at its rewind state, at step 2."""
    flags = ["--seed", "1", "--plot_dpi", "20", "--prune_iterations", "2", "--end_iter", "1"]
    flags += ["--batch_size", "32", "--rewind_iter", "2", f"--results_root={tmp_path}", *mnist_data]
    assert main.main(flags) == 0
    (run,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    seen = []

    def recording(subnetwork, seeds, *args, **options):
        seen.append((subnetwork.start, options["start_step"], seeds))
        return train_copies(subnetwork, seeds, *args, **options)

    monkeypatch.setattr(instability, "train_copies", recording)
    assert instability.main([str(run), "--points", "5", "--seed", "7"]) == 0
    assert len(verdicts(capsys.readouterr().out)) == 2
    files = runs.read_run(run).files
    rewound = torch.load(files.rewind_state_path(), weights_only=False).state_dict()
    assert len(seen) == 2
    for start, step, seeds in seen:
        assert step == 2 and seeds == [7, 8]
        assert all(torch.equal(start[k], rewound[k]) for k in rewound)
    assert len(read_csv(run / "instability" / "instability_seed7.csv")) == 10


def test_bad_input_is_one_line_and_writes_nothing(reference_run, tmp_path, capsys):
    run = Path(shutil.copytree(reference_run, tmp_path / reference_run.name))
    before = files_under(run)
    cases = {
        (str(tmp_path / "nothing"),): "is not a run folder (no readable args.json)",
        (str(run), "--levels", "1", "2"): f"--levels 2: {run} has finished levels 0..1",
        (str(run), "--points", "1"): "--points must be at least 2",
        (str(run), "--seed", "-1"): "--seed must be in 0..4294967295",
    }
    for argv, message in cases.items():
        assert instability.main(list(argv)) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and error.count("\n") == 1, error
    assert files_under(run) == before

    record = json.loads((run / "args.json").read_text())
    record["args"]["prune_type"] = "lrr"  # goes on from trained weights: no rewind point
    (run / "args.json").write_text(json.dumps(record))
    assert instability.main([str(run)]) == 2
    error = capsys.readouterr().err
    assert "--prune_type lrr run: its levels go on from the weights" in error, error

    record = json.loads((run / "args.json").read_text())
    record["args"]["prune_type"] = "reinit"
    (run / "args.json").write_text(json.dumps(record))
    result = subprocess.run(
        [sys.executable, str(ROOT / "instability.py"), str(run)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "--prune_type reinit run" in result.stderr
    assert files_under(run) == before and not (run / "instability").exists()


def test_the_copies_train_with_the_runs_augmentation(reference_run, monkeypatch):
    """A run made with --augment has its copies' training images cropped and flipped too, as
    its levels' were (the recipe's `augment` reaches train_level); without it, not. The copies'
    plan is the one `train.LevelPlan.of` makes of the recipe, as main.py's levels' is."""
    run, recipe, loaded, model, start = recipe_of(reference_run)
    mask = read_mask(run.mask_path(1), model)
    seen = []

    def recording(stacked, data, plan, trials, *rest):
        seen.append(plan.batches.augmented)
        assert plan == train.LevelPlan.of(changed, loaded.train, [], start_step=0)
        assert data == train.LevelData(loaded.train, loaded.test)
        raise StopIteration  # the plan is all this test needs

    monkeypatch.setattr(instability_engine, "train_level", recording)
    for augment in (True, False):
        changed = dataclasses.replace(
            recipe, recipe=dataclasses.replace(recipe.recipe, augment=augment)
        )
        with pytest.raises(StopIteration):
            train_copies(Subnetwork(model, start, mask), [3, 4], changed, loaded, start_step=0)
    assert seen == [True, False]


def test_the_figure_draws_the_ends_straight_line_and_marks_the_excess_at_its_peak():
    from lth import plots

    weights, errors = alphas(5), np.array([10.0, 14.0, 16.0, 17.0, 20.0])
    result = instability_engine.PathErrors(1, 50.0, weights, errors)
    line = plots.PathLine("level 1", weights, errors, result.straight, result.peak)
    figure = plots.error_along_path([line], "mnist", "fc1")
    (ax,) = figure.axes
    path, straight = ax.get_lines()
    assert path.get_ydata().tolist() == errors.tolist()
    assert straight.get_linestyle() == "--" and straight.get_color() == path.get_color()
    assert straight.get_ydata().tolist() == [10.0, 12.5, 15.0, 17.5, 20.0]
    (segment,) = ax.collections[0].get_segments()
    assert segment.tolist() == [[0.25, 12.5], [0.25, 14.0]]  # the excess: 1.5 at alpha 1/4
    plots.close(figure, 20)
