"""Runs recorded by commit d3238f0 (tests/fixtures/d3238f0, made by tests/fixtures/make_d3238f0.py):
the same command lines write the same files today, and those folders resume, group, compare,
serve --masks_from and feed instability.py as they did at d3238f0.

Every test works on a copy of the fixture in its own folder, laid out as the folder the fixture
was made in: `source/` (the data files, written again by write_mnist_files and checked against
the recorded hashes), `data/` (imported by the first run) and `results/`; the runs recorded
these relative paths. The runs here use the thread count the fixture was made with.

Where torch's version and the CPU kernels it picks are the fixture's (fingerprint.json), every
number is compared bit for bit; elsewhere each float within RTOL and each array of floats within
NORM_RTOL as a whole, and everything that is no float (names, masks, integers, texts) exactly. Where Python, numpy and matplotlib are the fixture's
too, the files are compared byte for byte as well; otherwise the PNGs by their size in pixels.
"""

import contextlib
import csv
import io
import json
import lzma
import math
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import combine_plots
import instability
import main
from lth.results import RunDir
from tests.fixtures import make_d3238f0 as made
from tests.resultfiles import files_under, scalars, snapshot

RECORDED = json.loads((made.FIXTURE / made.FINGERPRINT).read_text())
OMITTED = json.loads((made.FIXTURE / made.OMITTED_FILE).read_text())
HERE = made.fingerprint()
# The float results repeat bit for bit on the same torch and CPU kernels (the thread count is
# set to the fixture's below); the files' bytes also need the same Python, numpy and matplotlib.
EXACT = all(HERE[key] == RECORDED[key] for key in ("torch", "cpu_capability"))
SAME_BYTES = EXACT and all(HERE[key] == RECORDED[key] for key in ("python", "numpy", "matplotlib"))
# Off the fixture's machine: each float within RTOL (ATOL near 0); each array or tensor of floats
# within NORM_RTOL as a whole (the norm of the difference against its own). Adam turns the last
# bits of another CPU's sums into larger changes of a few single weights: measured on this
# fixture with torch's AVX2 and scalar kernels against its AVX512 ones (ATEN_CPU_CAPABILITY), the
# floats differed by at most 4e-7 relatively and the weights by at most 7e-6 as a whole, while
# single weights differed by up to 8%.
RTOL, ATOL, NORM_RTOL = 1e-5, 1e-7, 1e-4
LEVELS = 3

# The runs of the fixture by (recorded prune type, seed): the batch's four, and the run killed
# after level 1.
BATCH_ROLES = [("lt", 0), ("lt", 1), ("reinit", 0), ("reinit", 1)]
INTERRUPTED_ROLE = ("lt", 5)

# What d3238f0 printed for the fixture (captured there; `{...}` stands for a path).
TABLE = (
    "level  weights_left  lt (2 trials)        reinit with lt masks (2 trials)\n"
    "0      100.0         37.50 (35.00-40.00)  37.50 (35.00-40.00)\n"
    "1      50.0          60.00 (60.00-60.00)  30.00 (26.67-33.33)\n"
    "2      25.0          37.50 (36.67-38.33)  21.67 (20.00-23.33)\n"
)
COMBINED_CSV = (
    "line,level,weights_left,trials,measure,accuracy_mean,accuracy_min,accuracy_max,"
    "epoch_mean,epoch_min,epoch_max\n"
    "lt (2 trials),0,100.0,2,early_stop,37.5,35.0,40.0,2.0,2.0,2.0\n"
    "lt (2 trials),1,50.0,2,early_stop,60.0,60.0,60.0,2.0,2.0,2.0\n"
    "lt (2 trials),2,25.0,2,early_stop,37.5,36.666666666666664,38.333333333333336,2.0,2.0,2.0\n"
    "reinit with lt masks (2 trials),0,100.0,2,early_stop,37.5,35.0,40.0,2.0,2.0,2.0\n"
    "reinit with lt masks (2 trials),1,50.0,2,early_stop,30.0,26.666666666666668,"
    "33.333333333333336,2.0,2.0,2.0\n"
    "reinit with lt masks (2 trials),2,25.0,2,early_stop,21.666667,20.0,23.333333333333332,"
    "2.0,2.0,2.0\n"
)
NOTHING_TO_DO = "nothing to do: {run} has finished all 3 levels\n"
LR_REFUSED = (
    "error: --resume: --lr 0.1 differs from the run's 0.0012 (only --gpu, --data_dir,"
    " --data_source, --plot_dpi, --results_root, --print_freq, --compile may change)\n"
)
INSTABILITY_VERDICT = (
    "level 0 (100% of weights left): error barrier 0.00 points (test error 65.00% at alpha 0,"
    " 65.00% at alpha 1, at most 65.00%): stable"
)


# -- running the command lines ---------------------------------------------------------------


@contextlib.contextmanager
def as_recorded(cwd: Path):
    """In `cwd`, with the thread count the fixture was made with (it changes float sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(RECORDED["threads"])
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(cwd)
            yield patch
    finally:
        torch.set_num_threads(threads)


def run(cwd: Path, program, *argv: str) -> int:
    """`program.main(argv)` (main.py, combine_plots.py, instability.py) run in `cwd`."""
    with as_recorded(cwd):
        return program(list(argv))


def interrupted_run(cwd: Path, *argv: str) -> int:
    """main.py stopped right after its KILLED_AFTER_COMMITS-th committed checkpoint, as the
    fixture's run was killed there."""
    real, commits = RunDir.commit_checkpoint, [0]

    def commit_checkpoint(self: RunDir) -> None:
        real(self)
        commits[0] += 1
        if commits[0] == made.KILLED_AFTER_COMMITS:
            raise KeyboardInterrupt

    with as_recorded(cwd) as patch:
        patch.setattr(RunDir, "commit_checkpoint", commit_checkpoint)
        return main.main(list(argv))


def workdir(folder: Path) -> Path:
    """`folder` laid out as the one the fixture was made in: the data files in source/."""
    source = made.write_data(folder)
    assert made.data_hashes(source) == RECORDED["data"], "write_mnist_files writes other data"
    return folder


def roles(results: Path) -> dict[tuple[str, int], Path]:
    """The run folders under `results` by (recorded prune type, seed)."""
    found = {}
    for run_dir in sorted(p for p in results.iterdir() if (p / "args.json").is_file()):
        args = json.loads((run_dir / "args.json").read_text())["args"]
        found[(args["prune_type"], args["seed"])] = run_dir
    return found


@pytest.fixture(scope="module")
def fixture_results(tmp_path_factory) -> Path:
    """The fixture's results/ unpacked once; each test copies it (`copied`)."""
    top = tmp_path_factory.mktemp("d3238f0")
    with lzma.open(made.FIXTURE / made.ARCHIVE) as packed, tarfile.open(fileobj=packed) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(top, filter="data")
        else:
            tar.extractall(top)
    results = top / "results"
    assert sorted(roles(results)) == sorted([*BATCH_ROLES, INTERRUPTED_ROLE])
    return results


def copied(fixture_results: Path, tmp_path: Path) -> dict[tuple[str, int], Path]:
    """A copy of the fixture's run folders in tmp_path/results/, the data in tmp_path/source/."""
    shutil.copytree(fixture_results, workdir(tmp_path) / "results")
    return roles(tmp_path / "results")


@pytest.fixture(scope="module")
def today(tmp_path_factory) -> Path:
    """The fixture's two command lines run on today's code: the batch, and the run stopped
    after level 1."""
    folder = workdir(tmp_path_factory.mktemp("today"))
    assert run(folder, main.main, *made.BATCH) == 0
    assert interrupted_run(folder, *made.INTERRUPTED) == 130
    return folder / "results"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The interrupted run's command line run to its end on today's code."""
    folder = workdir(tmp_path_factory.mktemp("uninterrupted"))
    assert run(folder, main.main, *made.INTERRUPTED) == 0
    (run_dir,) = roles(folder / "results").values()
    return run_dir


# -- comparing files -------------------------------------------------------------------------


def same_number(mine: float, theirs: float, what: str) -> None:
    if EXACT:
        assert mine == theirs or (math.isnan(mine) and math.isnan(theirs)), what
    else:
        assert math.isclose(mine, theirs, rel_tol=RTOL, abs_tol=ATOL), (what, mine, theirs)


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def same_text(mine: str, theirs: str, what: str) -> None:
    """Equal texts; off the fixture's machine, the numbers in them within the tolerance."""
    if EXACT:
        assert mine == theirs, what
        return
    assert NUMBER.split(mine) == NUMBER.split(theirs), what
    for a, b in zip(NUMBER.findall(mine), NUMBER.findall(theirs), strict=True):
        same_number(float(a), float(b), what)


def same_array(mine: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert isinstance(mine, np.ndarray) and isinstance(theirs, np.ndarray), what
    assert (mine.dtype, mine.shape) == (theirs.dtype, theirs.shape), what
    if EXACT or not np.issubdtype(theirs.dtype, np.floating):
        assert mine.tobytes() == theirs.tobytes(), what
        return
    a, b = mine.astype(np.float64), theirs.astype(np.float64)
    assert np.array_equal(np.isfinite(a), np.isfinite(b)), what
    finite = np.isfinite(b)
    difference = np.linalg.norm(a[finite] - b[finite])
    assert difference <= NORM_RTOL * np.linalg.norm(b[finite]) + ATOL, (what, difference)


def same_value(mine, theirs, what: str) -> None:
    """Deep equality of loaded content: tensors, arrays and floats as numbers, the rest exactly."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(mine, torch.Tensor), what
        same_array(mine.detach().cpu().numpy(), theirs.detach().cpu().numpy(), what)
    elif isinstance(theirs, np.ndarray):
        same_array(mine, theirs, what)
    elif isinstance(theirs, dict):
        assert isinstance(mine, dict) and list(mine) == list(theirs), what
        for key in theirs:
            same_value(mine[key], theirs[key], f"{what}.{key}")
    elif isinstance(theirs, list | tuple):
        assert type(mine) is type(theirs) and len(mine) == len(theirs), what
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            same_value(a, b, f"{what}[{i}]")
    elif isinstance(theirs, float):
        assert isinstance(mine, float), what
        same_number(mine, theirs, what)
    else:
        assert type(mine) is type(theirs) and mine == theirs, what


def same_record(mine: Path, theirs: Path, renamed: dict[str, str]) -> None:
    """args.json: the same fields; the same arguments, batch and device, the run folders named
    by the map `renamed` (fixture's -> mine); the time, host, commit, command line and package
    versions are the machine's and the moment's."""
    a, b = json.loads(mine.read_text()), json.loads(theirs.read_text())
    assert sorted(a) == sorted(b), mine
    assert sorted(a["versions"]) == sorted(b["versions"]), mine
    for field in ("seed", "device", "resumes"):
        assert a.get(field) == b.get(field), (mine, field)
    expected = dict(b["args"])
    if expected["masks_from"] is not None:  # the resolved folder of the ticket's run
        ticket = Path(expected["masks_from"])
        assert ticket.parent.name == "results", ticket
        expected["masks_from"] = str(mine.parent.parent.resolve() / renamed[ticket.name])
    assert a["args"] == expected, mine
    batch = b.get("batch")
    if batch is not None:
        batch = {**batch, "runs": [renamed[name] for name in batch["runs"]]}
    assert a.get("batch") == batch, mine


def png_size(path: Path) -> tuple[int, int]:
    content = path.read_bytes()
    assert content[:8] == b"\x89PNG\r\n\x1a\n" and content[12:16] == b"IHDR", path
    return int.from_bytes(content[16:20], "big"), int.from_bytes(content[20:24], "big")


def load(path: Path):
    """A result file's content: the original's pickles (an array, a mask's list of arrays) or
    torch's (a whole model, a checkpoint)."""
    if path.suffix in (".dat", ".pkl"):
        with open(path, "rb") as file:
            return pickle.load(file)
    return torch.load(path, weights_only=False)


def same_file(mine: Path, theirs: Path, name: str) -> None:
    """One result file of a run folder (not args.json, not TensorBoard's) against the fixture's."""
    if SAME_BYTES and not name.startswith("checkpoints/"):
        assert mine.read_bytes() == theirs.read_bytes(), name
    if name == "summary.csv":
        same_text(mine.read_text(), theirs.read_text(), name)
    elif name.endswith(".png"):
        assert png_size(mine) == png_size(theirs), name
    elif name.endswith(".pth.tar"):
        a, b = load(mine), load(theirs)
        assert type(a).__name__ == type(b).__name__ and repr(a) == repr(b), name
        same_value(a.state_dict(), b.state_dict(), name)
    elif name.startswith("checkpoints/") or name.endswith((".dat", ".pkl")):
        same_value(load(mine), load(theirs), name)
    else:
        raise AssertionError(f"{name}: a file the comparison does not know")


def same_as_omitted(mine: Path, recorded: dict, name: str) -> None:
    """A model file the fixture keeps as omitted.json's summary (make_d3238f0.state_summary)."""
    summary = made.state_summary(mine)
    if SAME_BYTES:
        assert summary["sha256"] == recorded["sha256"], name
    names = [tensor["name"] for tensor in recorded["tensors"]]
    assert [tensor["name"] for tensor in summary["tensors"]] == names, name
    for ours, theirs in zip(summary["tensors"], recorded["tensors"], strict=True):
        what = f"{name}: {theirs['name']}"
        for key in ("dtype", "shape", "nonzero"):
            assert ours[key] == theirs[key], (what, key)
        if EXACT:
            assert ours["sha256"] == theirs["sha256"], what
        for key in ("abs_sum", "square_sum"):
            same_number(ours[key], theirs[key], f"{what} {key}")


def same_tensorboard(mine: Path, theirs: Path) -> None:
    """One events file per level (their names hold the time, host and process) and the same
    scalars at the same steps."""

    def levels(folder: Path) -> list[str]:
        return sorted(p.name.rsplit(".", 1)[1] for p in (folder / "tensorboard").iterdir())

    assert levels(mine) == levels(theirs), mine
    a, b = scalars(mine / "tensorboard"), scalars(theirs / "tensorboard")
    assert sorted(a) == sorted(b), mine
    for tag in b:
        assert [step for step, _ in a[tag]] == [step for step, _ in b[tag]], tag
        for (step, x), (_, y) in zip(a[tag], b[tag], strict=True):
            same_number(x, y, f"{mine.name} {tag} at {step}")


def same_run(mine: Path, theirs: Path, renamed: dict[str, str]) -> None:
    """`mine` holds the files of the fixture's run folder `theirs` (and those omitted.json
    keeps for it) under the same names, with the same content."""
    left_out = {
        name.split("/", 1)[1]: summary
        for name, summary in OMITTED.items()
        if name.split("/", 1)[0] == theirs.name
    }
    names = files_under(mine, skip=("tensorboard",))
    assert names == files_under(theirs, skip=("tensorboard",)) | set(left_out), mine
    for name in sorted(names):
        if name in left_out:
            same_as_omitted(mine / name, left_out[name], name)
        elif name == "args.json":
            same_record(mine / name, theirs / name, renamed)
        else:
            same_file(mine / name, theirs / name, name)
    same_tensorboard(mine, theirs)


# -- the tests -------------------------------------------------------------------------------


def test_the_command_lines_write_today_the_files_that_d3238f0_wrote(today, fixture_results):
    mine, theirs = roles(today), roles(fixture_results)
    assert sorted(mine) == sorted(theirs)
    renamed = {theirs[role].name: mine[role].name for role in theirs}
    for role in sorted(theirs):
        same_run(mine[role], theirs[role], renamed)
    # the interrupted run stopped where the fixture's was killed: level 1 checkpointed, no more
    interrupted = mine[INTERRUPTED_ROLE]
    assert RunDir(interrupted, "fc1", "mnist", "lt").checkpoint_level() == 1
    assert not (interrupted / "saves/fc1/mnist/2_model_lt.pth.tar").exists()


def test_the_interrupted_run_resumes_to_the_files_of_an_uninterrupted_one(
    tmp_path, capsys, fixture_results, uninterrupted
):
    run_dir = copied(fixture_results, tmp_path)[INTERRUPTED_ROLE]
    relative = f"results/{run_dir.name}"
    capsys.readouterr()
    assert run(tmp_path, main.main, "--resume", relative) == 0
    assert f"resuming {relative} at level 2" in capsys.readouterr().out
    # the fixture keeps levels 0 and 1's best models as omitted.json's summaries only
    lacking = {"saves/fc1/mnist/0_model_lt.pth.tar", "saves/fc1/mnist/1_model_lt.pth.tar"}
    names = files_under(run_dir, skip=("tensorboard",))
    assert names | lacking == files_under(uninterrupted, skip=("tensorboard",))
    for name in sorted(names - {"args.json"}):
        same_file(run_dir / name, uninterrupted / name, name)
    same_tensorboard(run_dir, uninterrupted)
    resumed = json.loads((run_dir / "args.json").read_text())
    assert resumed["args"] == json.loads((uninterrupted / "args.json").read_text())["args"]
    assert [(r["at_level"], r["changed"]) for r in resumed["resumes"]] == [(2, {})]


def test_a_finished_batch_folder_resumes_to_nothing_to_do(tmp_path, capsys, fixture_results):
    runs = copied(fixture_results, tmp_path)
    before = snapshot(tmp_path / "results")
    for role in BATCH_ROLES:
        relative = f"results/{runs[role].name}"
        capsys.readouterr()
        assert run(tmp_path, main.main, "--resume", relative) == 0
        captured = capsys.readouterr()
        assert captured.out == NOTHING_TO_DO.format(run=relative) and captured.err == "", role
    assert snapshot(tmp_path / "results") == before


def test_the_batch_is_two_lines_of_two_trials(tmp_path, capsys, fixture_results):
    runs = copied(fixture_results, tmp_path)
    folders = [f"results/{runs[role].name}" for role in BATCH_ROLES]
    capsys.readouterr()
    assert run(tmp_path, combine_plots.main, *folders, "--out", "out", "--dpi", "20") == 0
    printed = capsys.readouterr().out
    same_text(
        printed,
        TABLE + "combined plot: out/combined_fc1_mnist.png\n"
        "combined table: out/combined_fc1_mnist.csv\n",
        "combine_plots.py RUN_DIR...",
    )
    table = (tmp_path / "out" / "combined_fc1_mnist.csv").read_text()
    same_text(table, COMBINED_CSV, "combined_fc1_mnist.csv")
    lines = {(row["line"], row["trials"]) for row in csv.DictReader(io.StringIO(table))}
    assert lines == {("lt (2 trials)", "2"), ("reinit with lt masks (2 trials)", "2")}
    assert png_size(tmp_path / "out" / "combined_fc1_mnist.png") == (128, 96)

    # without RUN_DIRs: the newest complete runs of --results_root, the interrupted one passed over
    capsys.readouterr()
    assert run(tmp_path, combine_plots.main, "--dpi", "20") == 0
    printed = capsys.readouterr().out
    same_text(
        printed,
        TABLE + "combined plot: results/combined_plots/combined_fc1_mnist.png\n"
        "combined table: results/combined_plots/combined_fc1_mnist.csv\n",
        "combine_plots.py",
    )
    combined = tmp_path / "results" / "combined_plots"
    same_text((combined / "combined_fc1_mnist.csv").read_text(), COMBINED_CSV, "--results_root")


def test_a_control_takes_the_masks_of_the_fixtures_lt_run(tmp_path, fixture_results):
    runs = copied(fixture_results, tmp_path)
    lt = runs[("lt", 0)]
    flags = ["--masks_from", f"results/{lt.name}", "--prune_type", "reinit", "--seed", "0"]
    assert run(tmp_path, main.main, *flags, *made.RECIPE, "--results_root", "control") == 0
    (control,) = (tmp_path / "control").iterdir()
    assert json.loads((control / "args.json").read_text())["args"]["masks_from"] == str(
        lt.resolve()
    )
    ticket = runs[("reinit", 0)]  # the batch's control of seed 0 took the same masks
    summary = (lt / "summary.csv").read_text().splitlines()[1:]
    tags = [row.split(",")[2] for row in summary]
    assert len(tags) == LEVELS
    for tag in tags:
        theirs = (lt / f"dumps/lt/fc1/mnist/lt_mask_{tag}.pkl").read_bytes()
        assert (control / f"dumps/lt/fc1/mnist/reinit_mask_{tag}.pkl").read_bytes() == theirs
        assert (ticket / f"dumps/lt/fc1/mnist/reinit_mask_{tag}.pkl").read_bytes() == theirs
    last = load(lt / f"dumps/lt/fc1/mnist/lt_mask_{tags[-1]}.pkl")
    assert 0 < sum(m.sum() for m in last) < sum(m.size for m in last)  # really pruned


def test_instability_analyses_a_level_of_the_fixtures_lt_run(tmp_path, capsys, fixture_results):
    lt = copied(fixture_results, tmp_path)[("lt", 0)]
    relative = f"results/{lt.name}"
    capsys.readouterr()
    assert run(tmp_path, instability.main, relative, "--levels", "0", "--points", "3") == 0
    printed = capsys.readouterr().out.splitlines()
    names = ["instability_seed0.csv", "instability_seed0_barriers.csv"]
    names += ["instability_seed0.png", "instability_seed0.json"]
    assert [line for line in printed if line.startswith("written: ")] == [
        f"written: {relative}/instability/{name}" for name in names
    ]
    assert sorted(p.name for p in (lt / "instability").iterdir()) == sorted(names)
    verdicts = [line for line in printed if line.startswith("level ")]
    assert len(verdicts) == 1
    same_text(verdicts[0], INSTABILITY_VERDICT, "instability.py")
    barriers = list(csv.DictReader(open(lt / "instability" / "instability_seed0_barriers.csv")))
    assert [(row["level"], row["weights_left"]) for row in barriers] == [("0", "100.0")]


@pytest.mark.parametrize("role", [INTERRUPTED_ROLE, ("lt", 0)], ids=["interrupted", "batch"])
def test_a_resume_that_changes_the_recipe_is_refused_as_d3238f0_refused_it(
    tmp_path, capsys, fixture_results, role
):
    run_dir = copied(fixture_results, tmp_path)[role]
    before = snapshot(tmp_path / "results")
    capsys.readouterr()
    assert run(tmp_path, main.main, "--resume", f"results/{run_dir.name}", "--lr", "0.1") == 2
    captured = capsys.readouterr()
    assert captured.err == LR_REFUSED
    assert snapshot(tmp_path / "results") == before


def test_the_fixture_records_its_machine_and_data(fixture_results):
    """fingerprint.json names what the comparisons depend on, and omitted.json covers exactly
    the best-model files left out of the archive."""
    for key in ("torch", "cpu_capability", "threads", "python", "numpy", "matplotlib", "data"):
        assert RECORDED[key], key
    expected = {
        f"{run_dir.name}/saves/fc1/mnist/{level}_model_{role[0]}.pth.tar"
        for role, run_dir in roles(fixture_results).items()
        for level in range(2 if role == INTERRUPTED_ROLE else LEVELS)
    }
    assert set(OMITTED) == expected
