"""Runs recorded by older versions: a recipe flag added since the first release reads, in a run
recorded before it existed, as the value that run ran (`experiment.ADDED_LATER`), so such a run
groups, matches and resumes as the same run recorded now."""

import json
import shutil
from pathlib import Path

import pytest

from lth import experiment, runs
from tests.conftest import kept_checkpoints
from tests.resultfiles import assert_same_results, stopped_after
from tests.test_main import run_main

# What the first release recorded in args.json: the original's flags and nothing else.
FIRST_RELEASE = {
    "arch_type", "batch_size", "data_dir", "data_source", "dataset", "end_iter", "gpu", "lr",
    "plot_dpi", "print_freq", "prune_iterations", "prune_percent", "prune_type",
    "results_root", "resume", "seed", "start_iter", "valid_freq",
}  # fmt: skip


def recorded(run: Path) -> dict:
    return json.loads((run / "args.json").read_text())


def as_first_release(run: Path) -> None:
    """The run's args.json as the first release wrote it: only the original's flags."""
    record = recorded(run)
    record["args"] = {k: v for k, v in record["args"].items() if k in FIRST_RELEASE}
    (run / "args.json").write_text(json.dumps(record))


def test_every_recipe_flag_added_since_the_first_release_has_the_value_older_runs_ran(
    reference_run,
):
    args = recorded(reference_run)["args"]  # a run of the default recipe
    later = set(args) - FIRST_RELEASE - set(experiment.BOOKKEEPING) - set(experiment.TRIAL_FIELDS)
    assert later == set(experiment.ADDED_LATER)
    assert {flag: args[flag] for flag in later} == experiment.ADDED_LATER


def test_a_run_of_the_first_release_is_the_same_experiment_as_one_recorded_now(
    tmp_path, reference_run
):
    old = Path(shutil.copytree(reference_run, tmp_path / reference_run.name))
    as_first_release(old)
    read, now = runs.read_run(old), runs.read_run(reference_run)
    assert read is not None and now is not None
    assert set(now.args) - set(read.args) == {"compile", "masks_from"}  # neither is the recipe
    assert experiment.recipe(read.args) == experiment.recipe(now.args)
    assert experiment.ran(read.args, now.args)


@pytest.mark.parametrize(
    "flag", [["--val_size", "10"], ["--warmup_iters", "3"], ["--prune_scope", "global"]]
)
def test_resuming_a_run_of_the_first_release_with_another_recipe_is_refused(
    tmp_path, capsys, reference_run, flag
):
    run = Path(shutil.copytree(reference_run, tmp_path / "results" / reference_run.name))
    as_first_release(run)
    stopped_after(run, kept_checkpoints(reference_run), 0)
    capsys.readouterr()
    assert run_main(tmp_path, "--resume", str(run), *flag) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag[0] in err, err


def test_a_run_of_the_first_release_resumes_to_the_files_of_the_uninterrupted_run(
    tmp_path, reference_run
):
    run = Path(shutil.copytree(reference_run, tmp_path / "results" / reference_run.name))
    as_first_release(run)
    older = Path(shutil.copytree(run, tmp_path / "older"))
    stopped_after(run, kept_checkpoints(reference_run), 0)
    assert run_main(tmp_path, "--resume", str(run)) == 0
    assert_same_results(run, older)
