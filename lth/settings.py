"""The settings of a run, each declared once as a field of a frozen type carrying its flag.

`Recipe` holds what changes a run's results, `RunOptions` how it is run (a resume may change
those). main.py's parser is made from the fields (`add_flags`), so a new flag is one field. A
run's identity is the fields that differ from their defaults, so a run recorded before a flag
existed is the same experiment as one run at that flag's default now.
"""

import argparse
import dataclasses
import math
import re
import types
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
HEADINGS = {ORIGINAL: "the original runner's names and defaults"} | dict.fromkeys(
    (PROTOCOL, PRUNING, OPTIMISATION, NETWORKS, RUN_MANAGEMENT)
)

Check = Callable[[str, Any], None]  # (--flag, value): UserError when the value is refused


@dataclass(frozen=True)
class Flag:
    """A setting's flag: its help line and --help heading, how argparse reads it (`type`
    defaults to the field's int or float), and what is refused (`check`, then the upper limit
    `most`; None is never checked). `rank` orders it under its heading (ties: field order),
    `resolve` gives a default that depends on the other settings, and a setting not `recorded`
    is left out of args.json, and so of a run's identity and of what a resume compares."""

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


def refusing(test: Callable[[Any], bool], wanted: str, shown: Callable = str) -> Check:
    """The check that refuses a value failing `test`: "--flag must be `wanted`, got value"."""

    def check(name: str, value: Any) -> None:
        if not test(value):
            raise UserError(f"{name} must be {wanted}, got {shown(value)}")

    return check


percent = refusing(lambda v: 0 < v < 100, "between 0 and 100 (exclusive)")
positive = refusing(lambda v: math.isfinite(v) and v > 0, "a positive number")
rate = refusing(lambda v: math.isfinite(v) and 0 <= v < 1, "at least 0 and below 1")
device_index = refusing(lambda v: re.fullmatch(r"\d+", v), "a device index such as 0 or 1", repr)
seed_range = refusing(lambda v: 0 <= v < 2**32, f"in 0..{2**32 - 1}")
check_dpi = refusing(lambda v: 1 <= v <= MAX_DPI, f"in 1..{MAX_DPI}")


def at_least(low: int, note: str = "") -> Check:
    return refusing(lambda v: v >= low, f"at least {low}{note}")


def check_not_empty(name: str, path: str) -> None:
    """UserError for an empty path, which would mean the current folder."""
    if not path:
        raise UserError(f"{name} must not be empty")


def check_folder(name: str, path: str) -> None:
    """UserError unless `path` can be a folder to write into (one not there yet is fine)."""
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
        """The settings in `values`, one they lack (recorded before its flag existed) at its default."""
        every = (f.name for f in fields(cls))  # type: ignore[arg-type]
        return cls(**{name: values[name] for name in every if name in values})

    def resolved_default(self, name: str) -> Any:
        """The default of setting `name`, given the others (--init: data for fclin)."""
        field = next(f for f in fields(self) if f.name == name)  # type: ignore[arg-type]
        resolve = flag_of(field).resolve
        return field.default if resolve is None else resolve(self)

    def values(self) -> dict[str, Any]:
        """Every setting, a default that depends on the others resolved."""
        found = {name: getattr(self, name) for name in self.names()}
        return {k: self.resolved_default(k) if v is None else v for k, v in found.items()}

    def identity(self) -> dict[str, Any]:
        """The settings that differ from their resolved defaults (--init data is fclin's)."""
        return {k: v for k, v in self.values().items() if v != self.resolved_default(k)}


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
        1.2e-3, "learning rate, at every level (level 0 too)", ORIGINAL, rank=1, check=positive
    )
    batch_size: int = flag(60, "training batch size", ORIGINAL, rank=2, check=at_least(1))
    end_iter: int = flag(
        100, "epochs of training per level", ORIGINAL, rank=4, check=at_least(1), most=MAX_END_ITER
    )
    valid_freq: int = flag(1, "test every N epochs", ORIGINAL, rank=6, check=at_least(1))
    prune_percent: float = flag(
        10, "percent of survivors pruned per level", ORIGINAL, rank=12, check=percent
    )
    prune_iterations: int = flag(
        35,
        "number of levels (level 0 is dense)",
        ORIGINAL,
        rank=13,
        check=at_least(1),
        most=MAX_PRUNE_ITERATIONS,
    )
    val_size: int = flag(
        0,
        "hold out N training images (a fixed draw) for validation and stop early at the minimum validation loss; 0: none, the best test accuracy as the original",
        PROTOCOL,
        rank=2,
        metavar="N",
        check=at_least(0, " (0: no validation set)"),
    )
    augment: bool = flag(
        False,
        "CIFAR only: random 4-pixel crops and flips of the training images, as the paper trained VGG-19 and ResNet-20",
        PROTOCOL,
        rank=4,
    )
    prune_scope: str = flag(
        "layer",
        f"one of: {', '.join(PRUNE_SCOPES)} (global: one magnitude ranking across the layers of one rate)",
        PRUNING,
        check=one_of(PRUNE_SCOPES),
    )
    prune_percent_output: float | None = flag(
        None,
        "percent of the output layer's survivors pruned per level (default: --prune_percent)",
        PRUNING,
        metavar="P",
        check=percent,
    )
    prune_percent_conv: float | None = flag(
        None,
        "percent of each conv layer's survivors pruned per level (default: --prune_percent)",
        PRUNING,
        metavar="P",
        check=percent,
    )
    rewind_iter: int = flag(
        0,
        "lt and random rewind to the weights after N optimiser steps of level 0 and train each later level from step N on; 0: the initial weights",
        PRUNING,
        metavar="N",
        check=at_least(0),
    )
    rewind_epoch: int = flag(
        0, "as --rewind_iter K x steps per epoch (give one of the two)", PRUNING, metavar="K"
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
    momentum: float = flag(0.0, "momentum of --optimizer sgd", OPTIMISATION, check=rate)
    warmup_iters: int = flag(
        0,
        "linear learning-rate warm-up over the first K optimiser steps of every level",
        OPTIMISATION,
        metavar="K",
        check=at_least(0),
    )
    lr_drops: str | None = flag(
        None,
        "epochs of every level after which the learning rate is multiplied by --lr_gamma (default: none, a constant rate)",
        OPTIMISATION,
        metavar="E1,E2,...",
    )
    lr_gamma: float | None = flag(
        None,
        "factor of each --lr_drops drop (default: 0.1 with --lr_drops)",
        OPTIMISATION,
        metavar="G",
        check=positive,
        resolve=lambda s: 0.1 if s.lr_drops is not None else None,
    )
    dropout: float = flag(0.0, "dropout rate on every layer's input", OPTIMISATION, check=rate)
    fclin_depth: int | None = flag(
        None,
        "fclin only: number of 4000-wide layers, 2 for the shorter net (default: 4)",
        NETWORKS,
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
        check=at_least(1),
        resolve=lambda s: 10 if s.pretrain == "zae" else None,
    )

    def rewind_step(self, epoch_steps: int) -> int:
        """The step of level 0 that `lt` and `random` rewind to and later levels start at (0:
        the initial weights); whether it is positive does not depend on `epoch_steps`."""
        return self.rewind_iter + self.rewind_epoch * epoch_steps

    def check_rewind_step(self, epoch_steps: int) -> None:
        """--rewind_iter must fall inside level 0, whose length needs the data."""
        steps = self.end_iter * epoch_steps
        if self.rewind_iter >= steps:
            raise UserError(
                f"--rewind_iter must be in 0..{steps - 1} (level 0 has --end_iter {self.end_iter} epochs of {epoch_steps} steps), got {self.rewind_iter}"
            )

    def lr_drop_epochs(self) -> list[int]:
        return drop_epochs(self.lr_drops, self.end_iter)

    def arch_options(self) -> dict:
        """Keyword arguments of the architecture's factory (only fclin takes any)."""
        return {"depth": self.fclin_depth} if _fclin(self) else {}

    def rates(self) -> dict:
        """Pruning's keyword arguments: the scope and the output and conv layers' rates."""
        return {
            "scope": self.prune_scope,
            "output_percent": self.prune_percent_output,
            "conv_percent": self.prune_percent_conv,
        }


def drop_epochs(lr_drops: str | None, end_iter: int) -> list[int]:
    """The epochs of --lr_drops (increasing, each in 1..--end_iter - 1); [] if none."""
    if lr_drops is None:
        return []
    wanted = f"a comma-separated list of increasing epochs in 1..{end_iter - 1} (--end_iter - 1), such as 50,75"
    parts = [part.strip() for part in str(lr_drops).split(",")]
    numbers = all(re.fullmatch(r"[0-9]+", part, flags=re.ASCII) for part in parts)
    drops = [int(part) for part in parts] if numbers else []
    increasing = all(a < b for a, b in zip(drops, drops[1:], strict=False))
    if not drops or not increasing or drops[0] < 1 or drops[-1] >= end_iter:
        raise UserError(f"--lr_drops must be {wanted}, got {lr_drops!r}")
    return drops


@dataclass(frozen=True)
class RunOptions(Settings):
    """How a run is run (--compile: float rounding only): never tells runs apart; resumes may change it."""

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
        "folder with the data set's original files, checked and imported into --data_dir (default: none, the files in --data_dir, else found or downloaded)",
        RUN_MANAGEMENT,
        rank=2,
        metavar="DIR",
    )
    plot_dpi: int = flag(
        1200, "resolution of the saved figures", RUN_MANAGEMENT, rank=4, check=check_dpi
    )
    results_root: str = flag(
        "results", "where run folders are created", RUN_MANAGEMENT, rank=3, check=check_folder
    )
    print_freq: int = flag(
        1, "refresh the progress bar's text every N epochs", ORIGINAL, rank=5, check=at_least(1)
    )
    compile: str = flag(
        "auto",
        f"one of: {', '.join(COMPILE_CHOICES)}; torch.compile of the model and loss in training (auto: where measured to pay back, so far nowhere)",
        RUN_MANAGEMENT,
        rank=5,
        check=one_of(COMPILE_CHOICES),
    )
    batch_record: str | None = flag(
        None,
        "also write the batch's run folders and levels done to FILE (JSON), after each level; not recorded in args.json (default: none; sweep.py reads it)",
        RUN_MANAGEMENT,
        rank=6,
        metavar="FILE",
        check=check_not_empty,
        recorded=False,
    )


def settings_fields(kinds: Iterable[type]) -> dict[str, dataclasses.Field]:
    return {f.name: f for kind in kinds for f in fields(kind)}


def add_flags(parser: argparse.ArgumentParser, kinds: Iterable[type]) -> None:
    """The flags of every field of `kinds`, one argument group per heading of HEADINGS."""
    ordered = list(settings_fields(kinds).values())
    for heading, description in HEADINGS.items():
        group = parser.add_argument_group(heading, description)
        mine = [f for f in ordered if flag_of(f).heading == heading]
        for field in sorted(mine, key=lambda f: flag_of(f).rank):  # stable: field order
            group.add_argument(f"--{field.name}", **argparse_options(field))


def kinds_of(annotation: object) -> tuple[type, ...]:
    """The types a field's annotation allows (`str | None` -> (str, NoneType))."""
    return tuple(annotation.__args__) if isinstance(annotation, types.UnionType) else (annotation,)  # type: ignore[return-value]


def argparse_options(field: dataclasses.Field) -> dict[str, Any]:
    """`add_argument`'s keywords for the flag of `field`."""
    spec = flag_of(field)
    if field.type is bool:
        return {"action": "store_true", "help": spec.help}
    numeric = [kind for kind in kinds_of(field.type) if kind in (int, float)]
    options = {"type": spec.type or next(iter(numeric), None), "metavar": spec.metavar}
    options |= {"nargs": spec.nargs, "const": spec.const}
    default = [field.default] if spec.nargs == "+" else field.default
    given = {name: value for name, value in options.items() if value is not None}
    return {"default": default, "help": spec.help, **given}


class Checks:
    """The settings' own checks on `values` (the settings as attributes), in the order asked for;
    `rest` runs those of every setting not asked for, so a new flag's check needs nothing else."""

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
        """The defaults and checks of the settings not asked for yet, in field order."""
        left = [name for name in self.fields if name not in self.done]
        for name in left:
            self.resolve(name)
        self(*left)
        self.most(*left)
