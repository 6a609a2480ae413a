"""Shared fixtures: the repository root on sys.path, no network, and the tiny MNIST data set and
seeded reference run that the end-to-end tests share (each made once per session)."""

import ipaddress
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# An address nothing listens on: HTTP(S) through it is refused at once. Subprocesses that tests
# start (main.py, sweep.py) inherit it through the environment, so a download there fails fast too.
REFUSING_PROXY = "http://127.0.0.1:9"
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class NetworkBlocked(OSError):
    """Raised, instead of connecting, for any address off this machine during a test."""


def is_local(address: object) -> bool:
    """Whether a socket address is this machine's: a Unix socket path, a loopback IP, or a
    name of this machine."""
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths (Ray, multiprocessing)
    host = str(address[0])
    if host in LOCAL_NAMES or host == socket.gethostname():
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test reaches past this machine: connecting a socket or resolving a host elsewhere
    raises NetworkBlocked, and HTTP(S) in subprocesses goes to a proxy that refuses. Loopback
    stays open (Ray's local cluster). A test of the download path stubs the download itself."""
    connect, connect_ex, getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def guarded_connect(self, address):
        if not is_local(address):
            raise NetworkBlocked(f"network access in a test: connect to {address}")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if not is_local(address):
            raise NetworkBlocked(f"network access in a test: connect to {address}")
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_local((host if isinstance(host, str) else host.decode(),)):
            raise NetworkBlocked(f"network access in a test: look up {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, REFUSING_PROXY)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, ",".join(LOCAL_NAMES))


# The reference run's recipe: fc1 on the session's tiny MNIST, 2 levels x 2 epochs, seed 5.
REFERENCE_FLAGS = ["--seed", "5", "--plot_dpi", "20", "--prune_iterations", "2", "--end_iter", "2"]
REFERENCE_FLAGS += ["--batch_size", "32"]


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    """The names of the tensor methods that read a value back to the host, one entry per call,
    from here to the end of the test (the test may clear the list between the parts it compares)."""
    import torch

    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.fixture(scope="session")
def mnist_data(tmp_path_factory) -> list[str]:
    """Data flags for main.py: a tiny MNIST (120 training and 60 test images, the hard
    separation) written in the original's files and imported once for the whole session. The
    tests that share it only read the imported data set."""
    import torch

    from lth import data
    from tests.datafiles import write_mnist_files

    folder = tmp_path_factory.mktemp("mnist")
    source = write_mnist_files(folder / "source", n_train=120, n_test=60)
    data.load(
        "mnist", str(folder / "data"), str(source), torch.device("cpu")
    )  # the import, done here once
    return [f"--data_source={source}", f"--data_dir={folder / 'data'}"]


@pytest.fixture(scope="session")
def mnist_source(mnist_data) -> Path:
    """The folder of the session's tiny MNIST files, as a --data_source."""
    return Path(mnist_data[0].removeprefix("--data_source="))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, mnist_data) -> Path:
    """The run folder of one finished seeded run (REFERENCE_FLAGS on mnist_data), with each
    checkpoint it saved kept in `kept_checkpoints(reference_run)`. Tests compare against it or
    work on copies of it; none changes it."""
    import main
    from tests.resultfiles import keep_checkpoints

    folder = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        keep_checkpoints(patch, folder / "kept")
        patch.chdir(folder)
        assert main.main([*REFERENCE_FLAGS, *mnist_data]) == 0
    (run,) = (folder / "results").iterdir()
    return run


def kept_checkpoints(reference_run: Path) -> Path:
    """The folder of the reference run's checkpoints, one per level (see keep_checkpoints)."""
    return reference_run.parent.parent / "kept"


def refused(capsys, command, *words: str) -> str:
    """Run `command()`; it must exit 2 (returned, or argparse's SystemExit) with one line on
    stderr, no traceback, that contains each of `words`. Returns that line."""
    capsys.readouterr()
    try:
        status = command()
    except SystemExit as exit_:  # argparse's own refusals
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
