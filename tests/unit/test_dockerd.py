"""bridge.lab.dockerd's probe of a Docker API socket, against real unix-socket servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.lab import dockerd


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A unix socket answering each connection with the next canned reply."""
    path = tmp_path / "docker.sock"
    replies: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(4096)
                if request.startswith(b"GET /_ping ") and replies:
                    conn.sendall(replies.pop(0))

    threading.Thread(target=serve, daemon=True).start()
    yield path, replies
    server.close()


def test_ping_needs_a_200_ok(api: tuple[Path, list[bytes]]) -> None:
    path, replies = api
    replies.append(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
    assert dockerd.ping(f"unix://{path}")
    replies.append(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    assert not dockerd.ping(f"unix://{path}")


def test_ping_refuses_what_is_not_a_unix_socket_url(tmp_path: Path) -> None:
    assert not dockerd.ping(f"unix://{tmp_path}/absent.sock")
    assert not dockerd.ping("tcp://127.0.0.1:2375")


def test_reachable_engine_prefers_docker_host(api: tuple[Path, list[bytes]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path, replies = api
    replies.append(b"HTTP/1.1 200 OK\r\n\r\nOK")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    assert dockerd.reachable_engine() == f"unix://{path}"
    # Nothing answers any more: neither $DOCKER_HOST nor (on this test's terms) the system's.
    monkeypatch.setattr(dockerd, "SYSTEM_SOCKET", str(path.with_name("none.sock")))
    assert dockerd.reachable_engine() is None
