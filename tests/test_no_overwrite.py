"""Nothing overwrites anything: runs started in the same second, concurrent imports of one data
set, levels whose `{comp}` text is the same."""

import datetime
import gzip
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import main
from lth import results
from lth.results import RunDir
from tests.conftest import ROOT
from tests.datafiles import write_mnist_files
from tests.resultfiles import files_under

FROZEN = datetime.datetime(2026, 11, 24, 14, 3, 59)


def test_runs_created_in_the_same_second_get_different_folders(tmp_path, monkeypatch):
    clock = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: FROZEN))
    monkeypatch.setattr(results, "datetime", clock)
    made = [RunDir.create(str(tmp_path), "fc1", "mnist", "lt").root for _ in range(3)]
    base = results.run_name(FROZEN)
    assert base.startswith("Nov24_14-03-59_")
    assert [p.name for p in made] == [base, f"{base}_2", f"{base}_3"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_concurrent_runs_get_their_own_folders_and_share_one_imported_data_set(tmp_path):
    """Two processes start the same second (the clock is frozen for them) and import the same
    data set into the same empty --data_dir at the same moment."""
    source = write_mnist_files(tmp_path / "source", n_train=120, n_test=60)
    data_dir, barrier, name = tmp_path / "data", tmp_path / "barrier", "Nov24_14-03-59_host"
    barrier.mkdir()
    env = {**os.environ, "TQDM_DISABLE": "1", "RUN_NAME": name, "BARRIER": f"{barrier}:2"}
    env.pop("KILL_AT", None)
    flags = ["--seed=1", "--plot_dpi=20", "--prune_iterations=1", "--end_iter=1"]
    flags += [f"--data_source={source}", f"--data_dir={data_dir}"]
    processes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "faulty_main.py"), *flags],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    folders = {}
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0 and err == "", err
        (line,) = [x for x in out.splitlines() if x.startswith("run folder: ")]
        folders[process.pid] = Path(line.removeprefix("run folder: ")).name

    assert sorted(folders.values()) == [name, f"{name}_2"]
    expected = files_under(tmp_path / "results" / name, skip=("tensorboard",))
    assert "saves/fc1/mnist/0_model_lt.pth.tar" in expected and "checkpoints/latest.pth" in expected
    for pid, folder in folders.items():
        run = tmp_path / "results" / folder
        assert files_under(run, skip=("tensorboard",)) == expected
        (events,) = (run / "tensorboard").iterdir()  # written by that process alone
        assert f".{pid}." in events.name

    raw = data_dir / "MNIST" / "raw"
    assert sorted(p.name for p in data_dir.rglob("*") if p.is_file()) == sorted(
        p.name.removesuffix(".gz") for p in source.iterdir()
    )
    for original in source.iterdir():
        assert (raw / original.name.removesuffix(".gz")).read_bytes() == gzip.decompress(
            original.read_bytes()
        )


def test_levels_with_the_same_comp_text_keep_their_own_files(tmp_path, mnist_data):
    flags = ["--seed=2", "--plot_dpi=20", "--prune_iterations=3", "--end_iter=1"]
    flags += ["--prune_percent=0.01", *mnist_data]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert main.main(flags) == 0
    (run,) = (tmp_path / "results").iterdir()
    dumps = run / "dumps" / "lt" / "fc1" / "mnist"
    plots = run / "plots" / "lt" / "fc1" / "mnist"

    comp = np.load(dumps / "lt_compression.dat", allow_pickle=True)
    assert list(comp) == [100.0, 100.0, 100.0]  # one decimal, as the original records it
    tags = ["100.0", "100.0_level1", "100.0_level2"]
    masks = []
    for tag in tags:
        for name in (f"lt_all_loss_{tag}.dat", f"lt_all_accuracy_{tag}.dat", f"lt_mask_{tag}.pkl"):
            assert (dumps / name).is_file(), name
        assert (plots / f"lt_LossVsAccuracy_{tag}.png").is_file()
        with open(dumps / f"lt_mask_{tag}.pkl", "rb") as file:
            masks.append(sum(int(m.sum()) for m in pickle.load(file)))
    assert masks[0] > masks[1] > masks[2]  # each file holds its own level's mask
    assert len(list(dumps.glob("lt_mask_*.pkl"))) == 3


def test_each_checkpoint_replaces_the_last_and_a_restart_drops_it(tmp_path):
    """One checkpoint at a time, recording its level; `--resume RUN --start_iter 0` removes it
    before the rerun, so a rerun killed half-way is never counted as finished by it."""
    run_dir = RunDir.create(str(tmp_path), "fc1", "mnist", "lt")
    assert run_dir.checkpoint_level() is None
    for level in range(3):
        run_dir.save_checkpoint({"level": level})
        assert files_under(run_dir.root) == {"checkpoints/latest.pth"}
        assert run_dir.checkpoint_level() == level
    run_dir.remove_leftovers(3, 5)  # a resume at level 3 continues from it
    assert run_dir.checkpoint_level() == 2
    run_dir.remove_leftovers(0, 5)
    assert files_under(run_dir.root) == set()
