"""--help of the three commands: flags under headings by purpose (main.py: the original's flags
first, and only those), one help line and one default text per flag; parsing as before."""

import argparse
import re
import subprocess
import sys

import pytest

import combine_plots
import sweep
from lth import cli
from tests.conftest import ROOT

COLUMNS = "100"  # the same width in the process and in the subprocesses
HEADINGS = {
    "main.py": [
        "the original's flags",
        "the paper's protocol",
        "pruning and rewinding",
        "optimisation",
        "networks",
        "run management",
    ],
    "sweep.py": ["the grid", "results", "Ray and batches"],
    "combine_plots.py": ["runs", "figures"],
}
PARSERS = {
    "main.py": cli.build_parser,
    "sweep.py": sweep.build_parser,
    "combine_plots.py": combine_plots.build_parser,
}
ORIGINAL_FLAGS = [
    "--lr",
    "--batch_size",
    "--start_iter",
    "--end_iter",
    "--print_freq",
    "--valid_freq",
    "--resume",
    "--prune_type",
    "--gpu",
    "--dataset",
    "--arch_type",
    "--prune_percent",
    "--prune_iterations",
]
# vars(parse_args([])) of each command as it was before the flags had headings
DEFAULTS = {
    "main.py": {
        "lr": 0.0012,
        "batch_size": 60,
        "start_iter": 0,
        "end_iter": 100,
        "print_freq": 1,
        "valid_freq": 1,
        "resume": None,
        "prune_type": ["lt"],
        "gpu": "0",
        "dataset": "mnist",
        "arch_type": "fc1",
        "prune_percent": 10,
        "prune_iterations": 35,
        "data_dir": "../data",
        "data_source": None,
        "seed": [None],
        "plot_dpi": 1200,
        "results_root": "results",
        "init": None,
        "rewind_epoch": 0,
        "rewind_iter": 0,
        "prune_scope": "layer",
        "prune_percent_output": None,
        "prune_percent_conv": None,
        "optimizer": "adam",
        "momentum": 0.0,
        "dropout": 0.0,
        "fclin_depth": None,
        "pretrain": "none",
        "pretrain_epochs": None,
        "val_size": 0,
        "warmup_iters": 0,
        "lr_drops": None,
        "lr_gamma": None,
        "masks_from": None,
        "compile": "auto",
        "batch_record": None,
        "augment": False,
    },
    "sweep.py": {
        "prune_percent": [10.0],
        "prune_type": ["lt", "reinit"],
        "seed": [None],
        "results_root": "results",
        "address": None,
        "num_cpus": None,
        "cpus_per_run": 1,
        "gpus_per_run": 0,
        "batch": None,
    },
    "combine_plots.py": {
        "run_dirs": [],
        "results_root": "results",
        "dpi": 1200,
        "best_epoch": False,
        "layers": False,
        "out": None,
    },
}
# main.py's value conversions, as they were (None: the text as given)
MAIN_TYPES = {
    "lr": float,
    "batch_size": int,
    "start_iter": int,
    "end_iter": int,
    "print_freq": int,
    "valid_freq": int,
    "gpu": str,
    "dataset": str,
    "arch_type": str,
    "prune_percent": float,
    "prune_iterations": int,
    "seed": int,
    "plot_dpi": int,
    "rewind_epoch": int,
    "rewind_iter": int,
    "prune_percent_output": float,
    "prune_percent_conv": float,
    "momentum": float,
    "dropout": float,
    "fclin_depth": int,
    "pretrain_epochs": int,
    "val_size": int,
    "warmup_iters": int,
    "lr_gamma": float,
}


def headings(text: str) -> list[str]:
    """The section headings of a help text, in order."""
    return [line[:-1] for line in text.splitlines() if re.fullmatch(r"\S.*:", line)]


def flags_under(text: str, heading: str) -> list[str]:
    """The first option string (or positional name) of each entry under `heading`."""
    lines = text.splitlines()
    start = lines.index(f"{heading}:") + 1
    entries = []
    for line in lines[start:]:
        if re.fullmatch(r"\S.*:", line):
            break
        if match := re.match(r"  (-{1,2}[\w-]+|[A-Z][A-Z_]*)\b", line):
            entries.append(match.group(1))
    return entries


def documented(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every argument but -h."""
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def help_line(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help of `action` as --help prints it, default text included, before wrapping."""
    return parser._get_formatter()._expand_help(action)


def check_help_text(command: str, text: str) -> None:
    parser = PARSERS[command]()
    assert headings(text) == ["options", *HEADINGS[command]], headings(text)
    assert flags_under(text, "options") == ["-h"]  # every other flag under a heading of ours
    for action in documented(parser):
        assert (action.option_strings or [action.metavar])[0] in text, action.dest
    assert text.count(cli.DEFAULT_TEXT) == len(documented(parser))
    if command == "main.py":
        assert flags_under(text, "the original's flags") == ORIGINAL_FLAGS


@pytest.mark.parametrize("command", list(PARSERS))
def test_the_headings_come_in_order_and_hold_every_flag(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", COLUMNS)
    check_help_text(command, PARSERS[command]().format_help())


def test_the_original_flags_come_first_and_alone(monkeypatch):
    monkeypatch.setenv("COLUMNS", COLUMNS)
    parser = cli.build_parser()
    groups = [g for g in parser._action_groups if g._group_actions]
    assert groups[1].title == "the original's flags"
    assert [a.option_strings[0] for a in groups[1]._group_actions] == ORIGINAL_FLAGS


@pytest.mark.parametrize("command", list(PARSERS))
def test_every_flag_has_one_help_line_and_one_default_text(command):
    parser = PARSERS[command]()
    for action in documented(parser):
        text = help_line(parser, action)
        assert action.help and action.help.strip(), action.dest
        assert "\n" not in text, (action.dest, text)
        assert text.count(cli.DEFAULT_TEXT) == 1, (action.dest, text)
        assert "(default: None)" not in text, (action.dest, text)  # says what None stands for


@pytest.mark.parametrize("command", list(PARSERS))
def test_the_defaults_are_as_before(command):
    parsed = vars(PARSERS[command]().parse_args([]))
    assert parsed == DEFAULTS[command]
    assert {k: type(v) for k, v in parsed.items()} == {
        k: type(v) for k, v in DEFAULTS[command].items()
    }


def test_main_converts_each_value_as_before():
    converters = {a.dest: a.type for a in documented(cli.build_parser()) if a.type is not None}
    assert converters == MAIN_TYPES


def test_a_flag_with_a_default_text_of_its_own_gets_no_second_one():
    parser = cli.OneLineParser(prog="p", formatter_class=cli.OneDefaultFormatter)
    add = cli.flag_group(parser, "things")
    add("--a", default=None, help="a thing (default: one of its own)")
    add("--b", default=[1, 2], nargs="+", type=int, help="b things")
    add("--c", action="store_true", help="a switch")
    add("--d", default="50%", help="a share")
    text = " ".join(parser.format_help().split())
    assert "a thing (default: one of its own)" in text and text.count("(default:") == 4
    assert "b things (default: 1 2)" in text and "a switch (default: off)" in text
    assert "a share (default: 50%)" in text


def test_help_from_the_shell_is_the_same_text(monkeypatch):
    monkeypatch.setenv("COLUMNS", COLUMNS)
    processes = {  # at once: each pays for importing torch
        command: subprocess.Popen(
            [sys.executable, str(ROOT / command), "--help"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in PARSERS
    }
    for command, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and err == "", err
        check_help_text(command, out)
        assert out == PARSERS[command]().format_help()
