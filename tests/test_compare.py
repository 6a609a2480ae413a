"""summary.csv against the dumps, and combine_plots.py on runs made by tiny main.py runs."""

import csv
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import combine_plots
import main
from lth import plots, runs
from tests.conftest import ROOT
from tests.datafiles import write_mnist_files

TINY = ["--end_iter", "1", "--plot_dpi", "20", "--batch_size", "50", "--dataset", "mnist"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Three finished runs under one results root: lt and reinit at 20%, lt at 50% with seed 1."""
    top = tmp_path_factory.mktemp("compare")
    source = write_mnist_files(top / "source")
    common = [*TINY, f"--data_source={source}", f"--data_dir={top / 'data'}"]
    common += [f"--results_root={top / 'results'}"]
    made = {}
    for name, flags in {
        "lt20": ["--prune_type", "lt", "--prune_percent", "20", "--seed", "0"],
        "reinit20": ["--prune_type", "reinit", "--prune_percent", "20", "--seed", "0"],
        "lt50": ["--prune_type", "lt", "--prune_percent", "50", "--seed", "1"],
    }.items():
        levels = "3" if name == "lt50" else "2"
        assert main.main([*common, *flags, "--prune_iterations", levels]) == 0
        made[name] = runs.all_runs(top / "results")[-1].root
    assert len(set(made.values())) == 3
    return made


def copy_run(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to / run.name))


def test_summary_rows_match_the_dumps(made):
    for root in made.values():
        run = runs.load_run(root)
        files = run.files
        with open(root / "summary.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        assert list(rows[0]) == [
            "level",
            "weights_left",
            "params_left",
            "best_accuracy",
            "best_epoch",
            "final_accuracy",
            "final_loss",
        ]
        comp = np.load(files.dump_path("compression"), allow_pickle=True)
        best = run.best_accuracy()
        assert [int(r["level"]) for r in rows] == list(range(run.args["prune_iterations"]))
        assert [float(r["params_left"]) for r in rows] == list(comp)
        assert [float(r["best_accuracy"]) for r in rows] == list(best)
        for row, tag in zip(rows, [f"{c:.1f}" for c in comp], strict=True):
            accuracy = np.load(files.dump_path("all_accuracy", tag), allow_pickle=True)
            loss = np.load(files.dump_path("all_loss", tag), allow_pickle=True)
            assert float(row["final_loss"]) == loss[-1]
            with open(files.dump_path("mask", tag, ".pkl"), "rb") as file:
                mask = pickle.load(file)  # fc1: every entry is a pruned layer's
            kept = sum(int(m.sum()) for m in mask) / sum(m.size for m in mask)
            assert float(row["weights_left"]) == round(100 * kept, 1)
            assert 0 <= int(row["best_epoch"]) <= run.args["end_iter"]
            # the best is the highest test of the level: the per-epoch tests and the final one
            assert float(row["best_accuracy"]) == max(*accuracy, float(row["final_accuracy"]))


def test_without_arguments_compares_the_newest_complete_lt_and_reinit(made, capsys):
    results = made["lt20"].parent
    # an interrupted lt run, newer than every other: it must be passed over
    interrupted = copy_run(made["lt50"], results.parent / "elsewhere")
    record = json.loads((interrupted / "args.json").read_text())
    record["started"] = "9999-01-01T00:00:00"
    (interrupted / "args.json").write_text(json.dumps(record))
    (interrupted / "checkpoints" / "latest.pth").unlink()  # stopped in level 0
    shutil.move(interrupted, results / "Dec31_23-59-59_later")
    try:
        groups = runs.newest_complete(results)
        assert list(groups) == [("fc1", "mnist")]
        assert [r.root for r in groups[("fc1", "mnist")]] == [made["lt50"], made["reinit20"]]

        assert combine_plots.main(["--results_root", str(results), "--dpi", "30"]) == 0
    finally:
        shutil.rmtree(results / "Dec31_23-59-59_later")
    figure = results / "combined_plots" / "combined_fc1_mnist.png"
    assert f"combined plot: {figure}" in capsys.readouterr().out
    height, width = matplotlib.image.imread(figure).shape[:2]
    assert (width, height) == (6.4 * 30, 4.8 * 30)  # matplotlib's default 6.4 x 4.8 inches


def test_given_runs_are_labelled_by_what_differs(made, tmp_path, capsys):
    chosen = [runs.load_run(made[name]) for name in ("lt20", "reinit20", "lt50")]
    assert runs.group_labels([[run] for run in chosen]) == [
        "lt, 20% pruned, seed 0, prune_iterations=2",
        "reinit, 20% pruned, seed 0, prune_iterations=2",
        "lt, 50% pruned, seed 1, prune_iterations=3",
    ]
    assert runs.group_labels([[run] for run in chosen[:2]]) == ["lt", "reinit"]
    assert runs.group_labels([[run] for run in chosen[:1]]) == [made["lt20"].name]

    # runs with different levels: each line on its own weights-left values (a log axis)
    lines = [(lb, r.weights_left(), r.best_accuracy()) for lb, r in zip("abc", chosen, strict=True)]
    figure = plots.accuracy_vs_weights(lines, "mnist", "fc1")
    axes = figure.axes[0]
    assert axes.get_xscale() == "log"
    assert [list(line.get_xdata()) for line in axes.get_lines()] == [
        [100, 80],
        [100, 80],
        [100, 50, 25],
    ]
    plots.close(figure, 100)

    out = tmp_path / "figures"
    argv = [str(made[n]) for n in ("lt20", "reinit20", "lt50")]
    assert combine_plots.main([*argv, "--dpi", "20", "--best_epoch", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "combined_fc1_mnist.csv",
        "combined_fc1_mnist.png",
        "combined_fc1_mnist_best_epoch.png",
    ]
    # without --out the figure goes into combined_plots/ beside the runs
    assert combine_plots.main([str(made["lt20"]), "--dpi", "20"]) == 0
    assert (made["lt20"].parent / "combined_plots" / "combined_fc1_mnist.png").exists()


def test_best_epoch_lines_come_from_summary(made):
    run = runs.load_run(made["lt50"])
    [trials] = runs.trials([run])
    assert list(trials.weights_left) == list(run.weights_left())
    assert list(trials.epoch[0]) == [row["best_epoch"] for row in run.summary()]
    assert list(trials.accuracy[0]) == list(run.best_accuracy())
    assert not trials.early_stop


def run_combine(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "combine_plots.py"), *argv], capture_output=True, text=True
    )


def test_mixed_data_sets_are_one_line_error(made, tmp_path):
    other = copy_run(made["reinit20"], tmp_path)
    record = json.loads((other / "args.json").read_text())
    record["args"]["dataset"] = "fashionmnist"
    (other / "args.json").write_text(json.dumps(record))
    dumps = other / "dumps" / "lt" / "fc1"
    (dumps / "mnist").rename(dumps / "fashionmnist")
    result = run_combine(str(made["lt20"]), str(other), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--dataset fashionmnist" in result.stderr and "one arch and data set" in result.stderr
    assert not (tmp_path / "out").exists()


def test_not_a_run_and_incomplete_run_are_one_line_errors(made, tmp_path, capsys):
    assert combine_plots.main([str(made["lt20"]), str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path} is not a run folder (no readable args.json)\n"
    )

    partial = copy_run(made["lt20"], tmp_path)
    (partial / "checkpoints" / "latest.pth").unlink()
    (partial.joinpath(*"dumps/lt/fc1/mnist/lt_compression.dat".split("/"))).unlink()
    assert combine_plots.main([str(partial)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {partial} is not complete") and error.count("\n") == 1

    assert combine_plots.main(["--results_root", str(tmp_path / "empty")]) == 2
    assert "no complete run there" in capsys.readouterr().err


def test_the_lines_are_printed_as_a_table_of_accuracy_by_level(made, tmp_path, capsys):
    """One row per level: weights left and each line's accuracy where the lines share their
    weights left; one row per line and level where they do not."""
    same = [made["lt20"], made["reinit20"]]
    assert combine_plots.main([*map(str, same), "--out", str(tmp_path / "a"), "--dpi", "20"]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = next(i for i, text in enumerate(printed) if text.startswith("level"))
    assert printed[header].split()[:2] == ["level", "weights_left"]
    for level, row in enumerate(runs.load_run(made["lt20"]).summary()):
        cells = printed[header + 1 + level].split()
        reinit = runs.load_run(made["reinit20"]).summary()[level]
        assert cells == [
            str(level),
            str(row["weights_left"]),
            f"{row['best_accuracy']:.2f}",
            f"{reinit['best_accuracy']:.2f}",
        ]
    mixed = [made["lt20"], made["lt50"]]
    assert combine_plots.main([*map(str, mixed), "--out", str(tmp_path / "b"), "--dpi", "20"]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = next(i for i, text in enumerate(printed) if text.startswith("line"))
    assert printed[header].split() == ["line", "level", "weights_left", "accuracy"]
    assert len(printed) - header - 1 >= 2 + 3  # 2 levels of lt20, 3 of lt50


def test_the_levels_are_labelled_with_the_original_text_of_their_weights_left():
    """The original's `plt.xticks(a, comp)` labels each level with the numpy value's text,
    "100.0" and "64.1"; values with more decimals keep 6 significant digits."""
    figure = plots.accuracy_vs_weights(
        [("lt", [100.0, 80.0, 64.1, 1.8], [98, 98, 97, 90])], "m", "f"
    )
    labels = [text.get_text() for text in figure.axes[0].get_xticklabels()]
    assert labels == ["100.0", "80.0", "64.1", "1.8"]
    plots.close(figure, 100)
    assert [plots.tick_label(v) for v in (51.234567, 0.05, 7.0)] == ["51.2346", "0.05", "7.0"]
