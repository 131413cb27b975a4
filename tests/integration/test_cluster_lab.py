"""bench/cluster_lab.py for real: two lab nodes with slots, a persistent Redis and the example
application come up, answer, keep Redis's data over a restart, and go down without leftovers.

The last test starts the two bridges too, as the README's command does, and places a call on
each node."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bench.cluster_lab import NODE_NAMES, down, node_options, status, up
from bridge.lab import asterisk_cli
from bridge.lab._model import ari_get
from bridge.lab.sipp import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("the rootfs lab needs root")
    if shutil.which("redis-server") is None:
        pytest.fail("needs redis-server (apt-get install redis-server)")
    path = tmp_path_factory.mktemp("cluster")
    try:
        yield path
    finally:
        down(path)


def _redis(port: int, *command: str) -> bytes:
    request = f"*{len(command)}\r\n" + "".join(f"${len(c)}\r\n{c}\r\n" for c in command)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request.encode())
        return conn.recv(4096)


def test_up_starts_the_nodes_redis_and_the_example(state: Path) -> None:
    data = up(state, bridges=False, progress=print)
    report = status(state)
    for part in ("node-a", "node-b", "redis", "example"):
        assert report[part]["pid"], (part, report[part])
    for name in NODE_NAMES:
        opts = node_options(state, name, data["nodes"])
        assert "ARI_SLOTS=4" in asterisk_cli(opts, "dialplan show globals")
    # Each bridge's configuration names both nodes with the passwords that open their ARI.
    configs = [yaml.safe_load((state / b / "config.yaml").read_text())
               for b in ("bridge-1", "bridge-2")]
    assert (state / "bridge-1" / "config.yaml").stat().st_mode & 0o777 == 0o600
    for config in configs:
        for node in config["ari"]["nodes"]:
            code, _ = ari_get(f"{node['url']}/ari/asterisk/info", node["username"],
                              node["password"])
            assert code == 200, node["name"]
        assert config["store"]["redis_url"] == data["redis_url"]


def test_redis_keeps_its_data_over_a_restart(state: Path) -> None:
    port = up(state, bridges=False)["redis_port"]
    assert _redis(port, "SET", "cluster-lab-test", "kept") == b"+OK\r\n"
    assert "redis" in down(state)
    assert status(state)["redis"]["pid"] is None
    assert up(state, bridges=False)["redis_port"] == port
    assert _redis(port, "GET", "cluster-lab-test") == b"$4\r\nkept\r\n"


def test_down_stops_everything_it_started(state: Path) -> None:
    up(state, bridges=False)
    before = status(state)
    pids = [before[p]["pid"] for p in ("node-a", "node-b", "redis", "example")]
    assert all(pids)
    stopped = down(state)
    assert set(stopped) == {"node-a", "node-b", "redis", "example"}
    after = status(state)
    assert all(part["pid"] is None for part in after.values()), after
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


async def test_up_with_the_bridges_serves_a_call_on_each_node(state: Path) -> None:
    """The README's command as a user runs it: both bridges come up ready, each holding its own
    slot, and a call on each node is answered by the example application."""
    import aiohttp

    from bridge.lab.sipp import place_call

    data = await asyncio.to_thread(up, state)
    try:
        slots = set()
        async with aiohttp.ClientSession() as http:
            for port in data["bridge_ports"]:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                    slots.update(body["cluster"]["slots"])
        assert len(slots) == 2  # one each
        for name in NODE_NAMES:
            host, port = data["nodes"][name]["sip"].rsplit(":", 1)
            result = await place_call(host, int(port), "15551230000", rtp_port=free_port(),
                                      timeout_s=60)
            assert result.ok, (name, result.errors)
            assert 200 in result.statuses
    finally:
        stopped = await asyncio.to_thread(down, state)
    assert {"bridge-1", "bridge-2"} <= set(stopped)
