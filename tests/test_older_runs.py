"""Runs recorded by older versions: a setting added since the first release reads, in a run
recorded before it existed, as its default, the value that run ran (record.RunRecord.args), so
such a run groups, matches and resumes as the same run recorded now, and a resume that gives
such a flag another value is refused like any other change of the recipe."""

import json
import shutil
from pathlib import Path

import pytest

from lth import experiment, runs
from lth.record import RunRecord
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


def test_every_setting_added_since_the_first_release_has_the_value_older_runs_ran(
    reference_run,
):
    args = recorded(reference_run)["args"]  # a run of the default recipe
    first = {k: v for k, v in args.items() if k in FIRST_RELEASE}
    older = RunRecord(reference_run, {"args": first}).args
    assert older == args  # every later setting at the value a default run records now
    later = set(args) - FIRST_RELEASE - set(experiment.BOOKKEEPING) - set(experiment.TRIAL_FIELDS)
    assert later == set(experiment.recipe_fields()) - FIRST_RELEASE


def test_a_run_of_the_first_release_is_the_same_experiment_as_one_recorded_now(
    tmp_path, reference_run
):
    old = Path(shutil.copytree(reference_run, tmp_path / reference_run.name))
    as_first_release(old)
    read, now = runs.read_run(old), runs.read_run(reference_run)
    assert read is not None and now is not None
    assert read.args == now.args  # compile and masks_from too, at their defaults
    assert experiment.identity(read.args) == experiment.identity(now.args)
    on = experiment.trial_fields()
    assert experiment.identity(read.args, on) == experiment.identity(now.args, on)


@pytest.mark.parametrize(
    "flag",
    [
        ["--val_size", "10"],
        ["--warmup_iters", "3"],
        ["--prune_scope", "global"],
        ["--augment"],
        ["--masks_from", "elsewhere"],
    ],
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


def test_a_resume_that_gives_an_older_run_a_run_option_it_lacks_records_the_change(
    tmp_path, reference_run
):
    """--compile, which the first release did not record, is the default the run ran: another
    value given on --resume is a change of the run options, recorded as one."""
    run = Path(shutil.copytree(reference_run, tmp_path / "results" / reference_run.name))
    as_first_release(run)
    stopped_after(run, kept_checkpoints(reference_run), 0)
    assert run_main(tmp_path, "--resume", str(run), "--compile", "off") == 0
    (entry,) = recorded(run)["resumes"]
    assert entry["changed"] == {"compile": ["auto", "off"]}
    assert runs.read_run(run).args["compile"] == "off"
