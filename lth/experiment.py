"""What makes two runs the same experiment, defined once.

A run's recorded arguments (its `args.json`) split three ways:
- BOOKKEEPING: how it was run (the resume flags, where it read and wrote, how it reported, the
  device, `--compile`): they never tell runs apart, and a resume may change the NEUTRAL ones;
- TRIAL_FIELDS: what differs from trial to trial of one experiment (the seed, and the run whose
  masks a `--masks_from` control takes: only whether it is set tells experiments apart);
- everything else: the recipe every trial of the experiment shares.

`recipe` is that shared part as text (the key that groups trials in `combine_plots.py`),
`ran` says whether a recorded run ran what a sweep's task asks for, and RESUME_LOOKUP names what
`--resume` without a folder matches on. Inside the program a batch is an `Experiment` (the shared
recipe) and its `Trial`s.
"""

import json
import re
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from lth.errors import UserError

COMPILE_CHOICES = ("auto", "on", "off")  # steps.use_compile says what each means
# The paper's control as a prune type of a batch: reinit with the masks of the batch's lt trial of
# the same seed (recorded as prune type reinit, --masks_from that trial's folder).
CONTROL = "reinit_ticket"
# Prune types that keep the trained survivors from level to level instead of rewinding them
# (Renda et al. 2020): learning-rate rewinding restarts the schedule, fine-tuning trains at its
# final rate.
KEEP_TRAINED = ("lrr", "finetune")
# Pruning at initialisation (lth.saliency): each level prunes the initial network by the method's
# scores to the density the magnitude rule reaches at that level, and trains it from there.
AT_INIT = ("snip", "grasp", "synflow")
# The prune types that rewind to --rewind_iter / --rewind_epoch.
REWOUND = ("lt", "random")

# Flags that do not change what a run computes: where it reads and writes, how it reports, the
# device it runs on, and --compile (which changes the rounding of float sums only). A resume may
# change them; they never tell runs apart.
NEUTRAL = ("gpu", "data_dir", "data_source", "plot_dpi", "results_root", "print_freq", "compile")

# The resume flags: recorded, but a resume never compares them.
NOT_RECORDED = ("resume", "start_iter")

BOOKKEEPING = (*NOT_RECORDED, *NEUTRAL)

TRIAL_FIELDS = ("seed", "masks_from")

# `--resume` without a folder takes the newest run with these of the command line.
RESUME_LOOKUP = ("dataset", "arch_type", "prune_type")

# Recipe flags added after the first release, which recorded only the original's flags, each
# with the value that a run recorded before it existed ran (the value a default run records now).
ADDED_LATER = {
    "prune_scope": "layer",
    "prune_percent_output": None,
    "prune_percent_conv": None,
    "rewind_iter": 0,
    "rewind_epoch": 0,
    "init": "xavier",
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
    "augment": False,
}


def recorded_args(record: Mapping) -> dict:
    """The arguments of a run's args.json `record`, with the value of each flag of ADDED_LATER
    it predates: so an older run resumes, groups and matches as the same run recorded now."""
    return {**ADDED_LATER, **record["args"]}


# What every args.json records, from the first release on, and reading a run needs.
REQUIRED = ("dataset", "arch_type", "prune_type", "prune_iterations")


def check_record(record: object, path: Path | str) -> dict:
    """The recorded arguments of an args.json's content `record` (`recorded_args`), once it is
    known to hold only what main.py writes there, each value of its flag's type: the run's
    arguments, the "batch" it ran in (its trials' folders: names of siblings, no paths) and its
    "resumes" (each changing NEUTRAL flags only). UserError naming `path` otherwise, so that a
    damaged or foreign args.json is refused before anything reads it further.
    """

    def refuse(what: str) -> UserError:
        return UserError(f"{path} is not an args.json lth wrote: {what}")

    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        raise refuse('it holds no "args" object')
    args = recorded_args(record)
    missing = [name for name in REQUIRED if name not in args]
    if missing:
        raise refuse(f"its arguments lack {', '.join(missing)}")
    for name, value in args.items():
        kinds = RECORDED_TYPES.get(name)
        if kinds is not None and not _of_kinds(value, kinds):
            raise refuse(f"{name} is {value!r}, not {' or '.join(k.__name__ for k in kinds)}")
    batch = record.get("batch", {})
    runs = batch.get("runs", []) if isinstance(batch, dict) else None
    if not isinstance(runs, list) or not all(_sibling_name(name) for name in runs):
        raise refuse('its "batch" is not a list of the batch\'s run folder names')
    ticket = batch.get("ticket")
    if ticket is not None and not (_of_kinds(ticket, (int,)) and 0 <= ticket < len(runs)):
        raise refuse(f'its "batch" names trial {ticket!r} as its ticket')
    resumes = record.get("resumes", [])
    if not isinstance(resumes, list) or not all(_neutral_changes(entry) for entry in resumes):
        raise refuse('its "resumes" change more than the flags a resume may change')
    if not isinstance(record.get("started", ""), str):
        raise refuse('its "started" is not a time')
    return args


def _neutral_changes(entry: object) -> bool:
    """Whether a "resumes" entry changed NEUTRAL flags only, each [old, new] of its type."""
    changed = entry.get("changed") if isinstance(entry, dict) else None
    return isinstance(changed, dict) and all(
        name in NEUTRAL
        and isinstance(pair, list)
        and len(pair) == 2
        and _of_kinds(pair[1], RECORDED_TYPES[name])
        for name, pair in changed.items()
    )


def _sibling_name(name: object) -> bool:
    """Whether `name` names a folder beside the run's own: one plain path component."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and Path(name).name == name
        and "\\" not in name
    )


def _of_kinds(value: object, kinds: tuple[type, ...]) -> bool:
    """isinstance, with an int as a float too and a bool as neither."""
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def is_control(args: Mapping) -> bool:
    """Whether the run is the random-reinitialisation control (`--masks_from`)."""
    return args.get("masks_from") is not None


def recipe(args: Mapping) -> str:
    """What the trials of one experiment share, as text: every recorded argument but those of
    BOOKKEEPING and TRIAL_FIELDS, and whether the run is a `--masks_from` control."""
    shared = {k: v for k, v in args.items() if k not in BOOKKEEPING + TRIAL_FIELDS}
    shared["masks_from"] = is_control(args)
    return json.dumps(shared, sort_keys=True, default=str)


def ran(recorded: Mapping, wanted: Mapping) -> bool:
    """Whether a run with the `recorded` arguments ran what `wanted` asks for: the same value
    of every argument but the BOOKKEEPING ones (a `wanted` seed of None takes any seed)."""
    ignore = set(BOOKKEEPING) | ({"seed"} if wanted.get("seed") is None else set())
    return all(recorded.get(k) == v for k, v in wanted.items() if k not in ignore)


@dataclass(frozen=True)
class Experiment:
    """The recipe every trial of a batch shares: every flag but a trial's own (TRIAL_FIELDS and
    the prune type) and the resume flags, checked and completed by `cli.validate`."""

    dataset: str
    arch_type: str
    lr: float
    batch_size: int
    end_iter: int
    print_freq: int
    valid_freq: int
    prune_percent: float
    prune_iterations: int
    gpu: str
    data_dir: str
    data_source: str | None
    plot_dpi: int
    results_root: str
    init: str
    rewind_epoch: int
    rewind_iter: int
    prune_scope: str
    prune_percent_output: float | None
    prune_percent_conv: float | None
    optimizer: str
    momentum: float
    dropout: float
    fclin_depth: int | None
    pretrain: str
    pretrain_epochs: int | None
    val_size: int
    warmup_iters: int
    lr_drops: str | None
    lr_gamma: float | None
    augment: bool
    compile: str

    @classmethod
    def of(cls, args: Mapping) -> "Experiment":
        """The recipe in a trial's checked arguments (a dict, or vars() of a Namespace)."""
        return cls(**{f.name: args[f.name] for f in fields(cls)})

    def rewind_step(self, epoch_steps: int) -> int:
        """The optimiser step of level 0 whose weights `lt` and `random` rewind to, and at which
        every later level starts training: --rewind_iter, or --rewind_epoch epochs of
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
        """The epochs of --lr_drops after which the rate drops; [] if none."""
        return lr_drop_epochs_of(self.lr_drops, self.end_iter)

    def arch_options(self) -> dict:
        """Keyword arguments of the architecture's factory (only fclin takes any)."""
        return arch_options_of(self.arch_type, self.fclin_depth)

    def prune_rates(self) -> dict:
        """How pruning groups the layers and what each group's rate is, as lth.pruning and
        lth.saliency take them: the scope and the output and conv layers' own rates."""
        return {
            "scope": self.prune_scope,
            "output_percent": self.prune_percent_output,
            "conv_percent": self.prune_percent_conv,
        }


def lr_drop_epochs_of(lr_drops: str | None, end_iter: int) -> list[int]:
    """The epochs of --lr_drops (E1,E2,...: increasing, each in 1..--end_iter - 1); [] if none;
    UserError naming the flag otherwise."""
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


def arch_options_of(arch_type: str, fclin_depth: int | None) -> dict:
    """Keyword arguments of the architecture's factory (only fclin takes any)."""
    return {"depth": fclin_depth} if arch_type == "fclin" else {}


@dataclass(frozen=True)
class Trial:
    """What one trial of a batch is: its seed, its prune type, and where a `reinit` control's
    masks come from: a finished `lt` run (`masks_from`) or, with `ticket`, the `lt` trial of
    that index in the same batch, whose mask of each level it takes from memory (its folder is
    then recorded as `masks_from`)."""

    seed: int
    prune_type: str
    masks_from: str | None = None
    ticket: int | None = None

    @property
    def is_control(self) -> bool:
        return self.masks_from is not None or self.ticket is not None

    def args(self, experiment: Experiment, masks_from: str | None = None) -> dict:
        """The trial's arguments as args.json records them (`masks_from`: the folder of its
        ticket's run, for a control that takes its masks from memory)."""
        return {
            **asdict(experiment),
            "seed": self.seed,
            "prune_type": self.prune_type,
            "masks_from": masks_from if masks_from is not None else self.masks_from,
            "resume": None,
            "start_iter": 0,
        }


def _kinds(annotation: object) -> tuple[type, ...]:
    """The types a field's annotation allows (`str | None` -> (str, NoneType))."""
    if isinstance(annotation, types.UnionType):
        return tuple(annotation.__args__)
    return (annotation,)  # type: ignore[return-value]


# The type of every argument an args.json records: the recipe's (Experiment's fields), a trial's,
# and the resume flags.
RECORDED_TYPES: dict[str, tuple[type, ...]] = {
    **{f.name: _kinds(f.type) for f in fields(Experiment)},
    "seed": (int, type(None)),
    "prune_type": (str,),
    "masks_from": (str, type(None)),
    "resume": (str, type(None)),
    "start_iter": (int,),
}
