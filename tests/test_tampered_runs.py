"""Run folders whose args.json or checkpoint were changed by hand, or come from elsewhere: what
`--resume` and combine_plots.py read from them is checked before it is used, so each is refused
in one line naming the file, and nothing in any folder changes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import combine_plots
import main
from tests.conftest import kept_checkpoints, refused
from tests.resultfiles import snapshot, stopped_after


def copy_of(finished: Path, where: Path, name: str | None = None) -> Path:
    """A copy of the session's finished 2-level run, as if it had stopped after level 0."""
    run = Path(shutil.copytree(finished, where / (name or finished.name)))
    stopped_after(run, kept_checkpoints(finished), 0)
    return run


def one_line_refusal(capsys, argv: list[str], command=main.main) -> str:
    return refused(capsys, lambda: command(argv))


def edit_record(run: Path, change) -> None:
    record = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps(change(record)))


def test_a_batch_that_names_a_folder_elsewhere_is_refused_and_that_folder_is_untouched(
    tmp_path, capsys, reference_run
):
    run = copy_of(reference_run, tmp_path / "mine")
    victim = copy_of(reference_run, tmp_path / "victim")
    escape = f"../victim/{victim.name}"
    edit_record(run, lambda r: {**r, "batch": {"runs": [escape], "index": 0, "ticket": None}})
    before, theirs = snapshot(run), snapshot(victim)
    line = one_line_refusal(capsys, ["--resume", str(run)])
    assert str(run / "args.json") in line and '"batch"' in line
    assert snapshot(run) == before and snapshot(victim) == theirs


def _set_arg(name, value):
    return lambda r: {**r, "args": {**r["args"], name: value}}


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda r: [], 'no "args" object'),
        (lambda r: {}, 'no "args" object'),
        (lambda r: {**r, "args": []}, 'no "args" object'),
        (_set_arg("end_iter", "abc"), "end_iter is 'abc', not int"),
        (_set_arg("end_iter", 1.5), "end_iter is 1.5, not int"),
        (_set_arg("prune_percent", "10"), "prune_percent is '10', not float"),
        (_set_arg("dataset", None), "dataset is None, not str"),
        (_set_arg("lr", "fast"), "lr is 'fast', not float"),
        (lambda r: {**r, "resumes": "x"}, '"resumes"'),
        (lambda r: {**r, "resumes": [{"changed": {"dataset": ["mnist", "cifar10"]}}]}, '"resumes"'),
        (_set_arg("end_iter", -5), "--end_iter must be at least 1, got -5"),
        (_set_arg("arch_type", "nonet"), "nonet"),
    ],
)
def test_a_tampered_args_json_is_refused_naming_it(tmp_path, capsys, reference_run, change, said):
    run = copy_of(reference_run, tmp_path)
    edit_record(run, change)
    before = snapshot(run)
    line = one_line_refusal(capsys, ["--resume", str(run)])
    assert str(run / "args.json") in line and said in line, line
    assert snapshot(run) == before


def _checkpoint_change(run: Path, change) -> None:
    path = run / "checkpoints" / "latest.pth"
    state = torch.load(path, weights_only=False)
    change(state)
    torch.save(state, path)


def _model_state(state, name, value):
    state["model_state"][name] = value


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda s: _model_state(s, "classifier.0.weight", torch.zeros(3, 3)), "classifier.0.weight"),
        (lambda s: _model_state(s, "bogus", torch.zeros(1)), "other tensors"),
        (lambda s: s["progress"]["mask"].update({"classifier.0.weight": np.ones((2, 2), bool)}), "mask"),
        (lambda s: s["progress"]["mask"].pop("classifier.2.weight"), "mask"),
        (lambda s: s["progress"].update(comp=np.zeros(1)), "comp"),
        (lambda s: s["progress"].update(comp="x"), "comp"),
        (lambda s: s["progress"].update(summary="x"), "summary"),
        (lambda s: s["progress"].update(tags=[1]), "tags"),
        (lambda s: s.update(level=99), "records level 99"),
        (lambda s: s.update(level=-1), "records level -1"),
        (lambda s: s.update(rng={**s["rng"], "torch": torch.zeros(3, dtype=torch.uint8)}), "generators"),
    ],
)  # fmt: skip
def test_a_tampered_checkpoint_is_refused_naming_it(tmp_path, capsys, reference_run, change, said):
    run = copy_of(reference_run, tmp_path)
    _checkpoint_change(run, change)
    before = snapshot(run)
    line = one_line_refusal(capsys, ["--resume", str(run)])
    assert str(run / "checkpoints" / "latest.pth") in line and said in line, line
    assert snapshot(run) == before


def test_combine_plots_names_the_args_json_that_is_not_lths(tmp_path, capsys, reference_run):
    run = Path(shutil.copytree(reference_run, tmp_path / reference_run.name))
    edit_record(run, _set_arg("dataset", None))
    line = one_line_refusal(capsys, [str(run), "--out", str(tmp_path / "out")], combine_plots.main)
    assert str(run / "args.json") in line and "dataset is None" in line, line
    assert not (tmp_path / "out").exists()
