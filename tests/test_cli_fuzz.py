"""Random command lines: each one is either accepted by the validation or refused with exit status
2 and one line on stderr, never a traceback."""

import random
import subprocess
import sys

import main
from lth import lottery
from tests.conftest import ROOT

INTS = ["0", "1", "2", "3", "35", "-1", "-7", "4294967295", "4294967296", "99999999999999999999"]
FLOATS = ["0", "0.01", "1.2e-3", "10", "99.99", "100", "-5", "1e400", "-1e400", "1e-320"]
SPECIAL = ["nan", "NaN", "inf", "-inf", "Infinity", "0x10", "1_000", " 7 ", "1e3", "٣", "１"]
GARBAGE = [
    "",
    " ",
    "abc",
    "--",
    "-",
    "=",
    "a\nb",
    "x\ty",
    "\x1b[31mred",
    "é",
    "../../etc",
    "'\"",
    "%s%d",
]
NAMES = {
    "dataset": ["mnist", "fashionmnist", "cifar10", "cifar100", "imagenet", "MNIST"],
    "arch_type": ["fc1", "lenet5", "alexnet", "vgg16", "resnet18", "densenet121", "conv6"],
    "prune_type": ["lt", "reinit", "LT", "random"],
    "gpu": ["0", "1", "00", "-1", "0.5", "cuda:0"],
}
FLAG_VALUES = {
    "lr": FLOATS,
    "batch_size": INTS,
    "start_iter": INTS,
    "end_iter": INTS,
    "print_freq": INTS,
    "valid_freq": INTS,
    "prune_percent": FLOATS,
    "prune_iterations": INTS,
    "seed": INTS,
    "rewind_epoch": INTS,
    "rewind_iter": INTS,
    "plot_dpi": INTS,
    "data_dir": ["data", "/nonexistent/data"],
    "results_root": ["results", "/nonexistent/results"],
    **NAMES,
}
UNKNOWN = ["--epochs", "--prune-percent", "--lr_decay", "-x", "--resum", "--p", "positional"]


class Accepted(Exception):
    """Raised where main would go on to pick the device: the validation let the line through."""


def random_command_line(rng: random.Random, source: str) -> list[str]:
    argv: list[str] = []
    for _ in range(rng.randint(0, 6)):
        roll = rng.random()
        if roll < 0.08:
            argv.append(rng.choice(UNKNOWN))
            continue
        if roll < 0.14:
            argv += ["--resume"] + rng.choice([[], ["/nonexistent/run"], [source]])
            continue
        if roll < 0.2:
            argv += ["--data_source", rng.choice([source, "/nonexistent/source", ""])]
            continue
        name = rng.choice(list(FLAG_VALUES))
        pool = rng.choice([FLAG_VALUES[name]] * 3 + [SPECIAL, GARBAGE])
        value = rng.choice(pool)
        form = rng.random()
        if form < 0.1:
            argv.append(f"--{name}")  # its value missing (or taken from the next flag)
        elif form < 0.4:
            argv.append(f"--{name}={value}")
        else:
            argv += [f"--{name}", value]
    return argv


def outcome(argv: list[str], capsys) -> tuple[int, str]:
    """(status, stderr) of main.main(argv), stopped with status -1 where validation passed."""
    try:
        status = main.main(argv)
    except SystemExit as exit_:  # argparse's refusals
        status = exit_.code
    except Accepted:
        status = -1
    return status, capsys.readouterr().err


def test_random_command_lines_are_accepted_or_refused_in_one_line(tmp_path, capsys, monkeypatch):
    def accepted(gpu: str):
        raise Accepted

    monkeypatch.setattr(lottery, "select_device", accepted)
    monkeypatch.chdir(tmp_path)
    rng = random.Random(20261125)
    counts = {"accepted": 0, "argparse": 0, "validation": 0}
    for _ in range(400):
        argv = random_command_line(rng, str(tmp_path))
        status, err = outcome(argv, capsys)
        assert "Traceback" not in err, (argv, err)
        if status == -1:
            assert err == "", (argv, err)
            counts["accepted"] += 1
            continue
        assert status == 2, (argv, status, err)
        lines = err.split("\n")
        assert len(lines) == 2 and lines[1] == "", (argv, err)  # one line, ended by a newline
        if lines[0].startswith("main.py: error: "):
            counts["argparse"] += 1
        else:
            assert lines[0].startswith("error: ") and "--" in lines[0], (argv, err)
            counts["validation"] += 1
    # the generator reaches every outcome, so the checks above all ran
    assert min(counts.values()) >= 40, counts
    assert not list(tmp_path.iterdir())  # nothing written where the command lines ran


def test_refusals_from_the_shell_have_no_traceback(tmp_path):
    command_lines = [
        ["--dataset", "a\nb", "--prune_percent", "1e400"],
        ["--lr=--", "--unknown"],
    ]
    processes = [  # at once: each pays for importing torch
        subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), *argv],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in command_lines
    ]
    for argv, process in zip(command_lines, processes, strict=True):
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not list(tmp_path.iterdir())
