"""`--masks_from RUN`: the paper's random-reinitialisation control, on tiny MNIST runs."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import main
from lth import lottery, runs
from lth.experiment import identity
from lth.pruning import prunable, state_copy
from tests.datafiles import write_mnist_files
from tests.resultfiles import back_to_level

LEVELS = 3
TINY = ["--end_iter", "1", "--plot_dpi", "20", "--batch_size", "50", "--prune_percent", "50"]


def run_recording_starts(flags: list[str]) -> tuple[int, list[dict]]:
    """main.main(flags), and the model's weights as each level's training starts."""
    starts = []
    original = lottery.train_level

    def recording(model, *args, **kwargs):
        starts.append(state_copy(model))
        return original(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lottery, "train_level", recording)
        status = main.main(flags)
    return status, starts


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """An lt run (seed 0) and its control (reinit --masks_from it, seed 0, as sweep.py runs it)."""
    top = tmp_path_factory.mktemp("masks_from")
    source = write_mnist_files(top / "source", n_train=100, n_test=50)
    common = [*TINY, f"--data_source={source}", f"--data_dir={top / 'data'}", "--seed", "0"]
    common += [f"--results_root={top / 'results'}", "--prune_iterations", str(LEVELS)]
    status, lt_starts = run_recording_starts([*common, "--prune_type", "lt"])
    assert status == 0
    [lt] = runs.all_runs(top / "results")
    control_flags = [*common, "--prune_type", "reinit", "--masks_from", str(lt.root)]
    status, control_starts = run_recording_starts(control_flags)
    assert status == 0
    [control] = [r for r in runs.all_runs(top / "results") if r.root != lt.root]
    return {
        "top": top,
        "common": common,
        "lt": lt,
        "control": control,
        "lt_starts": lt_starts,
        "control_starts": control_starts,
    }


def test_every_level_uses_the_mask_file_of_the_run_bit_for_bit(made):
    lt, control = made["lt"], runs.load_run(made["control"].root)
    assert control.finished_levels() == lt.finished_levels() == LEVELS
    for level in range(LEVELS):
        theirs, mine = lt.mask_path(level), control.mask_path(level)
        assert mine.name == theirs.name.replace("lt_", "reinit_", 1)
        assert mine.read_bytes() == theirs.read_bytes(), level
    with open(lt.mask_path(LEVELS - 1), "rb") as file:
        last = pickle.load(file)
    assert 0 < sum(m.sum() for m in last) < sum(m.size for m in last)  # really pruned


def test_args_json_records_the_resolved_run(made):
    record = json.loads((made["control"].root / "args.json").read_text())
    assert record["args"]["masks_from"] == str(made["lt"].root.resolve())
    assert record["args"]["prune_type"] == "reinit"
    lt_record = json.loads((made["lt"].root / "args.json").read_text())
    assert lt_record["args"]["masks_from"] is None


def test_weights_are_a_new_draw_at_every_level_not_the_tickets(made):
    lt_starts, control_starts = made["lt_starts"], made["control_starts"]
    assert len(lt_starts) == len(control_starts) == LEVELS
    masks = [runs.load_run(made["lt"].root).mask_path(k) for k in range(LEVELS)]
    names = [n for n in lt_starts[0] if n.endswith("weight")]
    for level in range(1, LEVELS):
        with open(masks[level], "rb") as file:
            mask = [torch.from_numpy(m) for m in pickle.load(file)]
        for name, keep in zip(names, mask, strict=True):
            ticket, drawn = lt_starts[level][name], control_starts[level][name]
            survivors = keep == 1
            # the ticket rewinds to its initial weights; the control's survivors are new values
            assert torch.equal(ticket[survivors], lt_starts[0][name][survivors])
            assert (drawn[survivors] != ticket[survivors]).all(), (level, name)
            assert (drawn[~survivors] == 0).all() and (ticket[~survivors] == 0).all()
            earlier = control_starts[level - 1][name]
            assert (drawn[survivors] != earlier[survivors]).all(), (level, name)


def test_pruned_weights_stay_zero_in_the_trained_models(made):
    control = runs.load_run(made["control"].root)
    for level in range(LEVELS):
        with open(control.mask_path(level), "rb") as file:
            mask = pickle.load(file)
        model = torch.load(control.files.model_path(level), weights_only=False)
        for (name, weight), keep in zip(prunable(model).items(), mask, strict=True):
            pruned = torch.from_numpy(keep) == 0
            assert (weight.detach()[pruned] == 0).all(), (level, name)
    # the checkpoint holds the last level's trained model
    state = torch.load(control.files.checkpoint_path(), weights_only=False)
    assert state["level"] == LEVELS - 1
    for (name, _), keep in zip(prunable(model).items(), mask, strict=True):
        assert (state["model_state"][name][torch.from_numpy(keep) == 0] == 0).all(), name


def refused(made, tmp_path: Path, capsys, masks_from: str, *extra: str) -> str:
    """Run the control with `masks_from` into an empty results root: exit 2, one line, no folder."""
    results = tmp_path / "fresh_results"
    flags = [*made["common"], f"--results_root={results}", "--prune_type", "reinit"]
    status = main.main([*flags, "--masks_from", masks_from, *extra])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert not results.exists() or not any(results.iterdir())
    return err


def edited_copy(run: Path, to: Path, **changes) -> Path:
    copy = Path(shutil.copytree(run, to / run.name))
    record = json.loads((copy / "args.json").read_text())
    record["args"].update(changes)
    (copy / "args.json").write_text(json.dumps(record))
    return copy


def test_a_mismatched_run_is_refused_with_one_line_and_nothing_created(made, tmp_path, capsys):
    lt = made["lt"].root
    other_arch = edited_copy(lt, tmp_path / "arch", arch_type="lenet5")
    err = refused(made, tmp_path, capsys, str(other_arch))
    assert "--arch_type lenet5, not fc1" in err
    other_data = edited_copy(lt, tmp_path / "data", dataset="fashionmnist")
    assert "--dataset fashionmnist, not mnist" in refused(made, tmp_path, capsys, str(other_data))

    err = refused(made, tmp_path, capsys, str(lt), "--prune_iterations", str(LEVELS + 1))
    assert f"has {LEVELS} finished level(s), fewer than --prune_iterations {LEVELS + 1}" in err
    interrupted = edited_copy(lt, tmp_path / "interrupted")
    back_to_level(interrupted, LEVELS - 2)
    err = refused(made, tmp_path, capsys, str(interrupted))
    assert f"has {LEVELS - 1} finished level(s)" in err

    assert "is not a run folder" in refused(made, tmp_path, capsys, str(tmp_path))
    err = refused(made, tmp_path, capsys, str(made["control"].root))
    assert "--prune_type reinit; the control takes the masks of an lt run" in err

    # a mask file that does not fit the model (another width of fc1's first layer)
    damaged = edited_copy(lt, tmp_path / "damaged")
    path = runs.read_run(damaged).mask_path(1)
    with open(path, "rb") as file:
        entries = pickle.load(file)
    entries[0] = entries[0][:, :10]
    path.write_bytes(pickle.dumps(entries))
    assert "should be an array" in refused(made, tmp_path, capsys, str(damaged))
    path.unlink()
    assert "cannot read a mask" in refused(made, tmp_path, capsys, str(damaged))


def test_masks_from_needs_prune_type_reinit(made, tmp_path, capsys):
    results = tmp_path / "fresh_results"
    flags = [*made["common"], f"--results_root={results}", "--prune_type", "lt"]
    assert main.main([*flags, "--masks_from", str(made["lt"].root)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --masks_from applies to --prune_type reinit (the random-reinitialisation"
        " control), not lt\n"
    )
    assert not results.exists()


def without(flags: list[str], *names: str) -> list[str]:
    """`flags` less each of `names` and its value."""
    dropped = {at + i for at, flag in enumerate(flags) if flag in names for i in (0, 1)}
    return [flag for at, flag in enumerate(flags) if at not in dropped]


def test_a_control_takes_the_rates_of_its_run_and_is_one_line_with_it(made, tmp_path, capsys):
    lt, control = made["lt"], made["control"]
    assert lt.args["prune_percent"] == 50.0
    # the default --prune_percent (10) and another seed: its trial's rates are the lt run's
    common = without(made["common"], "--prune_percent", "--seed")
    results = tmp_path / "results"
    flags = [*common, f"--results_root={results}", "--prune_type", "reinit", "--seed", "1"]
    assert main.main([*flags, "--masks_from", str(lt.root)]) == 0
    [other] = runs.all_runs(results)
    record = json.loads((other.root / "args.json").read_text())["args"]
    assert record["prune_percent"] == 50.0
    assert [record[name] for name in runs.MASK_ARGS] == [lt.args[n] for n in runs.MASK_ARGS]
    assert identity(other.args) == identity(control.args)

    groups = runs.trial_groups([lt, runs.load_run(control.root), runs.load_run(other.root)])
    assert [[r.root for r in g] for g in groups] == [[lt.root], [control.root, other.root]]
    assert runs.group_labels(groups) == ["lt", "reinit with lt masks (2 trials)"]
    shown = ["prune_type", "prune_percent"]
    assert runs.describe(other.args, shown) == "reinit with lt masks, 50% pruned"


def test_a_rate_flag_that_differs_from_the_runs_is_refused(made, tmp_path, capsys):
    lt = str(made["lt"].root)
    err = refused(made, tmp_path, capsys, lt, "--prune_percent", "10")
    assert err == (
        f"error: --prune_percent 10 differs from 50, that of the run --masks_from"
        f" {made['lt'].root.resolve()}: a control's masks, hence its rates, are that run's"
        " (leave --prune_percent out)\n"
    )
    err = refused(made, tmp_path, capsys, lt, "--prune_scope", "global")
    assert err.startswith("error: --prune_scope global differs from layer, that of the run")
    err = refused(made, tmp_path, capsys, lt, "--prune_percent_output", "5")
    assert err.startswith("error: --prune_percent_output 5 differs from None, that of the run")
    # a flag equal to the run's is no conflict: `made` gives --prune_percent 50 to its control
    assert (
        json.loads((made["control"].root / "args.json").read_text())["args"]["prune_percent"] == 50
    )
