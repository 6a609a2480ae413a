"""Trials as one line: combine_plots.py on run folders written by hand with known accuracies."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import combine_plots
from lth import cli, compare, runs

WEIGHTS = [100.0, 80.0, 64.0]


def write_run(
    root: Path,
    name: str,
    rows: list[dict],
    weights_left: list[float] = WEIGHTS,
    started: str | None = None,
    **flags: object,
) -> Path:
    """A complete run folder as runs.py reads it: args.json, summary.csv with `rows` (merged
    over defaults), and the files whose presence marks it complete. It started at `started`
    (default: a second of 2025 from the length of `name`)."""
    argv = [f"--{k}={v}" for k, v in flags.items() if k != "masks_from"]
    args = cli.one_trial(cli.parse_args([*argv, f"--prune_iterations={len(rows)}"]))
    cli.validate(args)
    args.masks_from = flags.get("masks_from")
    folder = root / name
    folder.mkdir(parents=True)
    started = started or f"2025-01-01T00:00:{len(name):02}"
    record = {"args": vars(args), "seed": args.seed, "started": started}
    (folder / "args.json").write_text(json.dumps(record))
    full = []
    for level, (row, left) in enumerate(zip(rows, weights_left, strict=True)):
        base = {"level": level, "weights_left": left, "params_left": left, "final_accuracy": 1}
        full.append({**base, "final_loss": 0.5, **row})
    with open(folder / "summary.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(full[0]))
        writer.writeheader()
        writer.writerows(full)
    files = runs.read_run(folder).files
    files.checkpoint_path().parent.mkdir(parents=True, exist_ok=True)
    torch.save({"level": len(rows) - 1}, files.checkpoint_path())
    for path in (
        files.dump_path("compression"),
        files.dump_path("bestaccuracy"),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return folder


def best(accuracies: list[float], epochs: list[int]) -> list[dict]:
    return [{"best_accuracy": a, "best_epoch": e} for a, e in zip(accuracies, epochs, strict=True)]


def table(out: Path) -> dict[str, list[dict]]:
    """The rows of combined_fc1_mnist.csv by line, numbers as numbers."""
    lines: dict[str, list[dict]] = {}
    with open(out / "combined_fc1_mnist.csv", newline="") as file:
        for row in csv.DictReader(file):
            line = row.pop("line")
            measure = row.pop("measure")
            numbers = {k: float(v) for k, v in row.items()}
            lines.setdefault(line, []).append({**numbers, "measure": measure})
    return lines


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures combine_plots.py saves, kept for inspection."""
    kept = []
    save = compare.save_png

    def keep(figure, path, dpi):
        kept.append(figure)
        save(figure, path, dpi)

    monkeypatch.setattr(compare, "save_png", keep)
    return kept


def test_three_trials_are_one_line_with_mean_min_and_max(tmp_path, figures, capsys):
    root = tmp_path / "results"
    accuracies = {0: [90.0, 80.0, 70.0], 1: [92.0, 84.0, 73.0], 2: [94.0, 83.0, 67.0]}
    epochs = {0: [3, 5, 1], 1: [4, 5, 2], 2: [8, 2, 6]}
    lt = [
        write_run(root, f"lt{s}", best(accuracies[s], epochs[s]), seed=s, prune_percent=20)
        for s in range(3)
    ]
    controls = [
        write_run(
            root,
            f"control{s}",
            best([90.0, 60.0 + s, 50.0], [1, 1, 1]),
            seed=s,
            prune_percent=20,
            prune_type="reinit",
            masks_from=str(lt[s]),
        )
        for s in range(3)
    ]
    other = write_run(
        root,
        "lt50",
        best([91.0, 81.0, 71.0], [2, 2, 2]),
        [100.0, 50.0, 25.0],
        seed=0,
        prune_percent=50,
    )
    out = tmp_path / "out"
    argv = [str(p) for p in (*lt, *controls, other)]
    assert combine_plots.main([*argv, "--out", str(out), "--dpi", "20", "--best_epoch"]) == 0
    printed = capsys.readouterr().out
    assert f"combined table: {out / 'combined_fc1_mnist.csv'}" in printed
    assert f"combined plot: {out / 'combined_fc1_mnist_best_epoch.png'}" in printed

    lines = table(out)
    assert list(lines) == [
        "lt, 20% pruned (3 trials)",
        "reinit with lt masks, 20% pruned (3 trials)",
        "lt, 50% pruned",
    ]
    rows = lines["lt, 20% pruned (3 trials)"]
    assert [r["level"] for r in rows] == [0, 1, 2]
    assert [r["weights_left"] for r in rows] == WEIGHTS
    assert all(r["trials"] == 3 and r["measure"] == "best" for r in rows)
    assert [r["accuracy_mean"] for r in rows] == pytest.approx([92.0, 247 / 3, 70.0])
    assert [r["accuracy_min"] for r in rows] == [90.0, 80.0, 67.0]
    assert [r["accuracy_max"] for r in rows] == [94.0, 84.0, 73.0]
    assert [r["epoch_mean"] for r in rows] == pytest.approx([5.0, 4.0, 3.0])
    assert [r["epoch_min"] for r in rows] == [3, 2, 1]
    assert [r["epoch_max"] for r in rows] == [8, 5, 6]
    control = lines["reinit with lt masks, 20% pruned (3 trials)"]
    assert [r["accuracy_mean"] for r in control] == [90.0, 61.0, 50.0]
    single = lines["lt, 50% pruned"]
    assert [r["weights_left"] for r in single] == [100.0, 50.0, 25.0]
    assert all(r["trials"] == 1 for r in single)
    assert [r["accuracy_min"] for r in single] == [r["accuracy_max"] for r in single]

    # the figures: the mean as the line, a band from min to max for each line of several trials
    accuracy_figure, epoch_figure = figures
    for figure, values in ((accuracy_figure, accuracies), (epoch_figure, epochs)):
        axes = figure.axes[0]
        drawn = {line.get_label(): line.get_ydata() for line in axes.get_lines()}
        assert list(drawn) == list(lines)
        trials = np.array(list(values.values()), dtype=float)
        assert np.allclose(drawn["lt, 20% pruned (3 trials)"], trials.mean(axis=0))
        assert len(axes.collections) == 2  # the two lines of several trials
        band = axes.collections[0].get_paths()[0].vertices[:, 1]
        assert band.min() == trials.min() and band.max() == trials.max()
        assert set(trials.min(axis=0)) | set(trials.max(axis=0)) <= set(band)


def test_runs_that_stopped_early_are_summarised_by_their_early_stop_figures(tmp_path):
    root = tmp_path / "results"
    folders = []
    for seed, (test, stop) in enumerate(
        [([88.0, 85.0], [2, 3]), ([86.0, 87.0], [4, 1]), ([87.0, 80.0], [3, 2])]
    ):
        rows = [
            {
                "best_accuracy": 99.0,  # the optimistic pick: not what the lines show
                "best_epoch": 9,
                "early_stop_epoch": e,
                "val_loss": 0.3,
                "val_accuracy": 90.0,
                "test_accuracy": a,
            }
            for a, e in zip(test, stop, strict=True)
        ]
        folders.append(write_run(root, f"run{seed}", rows, WEIGHTS[:2], seed=seed))
    out = tmp_path / "out"
    assert combine_plots.main([*map(str, folders), "--out", str(out), "--dpi", "20"]) == 0
    [(label, rows)] = table(out).items()
    assert label == "lt, 10% pruned (3 trials)"
    assert all(r["measure"] == "early_stop" and r["trials"] == 3 for r in rows)
    assert [r["accuracy_mean"] for r in rows] == pytest.approx([87.0, 84.0])
    assert [r["accuracy_min"] for r in rows] == [86.0, 80.0]
    assert [r["accuracy_max"] for r in rows] == [88.0, 87.0]
    assert [r["epoch_mean"] for r in rows] == pytest.approx([3.0, 2.0])
    assert [(r["epoch_min"], r["epoch_max"]) for r in rows] == [(2, 4), (1, 3)]


def test_trials_whose_levels_do_not_line_up_stay_separate_lines(tmp_path):
    root = tmp_path / "results"
    a = write_run(root, "a", best([90.0, 80.0, 70.0], [1, 1, 1]), seed=0)
    b = write_run(root, "b", best([91.0, 81.0, 71.0], [1, 1, 1]), seed=1)
    c = write_run(root, "c", best([92.0, 82.0], [1, 1]), WEIGHTS[:2], seed=2)  # fewer levels
    d = write_run(root, "d", best([93.0, 83.0, 73.0], [1, 1, 1]), [100.0, 80.0, 63.9], seed=3)
    groups = runs.trial_groups([runs.load_run(p) for p in (a, b, c, d)])
    assert [[r.root.name for r in g] for g in groups] == [["a", "b"], ["c"], ["d"]]
    labels = runs.group_labels(groups)
    assert labels[0].endswith("(2 trials)") and len(set(labels)) == 3


def test_without_run_folders_the_newest_of_each_kind_comes_with_its_trials(tmp_path):
    root = tmp_path / "results"
    lt = [
        write_run(root, f"lt{s}", best([90.0 + s] * 2, [1, 1]), WEIGHTS[:2], seed=s) for s in (0, 1)
    ]
    old = write_run(root, "x", best([50.0] * 2, [1, 1]), WEIGHTS[:2], seed=7, lr=0.1)
    control = write_run(
        root,
        "control0",
        best([80.0] * 2, [1, 1]),
        WEIGHTS[:2],
        seed=0,
        prune_type="reinit",
        masks_from=str(lt[0]),
    )
    plain = write_run(
        root, "reinit0", best([70.0] * 2, [1, 1]), WEIGHTS[:2], seed=0, prune_type="reinit"
    )
    [(key, group)] = runs.newest_complete(root).items()
    assert key == ("fc1", "mnist")
    assert old not in [r.root for r in group]  # an older experiment of the same prune type
    assert [r.root for r in group] == [*lt, plain, control]
    assert combine_plots.main(["--results_root", str(root), "--dpi", "20"]) == 0
    assert list(table(root / "combined_plots")) == [
        "lt (2 trials)",
        "reinit",
        "reinit with lt masks",
    ]


def test_runs_of_one_experiment_and_seed_are_one_trial_the_newest(tmp_path, capsys):
    root = tmp_path / "results"
    rows = {"old": [90.0, 10.0], "new": [92.0, 84.0], "one": [94.0, 80.0]}
    folders = {
        name: write_run(root, name, best(rows[name], [1, 1]), WEIGHTS[:2], started=when, seed=seed)
        for name, when, seed in (
            ("new", "2025-03-01T00:00:00", 0),  # listed first, started last
            ("old", "2025-01-01T00:00:00", 0),
            ("one", "2025-02-01T00:00:00", 1),
        )
    }
    notice = f"left out: {folders['old']} (same experiment and seed as {folders['new']}, newer)"
    out = tmp_path / "out"
    given = [str(folders[name]) for name in ("old", "one", "new")]
    for argv in (["--results_root", str(root)], [*given, "--out", str(out)]):
        assert combine_plots.main([*argv, "--dpi", "20"]) == 0
        printed = capsys.readouterr().out.splitlines()
        assert [line for line in printed if line.startswith("left out")] == [notice]
    for lines in (table(root / "combined_plots"), table(out)):
        [(label, line)] = lines.items()
        assert label == "lt, 10% pruned (2 trials)"
        assert all(r["trials"] == 2 for r in line)
        assert [r["accuracy_min"] for r in line] == [92.0, 80.0]  # not the old run's 10
        assert [r["accuracy_max"] for r in line] == [94.0, 84.0]

    kept, left_out = runs.distinct_trials([runs.load_run(p) for p in folders.values()])
    assert [r.root for r in kept] == [folders["new"], folders["one"]]  # in the first's place
    assert [(d.run.root, d.kept.root) for d in left_out] == [(folders["old"], folders["new"])]

    # the same folder twice is one trial too; a run without a recorded seed is its own trial
    twice = [runs.load_run(folders["one"]), runs.load_run(folders["one"])]
    kept, left_out = runs.distinct_trials(twice)
    assert kept == twice[:1] and [str(d) for d in left_out] == [
        f"{folders['one']} (given more than once)"
    ]
    unknown = [write_run(root, f"unseeded{i}", best([90.0] * 2, [1, 1]), WEIGHTS[:2]) for i in "ab"]
    [group] = runs.trial_groups([runs.load_run(p) for p in unknown])
    assert len(group) == 2


def test_controls_of_one_seed_are_one_trial_only_with_masks_of_one_trial(tmp_path):
    root = tmp_path / "results"
    lt = {
        name: write_run(root, name, best([90.0] * 2, [1, 1]), WEIGHTS[:2], seed=seed)
        for name, seed in (("lt0", 0), ("lt0again", 0), ("lt1", 1))
    }
    controls = [
        runs.load_run(
            write_run(
                root,
                f"control_{name}",
                best([80.0] * 2, [1, 1]),
                WEIGHTS[:2],
                seed=0,
                prune_type="reinit",
                masks_from=str(folder),
            )
        )
        for name, folder in lt.items()
    ]
    # masks from two runs of lt seed 0 are the same trial's; those of lt seed 1 another's
    [group] = runs.trial_groups(controls)
    assert [r.root.name for r in group] == ["control_lt0again", "control_lt1"]
    [left_out] = runs.distinct_trials(controls)[1]
    assert left_out.run.root.name == "control_lt0"
