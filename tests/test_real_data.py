"""A short run on the real Fashion-MNIST (Debian's dataset-fashion-mnist, installed by .ci/run)."""

import os
from pathlib import Path

import numpy as np
import pytest

import main
from lth import data

present = Path(data.DEBIAN_FASHION_MNIST).is_dir()


@pytest.mark.skipif(
    not present and not os.environ.get("CI"),
    reason=f"{data.DEBIAN_FASHION_MNIST} is absent (make data installs it; in CI this test must run)",
)
def test_fc1_on_fashion_mnist_reaches_80_percent_at_level_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--dataset=fashionmnist", "--arch_type=fc1", "--prune_iterations=2", "--end_iter=1"]
    status = main.main([*flags, "--seed=0", "--plot_dpi=30", f"--data_dir={tmp_path / 'data'}"])
    assert status == 0
    (run,) = (tmp_path / "results").iterdir()
    best = np.load(run / "dumps/lt/fc1/fashionmnist/lt_bestaccuracy.dat", allow_pickle=True)
    assert best[0] >= 80.0, best
    assert best[1] >= 80.0, best
