"""The registry of prune methods (lth.methods): lth's methods in --prune_type's order, what the
command line and sweep.py read from it, and a method defined outside lth (tests.outside_method)
run through main.py, sweep.py and combine_plots.py with no change to lth."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import combine_plots
import main
import sweep
from lth import methods, runs
from lth.errors import UserError
from lth.pruning import prunable
from lth.safe_load import load_array_list
from lth.saliency import keep_highest, level_counts
from tests.conftest import ROOT, refused
from tests.outside_method import MAGNITUDE_AT_INIT, SPELLING
from tests.resultfiles import back_to_level
from tests.test_sweeps import FakeRay

TINY = ["--prune_iterations", "2", "--end_iter", "1", "--plot_dpi", "20", "--batch_size", "50"]
LTHS = ("lt", "reinit", "random", "lrr", "finetune", "snip", "grasp", "synflow", "reinit_ticket")


@pytest.fixture
def registry(monkeypatch):
    """lth's own registry for the test, as a copy: what the test registers goes with it."""
    monkeypatch.setattr(methods, "REGISTRY", methods.REGISTRY.copy())


def test_the_registry_holds_lths_methods_in_the_order_prune_type_lists_them(registry):
    assert methods.names() == LTHS
    assert [m.name for m in methods.recordable()] == list(LTHS[:-1])
    control = methods.get("reinit_ticket")
    assert (control.recorded_name, control.ticket, control.masks_of) == ("reinit", "lt", None)
    assert methods.get("reinit").masks_of == "lt"
    assert [m.name for m in methods.registered() if m.rewinds] == ["lt", "random"]
    assert [m.name for m in methods.registered() if m.keeps_trained] == ["lrr", "finetune"]
    assert [m.name for m in methods.registered() if m.holds_final_rate] == ["finetune"]
    assert methods.prune_type_help() == (
        "one of: lt, reinit, random, lrr, finetune, snip, grasp, synflow; several (and"
        " reinit_ticket: reinit with the masks of the lt trial of its seed) train together as"
        " one batch with every --seed"
    )
    assert sweep.prune_type_help() == (
        "any of: lt, reinit, random, lrr, finetune, snip, grasp, synflow, reinit_ticket;"
        " reinit_ticket is the paper's control: reinit with the masks of the lt run of the same"
        " percent and seed (needs lt in the same sweep)"
    )


def test_register_takes_a_method_once_under_its_own_name(registry):
    assert methods.register(MAGNITUDE_AT_INIT) is MAGNITUDE_AT_INIT
    assert methods.register(MAGNITUDE_AT_INIT) is MAGNITUDE_AT_INIT  # again: no change
    assert methods.names() == (*LTHS, "magnitude_at_init")
    with pytest.raises(ValueError, match="another prune method is registered as lt"):
        methods.register(
            methods.PruneMethod("lt", "", methods.by_magnitude, methods.keep_survivors)
        )
    with pytest.raises(ValueError, match="an identifier"):
        methods.register(
            methods.PruneMethod("a:b", "", methods.by_magnitude, methods.keep_survivors)
        )
    with pytest.raises(ValueError, match="names nothing_here, which is no registered"):
        methods.register(
            methods.PruneMethod(
                "mine", "", methods.by_magnitude, methods.keep_survivors, masks_of="nothing_here"
            )
        )


def test_a_command_line_imports_a_method_it_names_by_module_and_attribute(registry):
    assert methods.find("lottery") is None
    assert methods.find(SPELLING) is MAGNITUDE_AT_INIT
    assert methods.get("magnitude_at_init") is MAGNITUDE_AT_INIT
    assert methods.spelling("magnitude_at_init") == SPELLING
    assert methods.spelling("lt") == "lt"
    assert methods.record_name(SPELLING) == "magnitude_at_init"
    assert methods.record_name("reinit_ticket") == "reinit"
    with pytest.raises(UserError, match="--prune_type tests.no_such_module:X: cannot import"):
        methods.find("tests.no_such_module:X")
    with pytest.raises(UserError, match="has no prune method magnitude_of_initial_weights"):
        methods.find("tests.outside_method:magnitude_of_initial_weights")


def test_a_recorded_prune_type_is_looked_up_never_imported(registry, monkeypatch):
    monkeypatch.delitem(sys.modules, "tests.outside_method")
    with pytest.raises(UserError) as refusal:
        methods.recorded(SPELLING)
    assert str(refusal.value) == (
        f"--prune_type {SPELLING} is not supported; choose one of: lt, reinit, random, lrr,"
        " finetune, snip, grasp, synflow (a method defined outside lth is known once the command"
        " line names it: --prune_type MODULE:ATTRIBUTE)"
    )
    assert "tests.outside_method" not in sys.modules
    with pytest.raises(UserError, match="--prune_type reinit_ticket is not supported"):
        methods.recorded("reinit_ticket")  # a run records it as reinit


def outside_mask(run: runs.Run, level: int) -> dict:
    """What MAGNITUDE_AT_INIT keeps at `level`, from the run's initial state, computed here."""
    model = torch.load(run.files.initial_state_path(), weights_only=False)
    initial = model.state_dict()
    counts = level_counts(model, level, run.args["prune_percent"])
    return keep_highest({name: initial[name].abs() for name in prunable(model)}, counts)


def test_an_outside_method_trains_in_a_batch_through_main(registry, tmp_path, mnist_data):
    methods.register(MAGNITUDE_AT_INIT)
    results = tmp_path / "results"
    flags = [*TINY, *mnist_data, "--results_root", str(results), "--seed", "0"]
    assert main.main([*flags, "--prune_type", "lt", "magnitude_at_init"]) == 0
    lt, outside = runs.all_runs(results)
    assert (lt.args["prune_type"], outside.args["prune_type"]) == ("lt", "magnitude_at_init")
    assert lt.complete and outside.complete
    assert outside.files.initial_state_path().name == "initial_state_dict_magnitude_at_init.pth.tar"
    saved = load_array_list(outside.mask_path(1))
    expected = outside_mask(outside, 1)
    assert all(np.array_equal(a, b) for a, b in zip(saved, expected.values(), strict=True))
    assert not all(
        np.array_equal(a, b) for a, b in zip(saved, load_array_list(lt.mask_path(1)), strict=True)
    )


def test_a_resume_finds_an_outside_method_only_where_the_command_line_names_it(
    registry, tmp_path, capsys, mnist_data, monkeypatch
):
    lths_own = methods.REGISTRY.copy()
    results = tmp_path / "results"
    flags = [*TINY, *mnist_data, "--results_root", str(results), "--seed", "1"]
    assert main.main([*flags, "--prune_type", SPELLING]) == 0
    [run] = runs.all_runs(results)
    assert run.args["prune_type"] == "magnitude_at_init" and run.complete
    back_to_level(run.root, 0)

    monkeypatch.setattr(methods, "REGISTRY", lths_own.copy())  # as a new process starts
    line = refused(capsys, lambda: main.main(["--resume", str(run.root)]))
    assert line == (
        f"error: {run.root / 'args.json'}: --prune_type magnitude_at_init is not supported;"
        " choose one of: lt, reinit, random, lrr, finetune, snip, grasp, synflow (a method"
        " defined outside lth is known once the command line names it: --prune_type"
        " MODULE:ATTRIBUTE)"
    )
    assert main.main(["--resume", str(run.root), "--prune_type", SPELLING]) == 0
    assert runs.load_run(run.root).complete
    assert f"resuming {run.root} at level 1" in capsys.readouterr().out

    monkeypatch.setattr(methods, "REGISTRY", lths_own.copy())
    # a name read from a run folder is never imported, not even one a command line may name
    record = json.loads((run.root / "args.json").read_text())
    record["args"]["prune_type"] = SPELLING
    (run.root / "args.json").write_text(json.dumps(record))
    back_to_level(run.root, 0)
    monkeypatch.delitem(sys.modules, "tests.outside_method")
    line = refused(capsys, lambda: main.main(["--resume", str(run.root)]))
    assert f"--prune_type {SPELLING} is not supported" in line
    assert "tests.outside_method" not in sys.modules


def test_an_outside_method_runs_through_sweep_and_combine_plots(
    registry, tmp_path, monkeypatch, capsys, mnist_data
):
    """The sweep imports the method from its --prune_type, gives each main.py process the same
    MODULE:ATTRIBUTE, and draws its line; a new process of combine_plots.py labels it from the
    run's args.json alone."""
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    argv = ["--prune_type", "lt", SPELLING, "--prune_percent", "50", "--seed", "0"]
    argv += ["--results_root", str(results), "--", *TINY, *mnist_data]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "sweep: 2 task(s) in 1 process(es) on Ray" in out
    assert "sweep: magnitude_at_init_50_seed0 done" in out
    (started,) = fake.started
    assert started[started.index("--prune_type") :][:3] == ["--prune_type", "lt", SPELLING]
    lt, outside = runs.all_runs(results)
    assert outside.args["prune_type"] == "magnitude_at_init" and outside.complete
    table = (results / "combined_plots" / "combined_fc1_mnist.csv").read_text()
    assert {line.split(",")[0] for line in table.splitlines()[1:]} == {"lt", "magnitude_at_init"}
    assert sweep.main(argv) == 0  # the same sweep again finds both finished
    assert capsys.readouterr().out.count("skipped") == 2

    drawn = subprocess.run(
        [sys.executable, str(ROOT / "combine_plots.py"), str(lt.root), str(outside.root)]
        + ["--out", str(tmp_path / "again"), "--dpi", "20"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert drawn.returncode == 0, drawn.stderr
    table = (tmp_path / "again" / "combined_fc1_mnist.csv").read_text()
    assert {line.split(",")[0] for line in table.splitlines()[1:]} == {"lt", "magnitude_at_init"}
    assert (
        combine_plots.main(
            [str(lt.root), str(outside.root), "--out", str(tmp_path / "in"), "--dpi", "20"]
        )
        == 0
    )
