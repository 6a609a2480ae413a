"""Run a grid of main.py runs as tasks on Ray, then print one table and draw the combined plots.

    python sweep.py --prune_percent 10 20 --prune_type lt reinit --seed 0 1 -- <main.py flags>

Each task is a `main.py` run with its own folder under --results_root; the tasks of one prune
percent train together as batches (one main.py process each, a Ray job). A task whose earlier run
(the newest with the same trial in its args.json) is complete is skipped, an interrupted one is
resumed, so calling the sweep again finishes what is left. A job lost with its node or worker is
started again, at most RESTARTS times, resuming the folders it made. Ray is imported only when
there is a task to run (requirements-ray.txt).
"""

import argparse
import fcntl
import itertools
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from lth import cli, compare, experiment, methods, resume, runs
from lth.errors import UserError, one_line

MAIN = Path(__file__).resolve().parent / "main.py"
SWEPT = ("prune_type", "prune_percent", "seed", "results_root")
NOT_ALLOWED = SWEPT + ("resume", "start_iter")
LOST = ("NodeDiedError", "WorkerCrashedError")  # ray.exceptions: a job's node or worker died
RESTARTS = 3  # times the sweep starts a lost job again (Ray itself retries none: max_retries=0)
FOLDER_WAIT = 120  # seconds a restarted job waits for the lost process to let go of its folder


@dataclass(eq=False)
class Task:
    name: str  # e.g. lt_20_seed0; also the name of its log file
    args: argparse.Namespace  # the main.py arguments of the run
    argv: list[str]  # main.py's command line for a new run
    earlier: runs.Run | None = None  # its run from an earlier sweep call, if any
    status: str = "new"  # new, resume, finished, done, failed
    run_dir: str = ""
    error: str = ""
    ticket: "Task | None" = None  # a control task's ticket task, whose run gives the masks
    prune_type: str = ""  # its method's registered name (reinit_ticket for the control)
    seed: int | None = None
    percent: float = 0.0

    def take_masks_from(self, run_dir: str) -> None:
        self.args.masks_from = str(Path(run_dir).resolve())
        if self.status == "new":
            self.argv = [*self.argv, "--masks_from", self.args.masks_from]


def build_parser() -> argparse.ArgumentParser:
    """sweep.py's own flags, one --help heading per purpose; main.py's come after `--`."""
    parser = cli.OneLineParser(
        prog="sweep.py",
        description="Run the cross product of prune percents, prune types and seeds on Ray.",
        usage="sweep.py [options] -- [main.py flags]",
        epilog="After `--`: main.py's flags (main.py --help) for every task, checked as main.py checks them.",
        formatter_class=cli.OneDefaultFormatter,
    )
    add = cli.flag_group(parser, "the grid", "one task per prune percent, prune type and seed")
    add(
        "--prune_percent",
        nargs="+",
        type=float,
        default=[10.0],
        metavar="P",
        help="main.py's --prune_percent of the tasks",
    )
    add("--prune_type", nargs="+", default=["lt", "reinit"], metavar="TYPE", help=prune_type_help())
    add(
        "--seed",
        nargs="+",
        type=int,
        default=[None],
        metavar="SEED",
        help="main.py's --seed of the tasks (default: random, recorded in each run)",
    )
    add = cli.flag_group(parser, "results")
    add(
        "--results_root",
        default="results",
        help="where every run folder, sweep_logs/ and combined_plots/ go (shared storage)",
    )
    add = cli.flag_group(parser, "Ray and batches")
    add("--address", default=None, help="join this Ray cluster (default: a local Ray instance)")
    add("--num_cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    add("--cpus_per_run", type=float, default=1, help="CPUs Ray reserves for each run")
    add("--gpus_per_run", type=float, default=0, help="GPUs Ray reserves for each run")
    add(
        "--batch",
        type=int,
        default=None,
        metavar="N",
        help="at most N trials in one main.py process (default: every task of a prune percent)",
    )
    return parser


def prune_type_help() -> str:
    """--prune_type's help, from the registry (lth.methods)."""
    controls = "; ".join(
        f"{m.name} is the paper's control: {m.recorded_name} with the masks of the {m.ticket} run of the same percent and seed (needs {m.ticket} in the same sweep)"
        for m in methods.registered()
        if m.needs_ticket
    )
    return f"any of: {', '.join(methods.names())}; {controls}"


def make_tasks(options: argparse.Namespace, main_flags: list[str]) -> list[Task]:
    """One task per (prune type, prune percent, seed), each checked as main.py would check it."""
    given = cli.explicit_flags(main_flags) & {*NOT_ALLOWED, "masks_from"}
    if "masks_from" in given:
        controls = [m for m in methods.registered() if m.needs_ticket]
        tickets = " or ".join(dict.fromkeys(m.ticket for m in controls))
        raise UserError(
            f"--masks_from after `--`: the sweep gives it to each {' or '.join(m.name for m in controls)} task itself (the {tickets} run of the same percent and seed)"
        )
    if given:
        raise UserError(f"--{sorted(given)[0]} after `--`: give it to sweep.py itself (see --help)")
    check_own_flags(options)
    found = {spelling: methods.find(spelling) for spelling in dict.fromkeys(options.prune_type)}
    for spelling, method in found.items():
        if method is None:
            raise UserError(
                f"--prune_type {spelling} is not supported; choose any of: {', '.join(methods.names())}"
            )
    types = list(dict.fromkeys(method.name for method in found.values()))
    for prune_type in types:
        ticket = methods.get(prune_type).ticket
        if ticket is not None and ticket not in types:
            raise UserError(
                f"--prune_type {prune_type} needs {ticket} in the same sweep: each control takes the masks of the {ticket} run of its percent and seed"
            )
    tasks = []
    lists = (types, options.prune_percent, options.seed)
    grid = itertools.product(*(list(dict.fromkeys(values)) for values in lists))  # no repeats
    for prune_type, percent, seed in grid:
        recorded = methods.spelling(methods.get(prune_type).recorded_name)
        argv = [*main_flags, "--prune_type", recorded, "--prune_percent", f"{percent:g}"]
        argv += ["--results_root", str(Path(options.results_root).resolve())]
        argv += ["--seed", str(seed)] if seed is not None else []
        args = cli.one_trial(cli.parse_args(argv))
        cli.validate(args)
        name = f"{prune_type}_{percent:g}" + (f"_seed{seed}" if seed is not None else "")
        tasks.append(Task(name, args, argv, prune_type=prune_type, seed=seed, percent=percent))
    by_task = {(t.prune_type, t.percent, t.seed): t for t in tasks}
    for (
        task
    ) in tasks:  # each control's ticket task: its method's ticket of the same percent and seed
        ticket = methods.get(task.prune_type).ticket
        if ticket is not None:
            task.ticket = by_task[(ticket, task.percent, task.seed)]
    return tasks


def check_own_flags(options: argparse.Namespace) -> None:
    """UserError for an own flag that would fail or wait forever in Ray, before anything starts."""
    cli.check_folder("--results_root", options.results_root)
    if options.num_cpus is not None and options.num_cpus < 1:
        raise UserError(f"--num_cpus must be at least 1, got {options.num_cpus}")
    if not (math.isfinite(options.cpus_per_run) and options.cpus_per_run > 0):
        raise UserError(
            f"--cpus_per_run must be a finite number above 0, got {options.cpus_per_run}"
        )
    if not (math.isfinite(options.gpus_per_run) and options.gpus_per_run >= 0):
        raise UserError(
            f"--gpus_per_run must be a finite number, 0 or more, got {options.gpus_per_run}"
        )
    visible = torch.cuda.device_count()
    if options.address is None and options.gpus_per_run > visible:
        raise UserError(
            f"--gpus_per_run {options.gpus_per_run:g}: this machine has {visible} CUDA device(s); give at most that, or --address of a cluster with GPUs"
        )
    if options.batch is not None and options.batch < 1:
        raise UserError(f"--batch must be at least 1, got {options.batch}")


def plan(tasks: list[Task], results_root: str) -> None:
    """Match each task with its newest earlier run: finished (skip it), resume, or new. A control
    is matched with its lt task's earlier run as --masks_from; when the lt task is new, so is it."""
    earlier = runs.all_runs(Path(results_root).resolve())
    for task in sorted(tasks, key=lambda t: t.ticket is not None):  # lt tasks first
        if task.ticket is not None:
            if task.ticket.status == "new":
                continue
            task.take_masks_from(task.ticket.run_dir)
        on = [n for n in experiment.trial_fields() if n != "seed" or task.args.seed is not None]
        wanted = experiment.identity(vars(task.args), on)
        matching = [run for run in earlier if experiment.identity(run.args, on) == wanted]
        if matching:
            task.earlier = matching[-1]
            task.run_dir = str(task.earlier.root)
            task.status = "finished" if task.earlier.complete else "resume"
            if task.status == "resume":
                task.argv = ["--resume", str(task.earlier.root)]


def stop_with_parent() -> None:
    """Linux: SIGTERM to the run when its Ray worker dies, so no orphan writes a folder later."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def run_main(argv: list[str], cwd: str, log: str, threads: int) -> tuple[int, list[str], str]:
    """Run main.py with `argv` in `cwd`, output into `log`, its batch record beside it; return
    its exit status, the run folders of its batch in order and, when it failed, its last error."""
    # unbuffered: the log shows each line as soon as it is printed, even if the run is lost
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    record = batch_record_path(log)
    record.unlink(missing_ok=True)
    with open(log, "w") as out:
        status = subprocess.run(
            [sys.executable, str(MAIN), *argv, "--batch_record", str(record)],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=stop_with_parent,
        ).returncode
    lines = [line.strip() for line in re.split(r"[\r\n]+", Path(log).read_text(errors="replace"))]
    error = ""
    if status != 0:
        errors = [line for line in lines if line.startswith(("error:", "main.py: error:"))]
        error = (errors or [line for line in lines if line] or [f"exit status {status}"])[-1]
    return status, runs.batch_record_folders(record), error


def batch_record_path(log: str | Path) -> Path:
    """Where the main.py process logging into `log` records its batch (--batch_record)."""
    return Path(log).with_suffix(".batch.json")


def run_again(argv: list[str], cwd: str, log: str, threads: int) -> tuple[int, list[str], str]:
    """run_main for a lost job: a resume first waits until no process holds the folder's lock, as
    Ray may report a node dead before its processes end, and shared storage keeps locks a while."""
    if argv[:1] == ["--resume"]:
        wait_for_folder(argv[1], FOLDER_WAIT)
    return run_main(argv, cwd, log, threads)


def wait_for_folder(folder: str, seconds: float) -> None:
    """Return once `folder` is not locked, or after `seconds` (main.py then says it is in use)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # main.py --resume says what is wrong with it
    deadline = time.monotonic() + seconds
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.5)
    finally:
        os.close(descriptor)  # releases the lock, for main.py to take


@dataclass(eq=False)
class Job:
    """One main.py process: a batch of tasks, or the resume of an earlier batch."""

    name: str  # its log file's name
    tasks: list[Task]
    argv: list[str]
    after: "Job | None" = None  # the job whose lt runs give this job's controls their masks
    lost: int = 0  # times its process was lost with its node or worker

    def outcome(self, status: int, folders: list[str], error: str) -> None:
        """Each task's status: `failed` when it has a failure.txt, or the process failed and its
        run is not complete; `done` otherwise."""
        if self.argv[:1] != ["--resume"]:  # a new batch prints its folders in task order
            self.place(folders)
        for task in self.tasks:
            failure = Path(task.run_dir, "failure.txt") if task.run_dir else None
            if failure is not None and failure.exists():
                task.status, task.error = "failed", failure.read_text().strip()
            elif status == 0 or ((run := runs.read_run(task.run_dir)) and run.complete):
                task.status, task.error = "done", ""
            else:
                task.status, task.error = "failed", error or f"exit status {status}"

    def restart(self, log: Path) -> None:
        """After its process was lost: resume the folders it made, or, with none, start afresh."""
        self.lost += 1
        if self.argv[:1] == ["--resume"]:
            return
        folders = runs.batch_record_folders(batch_record_path(log))
        if folders:
            self.place(folders)
            self.argv = ["--resume", folders[0]]

    def place(self, folders: list[str]) -> None:
        for task, folder in zip(self.tasks, folders, strict=False):
            task.run_dir = folder


def make_jobs(tasks: list[Task], batch: int | None) -> list[Job]:
    """The main.py processes of the unfinished `tasks`, at most `batch` trials each: the resume of
    each earlier batch, then per prune percent the new tasks as batches of prune type x seed."""
    jobs: list[Job] = []
    resumed: dict[tuple, Job] = {}
    for task in [t for t in tasks if t.status == "resume"]:
        key = earlier_batch(task)
        if key not in resumed:
            resumed[key] = Job(task.name, [], list(task.argv))
            jobs.append(resumed[key])
        resumed[key].tasks.append(task)
    new = [t for t in tasks if t.status == "new"]
    by_task = {(t.prune_type, t.percent, t.seed): t for t in new}
    for percent in dict.fromkeys(t.percent for t in new):
        mine = [t for t in new if t.percent == percent]
        seeds = list(dict.fromkeys(t.seed for t in mine))
        kinds: dict[tuple, list] = {}  # the prune types new for a seed -> those seeds
        for seed in seeds:
            types = tuple(t.prune_type for t in mine if t.seed == seed)
            kinds.setdefault(types, []).append(seed)
        for types, same in kinds.items():
            jobs += batches(types, same, percent, by_task, batch)
    job_of = {id(t): job for job in jobs for t in job.tasks}
    for job in jobs:
        for task in job.tasks:
            ticket = task.ticket
            if ticket is not None and ticket.status == "new" and ticket not in job.tasks:
                job.after = job_of[id(ticket)]
    return jobs


def batches(
    types: tuple[str, ...], seeds: list, percent: float, by_task: dict, batch: int | None
) -> list[Job]:
    """The jobs of the new tasks of `types` x `seeds` at `percent`."""
    args = by_task[(types[0], percent, seeds[0])].args  # the recipe is the same for all

    def shares(prune_type: str) -> bool:
        ticket = methods.get(prune_type).ticket
        return (ticket is None or ticket in types) and not cli.trains_apart(prune_type, args)

    together = [t for t in types if shares(t)]
    apart = batch is not None and batch < len(together)  # then one prune type per process
    groups = [[t] for t in together] if apart else [together]
    groups += [[t] for t in types if t not in together]  # controls whose lt ran earlier, finetune
    jobs = []
    for group in groups:
        method = methods.get(group[0])
        if len(group) == 1 and method.needs_ticket:  # controls apart from tickets: one each
            tasks = [by_task[(group[0], percent, seed)] for seed in seeds]
            jobs += [Job(task.name, [task], control_argv(task)) for task in tasks]
            continue
        per = len(seeds) if batch is None else max(1, batch // len(group))
        for start in range(0, len(seeds), per):
            chunk = seeds[start : start + per]
            tasks = [by_task[(t, percent, seed)] for t in group for seed in chunk]
            spelled = [methods.spelling(t) for t in group]
            argv = [*strip_trial_flags(tasks[0].argv), "--prune_type", *spelled]
            if chunk != [None]:
                argv += ["--seed", *(str(seed) for seed in chunk)]
            name = tasks[0].name if len(tasks) == 1 else f"{group[0]}_{percent:g}_batch{start}"
            jobs.append(Job(name, tasks, argv))
    return jobs


def control_argv(task: Task) -> list[str]:
    """The command line of a control task run apart from its ticket (with its --masks_from)."""
    recorded = methods.spelling(methods.get(task.prune_type).recorded_name)
    argv = [*strip_trial_flags(task.argv), "--prune_type", recorded]
    if task.args.masks_from is not None:
        argv += ["--masks_from", task.args.masks_from]
    return argv + (["--seed", str(task.seed)] if task.seed is not None else [])


def strip_trial_flags(argv: list[str]) -> list[str]:
    """A task's main.py command line without its --prune_type, --seed and --masks_from."""
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        if arg in ("--prune_type", "--seed", "--masks_from"):
            skip = 1
            continue
        kept.append(arg)
    return kept


def earlier_batch(task: Task) -> tuple:
    """The folders of the batch the task's earlier run ran in (its args.json), as a key."""
    assert task.earlier is not None
    record = resume.read_record(task.earlier.root)
    names = record.batch.get("runs") or [task.earlier.root.name]
    return tuple(sorted(str(task.earlier.root.parent / name) for name in names))


def run_on_ray(tasks: list[Task], options: argparse.Namespace, logs: Path) -> None:
    """Run the tasks as Ray jobs; record each task's outcome (a failure stops no other job)."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "sweep.py needs Ray: pip install -r requirements-ray.txt (it is not installed)"
        ) from None
    jobs = make_jobs(tasks, options.batch)
    init_ray(ray, options)
    try:
        # no retries by Ray: it would run a lost job's first command again, into new folders
        resources = {"num_cpus": options.cpus_per_run, "num_gpus": options.gpus_per_run}
        remote = ray.remote(run_main).options(**resources, max_retries=0)
        again = ray.remote(run_again).options(**resources, max_retries=0)
        errors = getattr(ray, "exceptions", None)
        lost = tuple(getattr(errors, name) for name in LOST if hasattr(errors, name))
        threads = max(1, int(options.cpus_per_run))
        pending = {}

        def start(job: Job) -> None:
            log = logs / f"{job.name}.log"
            log.unlink(missing_ok=True)
            batch_record_path(log).unlink(missing_ok=True)  # one there now is this job's
            run = again if job.lost else remote
            pending[run.remote(job.argv, os.getcwd(), str(log), threads)] = job

        waiting = [job for job in jobs if job.after is not None]
        for job in jobs:
            if job not in waiting:
                start(job)
        print(
            f"sweep: {len(tasks)} task(s) in {len(jobs)} process(es) on Ray; logs in {logs}/",
            flush=True,
        )
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready)
            try:
                status, folders, error = ray.get(ready)
            except Exception as failure:  # the job died, or its node or worker (`lost`)
                if isinstance(failure, lost) and job.lost < RESTARTS:  # start it again
                    job.restart(logs / f"{job.name}.log")
                    for task in job.tasks:
                        again_in = f"resuming {task.run_dir}" if task.run_dir else "starting again"
                        name = type(failure).__name__
                        print(f"sweep: {task.name} lost ({name}): {again_in}", flush=True)
                    start(job)
                    continue
                status, folders, error = -1, [], f"{type(failure).__name__}: {failure}"
            job.outcome(status, folders, error)
            for task in job.tasks:
                print(f"sweep: {task.name} {task.status} {task.error}".rstrip(), flush=True)
            for later in [j for j in waiting if j.after is job]:
                waiting.remove(later)
                if release(later):
                    start(later)
    finally:
        ray.shutdown()


def init_ray(ray: ModuleType, options: argparse.Namespace) -> None:
    """Start a local Ray instance or join --address; UserError when it cannot."""
    local = options.address is None
    try:
        ray.init(
            address=options.address,
            num_cpus=options.num_cpus if local else None,
            include_dashboard=False,
            log_to_driver=False,
        )
    except Exception as error:  # Ray raises several types for an unreachable or bad cluster
        where = "start a local Ray instance" if local else f"join --address {options.address}"
        raise UserError(f"cannot {where}: {error}".splitlines()[0]) from None


def release(job: Job) -> bool:
    """After the job its control waits for: whether it can start; if not, it is marked failed."""
    (control,) = job.tasks  # a control waits alone: its masks are its ticket's run's
    ticket = control.ticket
    assert ticket is not None
    if ticket.status != "done" or not ticket.run_dir:
        control.status = "failed"
        control.error = f"not started: its {ticket.prune_type} task {ticket.name} failed"
        print(f"sweep: {control.name} {control.status} {control.error}", flush=True)
        return False
    control.take_masks_from(ticket.run_dir)
    job.argv = control_argv(control)
    return True


def report(tasks: list[Task]) -> str:
    rows = []
    for task in tasks:
        seed = task.args.seed if task.args.seed is not None else "random"
        row = {"task": task.name, "status": task.status, "seed": seed, "run": task.run_dir}
        row["error"] = task.error
        run = runs.read_run(task.run_dir) if task.run_dir else None
        if run is not None and run.complete:
            last = run.summary()[-1]
            row |= {"seed": run.args["seed"], "weights_left": last["weights_left"]}
            accuracy = f"{last['best_accuracy']:.2f}"
            row |= {"best_accuracy": accuracy, "best_epoch": last["best_epoch"]}
        rows.append(row)
    columns = ["task", "status", "seed", "weights_left", "best_accuracy", "best_epoch", "run"]
    return runs.table(rows, columns + (["error"] if any(t.error for t in tasks) else []))


def draw(tasks: list[Task], out: Path, dpi: int) -> None:
    """The combined plots of the sweep's complete runs, one figure per arch/dataset."""
    complete = [r for t in tasks if t.run_dir and (r := runs.read_run(t.run_dir)) and r.complete]
    groups: dict[tuple[str, str], list[runs.Run]] = {}
    for run in complete:
        groups.setdefault((run.args["arch_type"], run.args["dataset"]), []).append(run)
    for group in groups.values():
        compare.announce(compare.combine(group, out, dpi, best_epoch=True))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    at = argv.index("--") if "--" in argv else len(argv)  # main.py's flags come after `--`
    options, main_flags = build_parser().parse_args(argv[:at]), argv[at + 1 :]
    try:
        tasks = make_tasks(options, main_flags)
        plan(tasks, options.results_root)
        for task in tasks:
            if task.status == "finished":
                print(f"sweep: {task.name} finished earlier in {task.run_dir}: skipped")
            elif task.status == "resume":
                print(f"sweep: {task.name} was interrupted in {task.run_dir}: resuming it")
        to_run = [task for task in tasks if task.status != "finished"]
        if to_run:
            run_on_ray(to_run, options, Path(options.results_root).resolve() / "sweep_logs")
        print("\n" + report(tasks))
        draw(tasks, Path(options.results_root) / "combined_plots", tasks[0].args.plot_dpi)
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nsweep: interrupted; finished runs and levels are kept: the same command again skips the finished runs, resumes the interrupted ones and starts the rest",
            file=sys.stderr,
        )
        return 130
    return 1 if any(task.status == "failed" for task in tasks) else 0


if __name__ == "__main__":
    sys.exit(main())
