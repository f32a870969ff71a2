"""The real-server harness stops its process group even when the test fails."""

import socket
import sys
from pathlib import Path

import pytest

from tests.servers.real import free_port, running


def test_a_server_is_stopped_when_the_test_fails(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        running(command, f"http://127.0.0.1:{port}/", tmp_path / "server.log") as seconds,
    ):
        assert seconds < 90
        raise RuntimeError("the test failed")
    with pytest.raises(OSError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
