"""The prune methods, each defined once, and the registry that holds them; the rest of the
program asks the registry and names no method.

A method defined elsewhere is registered with `register`, or named on a command line as
MODULE:ATTRIBUTE (`find`); a name read from a run folder is never imported (`recorded`). The rules
import lth.pruning and lth.saliency when they run, so that the command line stays light.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from lth.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from lth.data import Split
    from lth.initialization import Initializer
    from lth.pruning import Mask
    from lth.saliency import Counts

SPELLING = "MODULE:ATTRIBUTE"


@dataclass(frozen=True)
class Rates:
    """How much a level prunes: --prune_percent, --prune_scope, --prune_percent_output/_conv."""

    percent: float
    scope: str = "layer"
    output_percent: float | None = None
    conv_percent: float | None = None

    def keywords(self) -> dict:
        """The keyword arguments of the pruning rules besides `percent`."""
        return {name: getattr(self, name) for name in ("scope", "output_percent", "conv_percent")}


@dataclass(frozen=True)
class Sample:
    """The training data a method may score the network on (SNIP, GraSP)."""

    train_set: Split
    batch_size: int
    classes: int


class Generators(Protocol):
    """A trial's own generators (lth.record.TrialRandom): its draws go inside `active()`."""

    def active(self) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class TrialState:
    """One trial as a method sees it: its mask is, in a `Level`, the level before's, for `start`
    the new one; `rewind_state`: the state of level 0 it rewinds to (None: the initial one)."""

    model: nn.Module
    mask: Mask
    initial_state: Mapping[str, torch.Tensor]
    random: Generators
    rewind_state: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class Level:
    """What a method's mask of one level sees: the trial as the level before left it and, for a
    control, its ticket's mask of this level."""

    number: int
    trial: TrialState
    rates: Rates
    sample: Sample
    ticket: Mask | None = None


Prune = Callable[[Level], "Mask"]
Start = Callable[[TrialState, "Initializer"], None]


@dataclass(frozen=True)
class PruneMethod:
    """One prune method: its name on the command line, a line of help, and its rules.

    `prune(level)`: the mask of a level after level 0, the pruned weights zeroed in the model.
    `start(trial, init)`: the survivors put where the next level starts them.
    `rewind_refusal`: why --rewind_iter/--rewind_epoch do not apply (None: they do).
    `no_rewind_point`: what its levels train from instead of a state of level 0 (None: one).
    `masks_of` / `ticket`: the method whose --masks_from run / trial in the batch gives each
    level's mask (a control). `holds_final_rate`: later levels train at the schedule's final
    rate. `records_as`: the method its runs are recorded as (None: its own name).
    """

    name: str
    help: str
    prune: Prune = field(repr=False)
    start: Start = field(repr=False)
    rewind_refusal: str | None = None
    no_rewind_point: str | None = None
    masks_of: str | None = None
    ticket: str | None = None
    holds_final_rate: bool = False
    records_as: str | None = None

    @property
    def recorded_name(self) -> str:
        return self.records_as if self.records_as is not None else self.name

    @property
    def rewinds(self) -> bool:
        return self.rewind_refusal is None

    @property
    def has_rewind_point(self) -> bool:
        return self.no_rewind_point is None

    @property
    def needs_ticket(self) -> bool:
        return self.ticket is not None

    @property
    def takes_masks_from(self) -> bool:
        return self.masks_of is not None

    @property
    def keeps_trained(self) -> bool:
        return self.start is keep_survivors

    def mask(self, level: Level) -> Mask:
        """The level's mask, its pruned weights zeroed: a control's is its ticket's, level 0's
        the dense one, every later level's `prune`'s."""
        if level.ticket is not None:
            from lth.pruning import apply_mask

            apply_mask(level.trial.model, level.ticket)
            return level.ticket
        if level.number == 0:
            return level.trial.mask
        return self.prune(level)


# --- the rules of lth's methods -------------------------------------------------------------


def by_magnitude(level: Level) -> Mask:
    """The survivors with the smallest trained magnitudes pruned."""
    from lth.pruning import prune_by_percentile

    trial, rates = level.trial, level.rates
    with trial.random.active():
        return prune_by_percentile(trial.model, trial.mask, rates.percent, **rates.keywords())


def at_random(level: Level) -> Mask:
    """As many survivors per layer as `by_magnitude` prunes, chosen at random."""
    from lth.pruning import prune_at_random

    trial, rates = level.trial, level.rates
    with trial.random.active():
        return prune_at_random(trial.model, trial.mask, rates.percent, **rates.keywords())


def at_init(mask_of: Callable[[nn.Module, Counts, Sample], Mask]) -> Prune:
    """A rule of pruning at initialisation: `mask_of(network, counts, sample)` is the mask of the
    dense initial network keeping `counts`, what the magnitude rule keeps after as many levels."""

    def prune(level: Level) -> Mask:
        from lth.pruning import apply_mask
        from lth.saliency import initial_network, level_counts

        trial, rates = level.trial, level.rates
        counts = level_counts(trial.model, level.number, rates.percent, **rates.keywords())
        with trial.random.active():
            network = initial_network(trial.model, trial.initial_state)
            new_mask = mask_of(network, counts, level.sample)
        apply_mask(trial.model, new_mask)
        return new_mask

    return prune


def snip_mask(network: nn.Module, counts: Counts, sample: Sample) -> Mask:
    from lth.saliency import scored_mask, snip_scores

    return scored_mask(
        snip_scores, network, counts, sample.train_set, sample.batch_size, sample.classes
    )


def grasp_mask(network: nn.Module, counts: Counts, sample: Sample) -> Mask:
    from lth.saliency import grasp_scores, scored_mask

    return scored_mask(
        grasp_scores, network, counts, sample.train_set, sample.batch_size, sample.classes
    )


def synflow_mask(network: nn.Module, counts: Counts, sample: Sample) -> Mask:
    from lth import saliency

    return saliency.synflow_mask(network, counts, sample.train_set.stored.shape[1:])


def rewind_survivors(trial: TrialState, init: Initializer) -> None:
    """The survivors back to the rewind state when the trial kept one, else the initial state."""
    from lth.pruning import rewind

    late = trial.rewind_state
    rewind(trial.model, trial.mask, trial.initial_state if late is None else late)


def draw_survivors(trial: TrialState, init: Initializer) -> None:
    """Fresh random survivors, drawn on the CPU as the module was built; buffers reset."""
    from lth.pruning import reinitialize

    model = trial.model
    model.load_state_dict(trial.initial_state)
    device = next(model.parameters()).device
    with trial.random.active():
        reinitialize(model.cpu(), trial.mask, init)
    model.to(device)


def keep_survivors(trial: TrialState, init: Initializer) -> None:
    """The survivors keep their trained values (the mask has zeroed the pruned ones)."""


# --- lth's methods ---------------------------------------------------------------------------

GO_ON = "its levels go on from the weights the level before trained"
AT_INIT = "trains the pruned initial network"

LT = PruneMethod(
    "lt",
    "prune the trained weights by magnitude and rewind the survivors: the winning tickets",
    prune=by_magnitude,
    start=rewind_survivors,
)
REINIT = PruneMethod(
    "reinit",
    "prune by magnitude (or train the masks of an lt run: --masks_from) with new random weights",
    prune=by_magnitude,
    start=draw_survivors,
    rewind_refusal="draws new weights",
    no_rewind_point="its levels train new random weights",
    masks_of="lt",
)
RANDOM = PruneMethod(
    "random",
    "prune at random, as many weights per layer as lt, and rewind the survivors",
    prune=at_random,
    start=rewind_survivors,
)
LRR = PruneMethod(
    "lrr",
    "prune by magnitude and train the survivors on, the schedule restarted (learning-rate"
    " rewinding)",
    prune=by_magnitude,
    start=keep_survivors,
    rewind_refusal="keeps the trained weights",
    no_rewind_point=GO_ON,
)
FINETUNE = PruneMethod(
    "finetune",
    "prune by magnitude and train the survivors on at the schedule's final rate",
    prune=by_magnitude,
    start=keep_survivors,
    rewind_refusal="keeps the trained weights",
    no_rewind_point=GO_ON,
    holds_final_rate=True,
)
SNIP = PruneMethod(
    "snip",
    "prune the initial network by SNIP's scores to lt's density and train it",
    prune=at_init(snip_mask),
    start=rewind_survivors,
    rewind_refusal=AT_INIT,
)
GRASP = PruneMethod(
    "grasp",
    "prune the initial network by GraSP's scores to lt's density and train it",
    prune=at_init(grasp_mask),
    start=rewind_survivors,
    rewind_refusal=AT_INIT,
)
SYNFLOW = PruneMethod(
    "synflow",
    "prune the initial network by SynFlow's scores to lt's density and train it",
    prune=at_init(synflow_mask),
    start=rewind_survivors,
    rewind_refusal=AT_INIT,
)
# The paper's control inside a batch: its runs are reinit runs with --masks_from the lt trial.
REINIT_TICKET = dataclasses.replace(
    REINIT,
    name="reinit_ticket",
    help="reinit with the masks of the lt trial of its seed",
    masks_of=None,
    ticket="lt",
    records_as="reinit",
)


# --- the registry ----------------------------------------------------------------------------


@dataclass
class Registry:
    """The prune methods by name and the MODULE:ATTRIBUTE of each one a command line imported."""

    methods: dict[str, PruneMethod] = field(default_factory=dict)
    spellings: dict[str, str] = field(default_factory=dict)

    def copy(self) -> Registry:
        return Registry(dict(self.methods), dict(self.spellings))


REGISTRY = Registry()


def register(method: PruneMethod) -> PruneMethod:
    """Add `method` to the registry (again: no change) and return it; ValueError when its name
    is taken or no identifier, or it names a method not registered as recordable."""
    known = REGISTRY.methods.get(method.name)
    if known is method:
        return method
    if not method.name.isidentifier():
        raise ValueError(f"a prune method's name is an identifier, not {method.name!r}")
    if known is not None:
        raise ValueError(f"another prune method is registered as {method.name}")
    for other in (method.records_as, method.masks_of, method.ticket):
        if other is not None and other not in {m.name for m in recordable()}:
            raise ValueError(f"{method.name} names {other}, which is no registered prune method")
    REGISTRY.methods[method.name] = method
    return method


def get(name: str) -> PruneMethod:
    return REGISTRY.methods[name]


def names() -> tuple[str, ...]:
    return tuple(REGISTRY.methods)


def registered() -> tuple[PruneMethod, ...]:
    return tuple(REGISTRY.methods.values())


def recordable() -> tuple[PruneMethod, ...]:
    """The registered methods a run records as its prune type."""
    return tuple(m for m in registered() if m.records_as is None)


def find(spelling: str) -> PruneMethod | None:
    """The method a command line names: a registered name, or MODULE:ATTRIBUTE (imported and
    registered here); None for any other name. UserError when MODULE:ATTRIBUTE fails."""
    if spelling in REGISTRY.methods:
        return REGISTRY.methods[spelling]
    module_name, colon, attribute = spelling.partition(":")
    if not colon:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"--prune_type {spelling}: cannot import {module_name} ({error})") from None
    method = getattr(module, attribute, None)
    if not isinstance(method, PruneMethod):
        raise UserError(
            f"--prune_type {spelling}: {module_name} has no prune method {attribute}"
            " (an lth.methods.PruneMethod)"
        )
    try:
        register(method)
    except ValueError as error:
        raise UserError(f"--prune_type {spelling}: {error}") from None
    REGISTRY.spellings[method.name] = spelling
    return method


def spelling(name: str) -> str:
    """How a command line in a new process names the registered method `name`."""
    return REGISTRY.spellings.get(name, name)


def recorded(name: str) -> PruneMethod:
    """The method of a recorded prune type, among the registered ones only; UserError otherwise."""
    method = REGISTRY.methods.get(name)
    if method is None or method.records_as is not None:
        choices = ", ".join(m.name for m in recordable())
        raise UserError(
            f"--prune_type {name} is not supported; choose one of: {choices} (a method defined"
            f" outside lth is known once the command line names it: --prune_type {SPELLING})"
        )
    return method


def prune_type_help() -> str:
    recorded_ones = ", ".join(m.name for m in recordable())
    batch_only = "; ".join(f"{m.name}: {m.help}" for m in registered() if m.needs_ticket)
    return (
        f"one of: {recorded_ones}; several (and {batch_only}) train together as one batch with"
        " every --seed"
    )


def record_name(spelling: str) -> str:
    """The prune type a run of the method `spelling` names records (else the spelling itself)."""
    method = find(spelling)
    return method.recorded_name if method is not None else spelling


for _method in (LT, REINIT, RANDOM, LRR, FINETUNE, SNIP, GRASP, SYNFLOW, REINIT_TICKET):
    register(_method)
