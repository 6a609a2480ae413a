"""What makes a run reproducible: its seed, arguments, package versions and code version."""

import contextlib
import datetime
import importlib.metadata
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

PACKAGES = ("torch", "torchvision", "numpy", "matplotlib", "tqdm", "tensorboard")


def choose_seed(seed: int | None) -> int:
    """The given seed, or a fresh random one (printed and recorded so the run can be repeated)."""
    return secrets.randbits(32) if seed is None else seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def deterministic_algorithms(device: torch.device) -> None:
    """On CUDA, make a seeded run repeat bit for bit on the same GPU model and software.

    cuBLAS needs a fixed workspace for that, set before its first use (the variable a user set
    is kept). Operations without a deterministic CUDA kernel warn instead of stopping the run.
    On the CPU nothing changes: its kernels repeat already.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng_states() -> dict:
    """Every random generator's state, for an exact resume: "cuda" holds one state per CUDA
    device of this machine (none without CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    """Put every generator where `states` (rng_states) had it, on this machine too when it has
    fewer CUDA devices than the one that saved them, or none: then the states of the devices it
    has are set (the first ones) and the others left out, with a one-line notice that the
    random draws will differ from the original machine's."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    saved = list(states["cuda"])
    if not saved:
        return
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(state, index)
    if here < len(saved):
        kept = f"the first {here} are restored" if here else "they are left out"
        print(
            f"notice: the checkpoint holds the random states of {len(saved)} CUDA device(s) and"
            f" this machine has {here}: {kept}, so the random draws here may differ from the"
            " original machine's"
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
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def run_record(arguments: dict, device: torch.device) -> dict:
    """The content of `args.json`: every argument (the seed among them) and the environment."""
    return {
        "args": arguments,
        "seed": arguments["seed"],
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": [sys.executable, *sys.argv],
        "host": socket.gethostname(),
        "device": str(device),
    }


def with_resume(record: dict, at_level: int, changed: dict, device: torch.device) -> dict:
    """`record` (args.json) with one more entry in its `resumes` list: the level the resume
    starts at, the flags it changed ({flag: [old, new]}), when, where and on what device."""
    entry = {
        "at_level": at_level,
        "changed": changed,
        "started": datetime.datetime.now().isoformat(),
        "host": socket.gethostname(),
        "device": str(device),
    }
    return {**record, "resumes": [*record.get("resumes", []), entry]}


class TrialRandom:
    """One trial's own random generators (Python's, numpy's and torch's CPU one), kept apart from
    the process's: each trial of a batch draws its initial and reinit weights, its random masks
    and its data orders from them, so that it draws what it would draw alone.

    `with trial_random.active():` puts them in place of the process's generators for the draws
    inside, then keeps their new states and puts the process's back. Seeded as `seed_everything`
    seeds the process, so a batch of one draws exactly what a run of that seed drew before
    batches existed.
    """

    def __init__(self, seed: int) -> None:
        saved = self.process_states()
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)  # the CPU generator only
        self.states = self.process_states()
        self.restore_process(saved)

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
        """The generators' states, for a checkpoint."""
        return dict(self.states)

    @classmethod
    def from_state(cls, states: dict) -> "TrialRandom":
        made = cls.__new__(cls)
        made.states = {name: states[name] for name in ("python", "numpy", "torch")}
        return made
