"""No test reaches the network (conftest.no_network): sockets, look-ups and downloads fail fast."""

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

OFF_MACHINE = ("203.0.113.7", 80)  # TEST-NET-3: documentation addresses, never routed
# conftest.NetworkBlocked, matched by its message: pytest loads conftest.py under its own module
# name, so the class imported from tests.conftest would be another one.
BLOCKED = "network access in a test"


def test_a_socket_to_another_machine_is_refused_at_once():
    with (
        socket.socket() as sock,
        pytest.raises(OSError, match=f"{BLOCKED}: connect to ..203.0.113.7"),
    ):
        sock.connect(OFF_MACHINE)
    with pytest.raises(OSError, match=f"{BLOCKED}: look up example.org"):
        socket.create_connection(("example.org", 443), timeout=30)


def test_loopback_stays_open():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


@pytest.mark.parametrize("where", ["in the test process", "in a subprocess"])
def test_a_download_fails_within_seconds(where):
    fetch = "import urllib.request; urllib.request.urlopen('http://example.org/x.gz', timeout=60)"
    start = time.monotonic()
    if where == "in the test process":
        with pytest.raises((urllib.error.URLError, OSError)):
            urllib.request.urlopen("http://example.org/x.gz", timeout=60)
    else:
        done = subprocess.run(
            [sys.executable, "-c", fetch], capture_output=True, text=True, timeout=120
        )
        assert done.returncode != 0 and "Connection refused" in done.stderr, done.stderr
    assert time.monotonic() - start < 10
