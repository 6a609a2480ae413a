"""Values past what a run can do (huge counts and resolutions, empty or file paths, Ray options
that wait forever) and Ctrl-C in a sweep: one line on stderr, no traceback, nothing written."""

from pathlib import Path

import pytest
import torch

import combine_plots
import main
import sweep
from lth import cli
from tests.conftest import refused


def empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.fixture
def no_ray(monkeypatch):
    """A sweep that gets as far as starting Ray fails the test (it would crash or wait)."""

    def run_on_ray(*_args):
        raise AssertionError("the sweep started Ray instead of refusing its flags")

    monkeypatch.setattr(sweep, "run_on_ray", run_on_ray)


ONE_SHORT_LEVEL = {"prune_iterations": "1", "end_iter": "1"}  # old code: a quick crash


@pytest.mark.parametrize(
    ("name", "value", "limit"),
    [
        ("end_iter", "99999999999999999999", cli.MAX_END_ITER),
        ("prune_iterations", "1000000000000", cli.MAX_PRUNE_ITERATIONS),
        ("plot_dpi", "100000", cli.MAX_DPI),
    ],
)
def test_main_refuses_values_above_the_limits(tmp_path, capsys, mnist_data, name, value, limit):
    results = tmp_path / "results"
    argv = [*mnist_data, f"--results_root={results}", "--seed=0", f"--{name}={value}"]
    argv += [f"--{flag}={n}" for flag, n in ONE_SHORT_LEVEL.items() if flag != name]
    refused(capsys, lambda: main.main(argv), f"--{name}", str(limit), value)
    assert empty(results)


def test_the_limits_themselves_are_accepted():
    argv = ["--end_iter", str(cli.MAX_END_ITER), "--prune_iterations"]
    argv += [str(cli.MAX_PRUNE_ITERATIONS), "--plot_dpi", str(cli.MAX_DPI)]
    cli.validate(cli.one_trial(cli.parse_args(argv)))


@pytest.mark.parametrize("name", ["results_root", "data_dir", "data_source"])
def test_main_refuses_an_empty_path(tmp_path, capsys, monkeypatch, mnist_data, name):
    monkeypatch.chdir(tmp_path)  # an empty path would write here
    argv = [*mnist_data, f"--results_root={tmp_path / 'results'}", "--seed=0", f"--{name}="]
    argv += ["--prune_iterations=1", "--end_iter=1", "--plot_dpi=20"]  # old code: a quick run
    refused(capsys, lambda: main.main(argv), f"--{name} must not be empty")
    assert empty(tmp_path)


def test_combine_plots_refuses_a_dpi_above_the_limit(tmp_path, capsys):
    argv = [str(tmp_path / "run"), "--dpi", "100000"]
    refused(capsys, lambda: combine_plots.main(argv), "--dpi", str(cli.MAX_DPI))


@pytest.mark.parametrize("below", [False, True], ids=["a file", "below a file"])
def test_combine_plots_refuses_an_out_that_is_a_file(tmp_path, capsys, below):
    file = tmp_path / "file"
    file.write_text("not a folder")
    out = file / "sub" if below else file
    argv = ["--results_root", str(tmp_path), "--out", str(out)]
    refused(capsys, lambda: combine_plots.main(argv), f"--out {out} is a file, not a folder")
    assert sorted(tmp_path.iterdir()) == [file] and file.read_text() == "not a folder"


@pytest.mark.parametrize("flag", ["--results_root", "--out"])
def test_combine_plots_refuses_an_empty_path(tmp_path, capsys, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    argv = ["--results_root", str(tmp_path), flag, ""]
    refused(capsys, lambda: combine_plots.main(argv), f"{flag} must not be empty")
    assert empty(tmp_path)


@pytest.mark.parametrize("below", [False, True], ids=["a file", "below a file"])
def test_sweep_refuses_a_results_root_that_is_a_file(tmp_path, capsys, no_ray, below):
    file = tmp_path / "file"
    file.write_text("not a folder")
    root = file / "sub" if below else file
    argv = ["--seed", "0", "--results_root", str(root), "--", "--dataset", "mnist"]
    refused(capsys, lambda: sweep.main(argv), f"--results_root {root} is a file, not a folder")
    assert sorted(tmp_path.iterdir()) == [file] and file.read_text() == "not a folder"


def test_sweep_refuses_an_empty_results_root(tmp_path, capsys, monkeypatch, no_ray):
    monkeypatch.chdir(tmp_path)
    argv = ["--seed", "0", "--results_root", "", "--", "--dataset", "mnist"]
    refused(capsys, lambda: sweep.main(argv), "--results_root must not be empty")
    assert empty(tmp_path)


def test_sweep_checks_the_dpi_limit_of_main(tmp_path, capsys, no_ray):
    results = tmp_path / "results"
    argv = ["--seed", "0", "--results_root", str(results), "--", "--plot_dpi", "100000"]
    refused(capsys, lambda: sweep.main(argv), "--plot_dpi", str(cli.MAX_DPI))
    assert empty(results)


RAY_REFUSALS = [
    (["--num_cpus", "0"], ["--num_cpus", "at least 1"]),
    (["--num_cpus", "-2"], ["--num_cpus", "at least 1"]),
    (["--cpus_per_run", "nan"], ["--cpus_per_run", "finite", "above 0"]),
    (["--cpus_per_run", "inf"], ["--cpus_per_run", "finite", "above 0"]),
    (["--cpus_per_run", "0"], ["--cpus_per_run", "finite", "above 0"]),
    (["--cpus_per_run", "-1"], ["--cpus_per_run", "finite", "above 0"]),
    (["--gpus_per_run", "nan"], ["--gpus_per_run"]),
    (["--gpus_per_run", "1"], ["--gpus_per_run", "0 CUDA device(s)", "--address"]),
    (["--gpus_per_run", "0.5"], ["--gpus_per_run", "0 CUDA device(s)"]),
]


@pytest.mark.parametrize(
    ("flags", "words"), RAY_REFUSALS, ids=[" ".join(flags) for flags, _ in RAY_REFUSALS]
)
def test_sweep_refuses_ray_options_that_cannot_run(
    tmp_path, capsys, monkeypatch, no_ray, flags, words
):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a machine without a GPU
    results = tmp_path / "results"
    argv = ["--seed", "0", "--results_root", str(results), *flags, "--", "--dataset", "mnist"]
    refused(capsys, lambda: sweep.main(argv), *words)
    assert empty(results)


def test_sweep_leaves_gpus_of_a_cluster_to_the_cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    own = ["--seed", "0", "--results_root", str(tmp_path), "--gpus_per_run", "1"]
    options = sweep.build_parser().parse_args([*own, "--address", "10.0.0.1:6379"])
    assert len(sweep.make_tasks(options, ["--dataset", "mnist"])) == 2


def test_ctrl_c_in_a_sweep_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_on_ray", interrupted)
    argv = ["--seed", "0", "--results_root", str(tmp_path / "results"), "--", "--dataset=mnist"]
    try:
        status = sweep.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped sweep.main: a KeyboardInterrupt traceback")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 130, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("sweep: interrupted") and "same command" in lines[0]
