"""lth.experiment: the one definition of which runs are trials of the same experiment."""

from lth import experiment, resume, runs
from lth.cli import one_trial, parse_args

RECORDED = vars(one_trial(parse_args(["--dataset", "mnist", "--arch_type", "fc1", "--seed", "3"])))


def test_trials_differ_only_in_their_seed_and_mask_source():
    other_seed = {**RECORDED, "seed": 4}
    moved = {**RECORDED, "results_root": "/elsewhere", "print_freq": 7, "compile": "on"}
    assert experiment.recipe(other_seed) == experiment.recipe(RECORDED)
    assert experiment.recipe(moved) == experiment.recipe(RECORDED)


def test_a_recipe_flag_or_being_a_control_makes_another_experiment():
    assert experiment.recipe({**RECORDED, "prune_percent": 20.0}) != experiment.recipe(RECORDED)
    control = {**RECORDED, "prune_type": "reinit", "masks_from": "/runs/a"}
    plain_reinit = {**RECORDED, "prune_type": "reinit"}
    assert experiment.recipe(control) != experiment.recipe(plain_reinit)
    # which lt run a control copies does not tell experiments apart: only that it copies one
    assert experiment.recipe({**control, "masks_from": "/runs/b"}) == experiment.recipe(control)


def test_ran_matches_a_task_on_everything_but_bookkeeping():
    assert experiment.ran(RECORDED, {**RECORDED, "results_root": "/elsewhere"})
    assert not experiment.ran(RECORDED, {**RECORDED, "seed": 4})
    assert experiment.ran(RECORDED, {**RECORDED, "seed": None})  # no seed asked: any seed
    assert not experiment.ran(RECORDED, {**RECORDED, "end_iter": RECORDED["end_iter"] + 1})


def test_the_other_modules_use_this_definition():
    assert runs.recipe is experiment.recipe
    assert resume.RESUME_LOOKUP == ("dataset", "arch_type", "prune_type")
    assert set(experiment.NEUTRAL) < set(experiment.BOOKKEEPING)
    assert not set(experiment.TRIAL_FIELDS) & set(experiment.BOOKKEEPING)
