"""What makes a run reproducible (seeds, random states, versions) and the one reader and writer
of a run folder's args.json (`RunRecord`)."""

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lth import experiment
from lth.errors import UserError
from lth.results import write_json

PACKAGES = ("torch", "torchvision", "numpy", "matplotlib", "tqdm", "tensorboard")


def choose_seed(seed: int | None) -> int:
    return secrets.randbits(32) if seed is None else seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def deterministic_algorithms(device: torch.device) -> None:
    """On CUDA, make a seeded run repeat bit for bit on the same GPU model and software (cuBLAS
    needs a fixed workspace, set before its first use); the CPU's kernels repeat already."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_states() -> dict:
    """Every random generator's state, for an exact resume ("cuda": one per CUDA device)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {**TrialRandom.process_states(), "cuda": cuda}


def restore_rng_states(states: dict) -> None:
    """Put every generator where `states` (rng_states) had it; on a machine with fewer CUDA
    devices, those it has, with a notice that the random draws may differ."""
    TrialRandom.restore_process(states)
    saved = list(states["cuda"])
    if not saved:
        return
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(state, index)
    if here < len(saved):
        kept = f"the first {here} are restored" if here else "they are left out"
        print(
            f"notice: the checkpoint holds the random states of {len(saved)} CUDA device(s) and this machine has {here}: {kept}, so the random draws here may differ from the original machine's"
        )


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the code that ran, with `-dirty` when it had uncommitted changes."""
    here = str(Path(__file__).resolve().parent)

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", here, *args], capture_output=True, text=True, timeout=10
        )

    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def run_record(args: Mapping, device: torch.device) -> dict:
    """What a run or an analysis ran: every argument (the seed among them) and the environment."""
    return {
        "args": dict(args),
        "seed": args["seed"],
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": [sys.executable, *sys.argv],
        "host": socket.gethostname(),
        "device": str(device),
    }


ARGS_FILE = "args.json"

# What every args.json records, from the first release on, and reading a run needs.
REQUIRED = ("dataset", "arch_type", "prune_type", "prune_iterations")


class UnreadableRecord(UserError):
    """A folder without an args.json that can be read: `error` is None when there is none."""

    def __init__(self, folder: Path, error: Exception | None) -> None:
        super().__init__(f"{folder} is not a run folder (no readable {ARGS_FILE})")
        self.error = error


@dataclass(frozen=True)
class RunRecord:
    """A run folder's args.json: the run's arguments, its environment, its batch (its trials'
    sibling folders) and its resumes (each changing run options only). Every reader of a run
    folder reads it here, checked (`check`), with the resumes' changes applied (`args`)."""

    folder: Path
    content: dict

    @staticmethod
    def path(folder: Path | str) -> Path:
        return Path(folder) / ARGS_FILE

    @classmethod
    def exists(cls, folder: Path | str) -> bool:
        return cls.path(folder).is_file()

    @classmethod
    def read(cls, folder: Path | str) -> "RunRecord":
        """The record in `folder`; UnreadableRecord or `check`'s UserError when there is none."""
        folder = Path(folder)
        try:
            content = json.loads(cls.path(folder).read_text())
        except FileNotFoundError:
            raise UnreadableRecord(folder, None) from None
        except (OSError, ValueError) as error:
            raise UnreadableRecord(folder, error) from None
        check(content, cls.path(folder))
        return cls(folder, content)

    @classmethod
    def new(cls, folder: Path, args: Mapping, device: torch.device, batch: dict) -> "RunRecord":
        """The record of a new run in its `batch` ({"runs": folder names, "index", "ticket"})."""
        started = {"started": datetime.datetime.now().isoformat(), "batch": batch}
        return cls(folder, {**run_record(args, device), **started})

    def write(self) -> None:
        write_json(self.path(self.folder), self.content)

    def resumed(self, at_level: int, changed: dict, device: torch.device) -> "RunRecord":
        """This record with one more `resumes` entry (`changed`: {flag: [old, new]})."""
        entry = {
            "at_level": at_level,
            "changed": changed,
            "started": datetime.datetime.now().isoformat(),
            "host": socket.gethostname(),
            "device": str(device),
        }
        resumes = [*self.content.get("resumes", []), entry]
        return RunRecord(self.folder, {**self.content, "resumes": resumes})

    @property
    def args(self) -> dict[str, Any]:
        """The run's arguments (each missing one at its default) as its latest resume left them."""
        args = recorded_args(self.content["args"])
        for entry in self.content.get("resumes", []):
            args.update({name: new for name, (_, new) in entry["changed"].items()})
        return args

    @property
    def batch(self) -> dict:
        return self.content.get("batch", {})

    @property
    def started(self) -> str:
        return self.content.get("started", "")


def recorded_args(recorded: Mapping) -> dict[str, Any]:
    """Every setting of the `recorded` arguments, one they lack at its (resolved) default."""
    defaults = {k: v for kind in experiment.KINDS for k, v in kind.read(recorded).values().items()}
    return {**defaults, **recorded}


def check(content: object, path: Path) -> None:
    """UserError naming `path` unless the args.json content holds only what main.py writes
    there, each value of its setting's type, so a damaged or foreign one is refused early."""

    def refuse(what: str) -> UserError:
        return UserError(f"{path} is not an {ARGS_FILE} lth wrote: {what}")

    if not isinstance(content, dict) or not isinstance(content.get("args"), dict):
        raise refuse('it holds no "args" object')
    missing = [name for name in REQUIRED if name not in content["args"]]
    if missing:
        raise refuse(f"its arguments lack {', '.join(missing)}")
    kinds = experiment.recorded_types()
    for name, value in content["args"].items():
        if name in kinds and not _of_kinds(value, kinds[name]):
            shown = " or ".join(k.__name__ for k in kinds[name])
            raise refuse(f"{name} is {value!r}, not {shown}")
    batch = content.get("batch", {})
    runs = batch.get("runs", []) if isinstance(batch, dict) else None
    if not isinstance(runs, list) or not all(_sibling_name(name) for name in runs):
        raise refuse('its "batch" is not a list of the batch\'s run folder names')
    ticket = batch.get("ticket")
    if ticket is not None and not (_of_kinds(ticket, (int,)) and 0 <= ticket < len(runs)):
        raise refuse(f'its "batch" names trial {ticket!r} as its ticket')
    resumes = content.get("resumes", [])
    if not isinstance(resumes, list) or not all(_neutral_changes(entry) for entry in resumes):
        raise refuse('its "resumes" change more than the flags a resume may change')
    if not isinstance(content.get("started", ""), str):
        raise refuse('its "started" is not a time')


def _neutral_changes(entry: object) -> bool:
    """Whether a "resumes" entry changed run options only, each [old, new] of its type."""
    changed = entry.get("changed") if isinstance(entry, dict) else None
    kinds = experiment.recorded_types()
    return isinstance(changed, dict) and all(
        name in experiment.neutral_fields()
        and isinstance(pair, list)
        and len(pair) == 2
        and _of_kinds(pair[1], kinds[name])
        for name, pair in changed.items()
    )


def _sibling_name(name: object) -> bool:
    """Whether `name` names a folder beside the run's own: one plain path component."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and Path(name).name == name
        and "\\" not in name
    )


def _of_kinds(value: object, kinds: tuple[type, ...]) -> bool:
    """isinstance, with an int as a float too and a bool as neither."""
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


class TrialRandom:
    """One trial's own random generators (Python's, numpy's, torch's CPU one), kept apart from
    the process's so that each trial of a batch draws what it would draw alone; `active()`
    swaps them in for the draws inside. Seeded as `seed_everything` seeds the process."""

    def __init__(self, seed: int) -> None:
        self.states = self.process_states()
        with self.active():
            random.seed(seed)
            np.random.seed(seed)
            torch.random.default_generator.manual_seed(seed)  # the CPU generator only

    @staticmethod
    def process_states() -> dict:
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }

    @staticmethod
    def restore_process(states: dict) -> None:
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.set_rng_state(states["torch"])

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = self.process_states()
        self.restore_process(self.states)
        try:
            yield
        finally:
            self.states = self.process_states()
            self.restore_process(saved)

    def state(self) -> dict:
        return dict(self.states)

    @classmethod
    def from_state(cls, states: dict) -> "TrialRandom":
        made = cls.__new__(cls)
        made.states = {name: states[name] for name in ("python", "numpy", "torch")}
        return made
