"""Bad input: exit status 2, one line naming the problem, no traceback, no run folder left."""

import subprocess
import sys
from pathlib import Path

import pytest

import main
from lth import data
from tests.conftest import ROOT, refused
from tests.datafiles import write_mnist_files


def check_refused(tmp_path: Path, capsys, flags: list[str], *words: str) -> str:
    """Run main with `flags` in tmp_path; it must exit 2 with one line containing `words`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        line = refused(capsys, lambda: main.main(flags), *words)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    return line


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--dataset", "imagenet"], ["--dataset", "imagenet", "mnist", "cifar10"]),
        (["--arch_type", "transformer"], ["--arch_type", "transformer", "fc1", "lenet5"]),
        (["--dataset", "mnist", "--arch_type", "densenet121"], ["densenet121", "resnet18"]),
        (["--prune_type", "magic"], ["--prune_type", "lt", "reinit"]),
        (["--prune_percent", "0"], ["--prune_percent"]),
        (["--prune_percent", "100"], ["--prune_percent"]),
        (["--prune_percent", "-5"], ["--prune_percent"]),
        (["--prune_percent", "ten"], ["--prune_percent", "ten"]),
        (["--prune_iterations", "0"], ["--prune_iterations"]),
        (["--end_iter", "0"], ["--end_iter"]),
        (["--batch_size", "0"], ["--batch_size"]),
        (["--valid_freq", "0"], ["--valid_freq"]),
        (["--print_freq", "-1"], ["--print_freq"]),
        (["--lr", "nan"], ["--lr"]),
        (["--start_iter", "3"], ["--start_iter", "--resume"]),
        (["--gpu", "x"], ["--gpu"]),
        (["--seed", "-1"], ["--seed"]),
        (["--plot_dpi", "0"], ["--plot_dpi"]),
        (["--no_such_flag"], ["--no_such_flag"]),
    ],
)
def test_bad_flags_are_refused_in_one_line(tmp_path, capsys, mnist_source, flags, words):
    base = [f"--data_source={mnist_source}", f"--data_dir={tmp_path / 'data'}"]
    check_refused(tmp_path, capsys, base + flags, *words)


def test_missing_data_names_the_files_and_both_flags(tmp_path, capsys, monkeypatch):
    from lth import data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian"))
    empty = tmp_path / "empty"
    empty.mkdir()
    line = check_refused(
        tmp_path, capsys, ["--dataset=mnist", f"--data_dir={empty}"], "--data_source", "--data_dir"
    )
    assert "train-images-idx3-ubyte" in line


def test_corrupt_data_file_is_named(tmp_path, capsys):
    source = write_mnist_files(tmp_path / "source", gz=False, n_train=60, n_test=30)
    labels = source / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x99\x99" + labels.read_bytes()[4:])
    line = check_refused(
        tmp_path, capsys, [f"--data_source={source}", f"--data_dir={tmp_path / 'data'}"]
    )
    assert "t10k-labels-idx1-ubyte" in line


def test_refusal_from_the_shell_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--dataset", "mnist", "--arch_type", "nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_data_dir_that_is_a_file_is_one_line(tmp_path, capsys, mnist_source):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    check_refused(
        tmp_path,
        capsys,
        [f"--data_source={mnist_source}", f"--data_dir={not_a_folder}"],
        f"--data_dir {not_a_folder} is a file, not a folder",
    )
    assert not_a_folder.read_text() == "a file where the data folder should be"


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def test_data_source_without_the_files_is_refused_even_with_the_data_in_data_dir(
    tmp_path, capsys, mnist_data
):
    data_dir = Path(mnist_data[1].removeprefix("--data_dir="))  # holds the imported data set
    before = files_under(data_dir)
    elsewhere = tmp_path / "elsewhere"  # a folder of other files, as /etc
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("no data set here")
    line = check_refused(
        tmp_path,
        capsys,
        [f"--data_source={elsewhere}", f"--data_dir={data_dir}", "--dataset=mnist"],
        f"--data_source {elsewhere} has none of the files of mnist",
        *(f"{name}(.gz)" for name in data.IDX_FILES),
    )
    assert line.startswith("error: ")
    assert files_under(data_dir) == before
    assert sorted(tmp_path.iterdir()) == [elsewhere]  # no run folder, nothing else written


def test_data_source_with_the_files_still_runs_with_the_data_in_data_dir(
    tmp_path, capsys, mnist_data, mnist_source
):
    results = tmp_path / "results"
    flags = [*mnist_data, f"--results_root={results}", "--seed=0", "--plot_dpi=20"]
    flags += ["--prune_iterations=1", "--end_iter=1", "--batch_size=60"]
    assert str(mnist_source) in flags[0]
    assert main.main(flags) == 0, capsys.readouterr().err
    assert len(list(results.rglob("args.json"))) == 1
