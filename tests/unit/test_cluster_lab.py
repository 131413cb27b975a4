"""bench/cluster_lab.py: each bridge's configuration, and its processes stopped only when they
are the ones it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster_lab import Node, cluster_configs, running_pid, spawn, stop

NODES = [Node("a", "http://127.0.0.1:18088", "pw-a"), Node("b", "http://127.0.0.1:18089", "pw-b")]


def _configs(tmp_path: Path) -> list[dict]:  # type: ignore[type-arg]
    return cluster_configs(NODES, redis_url="redis://127.0.0.1:16379/0", state_dir=tmp_path,
                           http_ports=[18081, 18082], app_url="http://127.0.0.1:18000")


def test_every_bridge_reaches_every_node_and_shares_redis(tmp_path: Path) -> None:
    configs = _configs(tmp_path)
    assert len(configs) == 2
    for config in configs:
        assert config["ari"] == {"app": "ari-bridge", "nodes": [
            {"name": "a", "url": "http://127.0.0.1:18088", "username": "ari-bridge",
             "password": "pw-a"},
            {"name": "b", "url": "http://127.0.0.1:18089", "username": "ari-bridge",
             "password": "pw-b"},
        ]}
        assert config["store"]["backend"] == config["agents"]["backend"] == "redis"
        assert config["store"]["redis_url"] == config["agents"]["redis_url"] \
            == "redis://127.0.0.1:16379/0"
        assert config["applications"] == [{"id": "welcome",
                                           "answer_url": "http://127.0.0.1:18000/answer",
                                           "event_url": "http://127.0.0.1:18000/event"}]
        assert config["numbers"] == {"*": "welcome"}


def test_each_bridge_has_its_own_identity_port_and_files(tmp_path: Path) -> None:
    first, second = _configs(tmp_path)
    assert first["cluster"] == {"enabled": True, "slots": 4, "heartbeat_s": 1.0,
                                "dead_after_s": 3.0, "instance_id": "bridge-1"}
    assert second["cluster"]["instance_id"] == "bridge-2"
    assert (first["http"]["port"], second["http"]["port"]) == (18081, 18082)
    for config, home in ((first, tmp_path / "bridge-1"), (second, tmp_path / "bridge-2")):
        assert config["store"]["path"] == str(home / "calls.sqlite3")
        assert config["media"] == {"path": str(home / "media")}
        assert config["recordings"] == {"path": str(home / "recordings")}


def test_a_cluster_without_nodes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="node"):
        cluster_configs([], redis_url="redis://x/0", state_dir=tmp_path, http_ports=[1],
                        app_url="http://x")


def test_stop_ends_the_process_it_started(tmp_path: Path) -> None:
    home = tmp_path / "sleeper"
    pid = spawn([sys.executable, "-c", "import time; time.sleep(120)"], home, "sleeper")
    pid_file = home / "sleeper.pid"
    try:
        assert running_pid(pid_file, "time.sleep") == pid
        assert stop(pid_file, "time.sleep", timeout_s=10)
        assert running_pid(pid_file, "time.sleep") is None
        assert not pid_file.exists()
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], check=False, capture_output=True)


def test_a_pid_that_is_not_ours_is_left_alone(tmp_path: Path) -> None:
    # This test's own process: alive, but not started in that directory.
    pid_file = tmp_path / "other.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    assert running_pid(pid_file, "python") is None
    assert not stop(pid_file, "python")
