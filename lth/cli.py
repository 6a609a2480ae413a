"""The command line: one flag per setting's field (lth.settings, lth.experiment.KINDS), and the
checks of the settings together."""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

import archs
from lth import augment, data, experiment, methods, settings
from lth.errors import UserError, one_line
from lth.settings import MAX_DPI, MAX_END_ITER, MAX_PRUNE_ITERATIONS, check_dpi, check_folder

check_not_empty = settings.check_not_empty
__all__ = ["MAX_DPI", "MAX_END_ITER", "MAX_PRUNE_ITERATIONS", "check_dpi", "check_folder"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit status 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


DEFAULT_TEXT = "(default:"


class OneDefaultFormatter(argparse.HelpFormatter):
    """Help that ends each flag's line in one default text: the flag's own `(default: ...)` where
    its help gives one, else its default value. A default of None means something different
    from flag to flag, so such a flag says what in its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if DEFAULT_TEXT in text or action.default in (None, argparse.SUPPRESS):
            return text
        return f"{text} {DEFAULT_TEXT} {_shown(action.default)})"


def _shown(default: object) -> str:
    if isinstance(default, list):
        text = " ".join(str(item) for item in default)
    elif isinstance(default, bool):
        text = "on" if default else "off"
    else:
        text = str(default)
    return text.replace("%", "%%")  # argparse %-formats help strings


def flag_group(
    parser: argparse.ArgumentParser, title: str, description: str | None = None
) -> Callable[..., argparse.Action]:
    """The `add_argument` of a new heading in --help."""
    return parser.add_argument_group(title, description).add_argument


def build_parser() -> argparse.ArgumentParser:
    """main.py's flags, one for each setting (lth.settings.add_flags)."""
    parser = OneLineParser(
        prog="main.py",
        description="Find lottery tickets by iterative magnitude pruning.",
        formatter_class=OneDefaultFormatter,
    )
    settings.add_flags(parser, experiment.KINDS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for action in parser._actions:
        # argparse drops a value of "--" (`--lr=--`) and stores an empty list instead
        if action.nargs is None and isinstance(getattr(args, action.dest, None), list):
            parser.error(f"argument {action.option_strings[0]}: expected one argument")
    return args


def trial_specs(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """The batch the command line asks for: (prune method, seed) for every --prune_type and
    every --seed, each once, by registered name; UserError for a batch that cannot run."""
    seeds = list(dict.fromkeys(args.seed))
    if None in seeds and len(seeds) > 1:
        raise UserError(f"--seed {' '.join(map(str, args.seed))}: every seed must be a number")
    found = {spelling: methods.find(spelling) for spelling in dict.fromkeys(args.prune_type)}
    named = {method.name for method in found.values() if method is not None}
    for method in found.values():
        if method is None or not method.needs_ticket:
            continue
        if method.ticket not in named:
            raise UserError(
                f"--prune_type {method.name} needs {method.ticket} in the same batch: each control takes the masks of the {method.ticket} trial of its seed"
            )
        if args.masks_from is not None:
            raise UserError(
                f"--prune_type {method.name} takes its masks from the {method.ticket} trials of the batch, not from --masks_from"
            )
    for spelling, method in found.items():
        if method is None:
            raise UserError(
                f"--prune_type {spelling} is not supported; choose one of: {', '.join(methods.names())}"
            )
    types = list(dict.fromkeys(method.name for method in found.values()))
    apart = [t for t in types if trains_apart(t, args)]
    if apart and len(types) > 1:
        raise UserError(
            f"--prune_type {apart[0]} trains at the final rate of the --warmup_iters/--lr_drops schedule, which the other prune types follow: run it in a batch of its own"
        )
    return [(prune_type, seed) for prune_type in types for seed in seeds]


def trains_apart(prune_type: str, args: argparse.Namespace) -> bool:
    """Whether `prune_type` cannot share a batch's learning-rate schedule with other prune
    types: it holds the final rate of a schedule that is not constant."""
    holds = methods.get(prune_type).holds_final_rate
    return holds and (args.warmup_iters > 0 or args.lr_drops is not None)


def trial_namespace(
    args: argparse.Namespace, prune_type: str, seed: int | None
) -> argparse.Namespace:
    """One trial's arguments: the command line's, with its seed and recorded prune type."""
    recorded = methods.get(prune_type).recorded_name
    return argparse.Namespace(**{**vars(args), "prune_type": recorded, "seed": seed})


def one_trial(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments of the one trial a command line names; UserError when it names a batch."""
    specs = trial_specs(args)
    if len(specs) != 1:
        raise UserError(f"one --prune_type and one --seed only here, got {len(specs)} trials")
    return trial_namespace(args, *specs[0])


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags actually given on the command line."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(sys.argv[1:] if argv is None else argv)))


def validate(args: argparse.Namespace) -> None:
    """Check every value before anything is loaded or written; raise UserError on the first fault.
    The checks of several settings are here, in the order the faults are named."""
    check = settings.Checks(args, experiment.KINDS)
    check("dataset")
    archs.check(args.dataset, args.arch_type)
    methods.recorded(args.prune_type)
    check("prune_percent", "lr")
    check("prune_iterations", "end_iter", "batch_size", "valid_freq", "print_freq")
    check.most("end_iter", "prune_iterations")
    check("plot_dpi")
    if not 0 <= args.start_iter < args.prune_iterations:
        raise UserError(
            f"--start_iter must be in 0..{args.prune_iterations - 1} (--prune_iterations - 1), got {args.start_iter}"
        )
    if args.start_iter > 0 and args.resume is None:
        raise UserError(
            f"--start_iter {args.start_iter} needs --resume RUN_DIR: levels before it come from that run"
        )
    check("gpu", "seed", "results_root", "data_dir")
    _validate_beyond_original(args, check)
    check.rest()
    if args.data_source is not None:  # last: every flag's own fault is named before the files
        check_not_empty("--data_source", args.data_source)
        data.check_source(args.dataset, args.data_source)


def _validate_beyond_original(args: argparse.Namespace, check: settings.Checks) -> None:
    """The flags added beyond the original's; fills in the defaults that depend on --arch_type."""
    fclin = args.arch_type == "fclin"
    check.resolve("init")
    check("init")
    if args.init == "data" and not fclin:
        raise UserError(
            f"--init data is a data-based scheme of fclin only, not --arch_type {args.arch_type}"
        )
    if not 0 <= args.rewind_epoch < args.end_iter:
        raise UserError(
            f"--rewind_epoch must be in 0..{args.end_iter - 1} (--end_iter - 1), got {args.rewind_epoch}"
        )
    check("rewind_iter")
    if args.rewind_iter > 0 and args.rewind_epoch > 0:
        raise UserError(
            f"--rewind_iter {args.rewind_iter} and --rewind_epoch {args.rewind_epoch}: give one of them (--rewind_epoch K is --rewind_iter K x steps per epoch)"
        )
    method = methods.recorded(args.prune_type)
    for name in ("rewind_epoch", "rewind_iter"):
        if getattr(args, name) > 0 and not method.rewinds:
            rewinding = " or ".join(m.name for m in methods.recordable() if m.rewinds)
            raise UserError(
                f"--{name} applies to --prune_type {rewinding}, not {args.prune_type}: {args.prune_type} {method.rewind_refusal}"
            )
    if args.masks_from is not None and not method.takes_masks_from:
        controls = " or ".join(m.name for m in methods.recordable() if m.takes_masks_from)
        raise UserError(
            f"--masks_from applies to --prune_type {controls} (the random-reinitialisation control), not {args.prune_type}"
        )
    check("prune_scope", "prune_percent_output", "prune_percent_conv", "optimizer", "momentum")
    if args.momentum > 0 and args.optimizer != "sgd":
        raise UserError(f"--momentum applies to --optimizer sgd, not {args.optimizer}")
    check("dropout", "compile")
    if args.augment and args.dataset not in augment.DATASETS:
        raise UserError(
            f"--augment applies to --dataset {' or '.join(augment.DATASETS)} (random crops and flips of their 32x32 images), not {args.dataset}"
        )
    if args.fclin_depth is not None and not fclin:
        raise UserError(f"--fclin_depth applies to --arch_type fclin, not {args.arch_type}")
    check.resolve("fclin_depth")
    check("fclin_depth")
    _validate_schedule_and_validation(args, check)
    check("pretrain")
    if args.pretrain == "zae" and not fclin:
        raise UserError(f"--pretrain zae applies to --arch_type fclin, not {args.arch_type}")
    if args.pretrain_epochs is not None and args.pretrain != "zae":
        raise UserError("--pretrain_epochs applies to --pretrain zae only")
    check.resolve("pretrain_epochs")
    check("pretrain_epochs")


def _validate_schedule_and_validation(args: argparse.Namespace, check: settings.Checks) -> None:
    """--val_size, --warmup_iters, --lr_drops and --lr_gamma (filling in its default)."""
    check("val_size", "warmup_iters")
    drops = settings.drop_epochs(args.lr_drops, args.end_iter)
    if args.lr_gamma is not None and not drops:
        raise UserError("--lr_gamma applies to --lr_drops, which is not given")
    check("lr_gamma")
    check.resolve("lr_gamma")
