"""The GPU check's steps, timed, and their table (run it through scripts/gpu_check.sh; docs/gpu.md).

    python scripts/gpu_check.py [--dry-run] [--budget SECONDS]

1. tests: `pytest -m cuda tests/test_cuda.py` (seeded repeat, kill and resume, --compile on
   against off, resume on the CPU of a CUDA run);
2. bench: scripts/gpu_bench.py (one epoch per network, plain and compiled; batched trials);
3. main.py: fc1 on the real Fashion-MNIST, 3 levels x 2 epochs, end to end.
Then one markdown table, printed last. With $OUT set, the full log goes to $OUT/gpu_check.log,
the table to $OUT/gpu_check.md, the bench's rows to $OUT/gpu_bench.jsonl and the main.py run's
summary.csv and args.json to $OUT/main_run/. Exit status 0 when every step succeeded, 1 when
one failed (the table still comes), 2 when the check cannot start (no CUDA, no data).

The data: Fashion-MNIST's four idx files in $GPU_DATA/fashion-mnist (default: gpu_data/ beside
this repository, which `gpu_check.sh --prepare` fills), else Debian's copy; imported by
main.py's own --data_source into a scratch folder. The commit: $GIT_COMMIT, else git's, else
$GPU_DATA/COMMIT (written by --prepare, for a copy of the tree without .git).

`--dry-run`: every step on the CPU (CUDA hidden) at a tiny size: the tests under
LTH_GPU_CHECK_DRY_RUN=1, the bench's --dry-run, main.py on a tiny stand-in for Fashion-MNIST.
"""

import argparse
import csv
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MAIN_FLAGS = ["--dataset", "fashionmnist", "--arch_type", "fc1", "--prune_iterations", "3"]
MAIN_FLAGS += ["--end_iter", "2", "--seed", "0"]
NETWORKS = ("fc1", "conv2", "resnet20", "vgg19")  # scripts/gpu_bench.py's, in table order
BATCHED = ("fc1", "conv2")
TRIALS, DRY_TRIALS = (1, 5, 15, 50), (1, 2)
# Seconds each step may take at most on the GPU, within --budget: what is left for the later
# steps is kept back from the earlier ones.
TESTS_S, MAIN_S, BENCH_MARGIN_S = 180, 75, 25
DRY_TESTS_S = 400  # the dry run is on no clock: a cold compile cache on 2 cores is slow
DEVICE_INFO = """
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "python": platform.python_version(),
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "gpus": torch.cuda.device_count() if cuda else 0,
}))
"""


class Log:
    """Everything the steps print, to the terminal and to the log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: TextIO = path.open("w")

    def write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        self.file.write(text)
        self.file.flush()

    def line(self, text: str = "") -> None:
        self.write(text + "\n")


def run_step(log: Log, command: list[str], env: dict, timeout: float) -> tuple[int, float, str]:
    """Run `command` in ROOT with its output teed to the log; (exit status, seconds, output).
    Past `timeout` its whole process group is killed (status 124)."""
    log.line(f"$ {' '.join(command)}")
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(max(timeout, 1.0), kill)
    timer.start()
    output = []
    assert process.stdout is not None
    for line in process.stdout:
        log.write(line)
        output.append(line)
    status = process.wait()
    timer.cancel()
    seconds = time.perf_counter() - start
    if expired.is_set():
        log.line(f"(stopped after {timeout:.0f} s)")
        status = 124
    log.line(f"(exit status {status}, {seconds:.1f} s)")
    return status, seconds, "".join(output)


def device_info(env: dict) -> dict:
    done = subprocess.run(
        [python(), "-c", DEVICE_INFO], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise SystemExit(f"gpu_check: cannot import torch with {python()}:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def python() -> str:
    return os.environ.get("PYTHON") or sys.executable


def commit(gpu_data: Path) -> str:
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    prepared = gpu_data / "COMMIT"
    if prepared.is_file():
        return prepared.read_text().strip() + " (from --prepare)"
    return "unknown"


def fashion_mnist(gpu_data: Path) -> Path | None:
    """The folder with the real Fashion-MNIST's idx files (gzipped or not), or None."""
    for folder in (gpu_data / "fashion-mnist", DEBIAN_FASHION_MNIST):
        names = {p.name.removesuffix(".gz") for p in folder.glob("*-ubyte*")}
        if set(IDX_FILES) <= names:
            return folder
    return None


def tiny_fashion_mnist(folder: Path) -> Path:
    """A tiny stand-in in the original files' format (tests/datafiles.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.datafiles import write_mnist_files

    return write_mnist_files(folder, n_train=600, n_test=100)


# --- the steps' figures ---------------------------------------------------------------------


def pytest_summary(output: str) -> str:
    """pytest's closing counts ("5 passed in 61.2s" -> "5 passed")."""
    for line in reversed(output.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", line)
        if found:
            return ", ".join(f"{n} {what}" for n, what in found if what != "deselected")
    return "no summary (see the log)"


def bench_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main_run_figures(results: Path) -> tuple[str, Path | None]:
    runs = [p for p in results.iterdir() if p.is_dir()] if results.is_dir() else []
    if len(runs) != 1:
        return "no run folder", None
    run = runs[0]
    sys.path.insert(0, str(ROOT))
    from lth.record import RunRecord  # the one reader of args.json

    record = RunRecord.read(run).content
    with (run / "summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    best = "/".join(f"{float(r['best_accuracy']):.2f}" for r in rows)
    compiled = record["args"].get("compile")
    return (
        f"device {record['device']}; best test accuracy by level {best} %; --compile {compiled}",
        run,
    )


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def megabytes(row: dict) -> str:
    return "" if row.get("peak_mb") is None else f"; peak {row['peak_mb']:,.0f} MiB"


def bench_table_rows(rows: list[dict], trials: tuple[int, ...]) -> list[tuple[str, str, str, str]]:
    """The bench's rows in table order, a 'not measured' row for each case it did not reach."""
    found = {(r["kind"], r["case"], r.get("step"), r.get("k")): r for r in rows if "kind" in r}
    plain = {
        r["case"]: r
        for r in rows
        if r.get("kind") == "solo" and r.get("step") == "plain" and "error" not in r
    }
    table = []
    for name in NETWORKS:
        for step in ("plain", "compiled"):
            row = found.get(("solo", name, step, None))
            what = f"{name} one epoch, {step}"
            if row is None or "error" in row:
                why = "not measured" if row is None else row["error"]
                table.append(("2 bench", what, "-", why))
                continue
            what = (
                f"{name} one epoch ({row['samples']:,} {row['data']}, batch {row['batch']}), {step}"
            )
            figures = f"{row['samples_per_s']:,} samples/s{megabytes(row)}"
            if step == "compiled":
                figures = f"compile {row['compile_s']:.1f} s; " + figures
                base = plain.get(name)
                if base is not None:
                    saved = base["epoch_s"] - row["epoch_s"]
                    pays = (
                        f"paid back by epoch {math.ceil(row['compile_s'] / saved):,}"
                        if saved > 0
                        else "never pays back (not faster)"
                    )
                    figures += f"; {base['epoch_s'] / row['epoch_s']:.2f}x plain, {pays}"
            table.append(("2 bench", what, seconds(row["epoch_s"]), figures))
    for name in BATCHED:
        for k in trials:
            row = found.get(("batched", name, None, k))
            what = f"{name} k={k} trials batched, per-trial epoch"
            if row is None or "error" in row:
                why = "not measured" if row is None else row["error"]
                table.append(("2 batched", what, "-", why))
                continue
            scaled = (
                f", scaled from {row['samples']:,}" if row["samples"] != row["full_samples"] else ""
            )
            what = (
                f"{name} k={k} trials batched, per-trial epoch "
                f"({row['full_samples']:,} {row['data']}{scaled}, batch {row['batch']})"
            )
            figures = (
                f"stacked epoch {seconds(row['epoch_s'])} s on {row['samples']:,}; "
                f"{row['samples_per_s']:,} trial-samples/s{megabytes(row)}"
            )
            table.append(("2 batched", what, seconds(row["per_trial_epoch_s"]), figures))
    return table


def markdown(header: str, rows: list[tuple[str, str, str, str]]) -> str:
    lines = [header, "", "| step | what | seconds | figures |", "|---|---|---:|---|"]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows]
    return "\n".join(lines) + "\n"


# --- the check ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU, at a tiny size")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all steps (default 450 on the GPU, 900 for the dry run)",
    )
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 900.0 if args.dry_run else 450.0
    began = time.perf_counter()
    gpu_data = Path(os.environ.get("GPU_DATA") or ROOT / "gpu_data")
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None

    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    if args.dry_run:
        env.update(CUDA_VISIBLE_DEVICES="", LTH_GPU_CHECK_DRY_RUN="1")
    info = device_info(env)
    if not args.dry_run and not info["gpu"]:
        print(
            "gpu_check: torch sees no CUDA device here; `scripts/gpu_check.sh --dry-run` runs the"
            " same steps on the CPU at a tiny size",
            file=sys.stderr,
        )
        return 2
    found = None if args.dry_run else fashion_mnist(gpu_data)
    if not args.dry_run and found is None:
        print(
            f"gpu_check: no Fashion-MNIST in {gpu_data / 'fashion-mnist'} nor"
            f" {DEBIAN_FASHION_MNIST}: run `bash scripts/gpu_check.sh --prepare` where the"
            " data are installed and carry gpu_data/ along",
            file=sys.stderr,
        )
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="lth-gpu-check-"))
    keep = out if out is not None else scratch
    keep.mkdir(parents=True, exist_ok=True)
    source = found if found is not None else tiny_fashion_mnist(scratch / "fashion-mnist-tiny")

    log = Log(keep / "gpu_check.log")
    if args.dry_run:
        shown = "a tiny stand-in (tests/datafiles.py, 600 training images)"
    else:
        shown = str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    device = "CPU (dry run, CUDA hidden)" if args.dry_run else f"{info['gpu']} x{info['gpus']}"
    header = (
        f"GPU check {when}{' (DRY RUN, tiny size)' if args.dry_run else ''}: {device};"
        f" torch {info['torch']} (CUDA {info['cuda']}), Python {info['python']};"
        f" commit {commit(gpu_data)}; Fashion-MNIST: {shown}"
    )
    log.line(header)
    table: list[tuple[str, str, str, str]] = []
    failed = False

    def left() -> float:
        return args.budget - (time.perf_counter() - began)

    # 1. the CUDA tests
    log.line("\n== 1. tests: pytest -m cuda tests/test_cuda.py")
    status, took, output = run_step(
        log,
        [python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda"]
        + ["tests/test_cuda.py"],
        env,
        min(DRY_TESTS_S if args.dry_run else TESTS_S, left() - MAIN_S - 120),
    )
    figures = pytest_summary(output)
    if status != 0 or "skipped" in figures:
        failed = True
        figures = f"FAILED (exit {status}): {figures}"
    table.append(("1 tests", "pytest -m cuda tests/test_cuda.py", seconds(took), figures))

    # 2. the bench
    log.line("\n== 2. bench: scripts/gpu_bench.py")
    rows_path = scratch / "gpu_bench.jsonl"
    bench_s = left() - MAIN_S
    command = [python(), "scripts/gpu_bench.py", "--data-source", str(source)]
    command += ["--data-dir", str(scratch / "data"), "--out", str(rows_path)]
    command += ["--budget", f"{max(bench_s - BENCH_MARGIN_S, 0):.0f}"]
    status, took, _ = run_step(log, command + (["--dry-run"] if args.dry_run else []), env, bench_s)
    rows = bench_rows(rows_path)
    trials = DRY_TRIALS if args.dry_run else TRIALS
    bench = bench_table_rows(rows, trials)
    missing = sum(1 for row in bench if row[2] == "-")
    figures = f"{len(bench) - missing} of {len(bench)} cases measured"
    if status != 0 or missing:
        failed = True
        figures = f"FAILED (exit {status}): " + figures
    table.append(("2 bench", "scripts/gpu_bench.py, all cases", seconds(took), figures))
    table += bench
    if out is not None and rows_path.is_file():
        shutil.copyfile(rows_path, out / "gpu_bench.jsonl")

    # 3. a whole main.py run
    log.line("\n== 3. main.py: fc1 on Fashion-MNIST, 3 levels x 2 epochs")
    results = scratch / "results"
    command = [python(), "main.py", *MAIN_FLAGS, f"--data_source={source}"]
    command += [f"--data_dir={scratch / 'data'}", f"--results_root={results}"]
    if args.dry_run:
        command.append("--plot_dpi=100")
    status, took, _ = run_step(log, command, env, max(left(), MAIN_S / 2))
    figures, run = main_run_figures(results)
    if status != 0:
        failed = True
        figures = f"FAILED (exit {status}): {figures}"
    if out is not None and run is not None:
        (out / "main_run").mkdir(exist_ok=True)
        for name in ("summary.csv", "args.json"):
            shutil.copyfile(run / name, out / "main_run" / name)
    what = "main.py fc1 fashionmnist, 3 levels x 2 epochs, seed 0, end to end"
    table.append(("3 main.py", what, seconds(took), figures))

    total = time.perf_counter() - began
    verdict = "some step FAILED" if failed else "every step succeeded"
    table.append(("total", "the whole check", seconds(total), verdict))
    text = markdown(header, table)
    if out is not None:
        (out / "gpu_check.md").write_text(text)
        log.line(f"\nlog: {out / 'gpu_check.log'}; table: {out / 'gpu_check.md'}")
    log.line("\n" + text.rstrip("\n"))
    shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
