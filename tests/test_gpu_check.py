"""scripts/gpu_check.sh (docs/gpu.md) works before a GPU is at hand: its dry run runs every step
on the CPU and tables them; without CUDA the real check refuses at once; --prepare puts the
data and the commit where the device call expects them."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.datafiles import write_mnist_files

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
NETWORKS = ("fc1", "conv2", "resnet20", "vgg19")
NUMBER = r"\d[\d,]*(?:\.\d+)?"


def gpu_check(*flags: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *flags],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def table_rows(text: str) -> list[list[str]]:
    """The cells of the markdown table's body rows."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| step | what | seconds | figures |"
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def seconds(cell: str) -> float:
    assert re.fullmatch(NUMBER, cell), cell
    return float(cell.replace(",", ""))


@pytest.mark.slow
def test_the_dry_run_runs_every_step_on_the_cpu_and_tables_it(tmp_path):
    out = tmp_path / "out"
    done = gpu_check("--dry-run", OUT=str(out))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    table = (out / "gpu_check.md").read_text()
    assert done.stdout.rstrip().endswith(table.rstrip())  # the table is printed last
    log = (out / "gpu_check.log").read_text()
    assert "== 1. tests" in log and "== 3. main.py" in log and table.rstrip() in log
    header = table.splitlines()[0]
    assert "(DRY RUN, tiny size): CPU" in header and "torch " in header and "commit " in header

    rows = table_rows(table)
    by_what = {(step, what): (s, figures) for step, what, s, figures in rows}
    assert len(by_what) == len(rows)

    # 1: every CUDA test ran (on the CPU) and passed
    tests = by_what[("1 tests", "pytest -m cuda tests/test_cuda.py")]
    collected = (ROOT / "tests" / "test_cuda.py").read_text().count("\ndef test_")
    assert tests[1] == f"{collected} passed" and seconds(tests[0]) > 0

    # 2: each network plain and compiled, with its figures
    bench = [r for r in rows if r[0] == "2 bench" and "one epoch" in r[1]]
    assert [(r[1].split()[0], r[1].rsplit(", ", 1)[1]) for r in bench] == [
        (net, step) for net in NETWORKS for step in ("plain", "compiled")
    ]
    for _, what, s, figures in bench:
        assert seconds(s) > 0, what
        assert re.search(rf"(^|; ){NUMBER} samples/s", figures), figures
        if what.endswith("compiled"):
            assert re.match(rf"compile {NUMBER} s; ", figures), figures
            assert re.search(r"x plain, (paid back by epoch [\d,]+|never pays back)", figures)
    assert "fc1 one epoch (600 fashion-mnist" in bench[0][1]
    # batched trials, k = 1 and 2 in the dry run, per-trial epoch over the images trained
    batched = [r for r in rows if r[0] == "2 batched"]
    assert [(r[1].split()[0], r[1].split()[1]) for r in batched] == [
        (net, f"k={k}") for net in ("fc1", "conv2") for k in (1, 2)
    ]
    for _, what, s, figures in batched:
        stacked = re.match(rf"stacked epoch ({NUMBER}) s on ", figures)
        k = int(what.split()[1].removeprefix("k="))
        assert stacked and seconds(s) == pytest.approx(seconds(stacked[1]) / k, rel=0.05, abs=2e-3)
        assert "scaled" not in what
    all_cases = by_what[("2 bench", "scripts/gpu_bench.py, all cases")]
    assert all_cases[1] == "12 of 12 cases measured"
    jsonl = (out / "gpu_bench.jsonl").read_text().splitlines()
    assert len(jsonl) == 12 and not any('"error"' in line for line in jsonl)

    # 3: the whole main.py run, on the CPU, with an accuracy for each of its 3 levels
    (main_row,) = [r for r in rows if r[0] == "3 main.py"]
    assert seconds(main_row[2]) > 0
    assert re.fullmatch(
        rf"device cpu; best test accuracy by level {NUMBER}/{NUMBER}/{NUMBER} %; --compile auto",
        main_row[3],
    ), main_row[3]
    assert (out / "main_run" / "summary.csv").read_text().count("\n") == 4  # header, 3 levels

    (total,) = [r for r in rows if r[0] == "total"]
    assert total[3] == "every step succeeded"
    parts = [seconds(r[2]) for r in rows if r[1] in ("pytest -m cuda tests/test_cuda.py",)]
    parts += [seconds(all_cases[0]), seconds(main_row[2])]
    assert sum(parts) <= seconds(total[2])


def test_without_cuda_the_check_refuses_in_one_line_and_points_at_the_dry_run(tmp_path):
    done = gpu_check(OUT=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_check: torch sees no CUDA")
    assert "--dry-run" in done.stderr
    assert not (tmp_path / "out" / "gpu_check.md").exists()


def test_prepare_copies_the_data_and_records_the_commit(tmp_path):
    source = write_mnist_files(tmp_path / "debian", n_train=20, n_test=10)
    target = tmp_path / "gpu_data"
    done = gpu_check("--prepare", FASHION_MNIST_DIR=str(source), GPU_DATA=str(target))
    assert done.returncode == 0, done.stderr
    copied = sorted(p.name for p in (target / "fashion-mnist").iterdir())
    assert copied == sorted(p.name for p in source.iterdir())
    for name in copied:
        assert (target / "fashion-mnist" / name).read_bytes() == (source / name).read_bytes()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    )
    expected = head.stdout.strip() if head.returncode == 0 else "unknown"
    assert (target / "COMMIT").read_text().strip().removesuffix("-dirty") == expected
    assert 'carry ["gpu_data"]' in done.stdout

    (source / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete source is refused
    done = gpu_check("--prepare", FASHION_MNIST_DIR=str(source), GPU_DATA=str(tmp_path / "g2"))
    assert done.returncode == 2 and "no t10k-labels-idx1-ubyte" in done.stderr


def test_an_unknown_option_is_refused():
    done = gpu_check("--fast")
    assert done.returncode == 2 and "unknown option --fast" in done.stderr


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_of_a_gpu_run_shows_what_decides_the_compile_default():
    """The bench rows a GPU run writes (full sizes, k up to 50, a case that failed and one the
    budget left out) become the table's rows: figures for each measured case, the compile's
    pay-back from the plain and compiled epochs, conv2's batched epochs scaled to 50,000, and a
    row for every planned case, measured or not."""
    check = gpu_check_module()

    def solo(case, step, epoch_s, compile_s=None, samples=50000, data="random"):
        return dict(
            kind="solo",
            case=case,
            step=step,
            data=data,
            samples=samples,
            batch=60,
            epoch_s=epoch_s,
            samples_per_s=round(samples / epoch_s),
            compile_s=compile_s,
            peak_mb=1234.5,
        )

    real = {"samples": 60000, "data": "fashion-mnist (real)"}
    rows = [
        solo("fc1", "plain", 2.0, **real),
        solo("conv2", "plain", 4.0),
        solo("resnet20", "plain", 3.0),
        {"kind": "solo", "case": "vgg19", "step": "plain", "error": "RuntimeError: boom"},
        solo("fc1", "compiled", 1.0, compile_s=30.0, **real),
        solo("conv2", "compiled", 5.0, compile_s=10.0),
    ]
    for k in check.TRIALS:
        rows.append(
            dict(
                kind="batched",
                case="conv2",
                k=k,
                data="random",
                samples=3000,
                full_samples=50000,
                batch=60,
                epoch_s=0.5 * k,
                per_trial_epoch_s=0.5 * 50000 / 3000,
                samples_per_s=6000,
                peak_mb=10.0,
            )
        )
    table = check.bench_table_rows(rows, check.TRIALS)
    by_what = {what: (s, figures) for _, what, s, figures in table}
    assert len(table) == 8 + 8  # 4 networks x plain and compiled, 2 networks x 4 values of k

    fc1 = by_what["fc1 one epoch (60,000 fashion-mnist (real), batch 60), compiled"]
    assert fc1 == (
        "1.000",
        "compile 30.0 s; 60,000 samples/s; peak 1,234 MiB; 2.00x plain, paid back by epoch 30",
    )
    conv2 = by_what["conv2 one epoch (50,000 random, batch 60), compiled"]
    assert conv2[1].endswith("0.80x plain, never pays back (not faster)")
    assert by_what["vgg19 one epoch, plain"] == ("-", "RuntimeError: boom")
    assert by_what["vgg19 one epoch, compiled"] == ("-", "not measured")
    assert by_what["resnet20 one epoch, compiled"] == ("-", "not measured")
    scaled = by_what[
        "conv2 k=50 trials batched, per-trial epoch (50,000 random, scaled from 3,000, batch 60)"
    ]
    assert scaled == ("8.333", "stacked epoch 25.0 s on 3,000; 6,000 trial-samples/s; peak 10 MiB")
    for k in check.TRIALS:
        assert by_what[f"fc1 k={k} trials batched, per-trial epoch"] == ("-", "not measured")
    text = check.markdown("header", [("2 bench", "a | b", "1.0", "c")])
    assert text.splitlines()[-1] == "| 2 bench | a / b | 1.0 | c |"
