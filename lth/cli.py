"""The command line: the original's flags with their names and defaults, plus the new ones."""

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import archs
from lth import augment, data
from lth.errors import UserError, one_line
from lth.experiment import (
    AT_INIT,
    COMPILE_CHOICES,
    CONTROL,
    KEEP_TRAINED,
    REWOUND,
    lr_drop_epochs_of,
)
from lth.initialization import INIT_SCHEMES

PRUNE_TYPES = ("lt", "reinit", "random", *KEEP_TRAINED, *AT_INIT)
PRUNE_SCOPES = ("layer", "global")
PRETRAINING = ("none", "zae")
OPTIMIZERS = ("adam", "sgd")
MAX_END_ITER = 1_000_000  # epochs per level: more is a typo, and numpy arrays of it fail
MAX_PRUNE_ITERATIONS = 10_000  # levels: at 10% per level, 10,000 leave ~1e-458 of the weights
MAX_DPI = 2400  # twice the original's 1200: a 6.4x4.8-inch figure is already a ~700 MB raster
REWIND_REFUSAL = {
    "reinit": "reinit draws new weights",
    **{kind: f"{kind} keeps the trained weights" for kind in KEEP_TRAINED},
    **{kind: f"{kind} trains the pruned initial network" for kind in AT_INIT},
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit status 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


DEFAULT_TEXT = "(default:"


class OneDefaultFormatter(argparse.HelpFormatter):
    """Help that ends each flag's line in one default text: the flag's own `(default: ...)` where
    its help gives one, else its default value (a list as its items, a switch as on or off).

    A default of None stands for something different from flag to flag (a random seed, "as
    --prune_percent", nothing), so such a flag says what in its help; argparse's own
    ArgumentDefaultsHelpFormatter would add a second "(default: None)".
    """

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
    """main.py's flags: the original's first, then ours by purpose, one --help heading each."""
    parser = OneLineParser(
        prog="main.py",
        description="Find lottery tickets by iterative magnitude pruning.",
        formatter_class=OneDefaultFormatter,
    )
    for add_flags in MAIN_FLAG_GROUPS:
        add_flags(parser)
    return parser


def add_original_flags(parser: argparse.ArgumentParser) -> None:
    """The original runner's flags: same names, types and defaults (README: two types differ)."""
    add = flag_group(parser, "the original's flags", "the original runner's names and defaults")
    add("--lr", default=1.2e-3, type=float, help="learning rate, at every level (level 0 too)")
    add("--batch_size", default=60, type=int, help="training batch size")
    add("--start_iter", default=0, type=int, help="first level to run; needs --resume")
    add("--end_iter", default=100, type=int, help="epochs of training per level")
    add("--print_freq", default=1, type=int, help="refresh the progress bar's text every N epochs")
    add("--valid_freq", default=1, type=int, help="test every N epochs")
    add(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run: its folder, or alone the newest run of the same"
        " --dataset, --arch_type and --prune_type (default: off, a new run)",
    )
    add(
        "--prune_type",
        default=["lt"],
        nargs="+",
        metavar="TYPE",
        help=f"one of: {', '.join(PRUNE_TYPES)}; several (and {CONTROL}: reinit with the masks of"
        " the lt trial of its seed) train together as one batch with every --seed",
    )
    add("--gpu", default="0", type=str, help="index of the CUDA device (without CUDA: the CPU)")
    add("--dataset", default="mnist", type=str, help=f"one of: {', '.join(sorted(data.DATASETS))}")
    add("--arch_type", default="fc1", type=str, help="the network (README: those of each dataset)")
    add("--prune_percent", default=10, type=float, help="percent of survivors pruned per level")
    add("--prune_iterations", default=35, type=int, help="number of levels (level 0 is dense)")


def add_protocol_flags(parser: argparse.ArgumentParser) -> None:
    """What the paper's experiments add to a run: seeds, a validation set, the control."""
    add = flag_group(parser, "the paper's protocol")
    add(
        "--seed",
        default=[None],
        nargs="+",
        type=int,
        metavar="SEED",
        help="seed of every generator of a trial; several train together as one batch, one run"
        " folder each (default: a random seed, printed and recorded)",
    )
    add(
        "--val_size",
        default=0,
        type=int,
        metavar="N",
        help="hold out N training images (a fixed draw) for validation and stop early at the"
        " minimum validation loss; 0: none, the best test accuracy as the original",
    )
    add(
        "--masks_from",
        default=None,
        metavar="RUN_DIR",
        help="reinit only: level k trains the mask that lt run saved for level k with freshly"
        " drawn weights, the paper's control (default: none, reinit prunes itself)",
    )
    add(
        "--augment",
        action="store_true",
        help="CIFAR only: random 4-pixel crops and flips of the training images, as the paper"
        " trained VGG-19 and ResNet-20",
    )


def add_pruning_flags(parser: argparse.ArgumentParser) -> None:
    """How much is pruned where, and what the survivors are rewound to."""
    add = flag_group(parser, "pruning and rewinding")
    add(
        "--prune_scope",
        default="layer",
        help=f"one of: {', '.join(PRUNE_SCOPES)} (global: one magnitude ranking across the layers"
        " of one rate)",
    )
    add(
        "--prune_percent_output",
        default=None,
        type=float,
        metavar="P",
        help="percent of the output layer's survivors pruned per level (default: --prune_percent)",
    )
    add(
        "--prune_percent_conv",
        default=None,
        type=float,
        metavar="P",
        help="percent of each conv layer's survivors pruned per level (default: --prune_percent)",
    )
    add(
        "--rewind_iter",
        default=0,
        type=int,
        metavar="N",
        help="lt and random rewind to the weights after N optimiser steps of level 0 and train"
        " each later level from step N on; 0: the initial weights",
    )
    add(
        "--rewind_epoch",
        default=0,
        type=int,
        metavar="K",
        help="as --rewind_iter K x steps per epoch (give one of the two)",
    )


def add_optimisation_flags(parser: argparse.ArgumentParser) -> None:
    """The initial weights, the optimiser and its learning-rate schedule, dropout."""
    add = flag_group(parser, "optimisation")
    add(
        "--init",
        default=None,
        help=f"one of: {', '.join(INIT_SCHEMES)} (default: xavier; data for fclin)",
    )
    add("--optimizer", default="adam", help=f"one of: {', '.join(OPTIMIZERS)}")
    add("--momentum", default=0.0, type=float, help="momentum of --optimizer sgd")
    add(
        "--warmup_iters",
        default=0,
        type=int,
        metavar="K",
        help="linear learning-rate warm-up over the first K optimiser steps of every level",
    )
    add(
        "--lr_drops",
        default=None,
        metavar="E1,E2,...",
        help="epochs of every level after which the learning rate is multiplied by --lr_gamma"
        " (default: none, a constant rate)",
    )
    add(
        "--lr_gamma",
        default=None,
        type=float,
        metavar="G",
        help="factor of each --lr_drops drop (default: 0.1 with --lr_drops)",
    )
    add("--dropout", default=0.0, type=float, help="dropout rate on every layer's input")


def add_network_flags(parser: argparse.ArgumentParser) -> None:
    """Options of one network (--arch_type), refused with the others."""
    add = flag_group(parser, "networks")
    add(
        "--fclin_depth",
        default=None,
        type=int,
        help="fclin only: number of 4000-wide layers, 2 for the shorter net (default: 4)",
    )
    add(
        "--pretrain",
        default="none",
        help=f"fclin only: one of: {', '.join(PRETRAINING)} (zae: autoencoder pre-training)",
    )
    add(
        "--pretrain_epochs",
        default=None,
        type=int,
        help="epochs of --pretrain zae per hidden layer (default: 10)",
    )


def add_run_management_flags(parser: argparse.ArgumentParser) -> None:
    """Where a run reads and writes, and how fast: flags that change no result (a resume may
    change them)."""
    add = flag_group(parser, "run management")
    add("--data_dir", default="../data", help="where data sets live, in torchvision's layout")
    add(
        "--data_source",
        default=None,
        metavar="DIR",
        help="folder with the data set's original files, checked and imported into --data_dir"
        " (default: none, the files in --data_dir, else found or downloaded)",
    )
    add("--results_root", default="results", help="where run folders are created")
    add("--plot_dpi", default=1200, type=int, help="resolution of the saved figures")
    add(
        "--compile",
        default="auto",
        help=f"one of: {', '.join(COMPILE_CHOICES)}; torch.compile of the model and loss in"
        " training (auto: where measured to pay back, so far nowhere)",
    )
    add(
        "--batch_record",
        default=None,
        metavar="FILE",
        help="also write the batch's run folders and levels done to FILE (JSON), after each"
        " level; not recorded in args.json (default: none; sweep.py reads it)",
    )


# The --help headings in their order; a new flag goes into the helper of its purpose.
MAIN_FLAG_GROUPS = (
    add_original_flags,
    add_protocol_flags,
    add_pruning_flags,
    add_optimisation_flags,
    add_network_flags,
    add_run_management_flags,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for action in parser._actions:
        # argparse drops a value of "--" (`--lr=--`) and stores an empty list instead
        if action.nargs is None and isinstance(getattr(args, action.dest, None), list):
            parser.error(f"argument {action.option_strings[0]}: expected one argument")
    return args


def trial_specs(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """The batch the command line asks for: (prune type, seed) for every --prune_type and every
    --seed, types first, each once; UserError for a batch that cannot run."""
    types = list(dict.fromkeys(args.prune_type))
    seeds = list(dict.fromkeys(args.seed))
    if None in seeds and len(seeds) > 1:
        raise UserError(f"--seed {' '.join(map(str, args.seed))}: every seed must be a number")
    if CONTROL in types:
        if "lt" not in types:
            raise UserError(
                f"--prune_type {CONTROL} needs lt in the same batch: each control takes the masks"
                " of the lt trial of its seed"
            )
        if args.masks_from is not None:
            raise UserError(
                f"--prune_type {CONTROL} takes its masks from the lt trials of the batch, not"
                " from --masks_from"
            )
    for prune_type in types:
        if prune_type not in (*PRUNE_TYPES, CONTROL):
            raise UserError(
                f"--prune_type {prune_type} is not supported; choose one of:"
                f" {', '.join((*PRUNE_TYPES, CONTROL))}"
            )
    apart = [t for t in types if trains_apart(t, args)]
    if apart and len(types) > 1:
        raise UserError(
            f"--prune_type {apart[0]} trains at the final rate of the --warmup_iters/--lr_drops"
            " schedule, which the other prune types follow: run it in a batch of its own"
        )
    return [(prune_type, seed) for prune_type in types for seed in seeds]


def trains_apart(prune_type: str, args: argparse.Namespace) -> bool:
    """Whether `prune_type` cannot share a batch (whose trials share one learning-rate
    schedule) with other prune types: `finetune` under a schedule that is not constant."""
    return prune_type == "finetune" and (args.warmup_iters > 0 or args.lr_drops is not None)


def trial_namespace(
    args: argparse.Namespace, prune_type: str, seed: int | None
) -> argparse.Namespace:
    """One trial's arguments: the command line's, with that trial's prune type (`reinit` for
    the control) and seed, ready for `validate`."""
    main_type = "reinit" if prune_type == CONTROL else prune_type
    return argparse.Namespace(**{**vars(args), "prune_type": main_type, "seed": seed})


def one_trial(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments of the one trial a command line names (one --prune_type, one --seed), as
    `trial_namespace` gives them; UserError when it names a batch."""
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


def _at_least_one(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")


def _at_most(args: argparse.Namespace, name: str, limit: int) -> None:
    if getattr(args, name) > limit:
        raise UserError(f"--{name} must be at most {limit}, got {getattr(args, name)}")


def check_dpi(flag: str, dpi: int) -> None:
    """UserError unless `dpi` (of `flag`) is in 1..MAX_DPI."""
    if not 1 <= dpi <= MAX_DPI:
        raise UserError(f"{flag} must be in 1..{MAX_DPI}, got {dpi}")


def check_not_empty(flag: str, path: str) -> None:
    """UserError for an empty path, which would mean the current folder."""
    if not path:
        raise UserError(f"{flag} must not be empty")


def check_folder(flag: str, path: str) -> None:
    """UserError unless `path` can be a folder to write into: not empty, not a file, not below
    a file (a folder that does not exist yet is fine)."""
    check_not_empty(flag, path)
    for place in (Path(path), *Path(path).parents):
        if place.exists():
            if place.is_dir():
                return
            where = "" if place == Path(path) else f" (below the file {place})"
            raise UserError(f"{flag} {path} is a file, not a folder{where}")


def validate(args: argparse.Namespace) -> None:
    """Check every value before anything is loaded or written; raise UserError on the first fault."""
    if args.dataset not in data.DATASETS:
        choices = ", ".join(sorted(data.DATASETS))
        raise UserError(f"--dataset {args.dataset} is not supported; choose one of: {choices}")
    archs.check(args.dataset, args.arch_type)
    if args.prune_type not in PRUNE_TYPES:
        raise UserError(
            f"--prune_type {args.prune_type} is not supported; choose one of: {', '.join(PRUNE_TYPES)}"
        )
    if not 0 < args.prune_percent < 100:
        raise UserError(
            f"--prune_percent must be between 0 and 100 (exclusive), got {args.prune_percent}"
        )
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive number, got {args.lr}")
    _at_least_one(args, "prune_iterations", "end_iter", "batch_size", "valid_freq", "print_freq")
    _at_most(args, "end_iter", MAX_END_ITER)
    _at_most(args, "prune_iterations", MAX_PRUNE_ITERATIONS)
    check_dpi("--plot_dpi", args.plot_dpi)
    if not 0 <= args.start_iter < args.prune_iterations:
        raise UserError(
            f"--start_iter must be in 0..{args.prune_iterations - 1} (--prune_iterations - 1),"
            f" got {args.start_iter}"
        )
    if args.start_iter > 0 and args.resume is None:
        raise UserError(
            f"--start_iter {args.start_iter} needs --resume RUN_DIR: levels before it come from that run"
        )
    if not re.fullmatch(r"\d+", args.gpu):
        raise UserError(f"--gpu must be a device index such as 0 or 1, got {args.gpu!r}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in 0..{2**32 - 1}, got {args.seed}")
    for name in ("results_root", "data_dir"):
        check_folder(f"--{name}", getattr(args, name))
    _validate_beyond_original(args)
    if args.data_source is not None:  # last: every flag's own fault is named before the files
        check_not_empty("--data_source", args.data_source)
        data.check_source(args.dataset, args.data_source)


def _one_of(args: argparse.Namespace, name: str, choices: tuple[str, ...]) -> None:
    if getattr(args, name) not in choices:
        raise UserError(
            f"--{name} {getattr(args, name)} is not supported; choose one of: {', '.join(choices)}"
        )


def _rate(args: argparse.Namespace, name: str) -> None:
    value = getattr(args, name)
    if not (math.isfinite(value) and 0 <= value < 1):
        raise UserError(f"--{name} must be at least 0 and below 1, got {value}")


def _validate_beyond_original(args: argparse.Namespace) -> None:
    """The flags added beyond the original's; fills in the defaults that depend on --arch_type."""
    fclin = args.arch_type == "fclin"
    if args.init is None:
        args.init = "data" if fclin else "xavier"
    _one_of(args, "init", INIT_SCHEMES)
    if args.init == "data" and not fclin:
        raise UserError(
            f"--init data is a data-based scheme of fclin only, not --arch_type {args.arch_type}"
        )
    if not 0 <= args.rewind_epoch < args.end_iter:
        raise UserError(
            f"--rewind_epoch must be in 0..{args.end_iter - 1} (--end_iter - 1), got {args.rewind_epoch}"
        )
    if args.rewind_iter < 0:
        raise UserError(f"--rewind_iter must be at least 0, got {args.rewind_iter}")
    if args.rewind_iter > 0 and args.rewind_epoch > 0:
        raise UserError(
            f"--rewind_iter {args.rewind_iter} and --rewind_epoch {args.rewind_epoch}: give one"
            " of them (--rewind_epoch K is --rewind_iter K x steps per epoch)"
        )
    for name in ("rewind_epoch", "rewind_iter"):
        if getattr(args, name) > 0 and args.prune_type not in REWOUND:
            raise UserError(
                f"--{name} applies to --prune_type {' or '.join(REWOUND)}, not"
                f" {args.prune_type}: {REWIND_REFUSAL[args.prune_type]}"
            )
    if args.masks_from is not None and args.prune_type != "reinit":
        raise UserError(
            f"--masks_from applies to --prune_type reinit (the random-reinitialisation control),"
            f" not {args.prune_type}"
        )
    _one_of(args, "prune_scope", PRUNE_SCOPES)
    for name in ("prune_percent_output", "prune_percent_conv"):
        rate = getattr(args, name)
        if rate is not None and not 0 < rate < 100:
            raise UserError(f"--{name} must be between 0 and 100 (exclusive), got {rate}")
    _one_of(args, "optimizer", OPTIMIZERS)
    _rate(args, "momentum")
    if args.momentum > 0 and args.optimizer != "sgd":
        raise UserError(f"--momentum applies to --optimizer sgd, not {args.optimizer}")
    _rate(args, "dropout")
    _one_of(args, "compile", COMPILE_CHOICES)
    if args.augment and args.dataset not in augment.DATASETS:
        raise UserError(
            f"--augment applies to --dataset {' or '.join(augment.DATASETS)} (random crops and"
            f" flips of their 32x32 images), not {args.dataset}"
        )
    if args.fclin_depth is not None and not fclin:
        raise UserError(f"--fclin_depth applies to --arch_type fclin, not {args.arch_type}")
    if fclin:
        args.fclin_depth = 4 if args.fclin_depth is None else args.fclin_depth
        _at_least_one(args, "fclin_depth")
    _validate_schedule_and_validation(args)
    _one_of(args, "pretrain", PRETRAINING)
    if args.pretrain == "zae" and not fclin:
        raise UserError(f"--pretrain zae applies to --arch_type fclin, not {args.arch_type}")
    if args.pretrain_epochs is not None and args.pretrain != "zae":
        raise UserError("--pretrain_epochs applies to --pretrain zae only")
    if args.pretrain == "zae":
        args.pretrain_epochs = 10 if args.pretrain_epochs is None else args.pretrain_epochs
        _at_least_one(args, "pretrain_epochs")


def _validate_schedule_and_validation(args: argparse.Namespace) -> None:
    """--val_size (the upper bound needs the data: data.hold_out), --warmup_iters, --lr_drops
    and --lr_gamma; fills in --lr_gamma's default when there are drops."""
    if args.val_size < 0:
        raise UserError(
            f"--val_size must be at least 0 (0: no validation set), got {args.val_size}"
        )
    if args.warmup_iters < 0:
        raise UserError(f"--warmup_iters must be at least 0, got {args.warmup_iters}")
    drops = lr_drop_epochs(args)
    if args.lr_gamma is not None:
        if not drops:
            raise UserError("--lr_gamma applies to --lr_drops, which is not given")
        if not (math.isfinite(args.lr_gamma) and args.lr_gamma > 0):
            raise UserError(f"--lr_gamma must be a positive number, got {args.lr_gamma}")
    elif drops:
        args.lr_gamma = 0.1


def lr_drop_epochs(args: argparse.Namespace) -> list[int]:
    """The epochs of --lr_drops (`experiment.lr_drop_epochs`); [] if none."""
    return lr_drop_epochs_of(args.lr_drops, args.end_iter)
