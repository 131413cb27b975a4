"""A two-node ari-bridge cluster on one machine: two lab Asterisks, one Redis, two bridges.

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/cluster_lab.py up     [--state DIR] [--no-bridges]
    .venv/bin/python bench/cluster_lab.py status [--state DIR]
    .venv/bin/python bench/cluster_lab.py down   [--state DIR]

``up`` starts, each on free loopback ports:

* two lab Asterisks (nodes ``a`` and ``b``, rootfs engine) whose dialplan spreads calls over
  the Stasis applications ``ari-bridge-1`` .. ``ari-bridge-4`` (``ARI_SLOTS = 4``);
* a redis-server with persistence (append-only file in the state directory), holding the
  shared call store, the slot leases and the agent store;
* the bundled example application (``bridge.examples.welcome``), as ``ari-bridge demo`` runs;
* two bridges, ``ari-bridge serve --config <state>/bridge-N/config.yaml``, each connected to
  both nodes and holding one slot.

Every process has a PID file and a log in the state directory; ``down`` stops exactly those
processes (checking each PID's command line first) and the two labs. ``status`` prints what
runs, the URLs, and the SIP address of each node to call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.lab import LabError, LabInfo, LabOptions, lab_down, lab_status, lab_up  # noqa: E402
from bridge.lab.ports import free_port  # noqa: E402

DEFAULT_STATE = Path("/var/tmp/ari-bridge-cluster")
APP = "ari-bridge"
SLOTS = 4
NODE_NAMES = ("a", "b")
BRIDGE_IDS = ("bridge-1", "bridge-2")
#: Each node's RTP range: below the ephemeral port range, apart from the test labs' ranges.
RTP_RANGES = {"a": (26000, 26999), "b": (27000, 27999)}
STATE_FILE = "cluster.json"
#: Seconds a process may take to answer after its start, and to stop after SIGTERM (a bridge
#: drains its calls first: service.drain_timeout_s, 10 s by default).
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Node:
    """One Asterisk of the cluster as the bridges reach it."""

    name: str
    url: str
    password: str
    username: str = "ari-bridge"


# ------------------------------------------------------------------------ configuration
def cluster_configs(
    nodes: Sequence[Node],
    *,
    redis_url: str,
    state_dir: Path,
    http_ports: Sequence[int],
    app_url: str,
    slots: int = SLOTS,
    heartbeat_s: float = 1.0,
    dead_after_s: float = 3.0,
) -> list[dict[str, Any]]:
    """The configuration of each bridge (``bridge-1``, ``bridge-2``, ... one per http port):
    every bridge connects to every node and shares the Redis stores; the example application
    answers every number, as in ``ari-bridge demo``."""
    if not nodes:
        raise ValueError("a cluster needs at least one Asterisk node")
    configs = []
    for index, port in enumerate(http_ports, start=1):
        instance = f"bridge-{index}"
        home = state_dir / instance
        configs.append({
            "ari": {
                "app": APP,
                "nodes": [{"name": n.name, "url": n.url, "username": n.username,
                           "password": n.password} for n in nodes],
            },
            "store": {"backend": "redis", "redis_url": redis_url,
                      "path": str(home / "calls.sqlite3")},
            "agents": {"backend": "redis", "redis_url": redis_url},
            "cluster": {"enabled": True, "slots": slots, "heartbeat_s": heartbeat_s,
                        "dead_after_s": dead_after_s, "instance_id": instance},
            "http": {"host": "127.0.0.1", "port": port},
            "media": {"path": str(home / "media")},
            "recordings": {"path": str(home / "recordings")},
            "applications": [{"id": "welcome", "answer_url": f"{app_url}/answer",
                              "event_url": f"{app_url}/event"}],
            "numbers": {"*": "welcome"},
        })
    return configs


# ---------------------------------------------------------------------------- processes
def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The PID in ``pid_file`` when that process runs in the PID file's directory and its
    command line names ``marker`` (so a PID reused by another program is never taken for
    ours: every process here is started in its own directory of the state directory)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if (_alive(pid) and _cwd(pid) == pid_file.parent.resolve()
            and any(marker in part for part in _cmdline(pid))):
        return pid
    return None


def spawn(command: list[str], home: Path, name: str) -> int:
    """Start ``command`` detached (its own session, so it outlives this script), output to
    ``home/<name>.log``; write ``home/<name>.pid`` and return the PID."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ARI_BRIDGE_")}
    env.setdefault("PYTHONPATH", str(REPO))
    with (home / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=home, env=env,
                                start_new_session=True)
    (home / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def stop(pid_file: Path, marker: str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the process of ``pid_file`` (if it is ours), SIGKILL after ``timeout_s``;
    True when something was stopped. The PID file is removed."""
    pid = running_pid(pid_file, marker)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return pid is not None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _wait(what: str, ready: Any, pid: int, log: Path) -> None:
    """Poll ``ready()`` until it is true; raise when the process dies or time runs out."""
    end = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < end:
        if ready():
            return
        if not _alive(pid):
            raise RuntimeError(f"{what} exited during start-up; last lines of {log}:\n"
                               f"{_tail(log)}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer within {START_TIMEOUT_S:.0f} s; last lines of "
                       f"{log}:\n{_tail(log)}")


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _ari_bridge() -> list[str]:
    """The ari-bridge command beside this interpreter (``python -m bridge.cli`` otherwise)."""
    script = Path(sys.executable).with_name("ari-bridge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bridge.cli"]


# -------------------------------------------------------------------------- the cluster
def node_options(state: Path, name: str, ports: dict[str, Any] | None = None) -> LabOptions:
    """The lab options of node ``name``; ``ports`` from ``cluster.json``, else new free ones."""
    saved = (ports or {}).get(name, {})
    rtp_start, rtp_end = RTP_RANGES[name]
    return LabOptions(
        state_dir=state / f"node-{name}",
        ari_port=int(saved.get("ari_port") or free_port(socket.SOCK_STREAM)),
        sip_port=int(saved.get("sip_port") or free_port(socket.SOCK_DGRAM)),
        rtp_start=rtp_start, rtp_end=rtp_end, app_name=APP, slots=SLOTS,
    )


def load_state(state: Path) -> dict[str, Any]:
    try:
        data = json.loads((state / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(state: Path, data: dict[str, Any]) -> None:
    path = state / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _markers(state: Path) -> dict[str, tuple[Path, str]]:
    """Every process ``up`` starts besides the labs: name -> (PID file, command-line marker)."""
    items = {
        "redis": (state / "redis" / "redis.pid", "redis-server"),
        "example": (state / "example" / "example.pid", "bridge.examples.welcome"),
    }
    for bridge in BRIDGE_IDS:
        items[bridge] = (state / bridge / "bridge.pid", str(state / bridge / "config.yaml"))
    return items


def up(state: Path, *, bridges: bool = True, progress: Any = print) -> dict[str, Any]:
    """Start the cluster under ``state`` (what already runs is kept) and return cluster.json."""
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    data = load_state(state)
    markers = _markers(state)
    nodes: dict[str, LabInfo] = {}
    ports: dict[str, Any] = data.get("nodes", {})
    for name in NODE_NAMES:
        opts = node_options(state, name, ports)
        info = lab_up(opts, progress=progress)
        nodes[name] = info
        ports[name] = {"ari_port": opts.ari_port, "sip_port": opts.sip_port,
                       "ari_url": info.ari_url, "sip": f"{info.sip_host}:{info.sip_port}",
                       "credentials": str(info.credentials_file)}
    data["nodes"] = ports
    _save_state(state, data)

    redis_port = int(data.get("redis_port") or free_port(socket.SOCK_STREAM))
    pid_file, marker = markers["redis"]
    if running_pid(pid_file, marker) is None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        home = pid_file.parent
        pid = spawn([binary, "--port", str(redis_port), "--bind", "127.0.0.1",
                     "--protected-mode", "yes", "--dir", str(home),
                     "--appendonly", "yes", "--save", ""], home, "redis")
        _wait("redis-server", lambda: _redis_ping(redis_port), pid, home / "redis.log")
    data["redis_port"] = redis_port
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    data["redis_url"] = redis_url
    _save_state(state, data)

    app_port = int(data.get("example_port") or free_port(socket.SOCK_STREAM))
    pid_file, marker = markers["example"]
    if running_pid(pid_file, marker) is None:
        home = pid_file.parent
        pid = spawn([sys.executable, "-m", "bridge.examples.welcome", "--host", "127.0.0.1",
                     "--port", str(app_port)], home, "example")
        _wait("the example application", lambda: _http_ok(f"http://127.0.0.1:{app_port}/healthz"),
              pid, home / "example.log")
    data["example_port"] = app_port
    _save_state(state, data)

    http_ports = data.get("bridge_ports") or [free_port(socket.SOCK_STREAM) for _ in BRIDGE_IDS]
    data["bridge_ports"] = http_ports
    _save_state(state, data)
    configs = cluster_configs(
        [Node(name, nodes[name].ari_url, nodes[name].ari_password) for name in NODE_NAMES],
        redis_url=redis_url, state_dir=state, http_ports=http_ports,
        app_url=f"http://127.0.0.1:{app_port}")
    for bridge, config in zip(BRIDGE_IDS, configs, strict=True):
        path = state / bridge / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        # It holds the nodes' ARI passwords.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
    if bridges:
        for bridge, port in zip(BRIDGE_IDS, http_ports, strict=True):
            pid_file, marker = markers[bridge]
            if running_pid(pid_file, marker) is not None:
                continue
            home = pid_file.parent
            pid = spawn([*_ari_bridge(), "serve", "--config", str(home / "config.yaml")],
                        home, "bridge")
            _wait(f"{bridge} (ari-bridge serve)",
                  lambda port=port: _http_ok(f"http://127.0.0.1:{port}/readyz"),
                  pid, home / "bridge.log")
    return data


def down(state: Path) -> list[str]:
    """Stop what ``up`` started under ``state`` (bridges first, so they drain while Asterisk
    still runs); return the names of what was running."""
    state = state.resolve()
    data = load_state(state)
    stopped = []
    markers = _markers(state)
    for name in (*BRIDGE_IDS, "example", "redis"):
        pid_file, marker = markers[name]
        if stop(pid_file, marker):
            stopped.append(name)
    for name in NODE_NAMES:
        if (state / f"node-{name}").is_dir() and lab_down(
                node_options(state, name, data.get("nodes"))):
            stopped.append(f"node-{name}")
    return stopped


def status(state: Path) -> dict[str, Any]:
    """What runs under ``state``: per part, its PID (None when down) and address."""
    state = state.resolve()
    data = load_state(state)
    report: dict[str, Any] = {}
    for name in NODE_NAMES:
        info = None
        if (state / f"node-{name}").is_dir():
            with contextlib.suppress(LabError):
                info = lab_status(node_options(state, name, data.get("nodes")))
        report[f"node-{name}"] = {
            "pid": info.pid if info else None,
            "ari": info.ari_url if info else None,
            "sip": f"{info.sip_host}:{info.sip_port}" if info else None,
            "credentials": str(info.credentials_file) if info else None,
        }
    for name, (pid_file, marker) in _markers(state).items():
        report[name] = {"pid": running_pid(pid_file, marker)}
    report["redis"]["url"] = data.get("redis_url")
    if data.get("example_port"):
        report["example"]["url"] = f"http://127.0.0.1:{data['example_port']}"
    for bridge, port in zip(BRIDGE_IDS, data.get("bridge_ports") or [], strict=False):
        report[bridge]["url"] = f"http://127.0.0.1:{port}"
        report[bridge]["config"] = str(state / bridge / "config.yaml")
        report[bridge]["log"] = str(state / bridge / "bridge.log")
    return report


def print_status(report: dict[str, Any]) -> None:
    for name, part in report.items():
        where = "  ".join(f"{k} {v}" for k, v in part.items() if k != "pid" and v)
        state = f"pid {part['pid']}" if part["pid"] else "down"
        print(f"{name:<9} {state:<10} {where}")
    sips = [part["sip"] for name, part in report.items() if name.startswith("node-")
            and part.get("sip") and part["pid"]]
    if sips:
        print("place calls (SIP over UDP, any number), e.g. with sipp:")
        for sip in sips:
            print(f"  sipp -sn uac -s 15551230000 -m 1 {sip}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE,
                        help=f"state directory (default {DEFAULT_STATE})")
    parser.add_argument("--no-bridges", action="store_true",
                        help="up: start the nodes, Redis and the example application only")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            up(args.state, bridges=not args.no_bridges)
            print_status(status(args.state))
        elif args.action == "down":
            stopped = down(args.state)
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        else:
            report = status(args.state)
            print_status(report)
            return 0 if all(part["pid"] for part in report.values()) else 3
    except (LabError, RuntimeError) as exc:
        print(f"cluster_lab: {exc}", file=sys.stderr)
        if args.action == "up":
            print(f"what did start keeps running: {sys.argv[0]} status|down --state "
                  f"{args.state}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
