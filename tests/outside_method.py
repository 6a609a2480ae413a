"""A prune method defined outside lth, as a user would define one: magnitude pruning of the
initial weights (each level keeps as many of the largest initial weights as lt keeps after as
many levels), the survivors starting every level from their initial values.

tests/test_methods.py registers it, or names it on a command line as SPELLING, and runs it
through main.py, sweep.py and combine_plots.py; nothing in lth names it.
"""

from lth import methods
from lth.pruning import Mask, apply_mask, prunable
from lth.saliency import keep_highest, level_counts


def magnitude_of_initial_weights(level: methods.Level) -> Mask:
    """The level's counts (lt's, layer by layer or per group of layers ranked together) of the
    initial weights with the largest magnitudes; the others zeroed in the trial's module."""
    trial, rates = level.trial, level.rates
    counts = level_counts(trial.model, level.number, rates.percent, **rates.keywords())
    scores = {name: trial.initial_state[name].abs() for name in prunable(trial.model)}
    mask = keep_highest(scores, counts)
    apply_mask(trial.model, mask)
    return mask


MAGNITUDE_AT_INIT = methods.PruneMethod(
    "magnitude_at_init",
    "prune the initial weights by magnitude to lt's density and train them from there",
    prune=magnitude_of_initial_weights,
    start=methods.rewind_survivors,
    rewind_refusal="trains the pruned initial network",
)

SPELLING = f"{__name__}:MAGNITUDE_AT_INIT"  # how a command line names it
