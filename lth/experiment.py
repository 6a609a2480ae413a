"""What makes two runs the same experiment, defined once.

A run's recorded arguments (its `args.json`) split three ways:
- BOOKKEEPING: how it was run (the resume flags, where it read and wrote, how it reported, the
  device, `--compile`): they never tell runs apart, and a resume may change the NEUTRAL ones;
- TRIAL_FIELDS: what differs from trial to trial of one experiment (the seed, and the run whose
  masks a `--masks_from` control takes: only whether it is set tells experiments apart);
- everything else: the recipe every trial of the experiment shares.

`recipe` is that shared part as text (the key that groups trials in `combine_plots.py`),
`ran` says whether a recorded run ran what a sweep's task asks for, and RESUME_LOOKUP names what
`--resume` without a folder matches on.
"""

import json
from collections.abc import Mapping

COMPILE_CHOICES = ("auto", "on", "off")  # steps.use_compile says what each means

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
