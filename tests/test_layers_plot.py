"""combine_plots.py --layers: the share of each layer's weights kept, from the runs' mask files."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import combine_plots
import main
from lth import plots, runs
from lth.safe_load import load_array_list

FC1_LAYERS = ["classifier.0", "classifier.2", "classifier.4"]  # its three Linear layers


@pytest.fixture(scope="module")
def lt_and_random(tmp_path_factory, mnist_data) -> list[Path]:
    """lt and random, seeds 0 and 1, 3 levels of 1 epoch, global pruning at 40% (so that the
    layers' shares part), trained as one batch: four run folders."""
    top = tmp_path_factory.mktemp("layers")
    flags = ["--prune_type", "lt", "random", "--seed", "0", "1", "--prune_iterations", "3"]
    flags += ["--end_iter", "1", "--batch_size", "40", "--plot_dpi", "20", "--prune_percent", "40"]
    flags += ["--prune_scope", "global", f"--results_root={top / 'results'}", *mnist_data]
    assert main.main(flags) == 0
    return [run.root for run in runs.all_runs(top / "results")]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def shares_from_the_mask_files(folders: list[Path]) -> dict[tuple[str, int, str], list[tuple]]:
    """(prune type, level, layer) -> (kept, total) of every run, counted from its mask files
    (fc1: every entry of the file is a Linear layer's weight, in the layers' order)."""
    found: dict[tuple[str, int, str], list[tuple]] = {}
    for folder in folders:
        run = runs.load_run(folder)
        for level in range(3):
            entries = load_array_list(run.mask_path(level))
            for layer, entry in zip(FC1_LAYERS, entries, strict=True):
                key = (run.args["prune_type"], level, layer)
                found.setdefault(key, []).append((int(entry.sum()), entry.size))
    return found


def test_layer_shares_are_the_masks_kept_over_total_one_panel_per_prune_type(
    lt_and_random, tmp_path, monkeypatch, capsys
):
    panels = []
    drawn = plots.layer_shares

    def counting(*args, **kwargs):
        figure = drawn(*args, **kwargs)
        panels.append(len(figure.axes))
        return figure

    monkeypatch.setattr(plots, "layer_shares", counting)
    out = tmp_path / "out"
    argv = [*map(str, lt_and_random), "--layers", "--out", str(out), "--dpi", "20"]
    assert combine_plots.main(argv) == 0
    assert panels == [2]  # lt and random
    assert (out / "combined_fc1_mnist_layers.png").is_file()
    assert f"combined plot: {out / 'combined_fc1_mnist_layers.png'}" in capsys.readouterr().out

    rows = read_csv(out / "combined_fc1_mnist_layers.csv")
    stats = [f"{what}_{stat}" for what in ("kept", "share") for stat in ("mean", "min", "max")]
    columns = ["line", "prune_type", "level", "weights_left", "layer", "trials", "total", *stats]
    assert list(rows[0]) == columns
    assert [r["layer"] for r in rows[:3]] == FC1_LAYERS
    expected = shares_from_the_mask_files(lt_and_random)
    assert len(rows) == len(expected) == 2 * 3 * 3
    differ = False
    for row in rows:
        counts = expected[(row["prune_type"], int(row["level"]), row["layer"])]
        kept = np.array([k for k, _ in counts])
        total = counts[0][1]
        share = 100 * kept / total
        assert int(row["trials"]) == 2 and int(row["total"]) == total
        assert float(row["kept_mean"]) == pytest.approx(kept.mean())
        assert (float(row["kept_min"]), float(row["kept_max"])) == (kept.min(), kept.max())
        assert float(row["share_mean"]) == pytest.approx(share.mean(), abs=1e-6)
        assert float(row["share_min"]) == pytest.approx(share.min(), abs=1e-6)
        assert float(row["share_max"]) == pytest.approx(share.max(), abs=1e-6)
        differ |= len({float(r["share_mean"]) for r in rows if r["level"] == row["level"]}) > 2
    assert differ, "global pruning keeps the layers at different shares"


def test_runs_without_mask_files_are_a_one_line_error(lt_and_random, tmp_path, capsys):
    copy = Path(shutil.copytree(lt_and_random[0], tmp_path / lt_and_random[0].name))
    mask = runs.load_run(copy).mask_path(2)
    mask.unlink()
    out = tmp_path / "out"
    assert combine_plots.main([str(copy), "--layers", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {copy} has no mask file for level 2 ({mask})"), error
    assert error.count("\n") == 1 and not out.exists()
