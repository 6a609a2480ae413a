"""Nothing read back from a run folder runs code: crafted mask files, dumps, checkpoints and saved
models are refused (a UserError naming the file) before any of their code runs, while the files
this program (and the original) writes still load."""

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import archs
import combine_plots
import main
from lth import lottery, resume, runs, safe_load
from lth.errors import UserError
from lth.experiment import Trial
from lth.record import TrialRandom, rng_states
from lth.results import RunDir, read_mask
from lth.train import add_input_dropout
from tests.datafiles import write_mnist_files
from tests.resultfiles import back_to_level

TINY = ["--end_iter", "1", "--plot_dpi", "20", "--batch_size", "50", "--seed", "0"]


class Payload:
    """Unpickled, it runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def runs_code(path: Path, marker: Path, load) -> bool:
    """Whether the plain (unrestricted) `load` of `path` runs its payload: the crafted file is
    real. The marker is removed again."""
    load(path)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def plain_pickle(path: Path):
    with open(path, "rb") as file:
        return pickle.load(file)


def plain_torch(path: Path):
    return torch.load(path, weights_only=False)


def fc1() -> nn.Module:
    torch.manual_seed(0)
    return archs.build("mnist", "fc1")


# -- the loaders ---------------------------------------------------------------------------------
def test_a_crafted_mask_file_is_refused_and_runs_nothing(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "lt_mask_100.0.pkl"
    path.write_bytes(pickle.dumps([np.ones((300, 784), np.float32), Payload(marker)]))
    assert runs_code(path, marker, plain_pickle)
    with pytest.raises(UserError) as refused:
        read_mask(path, fc1())
    assert not marker.exists()
    assert str(refused.value).startswith(f"{path}: refused, it refers to posix.system")


def test_a_crafted_dump_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    run = runs.Run(tmp_path, {"arch_type": "fc1", "dataset": "mnist", "prune_type": "lt"}, "")
    path = run.files.dump_path("bestaccuracy")
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    assert runs_code(path, marker, plain_pickle)
    with pytest.raises(UserError) as refused:
        run.best_accuracy()
    assert not marker.exists()
    assert str(refused.value).startswith(f"{path}: refused, it refers to posix.system")
    # plain values that run nothing but are not what a dump holds: refused too
    for value in (np.array([1, "x"], dtype=object), [np.zeros(2)], {"a": 1}):
        path.write_bytes(pickle.dumps(value, protocol=2))
        with pytest.raises(UserError, match=f"{path}: refused, it holds"):
            safe_load.load_array(path)


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    files = RunDir(tmp_path, "fc1", "mnist", "lt")
    files.save_checkpoint({"level": 0, "model_state": {}, "progress": Payload(marker), "rng": {}})
    path = files.checkpoint_path()
    assert runs_code(path, marker, plain_torch)
    with pytest.raises(UserError) as refused:
        files.checkpoint_level()  # what --resume, combine_plots.py and sweep.py read first
    assert not marker.exists()
    assert str(refused.value).startswith(f"checkpoint {path} holds a reference to posix.system")
    with pytest.raises(UserError, match=f"checkpoint {path} holds a reference to posix.system"):
        resume.load_checkpoint(path)
    assert not marker.exists()


def test_a_crafted_saved_model_is_refused_and_runs_nothing(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "initial_state_dict_lt.pth.tar"
    model = fc1()
    classes = lottery.saved_model_classes(model)
    model.payload = Payload(marker)  # an attribute of a real model
    torch.save(model, path)
    assert runs_code(path, marker, plain_torch)
    with pytest.raises(UserError) as refused:
        resume.saved_state(path, "initial state", classes)
    assert not marker.exists()
    assert str(refused.value).startswith(f"initial state {path} holds a reference to posix.system")
    # a model of a class this run does not build is refused as well
    torch.save(nn.Sequential(nn.Conv2d(1, 1, 1)), path)
    with pytest.raises(UserError, match=f"{path} holds a reference to torch.nn.modules.conv"):
        resume.saved_state(path, "initial state", classes)


def test_the_files_this_program_writes_load(tmp_path):
    model = add_input_dropout(fc1(), 0.1)  # --dropout: a hook object in the saved model
    files = RunDir(tmp_path, "fc1", "mnist", "lt")
    mask = {name: np.ones(p.shape, np.float32) for name, p in model.named_parameters()}
    mask = {name: m for name, m in mask.items() if name.endswith("weight")}
    files.dump_mask(model, mask, files.dump_path("mask", "100.0", ".pkl"))
    read = read_mask(files.dump_path("mask", "100.0", ".pkl"), model)
    assert list(read) == list(mask) and all(np.array_equal(read[n], mask[n]) for n in mask)
    files.dump_array(np.array([100.0, 80.0]), files.dump_path("compression"))
    assert safe_load.load_array(files.dump_path("compression")).tolist() == [100.0, 80.0]

    files.save_model(model, files.initial_state_path())
    state = resume.saved_state(
        files.initial_state_path(), "initial state", lottery.saved_model_classes(model)
    )
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    progress = {"comp": np.array([100.0]), "bestacc": np.array([90.0]), "mask": mask}
    progress |= {"tags": ["100.0"], "summary": [{"level": 0, "best_accuracy": np.float64(1)}]}
    progress |= {"initial_state": state, "rewind_state": None}
    trial = lottery.TrialRun(
        Trial(0, "lt"), model, TrialRandom(0), files, lottery.Progress(**progress)
    )
    files.save_checkpoint(lottery.checkpoint(0, trial))
    checkpoint = resume.load_checkpoint(files.checkpoint_path())
    assert files.checkpoint_level() == 0
    assert checkpoint["rng"]["numpy"][1].dtype == np.uint32
    assert checkpoint["trial_rng"]["numpy"][1].dtype == np.uint32
    assert checkpoint["progress"]["mask"]["classifier.0.weight"].dtype == np.bool_


def test_files_of_numpy_1_and_of_the_original_load(tmp_path):
    """numpy 1 names its array reconstruction numpy.core.multiarray; ndarray.dump is protocol 2."""
    dump = tmp_path / "old.dat"
    dump.write_bytes(
        pickle.dumps(np.arange(3.0), protocol=2).replace(b"numpy._core.", b"numpy.core.")
    )
    assert safe_load.load_array(dump).tolist() == [0.0, 1.0, 2.0]
    buffer = io.BytesIO()  # the pickle of the legacy format is one stream: names can be edited
    old_format = {"_use_new_zipfile_serialization": False}
    torch.save({"comp": np.zeros(2), "x": np.float64(1)}, buffer, **old_format)
    old = tmp_path / "old.pth"
    old.write_bytes(buffer.getvalue().replace(b"numpy._core.", b"numpy.core."))
    assert b"numpy.core.multiarray" in old.read_bytes()
    assert safe_load.load_torch(old, "checkpoint")["comp"].tolist() == [0.0, 0.0]


def test_a_checkpoint_saved_on_a_gpu_loads_onto_the_cpu(tmp_path, monkeypatch):
    files = RunDir(tmp_path, "fc1", "mnist", "lt")
    with monkeypatch.context() as patch:  # every tensor as if saved from cuda:3
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:3")
        files.save_checkpoint(
            {"level": 2, "model_state": {"w": torch.ones(2)}, "progress": {}, "rng": rng_states()}
        )
    assert b"cuda:3" in files.checkpoint_path().read_bytes()
    if not torch.cuda.is_available():  # without map_location it would not load here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(files.checkpoint_path(), weights_only=False)
    state = resume.load_checkpoint(files.checkpoint_path())
    assert state["model_state"]["w"].device.type == "cpu"
    assert files.checkpoint_level() == 2


# -- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lt_run(tmp_path_factory) -> dict:
    """A finished lt run of 2 levels on tiny MNIST, and the flags that made it."""
    top = tmp_path_factory.mktemp("safe")
    source = write_mnist_files(top / "source", n_train=100, n_test=50)
    common = [*TINY, f"--data_source={source}", f"--data_dir={top / 'data'}"]
    common += [f"--results_root={top / 'results'}", "--prune_iterations", "2"]
    assert main.main([*common, "--prune_type", "lt"]) == 0
    [run] = runs.all_runs(top / "results")
    return {"root": run.root, "common": common}


def copied(lt_run: dict, to: Path) -> Path:
    return Path(shutil.copytree(lt_run["root"], to / lt_run["root"].name))


def one_line_error(capsys, status: int) -> str:
    captured = capsys.readouterr()
    assert status == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_masks_from_a_run_with_a_crafted_mask_file_is_refused(lt_run, tmp_path, capsys):
    run, marker = copied(lt_run, tmp_path), tmp_path / "pwned"
    path = runs.read_run(run).mask_path(1)
    path.write_bytes(pickle.dumps([Payload(marker)]))
    flags = [*lt_run["common"], f"--results_root={tmp_path / 'new'}", "--prune_type", "reinit"]
    capsys.readouterr()
    status = main.main([*flags, "--masks_from", str(run)])
    assert not marker.exists() and not (tmp_path / "new").exists()
    assert f"{path}: refused, it refers to posix.system" in one_line_error(capsys, status)


def test_resume_of_a_run_with_a_crafted_checkpoint_is_refused(lt_run, tmp_path, capsys):
    run, marker = copied(lt_run, tmp_path), tmp_path / "pwned"
    path = run / "checkpoints" / "latest.pth"
    torch.save({"level": 0, "model_state": {}, "progress": Payload(marker), "rng": {}}, path)
    capsys.readouterr()
    status = main.main(["--resume", str(run)])
    assert not marker.exists()
    line = one_line_error(capsys, status)
    assert f"checkpoint {path} holds a reference to posix.system" in line


def test_resume_of_a_run_with_a_crafted_initial_model_is_refused(lt_run, tmp_path, capsys):
    run, marker = copied(lt_run, tmp_path), tmp_path / "pwned"
    back_to_level(run, 0)  # a resume at level 1 reads the initial state back
    path = run / "saves" / "fc1" / "mnist" / "initial_state_dict_lt.pth.tar"
    model = torch.load(path, weights_only=False)
    model.payload = Payload(marker)
    torch.save(model, path)
    before = (run / "args.json").read_bytes()
    capsys.readouterr()
    status = main.main(["--resume", str(run)])
    assert not marker.exists() and (run / "args.json").read_bytes() == before
    line = one_line_error(capsys, status)
    assert f"initial state {path} holds a reference to posix.system" in line


@pytest.mark.parametrize("crafted", ["bestaccuracy", "checkpoint"])
def test_combine_plots_refuses_a_run_with_a_crafted_file(lt_run, tmp_path, capsys, crafted):
    run, marker = copied(lt_run, tmp_path), tmp_path / "pwned"
    if crafted == "bestaccuracy":
        path = runs.read_run(run).files.dump_path("bestaccuracy")
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    else:
        path = run / "checkpoints" / "latest.pth"
        torch.save({"level": 1, "progress": Payload(marker)}, path)
    capsys.readouterr()
    status = combine_plots.main([str(run), "--dpi", "20"])
    assert not marker.exists() and not (tmp_path / "combined_plots").exists()
    line = one_line_error(capsys, status)
    assert str(path) in line and "posix.system" in line
