"""ARI REST over HTTP against REST over the event websocket: CPU per request on both sides.

For each transport (the bridge's own ``HttpTransport`` and ``WebSocketTransport``), ``GET
asterisk/ping`` and ``GET channels`` are sent N times one after another, and N times with
``--concurrency`` in flight. Per request it reports the client process's CPU time
(``time.process_time``) and Asterisk's (utime + stime of its process, from
``/proc/<pid>/stat``), plus wall time. The transports alternate within every round, and each
figure is the median over the rounds, so a burst of other load on the machine hits both alike.

Standalone, against a running lab (credentials from its ``ari.env``, never printed)::

    python bench/ari_transport.py --env-file <lab state dir>/ari.env [--requests 2000]
        [--rounds 3] [--concurrency 16] [--uvloop] [--json-out FILE]

Asterisk's process is the one listening on the ARI port (or ``--asterisk-pid``). Asterisk's
CPU is counted in clock ticks (10 ms): use enough requests per round (a few thousand) for it
to mean something.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.ari.rest import HttpTransport, WebSocketTransport
from bridge.ari.routing import EventRouter

APP = "ari-transport-bench"
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ")
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def process_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def listening_pid(port: int) -> int | None:
    """The process with a TCP socket listening on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


Op = Callable[[], Awaitable[Any]]


async def measure(op: Op, n: int, concurrency: int, asterisk_pid: int) -> dict[str, float]:
    """Send ``n`` requests, ``concurrency`` at a time (1: one after another)."""
    cpu0, ast0, wall0 = time.process_time(), process_cpu_s(asterisk_pid), time.perf_counter()
    if concurrency <= 1:
        for _ in range(n):
            await op()
    else:
        for start in range(0, n, concurrency):
            await asyncio.gather(*(op() for _ in range(min(concurrency, n - start))))
    wall = time.perf_counter() - wall0
    return {
        "client_cpu_us_per_request": (time.process_time() - cpu0) / n * 1e6,
        "asterisk_cpu_us_per_request": (process_cpu_s(asterisk_pid) - ast0) / n * 1e6,
        "wall_us_per_request": wall / n * 1e6,
        "requests_per_s": n / wall,
    }


async def compare(url: str, username: str, password: str, asterisk_pid: int, n: int,
                  rounds: int, concurrency: int, timeout_s: float = 10.0) -> dict[str, Any]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    session = aiohttp.ClientSession(
        headers={"Authorization": f"Basic {token}"},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
    )
    base = url.rstrip("/") + "/ari"
    try:
        http = HttpTransport(session, base)
        ws = await session.ws_connect(f"{base}/events?app={APP}")
        websocket = WebSocketTransport(ws, timeout_s)
        router = EventRouter(APP, lambda event: None)
        reader = asyncio.create_task(router.read(ws, websocket.resolve))
        transports = {"websocket": websocket, "http": http}

        def op(transport: Any, path: str) -> Op:
            return lambda: transport.request("GET", path, None, None, None)

        for transport in transports.values():  # warm up connections and caches
            for _ in range(50):
                await op(transport, "/asterisk/ping")()
        rows: dict[tuple[str, str, str], list[dict[str, float]]] = {}
        for index in range(rounds):
            order = list(transports) if index % 2 == 0 else list(reversed(transports))
            for path in ("/asterisk/ping", "/channels"):
                for mode, in_flight in (("sequential", 1), ("concurrent", concurrency)):
                    for name in order:
                        result = await measure(op(transports[name], path), n, in_flight,
                                               asterisk_pid)
                        rows.setdefault((path, mode, name), []).append(result)
        await ws.close()
        reader.cancel()
    finally:
        await session.close()
    results = []
    for (path, mode, name), runs in rows.items():
        row: dict[str, Any] = {"request": f"GET {path.lstrip('/')}", "mode": mode,
                               "transport": name, "requests_per_round": n, "rounds": rounds}
        for key in runs[0]:
            row[key] = round(statistics.median(r[key] for r in runs), 1)
        row["rounds_client_cpu_us"] = [round(r["client_cpu_us_per_request"], 1) for r in runs]
        row["rounds_asterisk_cpu_us"] = [round(r["asterisk_cpu_us_per_request"], 1)
                                         for r in runs]
        results.append(row)
    return {"concurrency": concurrency, "asterisk_pid": asterisk_pid,
            "event_loop": type(asyncio.get_running_loop()).__module__, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, required=True,
                        help="ari.env of a lab (ARI_BRIDGE_ARI__* lines)")
    parser.add_argument("--requests", type=int, default=2000, help="per round, op and mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--asterisk-pid", type=int)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    env = read_env_file(args.env_file)
    url = env["ARI_BRIDGE_ARI__URL"]
    pid = args.asterisk_pid or listening_pid(urlparse(url).port or 8088)
    if pid is None:
        parser.error("no process listens on the ARI port here: pass --asterisk-pid")
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        report = runner.run(compare(url, env["ARI_BRIDGE_ARI__USERNAME"],
                                    env["ARI_BRIDGE_ARI__PASSWORD"], pid, args.requests,
                                    args.rounds, args.concurrency))
    text = json.dumps(report, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
