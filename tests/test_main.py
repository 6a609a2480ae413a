"""End to end through main.py on tiny data sets written in the original file formats."""

import csv
import importlib.metadata
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import main
from tests.conftest import ROOT
from tests.datafiles import write_cifar_files, write_mnist_files
from tests.resultfiles import scalars

TINY = ["--end_iter", "2", "--plot_dpi", "20", "--seed", "0", "--batch_size", "32"]


def run_main(tmp_path: Path, *flags: str) -> int:
    """main.main() in `tmp_path` as the working directory, as a user would run it there."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        return main.main(list(flags))


def only_run(tmp_path: Path) -> Path:
    runs = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def load_dump(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=True)


@pytest.mark.parametrize(
    ("dataset", "prune_type", "writer"),
    [("mnist", "lt", write_mnist_files), ("cifar10", "reinit", write_cifar_files)],
)
def test_every_result_file_exists_loads_and_makes_sense(tmp_path, dataset, prune_type, writer):
    source = (
        writer(tmp_path / "source") if dataset == "mnist" else writer(tmp_path / "source", dataset)
    )
    levels = 3
    status = run_main(
        tmp_path,
        *TINY,
        f"--dataset={dataset}",
        f"--prune_type={prune_type}",
        "--arch_type=fc1",
        f"--prune_iterations={levels}",
        f"--data_source={source}",
        f"--data_dir={tmp_path / 'data'}",
    )
    assert status == 0
    run = only_run(tmp_path)
    saves = run / "saves" / "fc1" / dataset
    plots = run / "plots" / "lt" / "fc1" / dataset
    dumps = run / "dumps" / "lt" / "fc1" / dataset
    pt = prune_type

    initial = torch.load(saves / f"initial_state_dict_{pt}.pth.tar", weights_only=False)
    assert isinstance(initial, nn.Module)
    for level in range(levels):
        model = torch.load(saves / f"{level}_model_{pt}.pth.tar", weights_only=False)
        assert isinstance(model, nn.Module)

    comp = load_dump(dumps / f"{pt}_compression.dat")
    best = load_dump(dumps / f"{pt}_bestaccuracy.dat")
    assert comp.shape == best.shape == (levels,)
    assert comp.dtype == np.float64 and np.all(np.diff(comp) < 0)
    # 10 classes: chance is 10%; the tiny data are hard enough that no level reaches 100%
    assert np.all((best >= 25) & (best < 100)), best
    assert (plots / f"{pt}_AccuracyVsWeights.png").stat().st_size > 0
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert [float(r["params_left"]) for r in rows] == list(comp)
    assert [float(r["best_accuracy"]) for r in rows] == list(best)

    for c, row in zip(comp, rows, strict=True):
        tag = f"{c:.1f}"
        loss = load_dump(dumps / f"{pt}_all_loss_{tag}.dat")
        accuracy = load_dump(dumps / f"{pt}_all_accuracy_{tag}.dat")
        assert loss.shape == accuracy.shape == (2,)
        assert np.all(np.isfinite(loss)) and np.all(loss > 0)
        # entry e: the test before epoch e trains; the best accuracy is the larger of those
        # and the final test's
        assert (
            accuracy.max()
            <= best[list(comp).index(c)]
            == max(accuracy.max(), float(row["final_accuracy"]))
        )
        with open(dumps / f"{pt}_mask_{tag}.pkl", "rb") as file:
            mask = pickle.load(file)
        assert [m.shape for m in mask] == [p.shape for p in _linear_weights(model)]
        kept = sum(m.sum() for m in mask) / sum(m.size for m in mask)
        assert float(row["weights_left"]) == round(100 * kept, 1)
        # {comp} is the original's figure: nonzero values among all parameters at the start of
        # the level, where every weight is nonzero unless the mask pruned it (and biases are)
        weights, total = sum(m.sum() for m in mask), sum(p.numel() for p in model.parameters())
        biases = sum(p.numel() for n, p in model.named_parameters() if "bias" in n)
        assert c == round((weights + biases) / total * 100, 1)
        assert (plots / f"{pt}_LossVsAccuracy_{tag}.png").stat().st_size > 0

    # the best model of the last level really is pruned by the last mask
    for weight, layer_mask in zip(_linear_weights(model), mask, strict=True):
        assert torch.all(weight.detach()[torch.from_numpy(layer_mask) == 0] == 0)

    record = json.loads((run / "args.json").read_text())
    assert record["seed"] == 0 and record["args"]["dataset"] == dataset
    assert record["versions"]["torch"] == importlib.metadata.version("torch")
    assert record["args"]["prune_type"] == prune_type and "git_commit" in record
    # TensorBoard: the original's `Accuracy/test`, each level's best accuracy at step {comp}
    # (as an integer, as the original's writer stored it); each epoch under its own tags
    logged = scalars(run / "tensorboard")
    per_level = [(int(c), pytest.approx(b)) for c, b in zip(comp, best, strict=True)]
    assert logged["Accuracy/test"] == per_level[::-1]  # in step order: {comp} falls
    assert logged["Accuracy/best_by_level"] == [(i, pytest.approx(b)) for i, b in enumerate(best)]
    by_epoch = [a for c in comp for a in load_dump(dumps / f"{pt}_all_accuracy_{c:.1f}.dat")]
    assert [v for _, v in logged["Accuracy/test_by_epoch"]] == pytest.approx(by_epoch)
    assert [step for step, _ in logged["Loss/train"]] == list(range(2 * levels))


def _linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def test_same_seed_same_results(tmp_path):
    source = write_mnist_files(tmp_path / "source")
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        flags = [*TINY, "--dataset=mnist", "--prune_iterations=2", f"--data_source={source}"]
        assert run_main(folder, *flags, f"--data_dir={tmp_path / 'data'}") == 0
        runs.append(only_run(folder) / "dumps" / "lt" / "fc1" / "mnist")
    for name in ("lt_all_loss_90.0.dat", "lt_mask_90.0.pkl", "lt_bestaccuracy.dat"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes()


def test_command_line_run_prints_where_the_results_are(tmp_path, mnist_data):
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *TINY, "--prune_iterations=1", "--end_iter=1"]
        + mnist_data,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "seed: 0" in result.stdout
    assert f"results: results/{only_run(tmp_path).name}" in result.stdout
    assert "CUDA is not available" in result.stdout or torch.cuda.is_available()


def test_the_parameters_are_listed_once_before_the_levels_as_the_original_did(tmp_path, capsys):
    source = write_mnist_files(tmp_path / "source")
    flags = [*TINY, "--prune_iterations=1", f"--data_source={source}", "--seed", "0", "1"]
    assert run_main(tmp_path, *flags, f"--data_dir={tmp_path / 'data'}") == 0
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if "torch.Size" in line]
    assert listed == [
        "classifier.0.weight torch.Size([300, 784])",
        "classifier.0.bias torch.Size([300])",
        "classifier.2.weight torch.Size([100, 300])",
        "classifier.2.bias torch.Size([100])",
        "classifier.4.weight torch.Size([10, 100])",
        "classifier.4.bias torch.Size([10])",
    ]
    assert out.index("torch.Size") < out.index("--- Pruning Level [0:0/1]")
