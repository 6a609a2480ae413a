"""What makes two runs the same experiment (`identity`), and the types a batch is made of.

A run's settings are its `Recipe`, its `RunOptions` and its `TrialSettings` (KINDS): the parser,
args.json and `identity` take their fields from there. A batch is an `Experiment` (what its
trials share) and its `Trial`s.
"""

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from lth import methods, settings
from lth.settings import ORIGINAL, PROTOCOL, Recipe, RunOptions, Settings, flag, seed_range

COMPILE_CHOICES = settings.COMPILE_CHOICES


@dataclass(frozen=True)
class TrialSettings(Settings):
    """A trial's own settings and the resume flags; several --seed and --prune_type make a batch."""

    seed: int | None = flag(
        None,
        "seed of every generator of a trial; several train together as one batch, one run folder each (default: a random seed, printed and recorded)",
        PROTOCOL,
        rank=1,
        metavar="SEED",
        nargs="+",
        check=seed_range,
    )
    prune_type: str = flag(
        "lt", methods.prune_type_help(), ORIGINAL, rank=8, metavar="TYPE", nargs="+"
    )
    masks_from: str | None = flag(
        None,
        "reinit only: level k trains the mask that lt run saved for level k with freshly drawn weights, the paper's control (default: none, reinit prunes itself)",
        PROTOCOL,
        rank=3,
        metavar="RUN_DIR",
    )
    resume: str | None = flag(
        None,
        "continue an interrupted run: its folder, or alone the newest run of the same --dataset, --arch_type and --prune_type (default: off, a new run)",
        ORIGINAL,
        rank=7,
        metavar="RUN_DIR",
        nargs="?",
        const="latest",
    )
    start_iter: int = flag(0, "first level to run; needs --resume", ORIGINAL, rank=3)


KINDS: tuple[type[Settings], ...] = (Recipe, RunOptions, TrialSettings)


def recipe_fields() -> tuple[str, ...]:
    return KINDS[0].names()


def neutral_fields() -> tuple[str, ...]:
    return KINDS[1].names()


NEUTRAL = RunOptions.names()

# The resume flags: recorded, but a resume never compares them.
NOT_RECORDED = ("resume", "start_iter")

BOOKKEEPING = (*NOT_RECORDED, *NEUTRAL)

TRIAL_FIELDS = ("seed", "masks_from")

# `--resume` without a folder takes the newest run with these of the command line.
RESUME_LOOKUP = ("dataset", "arch_type", "prune_type")

# Whether a run is a `--masks_from` control, as a setting of `identity`: which lt run it copies
# does not tell experiments apart, only that it copies one.
IS_CONTROL = "control"


def experiment_fields() -> tuple[str, ...]:
    return (*recipe_fields(), "prune_type", IS_CONTROL)


def trial_fields() -> tuple[str, ...]:
    return (*recipe_fields(), "prune_type", "masks_from", "seed")


def is_control(args: Mapping) -> bool:
    return args.get("masks_from") is not None


def identity(args: Mapping, on: Collection[str] | None = None) -> tuple[tuple[str, Any], ...]:
    """The one answer to "the same experiment?": the settings of `on` (default:
    `experiment_fields`) in a run's arguments that differ from their (resolved) defaults, as
    sorted (name, value) pairs; a setting `args` lacks is at its default."""
    wanted = experiment_fields() if on is None else on
    differ = {k: v for kind in KINDS for k, v in kind.read(args).identity().items()}
    if is_control(args):
        differ[IS_CONTROL] = True
    return tuple(sorted((name, v) for name, v in differ.items() if name in wanted))


@dataclass(frozen=True)
class Experiment:
    """What every trial of a batch shares: its recipe and run options, each setting (and recipe
    method) read as an attribute (`experiment.lr`)."""

    recipe: Recipe
    options: RunOptions

    def __getattr__(self, name: str) -> Any:
        if name in ("recipe", "options"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        for part in (self.recipe, self.options):
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")

    @classmethod
    def of(cls, args: Mapping) -> "Experiment":
        """The recipe and options in a trial's checked arguments."""
        return cls(KINDS[0].read(args), KINDS[1].read(args))  # type: ignore[arg-type]

    def settings(self) -> dict[str, Any]:
        """Every setting by name, as args.json records it."""
        parts = (self.recipe, self.options)
        return {name: getattr(part, name) for part in parts for name in part.names()}


@dataclass(frozen=True)
class Trial:
    """One trial of a batch: its seed, its prune type, and where a control's masks come from: a
    finished run (`masks_from`) or the batch's trial of index `ticket`, taken from memory."""

    seed: int
    prune_type: str
    masks_from: str | None = None
    ticket: int | None = None

    @property
    def is_control(self) -> bool:
        return self.masks_from is not None or self.ticket is not None

    def args(self, experiment: Experiment, masks_from: str | None = None) -> dict:
        """The trial's arguments as args.json records them (`masks_from`: its ticket's folder)."""
        return {
            **experiment.settings(),
            "seed": self.seed,
            "prune_type": self.prune_type,
            "masks_from": masks_from if masks_from is not None else self.masks_from,
            "resume": None,
            "start_iter": 0,
        }


def recorded_types() -> dict[str, tuple[type, ...]]:
    """The type of every argument an args.json records: each setting's, by its annotation."""
    return {f.name: settings.kinds_of(f.type) for kind in KINDS for f in fields(kind)}  # type: ignore[arg-type]
