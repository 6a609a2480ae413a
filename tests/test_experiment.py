"""lth.experiment.identity: the one definition of which runs are trials of the same experiment,
and every place that asks uses it."""

import ast
from pathlib import Path

from lth import experiment, resume, runs
from lth.cli import one_trial, parse_args
from lth.experiment import identity, trial_fields
from lth.settings import Recipe

RECORDED = vars(one_trial(parse_args(["--dataset", "mnist", "--arch_type", "fc1", "--seed", "3"])))
ROOT = Path(__file__).resolve().parent.parent


def same_trial(recorded: dict, wanted: dict) -> bool:
    """What sweep.plan asks: the recipe, prune type, mask source, and the seed where one is
    wanted."""
    on = [n for n in trial_fields() if n != "seed" or wanted.get("seed") is not None]
    return identity(recorded, on) == identity(wanted, on)


def test_trials_differ_only_in_their_seed_and_mask_source():
    other_seed = {**RECORDED, "seed": 4}
    moved = {**RECORDED, "results_root": "/elsewhere", "print_freq": 7, "compile": "on"}
    assert identity(other_seed) == identity(RECORDED)
    assert identity(moved) == identity(RECORDED)


def test_a_recipe_flag_or_being_a_control_makes_another_experiment():
    assert identity({**RECORDED, "prune_percent": 20.0}) != identity(RECORDED)
    control = {**RECORDED, "prune_type": "reinit", "masks_from": "/runs/a"}
    plain_reinit = {**RECORDED, "prune_type": "reinit"}
    assert identity(control) != identity(plain_reinit)
    # which lt run a control copies does not tell experiments apart: only that it copies one
    assert identity({**control, "masks_from": "/runs/b"}) == identity(control)


def test_a_task_matches_a_run_on_everything_but_bookkeeping():
    assert same_trial(RECORDED, {**RECORDED, "results_root": "/elsewhere"})
    assert not same_trial(RECORDED, {**RECORDED, "seed": 4})
    assert same_trial(RECORDED, {**RECORDED, "seed": None})  # no seed asked: any seed
    assert not same_trial(RECORDED, {**RECORDED, "end_iter": RECORDED["end_iter"] + 1})
    assert not same_trial(RECORDED, {**RECORDED, "masks_from": "/runs/a"})


def test_the_identity_is_the_settings_that_differ_from_their_defaults():
    assert identity(RECORDED) == ()  # the default recipe (a seed is a trial's, not the recipe's)
    assert identity({**RECORDED, "lr": 0.1}) == (("lr", 0.1),)
    assert identity({**RECORDED, "prune_type": "random"}) == (("prune_type", "random"),)
    assert Recipe(lr=0.1).identity() == {"lr": 0.1}


def test_a_missing_setting_is_its_resolved_default():
    """An older run lacks the flags added since: each reads as the value it ran, which may
    depend on the other settings."""
    for name in ("init", "fclin_depth", "lr_gamma", "pretrain_epochs", "augment", "val_size"):
        older = {k: v for k, v in RECORDED.items() if k != name}
        assert identity(older) == identity(RECORDED), name
    fclin = {"arch_type": "fclin", "init": "data", "fclin_depth": 4}
    assert identity(fclin) == identity({"arch_type": "fclin"}) == (("arch_type", "fclin"),)
    assert identity({"arch_type": "fclin", "init": "xavier"}) != identity(fclin)
    drops = {"lr_drops": "5", "lr_gamma": 0.1}
    assert identity(drops) == identity({"lr_drops": "5"}) == (("lr_drops", "5"),)
    assert identity({"pretrain": "zae", "pretrain_epochs": 10}) == (("pretrain", "zae"),)


def test_the_other_modules_use_this_definition():
    assert runs.identity is experiment.identity and resume.identity is experiment.identity
    assert resume.RESUME_LOOKUP == ("dataset", "arch_type", "prune_type")
    assert set(experiment.NEUTRAL) < set(experiment.BOOKKEEPING)
    assert not set(experiment.TRIAL_FIELDS) & set(experiment.BOOKKEEPING)
    for command in ("sweep.py", "combine_plots.py", "main.py"):
        source = (ROOT / command).read_text()
        assert "identity(" in source, command
    for gone in ("recipe", "ran", "ADDED_LATER", "recorded_args", "check_record"):
        assert not hasattr(experiment, gone), gone


def test_only_the_record_module_names_the_args_file():
    """args.json is opened, checked and written in lth/record.py (RunRecord) only."""
    for path in [*ROOT.glob("*.py"), *(ROOT / "lth").glob("*.py")]:
        tree = ast.parse(path.read_text())
        literal = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value == "args.json"
        ]
        assert bool(literal) == (path.name == "record.py"), path
