"""main.py with faults injected from outside, for the tests only (no fault hook lives in main.py).

    python tests/faulty_main.py [main.py flags]

Environment:
  KILL_AT=epoch:N    SIGKILL this process after the N-th training epoch of its life (mid-level)
  KILL_AT=write:N    SIGKILL it while the N-th result file is half written (temporary name)
  KILL_AT=replace:N  SIGKILL it once the N-th result file is written, before its rename
  KILL_AT=stage:N    SIGKILL it once the N-th checkpoint is staged (a batch's commit half done)
  KILL_AT=commit:N   SIGKILL it once the N-th staged checkpoint is committed
  HANG_AT=commit:N:FILE  once the N-th staged checkpoint is committed, write this process's id
                     to FILE and wait to be killed (at most HANG_LIMIT s, then exit with status 3)
  RUN_NAME=NAME      every run folder is named NAME (as if all runs started in the same second)
  BARRIER=DIR:N      once imported, wait until N processes have reached DIR (start together)
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
from lth import (
    results,  # noqa: E402
    train,  # noqa: E402
)

HANG_LIMIT = 120


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_epoch(n: int) -> None:
    real, calls = train.train_epoch, [0]

    def train_epoch(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            die()
        return loss

    train.train_epoch = train_epoch


def kill_after_call(name: str, n: int) -> None:
    """SIGKILL after the n-th call of results.RunDir.<name>."""
    real, calls = getattr(results.RunDir, name), [0]

    def counted(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            die()

    setattr(results.RunDir, name, counted)


def hang_after_commit(n: int, mark: Path) -> None:
    """After the n-th committed checkpoint: FILE names this process, which then hangs."""
    real, calls = results.RunDir.commit_checkpoint, [0]

    def commit_checkpoint(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            sys.stdout.flush()
            written = mark.with_name(f"{mark.name}.tmp")
            written.write_text(str(os.getpid()))
            written.replace(mark)
            time.sleep(HANG_LIMIT)
            os._exit(3)

    results.RunDir.commit_checkpoint = commit_checkpoint


def kill_in_write(n: int, half: bool) -> None:
    """Replace the `open` that results.atomic_write writes its temporary files with."""
    calls = [0]

    class DyingFile:
        def __init__(self, file):
            self.file = file

        def write(self, data) -> None:
            data = bytes(data)
            self.file.write(data[: len(data) // 2] if half else data)
            self.file.flush()
            os.fsync(self.file.fileno())
            die()

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def dying_open(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        if "w" in mode:
            calls[0] += 1
            if calls[0] == n:
                return DyingFile(file)
        return file

    results.open = dying_open


def wait_for_others(folder: Path, count: int, timeout: float = 300) -> None:
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.005)


def main_with_faults() -> int:
    if "RUN_NAME" in os.environ:
        results.run_name = lambda now=None: os.environ["RUN_NAME"]
    if "KILL_AT" in os.environ:
        what, n = os.environ["KILL_AT"].split(":")
        if what == "epoch":
            kill_at_epoch(int(n))
        elif what in ("stage", "commit"):
            kill_after_call(f"{what}_checkpoint", int(n))
        else:
            kill_in_write(int(n), half=what == "write")
    if "HANG_AT" in os.environ:
        what, n, mark = os.environ["HANG_AT"].split(":", 2)
        assert what == "commit", os.environ["HANG_AT"]
        hang_after_commit(int(n), Path(mark))
    if "BARRIER" in os.environ:
        folder, count = os.environ["BARRIER"].rsplit(":", 1)
        wait_for_others(Path(folder), int(count))
    return main.main()


if __name__ == "__main__":
    sys.exit(main_with_faults())
