"""sweep.py --address on a real Ray cluster of two nodes (ray.cluster_utils.Cluster: a head node
and a worker node, both on this machine, one CPU each), on tiny data: every task completes, and a
job whose node dies mid-run is started again on the node left, resuming its own folders from
their last committed level, and ends with the files of a sweep never interrupted. The same
restarts without Ray (FakeRay): which command line a lost job starts again with, and when it
is given up."""

import importlib.util
import json
import os
import sys
import threading
import types
from pathlib import Path

import pytest

import sweep
from lth import runs
from tests.conftest import ROOT
from tests.resultfiles import assert_same_results
from tests.test_sweeps import FakeRay, tiny_flags

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install -r requirements-ray.txt); CI installs it",
)

# Each node: one CPU (one job at a time), a small object store; its workers import sweep.py and
# lth from the repository (the driver here is pytest, whose script folder is not the project's).
NODE = {
    "num_cpus": 1,
    "object_store_memory": 80 * 1024**2,
    "env_vars": {"PYTHONPATH": str(ROOT)},
}
# The cluster marks a dead node dead after 1 s of failed health checks (Ray's default: 15 s), so
# no job started again is sent there.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 200, "health_check_failure_threshold": 5}
PERCENTS = ("20", "50")


@pytest.fixture
def cluster():
    """A running two-node cluster: (the Cluster, its worker node)."""
    import ray
    from ray.cluster_utils import Cluster

    head = {**NODE, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        worker = cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def spy(nodes: Path, hang_on: str | None = None, hang_mark: Path | None = None):
    """A stand-in for sweep.run_main, the function Ray runs for each job: it notes the node the
    job runs on (an empty file `nodes/JOB.NODE_ID`) and runs the real one there. On the node
    `hang_on`, main.py is tests/faulty_main.py, which hangs once the batch's first level is
    committed (both trials' checkpoints), writing its process id to `hang_mark` first."""

    def run_main(argv, cwd, log, threads):
        import ray

        node = ray.get_runtime_context().get_node_id()
        (nodes / f"{Path(log).stem}.{node}").touch()
        if node != hang_on:
            return sweep.run_main(argv, cwd, log, threads)
        main, os.environ["HANG_AT"] = sweep.MAIN, f"commit:2:{hang_mark}"
        sweep.MAIN = ROOT / "tests" / "faulty_main.py"
        try:
            return sweep.run_main(argv, cwd, log, threads)
        finally:
            sweep.MAIN = main
            del os.environ["HANG_AT"]

    return run_main


def sweep_argv(cluster, results: Path, flags: list[str]) -> list[str]:
    """2 prune percents x lt and reinit, seed 0: two jobs (one per percent) of two trials."""
    argv = ["--address", cluster.address, "--cpus_per_run", "1", "--results_root", str(results)]
    argv += ["--prune_percent", *PERCENTS, "--prune_type", "lt", "reinit", "--seed", "0"]
    return [*argv, "--", *flags]


def the_runs(results: Path) -> dict[tuple[str, str], runs.Run]:
    """The runs under `results`, one per task: by (prune percent, prune type)."""
    made = {
        (f"{r.args['prune_percent']:g}", r.args["prune_type"]): r for r in runs.all_runs(results)
    }
    assert sorted(made) == [(p, t) for p in PERCENTS for t in ("lt", "reinit")]
    assert len(runs.all_runs(results)) == len(made)  # no task ran twice
    return made


def assert_every_level(run: runs.Run) -> None:
    """The run finished, with every level's files."""
    files, levels = run.files, run.args["prune_iterations"]
    assert run.complete and run.finished_levels() == levels == len(run.level_tags())
    assert run.args["seed"] == 0
    assert files.initial_state_path().is_file() and files.accuracy_plot_path().is_file()
    for level, tag in enumerate(run.level_tags()):
        assert files.model_path(level).is_file() and run.mask_path(level).is_file()
        assert files.loss_plot_path(tag).is_file()
        for dump in ("all_loss", "all_accuracy"):
            assert files.dump_path(dump, tag).is_file()


@pytest.mark.slow
@needs_ray
def test_a_sweep_on_two_nodes_completes_and_a_job_whose_node_dies_is_resumed(
    cluster, tmp_path, monkeypatch, capsys
):
    cluster, worker = cluster
    results, nodes = (tmp_path / "results").resolve(), tmp_path / "nodes"
    nodes.mkdir()
    flags = tiny_flags(tmp_path)

    # 1. two jobs, at once, one on each node: every task completes
    monkeypatch.setattr(sweep, "run_main", spy(nodes))
    assert sweep.main(sweep_argv(cluster, results, flags)) == 0
    out = capsys.readouterr().out
    assert "sweep: 4 task(s) in 2 process(es) on Ray" in out and " lost " not in out
    assert len(os.listdir(nodes)) == 2
    assert {n.rsplit(".", 1)[1] for n in os.listdir(nodes)} == {
        cluster.head_node.node_id,
        worker.node_id,
    }
    for run in the_runs(results).values():
        assert_every_level(run)
    uninterrupted = tmp_path / "uninterrupted"
    results.rename(uninterrupted)  # the same sweep again below, into the same --results_root

    # 2. the same sweep; the worker node dies once its job has committed level 0 (both trials)
    for name in os.listdir(nodes):
        (nodes / name).unlink()
    mark = tmp_path / "hanging"
    monkeypatch.setattr(sweep, "run_main", spy(nodes, worker.node_id, mark))
    ended, removed = threading.Event(), []

    def remove_the_worker_node_once_its_job_hangs() -> None:
        while not mark.exists():
            if ended.wait(0.05):
                return
        removed.append(int(mark.read_text()))
        cluster.remove_node(worker, allow_graceful=False)  # as if the machine died

    remover = threading.Thread(target=remove_the_worker_node_once_its_job_hangs)
    remover.start()
    try:
        status = sweep.main(sweep_argv(cluster, results, flags))
    finally:
        ended.set()
        remover.join()
    out = capsys.readouterr().out
    assert status == 0, out
    assert removed, "the job on the worker node never reached its hang"

    # its job was lost, and started again (on the head node): resuming its two folders
    (lost,) = [n.rsplit(".", 1)[0] for n in os.listdir(nodes) if n.endswith(worker.node_id)]
    percent = lost.split("_")[1]
    made = the_runs(results)
    lt, reinit = made[(percent, "lt")].root, made[(percent, "reinit")].root
    assert f"sweep: lt_{percent}_seed0 lost (NodeDiedError): resuming {lt}" in out
    assert f"sweep: reinit_{percent}_seed0 lost (NodeDiedError): resuming {reinit}" in out
    assert out.count(" lost ") == 2
    assert all(f"sweep: {t}_{p}_seed0 done" in out for t in ("lt", "reinit") for p in PERCENTS)
    # from level 1, the level after the one committed when the node died, in the same folders
    log = (results / "sweep_logs" / f"{lost}.log").read_text()
    assert f"resuming {lt} at level 1" in log and f"resuming {reinit} at level 1" in log
    assert not os.path.exists(f"/proc/{removed[0]}") or is_zombie(removed[0])  # the lost run
    # every task complete, each run file for file the run of the sweep never interrupted
    before = the_runs(uninterrupted)
    for task, run in made.items():
        assert_every_level(run)
        assert_same_results(run.root, before[task].root)


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class NodeDiedError(Exception):
    """Stands for ray.exceptions.NodeDiedError."""


class LosingRay(FakeRay):
    """FakeRay where a job's function may raise NodeDiedError, as ray.get does when the job's
    node dies."""

    def __init__(self):
        super().__init__()
        self.exceptions = types.SimpleNamespace(NodeDiedError=NodeDiedError)

    def wait(self, refs: list, num_returns: int) -> tuple[list, list]:
        ref, function, args = self.queue.pop(0)
        try:
            self.results[ref] = function(*args)
        except NodeDiedError as lost:
            self.results[ref] = lost
        return [ref], [r for r in refs if r is not ref]

    def get(self, ref):
        result = self.results.pop(ref)
        if isinstance(result, NodeDiedError):
            raise result
        return result


def test_a_lost_job_resumes_the_folders_it_made_or_starts_afresh_and_is_given_up_at_last(
    tmp_path, monkeypatch, capsys
):
    """Three jobs of two trials (lt and reinit): the one at 20% is lost once its process has
    recorded its folders (it starts again as --resume of the first), the one at 50% before that (it
    starts again as it started), the one at 80% every time (failed after RESTARTS restarts)."""
    fake = LosingRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    calls: dict[str, int] = {}

    def fake_run_main(argv, cwd, log, threads):
        job = Path(log).stem
        calls[job] = calls.get(job, 0) + 1
        folders = [str(tmp_path / f"{job}_{t}") for t in ("lt", "reinit")]
        if job == "lt_50_batch0" and calls[job] == 1:
            raise NodeDiedError("lost before main.py began")
        record = {"levels": 3, "runs": [{"folder": f, "levels_done": 0} for f in folders]}
        sweep.batch_record_path(log).write_text(json.dumps(record))
        if job == "lt_80_batch0" or calls[job] == 1:
            raise NodeDiedError("lost mid-run")
        return 0, folders, ""

    monkeypatch.setattr(sweep, "run_main", fake_run_main)
    options = sweep.build_parser().parse_args(
        ["--prune_type", "lt", "reinit", "--prune_percent", "20", "50", "80", "--seed", "0"]
    )
    tasks = sweep.make_tasks(options, [])
    (tmp_path / "logs").mkdir()
    sweep.run_on_ray(tasks, options, tmp_path / "logs")
    out = capsys.readouterr().out

    first = {job: argv for job, argv in zip(("20", "50", "80"), fake.started, strict=False)}
    again = fake.started[3:]
    resume_20 = ["--resume", str(tmp_path / "lt_20_batch0_lt")]
    assert again[0] == resume_20 and again[1] == first["50"]
    assert again[2:] == [["--resume", str(tmp_path / "lt_80_batch0_lt")]] * sweep.RESTARTS
    assert len(fake.started) == 3 + 2 + sweep.RESTARTS
    assert f"sweep: lt_20_seed0 lost (NodeDiedError): resuming {tmp_path}/lt_20_batch0_lt" in out
    assert "sweep: reinit_50_seed0 lost (NodeDiedError): starting again" in out
    status = {t.name: (t.status, t.run_dir) for t in tasks}
    for percent in ("20", "50"):
        for prune_type in ("lt", "reinit"):
            assert status[f"{prune_type}_{percent}_seed0"] == (
                "done",
                str(tmp_path / f"lt_{percent}_batch0_{prune_type}"),
            )
    lost = [t for t in tasks if t.percent == 80]
    assert all(t.status == "failed" and t.error.startswith("NodeDiedError: lost") for t in lost)
