"""lth.settings: each setting is one field that carries its flag, so a new flag is one field; the
recipe's derived values are its methods; record.RunRecord reads every run folder's args.json
with its resumes applied."""

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import instability
from lth import cli, experiment, record, resume, runs, settings
from lth.errors import UserError
from lth.experiment import TrialSettings, identity
from lth.record import RunRecord
from lth.settings import NETWORKS, Recipe, RunOptions, at_least, flag
from tests.conftest import kept_checkpoints
from tests.resultfiles import stopped_after
from tests.test_main import TINY, only_run, run_main


@dataclass(frozen=True)
class WiderRecipe(Recipe):
    """The recipe with one more setting, as a new flag would add it."""

    widen: int = flag(1, "widen every layer by this factor", NETWORKS, type=int, check=at_least(1))


@pytest.fixture
def wider(monkeypatch):
    monkeypatch.setattr(experiment, "KINDS", (WiderRecipe, RunOptions, TrialSettings))


def test_a_new_flag_is_one_field_in_the_parser(wider):
    parser = cli.build_parser()
    networks = next(g for g in parser._action_groups if g.title == "networks")
    assert [a.dest for a in networks._group_actions][-1] == "widen"
    assert cli.parse_args([]).widen == 1 and cli.parse_args(["--widen", "3"]).widen == 3
    args = cli.one_trial(cli.parse_args(["--widen", "0", "--seed", "1"]))
    with pytest.raises(UserError, match=r"^--widen must be at least 1, got 0$"):
        cli.validate(args)


def test_a_new_flag_is_one_field_in_args_json_identity_and_resume(wider, tmp_path):
    args = cli.one_trial(cli.parse_args(["--widen", "3", "--seed", "1"]))
    cli.validate(args)
    shared = experiment.Experiment.of(vars(args))
    assert isinstance(shared.recipe, WiderRecipe) and shared.widen == 3
    arguments = experiment.Trial(1, "lt").args(shared)
    assert arguments["widen"] == 3
    batch = {"runs": [tmp_path.name], "index": 0, "ticket": None}
    RunRecord.new(tmp_path, arguments, "cpu", batch).write()
    assert json.loads(RunRecord.path(tmp_path).read_text())["args"]["widen"] == 3
    assert RunRecord.read(tmp_path).args["widen"] == 3
    assert ("widen", 3) in identity(arguments)
    older = {k: v for k, v in arguments.items() if k != "widen"}  # recorded before the flag
    assert RunRecord(tmp_path, {"args": older}).args["widen"] == 1
    assert identity(older) == identity({**arguments, "widen": 1})
    with pytest.raises(UserError, match=r"--widen 3 differs from the run's 1"):
        resume.changed_flags(RunRecord(tmp_path, {"args": older}).args, args, {"widen"})
    damaged = {"args": {**arguments, "widen": "wide"}}
    with pytest.raises(UserError, match="widen is 'wide', not int"):
        record.check(damaged, RunRecord.path(tmp_path))


def test_a_new_flag_is_one_field_in_a_run(wider, tmp_path, capsys, mnist_data):
    flags = [*TINY, "--prune_iterations", "2", *mnist_data]
    assert run_main(tmp_path, *flags, "--widen", "2") == 0
    run = only_run(tmp_path)
    assert json.loads(RunRecord.path(run).read_text())["args"]["widen"] == 2
    capsys.readouterr()
    assert run_main(tmp_path, "--resume", str(run), "--start_iter", "0", "--widen", "3") == 2
    err = capsys.readouterr().err
    assert "--widen 3 differs from the run's 2" in err, err


def test_the_parser_is_made_from_the_fields():
    parser = cli.build_parser()
    declared = settings.settings_fields(experiment.KINDS)
    assert {a.dest for a in parser._actions} - {"help"} == set(declared)
    heading = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    for field in declared.values():
        action = next(a for a in parser._actions if a.dest == field.name)
        assert action.help == settings.flag_of(field).help
        assert heading[field.name] == settings.flag_of(field).heading


def test_the_recipe_derives_its_values():
    recipe = Recipe(rewind_epoch=2, lr_drops="3,5", end_iter=10, arch_type="fclin", fclin_depth=2)
    assert recipe.rewind_step(7) == 14 and Recipe(rewind_iter=5).rewind_step(7) == 5
    assert recipe.lr_drop_epochs() == [3, 5] and Recipe().lr_drop_epochs() == []
    assert recipe.arch_options() == {"depth": 2} and Recipe().arch_options() == {}
    rates = Recipe(prune_scope="global", prune_percent_conv=15.0).rates()
    assert rates == {"scope": "global", "output_percent": None, "conv_percent": 15.0}
    assert Recipe(arch_type="fclin").values()["init"] == "data"
    assert Recipe().values()["init"] == "xavier"


def test_every_reader_sees_a_run_as_its_resumes_left_it(tmp_path, reference_run):
    """The run options a resume changed (here --data_dir and --plot_dpi) are the run's from
    then on, for runs.py and instability.py as for the next resume."""
    run = Path(shutil.copytree(reference_run, tmp_path / reference_run.name))
    content = json.loads(RunRecord.path(run).read_text())
    moved = str(tmp_path / "moved_data")
    entry = {
        "at_level": 1,
        "changed": {"data_dir": [content["args"]["data_dir"], moved], "plot_dpi": [20, 30]},
    }
    RunRecord(run, {**content, "resumes": [entry]}).write()
    read = runs.checked_run(run)
    assert read.args["data_dir"] == moved and read.args["plot_dpi"] == 30
    asked = argparse.Namespace(gpu="0", data_dir=None, plot_dpi=None)
    recipe = instability.recorded_recipe(read, asked)
    assert recipe.data_dir == moved and recipe.plot_dpi == 30


def test_a_resume_entry_is_added_to_the_record(tmp_path, reference_run):
    before = RunRecord.read(reference_run)
    after = before.resumed(1, {"print_freq": [1, 2]}, "cpu")
    (entry,) = after.content["resumes"]
    assert entry["at_level"] == 1 and entry["changed"] == {"print_freq": [1, 2]}
    assert set(entry) == {"at_level", "changed", "started", "host", "device"}
    assert after.args["print_freq"] == 2 and before.args["print_freq"] == 1


def test_a_run_resumed_with_new_options_resumes_again_with_them(tmp_path, reference_run):
    run = Path(shutil.copytree(reference_run, tmp_path / "results" / reference_run.name))
    stopped_after(run, kept_checkpoints(reference_run), 0)
    assert run_main(tmp_path, "--resume", str(run), "--print_freq", "2") == 0
    assert runs.read_run(run).args["print_freq"] == 2
