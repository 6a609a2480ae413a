"""The settings of a run, each declared once: a field of a frozen type that carries its flag.

`Recipe` holds what changes a run's results, `RunOptions` how it is run (the device, the
folders, the figures' resolution, compiling, progress): a resume may change those. Each field
carries its flag (`Flag`): its default, its help line under its --help heading, how argparse
reads it, and its own check. main.py's parser is made from the fields (`add_flags`), so a new
flag is one field. A default that depends on the other settings (--init is `data` for fclin)
is the flag's `resolve`.

What follows from a recipe is the recipe's own: the rewind step, the epochs of the rate drops,
the network's options, the rates pruning uses. Its identity is the fields that differ from
their defaults: a run recorded before a flag existed ran that flag's default, so it is the same
experiment as one run at the default now.
"""

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

from lth import data
from lth.errors import UserError
from lth.initialization import INIT_SCHEMES

PRUNE_SCOPES = ("layer", "global")
PRETRAINING = ("none", "zae")
OPTIMIZERS = ("adam", "sgd")
COMPILE_CHOICES = ("auto", "on", "off")  # steps.use_compile says what each means
MAX_END_ITER = 1_000_000  # epochs per level: more is a typo, and numpy arrays of it fail
MAX_PRUNE_ITERATIONS = 10_000  # levels: at 10% per level, 10,000 leave ~1e-458 of the weights
MAX_DPI = 2400  # twice the original's 1200: a 6.4x4.8-inch figure is already a ~700 MB raster

# main.py's --help headings in their order, each with its line of description (or None).
ORIGINAL = "the original's flags"
PROTOCOL = "the paper's protocol"
PRUNING = "pruning and rewinding"
OPTIMISATION = "optimisation"
NETWORKS = "networks"
RUN_MANAGEMENT = "run management"
HEADINGS = {
    ORIGINAL: "the original runner's names and defaults",
    PROTOCOL: None,
    PRUNING: None,
    OPTIMISATION: None,
    NETWORKS: None,
    RUN_MANAGEMENT: None,
}

Check = Callable[[str, Any], None]  # (--flag, value): UserError when the value is refused


@dataclass(frozen=True)
class Flag:
    """A setting's flag: its help line and --help heading, how argparse reads it, and what is
    refused.

    `rank` places it under its heading (the original's flags: their place in the original's
    list); flags of equal rank follow the order of their fields. `nargs` "+" takes several values,
    the field's default then being the one value of the list argparse defaults to. `check` refuses
    a bad value (None, "not given", is never checked), `most` is an upper limit checked after
    every lower one, and `resolve` gives the default that depends on the other settings (a field
    default of None stands for it until the settings are checked). A setting not `recorded`
    is left out of args.json, and so of a run's identity and of what a resume compares.
    """

    help: str
    heading: str
    rank: float = math.inf
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    nargs: str | None = None
    const: object = None
    check: Check | None = None
    most: int | None = None
    resolve: Callable[[Any], Any] | None = None
    recorded: bool = True


def flag(default: object, help: str, heading: str, **options: Any) -> Any:
    """A dataclass field with its default and its flag (`Flag`'s other fields as `options`)."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help, heading, **options)})


def flag_of(field: dataclasses.Field) -> Flag:
    return field.metadata["flag"]


# The checks of one value, each refusal in the words --help's users know.


def one_of(choices: Iterable[str]) -> Check:
    shown = tuple(choices)

    def check(name: str, value: Any) -> None:
        if value not in shown:
            raise UserError(f"{name} {value} is not supported; choose one of: {', '.join(shown)}")

    return check


def at_least(low: int, note: str = "") -> Check:
    def check(name: str, value: Any) -> None:
        if value < low:
            raise UserError(f"{name} must be at least {low}{note}, got {value}")

    return check


def percent(name: str, value: Any) -> None:
    if not 0 < value < 100:
        raise UserError(f"{name} must be between 0 and 100 (exclusive), got {value}")


def positive(name: str, value: Any) -> None:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be a positive number, got {value}")


def rate(name: str, value: Any) -> None:
    if not (math.isfinite(value) and 0 <= value < 1):
        raise UserError(f"{name} must be at least 0 and below 1, got {value}")


def device_index(name: str, value: Any) -> None:
    if not re.fullmatch(r"\d+", value):
        raise UserError(f"{name} must be a device index such as 0 or 1, got {value!r}")


def seed_range(name: str, value: Any) -> None:
    if not 0 <= value < 2**32:
        raise UserError(f"{name} must be in 0..{2**32 - 1}, got {value}")


def check_dpi(name: str, dpi: int) -> None:
    """UserError unless `dpi` (of `name`) is in 1..MAX_DPI."""
    if not 1 <= dpi <= MAX_DPI:
        raise UserError(f"{name} must be in 1..{MAX_DPI}, got {dpi}")


def check_not_empty(name: str, path: str) -> None:
    """UserError for an empty path, which would mean the current folder."""
    if not path:
        raise UserError(f"{name} must not be empty")


def check_folder(name: str, path: str) -> None:
    """UserError unless `path` can be a folder to write into: not empty, not a file, not below
    a file (a folder that does not exist yet is fine)."""
    check_not_empty(name, path)
    for place in (Path(path), *Path(path).parents):
        if place.exists():
            if place.is_dir():
                return
            where = "" if place == Path(path) else f" (below the file {place})"
            raise UserError(f"{name} {path} is a file, not a folder{where}")


class Settings:
    """What the settings types share: reading them from a run's arguments, their defaults."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings args.json records (`Flag.recorded`)."""
        return tuple(f.name for f in fields(cls) if flag_of(f).recorded)  # type: ignore[arg-type]

    @classmethod
    def read(cls, values: Mapping) -> Self:
        """The settings in `values` (a run's recorded arguments, or vars() of checked ones); a
        setting they lack, recorded before its flag existed, at its default (which it ran)."""
        every = (f.name for f in fields(cls))  # type: ignore[arg-type]
        return cls(**{name: values[name] for name in every if name in values})

    def resolved_default(self, name: str) -> Any:
        """The default of setting `name`, given the others (--init: data for fclin)."""
        field = next(f for f in fields(self) if f.name == name)  # type: ignore[arg-type]
        resolve = flag_of(field).resolve
        return field.default if resolve is None else resolve(self)

    def values(self) -> dict[str, Any]:
        """Every setting, a default that depends on the others resolved."""
        found = {}
        for name in self.names():
            value = getattr(self, name)
            found[name] = self.resolved_default(name) if value is None else value
        return found

    def identity(self) -> dict[str, Any]:
        """The settings that differ from their defaults (resolved ones: --init xavier is the
        default of fc1, data that of fclin): what tells this from the default, and a run
        recorded before a flag existed from one given it now."""
        return {
            name: value
            for name, value in self.values().items()
            if value != self.resolved_default(name)
        }


def _fclin(settings: Any) -> bool:
    return settings.arch_type == "fclin"


@dataclass(frozen=True)
class Recipe(Settings):
    """What changes a run's results: every trial of an experiment shares it."""

    dataset: str = flag(
        "mnist",
        f"one of: {', '.join(sorted(data.DATASETS))}",
        ORIGINAL,
        rank=10,
        type=str,
        check=one_of(sorted(data.DATASETS)),
    )
    arch_type: str = flag(
        "fc1", "the network (README: those of each dataset)", ORIGINAL, rank=11, type=str
    )
    lr: float = flag(
        1.2e-3,
        "learning rate, at every level (level 0 too)",
        ORIGINAL,
        rank=1,
        type=float,
        check=positive,
    )
    batch_size: int = flag(60, "training batch size", ORIGINAL, rank=2, type=int, check=at_least(1))
    end_iter: int = flag(
        100,
        "epochs of training per level",
        ORIGINAL,
        rank=4,
        type=int,
        check=at_least(1),
        most=MAX_END_ITER,
    )
    valid_freq: int = flag(1, "test every N epochs", ORIGINAL, rank=6, type=int, check=at_least(1))
    prune_percent: float = flag(
        10, "percent of survivors pruned per level", ORIGINAL, rank=12, type=float, check=percent
    )
    prune_iterations: int = flag(
        35,
        "number of levels (level 0 is dense)",
        ORIGINAL,
        rank=13,
        type=int,
        check=at_least(1),
        most=MAX_PRUNE_ITERATIONS,
    )
    val_size: int = flag(
        0,
        "hold out N training images (a fixed draw) for validation and stop early at the"
        " minimum validation loss; 0: none, the best test accuracy as the original",
        PROTOCOL,
        rank=2,
        type=int,
        metavar="N",
        check=at_least(0, " (0: no validation set)"),
    )
    augment: bool = flag(
        False,
        "CIFAR only: random 4-pixel crops and flips of the training images, as the paper"
        " trained VGG-19 and ResNet-20",
        PROTOCOL,
        rank=4,
    )
    prune_scope: str = flag(
        "layer",
        f"one of: {', '.join(PRUNE_SCOPES)} (global: one magnitude ranking across the layers"
        " of one rate)",
        PRUNING,
        check=one_of(PRUNE_SCOPES),
    )
    prune_percent_output: float | None = flag(
        None,
        "percent of the output layer's survivors pruned per level (default: --prune_percent)",
        PRUNING,
        type=float,
        metavar="P",
        check=percent,
    )
    prune_percent_conv: float | None = flag(
        None,
        "percent of each conv layer's survivors pruned per level (default: --prune_percent)",
        PRUNING,
        type=float,
        metavar="P",
        check=percent,
    )
    rewind_iter: int = flag(
        0,
        "lt and random rewind to the weights after N optimiser steps of level 0 and train"
        " each later level from step N on; 0: the initial weights",
        PRUNING,
        type=int,
        metavar="N",
        check=at_least(0),
    )
    rewind_epoch: int = flag(
        0,
        "as --rewind_iter K x steps per epoch (give one of the two)",
        PRUNING,
        type=int,
        metavar="K",
    )
    init: str = flag(
        None,
        f"one of: {', '.join(INIT_SCHEMES)} (default: xavier; data for fclin)",
        OPTIMISATION,
        check=one_of(INIT_SCHEMES),
        resolve=lambda s: "data" if _fclin(s) else "xavier",
    )
    optimizer: str = flag(
        "adam", f"one of: {', '.join(OPTIMIZERS)}", OPTIMISATION, check=one_of(OPTIMIZERS)
    )
    momentum: float = flag(0.0, "momentum of --optimizer sgd", OPTIMISATION, type=float, check=rate)
    warmup_iters: int = flag(
        0,
        "linear learning-rate warm-up over the first K optimiser steps of every level",
        OPTIMISATION,
        type=int,
        metavar="K",
        check=at_least(0),
    )
    lr_drops: str | None = flag(
        None,
        "epochs of every level after which the learning rate is multiplied by --lr_gamma"
        " (default: none, a constant rate)",
        OPTIMISATION,
        metavar="E1,E2,...",
    )
    lr_gamma: float | None = flag(
        None,
        "factor of each --lr_drops drop (default: 0.1 with --lr_drops)",
        OPTIMISATION,
        type=float,
        metavar="G",
        check=positive,
        resolve=lambda s: 0.1 if s.lr_drops is not None else None,
    )
    dropout: float = flag(
        0.0, "dropout rate on every layer's input", OPTIMISATION, type=float, check=rate
    )
    fclin_depth: int | None = flag(
        None,
        "fclin only: number of 4000-wide layers, 2 for the shorter net (default: 4)",
        NETWORKS,
        type=int,
        check=at_least(1),
        resolve=lambda s: 4 if _fclin(s) else None,
    )
    pretrain: str = flag(
        "none",
        f"fclin only: one of: {', '.join(PRETRAINING)} (zae: autoencoder pre-training)",
        NETWORKS,
        check=one_of(PRETRAINING),
    )
    pretrain_epochs: int | None = flag(
        None,
        "epochs of --pretrain zae per hidden layer (default: 10)",
        NETWORKS,
        type=int,
        check=at_least(1),
        resolve=lambda s: 10 if s.pretrain == "zae" else None,
    )

    def rewind_step(self, epoch_steps: int) -> int:
        """The optimiser step of level 0 whose weights `lt` and `random` rewind to, and at
        which every later level starts training: --rewind_iter, or --rewind_epoch epochs of
        `epoch_steps` steps (at most one of them is nonzero); 0 rewinds to the initial weights.
        Whether it is positive does not depend on `epoch_steps`."""
        return self.rewind_iter + self.rewind_epoch * epoch_steps

    def check_rewind_step(self, epoch_steps: int) -> None:
        """--rewind_iter must fall inside level 0, whose length needs the data: `epoch_steps`
        optimiser steps per epoch (--rewind_epoch is checked against --end_iter with the flags)."""
        steps = self.end_iter * epoch_steps
        if self.rewind_iter >= steps:
            raise UserError(
                f"--rewind_iter must be in 0..{steps - 1} (level 0 has --end_iter {self.end_iter}"
                f" epochs of {epoch_steps} steps), got {self.rewind_iter}"
            )

    def lr_drop_epochs(self) -> list[int]:
        """The epochs of --lr_drops (`drop_epochs`); [] if none."""
        return drop_epochs(self.lr_drops, self.end_iter)

    def arch_options(self) -> dict:
        """Keyword arguments of the architecture's factory (only fclin takes any)."""
        return {"depth": self.fclin_depth} if _fclin(self) else {}

    def rates(self) -> dict:
        """How pruning spreads --prune_percent: the scope of one ranking and the rates of the
        output and conv layers (None: --prune_percent), as pruning's keyword arguments."""
        return {
            "scope": self.prune_scope,
            "output_percent": self.prune_percent_output,
            "conv_percent": self.prune_percent_conv,
        }


def drop_epochs(lr_drops: str | None, end_iter: int) -> list[int]:
    """The epochs of --lr_drops (E1,E2,...: increasing, each in 1..--end_iter - 1); [] if none;
    UserError for any other text."""
    if lr_drops is None:
        return []
    wanted = (
        f"a comma-separated list of increasing epochs in 1..{end_iter - 1}"
        " (--end_iter - 1), such as 50,75"
    )
    parts = [part.strip() for part in str(lr_drops).split(",")]
    if not all(re.fullmatch(r"[0-9]+", part, flags=re.ASCII) for part in parts):
        raise UserError(f"--lr_drops must be {wanted}, got {lr_drops!r}")
    drops = [int(part) for part in parts]
    increasing = all(a < b for a, b in zip(drops, drops[1:], strict=False))
    if not increasing or drops[0] < 1 or drops[-1] >= end_iter:
        raise UserError(f"--lr_drops must be {wanted}, got {lr_drops!r}")
    return drops


@dataclass(frozen=True)
class RunOptions(Settings):
    """How a run is run: where it reads and writes, how it reports, the device, and --compile
    (which changes the rounding of float sums only). They never tell runs apart, and a resume
    may change them."""

    gpu: str = flag(
        "0",
        "index of the CUDA device (without CUDA: the CPU)",
        ORIGINAL,
        rank=9,
        type=str,
        check=device_index,
    )
    data_dir: str = flag(
        "../data",
        "where data sets live, in torchvision's layout",
        RUN_MANAGEMENT,
        rank=1,
        check=check_folder,
    )
    data_source: str | None = flag(
        None,
        "folder with the data set's original files, checked and imported into --data_dir"
        " (default: none, the files in --data_dir, else found or downloaded)",
        RUN_MANAGEMENT,
        rank=2,
        metavar="DIR",
    )
    plot_dpi: int = flag(
        1200, "resolution of the saved figures", RUN_MANAGEMENT, rank=4, type=int, check=check_dpi
    )
    results_root: str = flag(
        "results", "where run folders are created", RUN_MANAGEMENT, rank=3, check=check_folder
    )
    print_freq: int = flag(
        1,
        "refresh the progress bar's text every N epochs",
        ORIGINAL,
        rank=5,
        type=int,
        check=at_least(1),
    )
    compile: str = flag(
        "auto",
        f"one of: {', '.join(COMPILE_CHOICES)}; torch.compile of the model and loss in"
        " training (auto: where measured to pay back, so far nowhere)",
        RUN_MANAGEMENT,
        rank=5,
        check=one_of(COMPILE_CHOICES),
    )
    batch_record: str | None = flag(
        None,
        "also write the batch's run folders and levels done to FILE (JSON), after each"
        " level; not recorded in args.json (default: none; sweep.py reads it)",
        RUN_MANAGEMENT,
        rank=6,
        metavar="FILE",
        check=check_not_empty,
        recorded=False,
    )


def settings_fields(kinds: Iterable[type]) -> dict[str, dataclasses.Field]:
    """Every field of the settings types `kinds`, by name, in their order."""
    return {f.name: f for kind in kinds for f in fields(kind)}


def add_flags(parser: argparse.ArgumentParser, kinds: Iterable[type]) -> None:
    """The flags of every field of `kinds`, one argument group per heading of HEADINGS in its
    order, each group's flags by rank, then in the order of their fields."""
    ordered = list(settings_fields(kinds).values())
    for heading, description in HEADINGS.items():
        group = parser.add_argument_group(heading, description)
        mine = [f for f in ordered if flag_of(f).heading == heading]
        for field in sorted(mine, key=lambda f: flag_of(f).rank):  # stable: field order
            group.add_argument(f"--{field.name}", **argparse_options(field))


def argparse_options(field: dataclasses.Field) -> dict[str, Any]:
    """`add_argument`'s keywords for the flag of `field`."""
    spec = flag_of(field)
    if field.type is bool:
        return {"action": "store_true", "help": spec.help}
    options: dict[str, Any] = {"default": field.default, "help": spec.help}
    if spec.nargs == "+":
        options["default"] = [field.default]
    if spec.const is not None:
        options["const"] = spec.const
    for name in ("type", "metavar", "nargs"):
        if getattr(spec, name) is not None:
            options[name] = getattr(spec, name)
    return options


class Checks:
    """The settings' own checks (`Flag.check`, then `Flag.most`) on `values` (an object with the
    settings as attributes), run in the order asked for; `rest` runs those of every setting not
    asked for, so that a new flag's check runs with no other change. A value of None is not
    checked."""

    def __init__(self, values: Any, kinds: Iterable[type]) -> None:
        self.values, self.fields = values, settings_fields(kinds)
        self.done: set[str] = set()

    def __call__(self, *names: str) -> None:
        for name in names:
            value, test = getattr(self.values, name, None), flag_of(self.fields[name]).check
            if value is not None and test is not None:
                test(f"--{name}", value)
        self.done.update(names)

    def most(self, *names: str) -> None:
        """Each named setting's upper limit (`Flag.most`), in the order named."""
        for name in names:
            most, value = flag_of(self.fields[name]).most, getattr(self.values, name, None)
            if most is not None and value is not None and value > most:
                raise UserError(f"--{name} must be at most {most}, got {value}")

    def resolve(self, name: str) -> None:
        """Setting `name` at the default the other settings give it, if it is None."""
        spec = flag_of(self.fields[name])
        if getattr(self.values, name, None) is None and spec.resolve is not None:
            setattr(self.values, name, spec.resolve(self.values))

    def rest(self) -> None:
        """The defaults and checks of the settings not asked for yet, in the order of their
        fields."""
        left = [name for name in self.fields if name not in self.done]
        for name in left:
            self.resolve(name)
        self(*left)
        self.most(*left)
