"""A short run on the real Fashion-MNIST (Debian's dataset-fashion-mnist, installed by .ci/run)."""

import os
import subprocess
import sys
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


@pytest.mark.slow
@pytest.mark.skipif(
    not present and not os.environ.get("CI"),
    reason=f"{data.DEBIAN_FASHION_MNIST} is absent (make data installs it; in CI this test must run)",
)
def test_make_demo_shows_the_tickets_above_the_control(tmp_path):
    """`make demo` as a newcomer runs it (its results elsewhere): it prints the figure's path and
    a table of 11 levels down to about 10% of the weights, where the tickets' mean is above the
    control's (measured here: 88.1 against 85.1)."""
    root = Path(__file__).resolve().parent.parent
    demo = tmp_path / "demo"
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(root),
            "demo",
            f"DEMO_ROOT={demo}",
            f"PY={sys.executable}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figure = demo / "combined" / "combined_fc1_fashionmnist.png"
    assert f"tickets vs the control: {figure}" in done.stdout and figure.is_file()
    lines = done.stdout.splitlines()
    header = next(i for i, text in enumerate(lines) if text.startswith("level"))
    assert "lt (3 trials)" in lines[header] and "reinit with lt masks (3 trials)" in lines[header]
    rows = [line.split() for line in lines[header + 1 : header + 12]]
    assert [int(row[0]) for row in rows] == list(range(11))
    last = rows[-1]
    assert 9.0 <= float(last[1]) <= 12.0  # weights left
    tickets, control = float(last[2]), float(last[4])  # each mean is followed by its range
    assert tickets > control, lines[header:]
