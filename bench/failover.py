"""Failover benchmark: from a busy agent's 486 to the next agent's INVITE (seeds 000/001).

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/failover.py [--calls 200] [--concurrency 4]

Each call runs the seed's NCCO: ``connect`` with ``eventType: synchronous`` to an agent that
answers 486 Busy Here; the bridge POSTs ``busy`` to the eventUrl, whose reply connects to a
second agent that answers. Both agents are sipp processes; their message logs give the moment
the 486 left the busy agent and the moment the INVITE reached the free one (same clock, us).
The eventUrl application runs in this process (not in the bridge's), on loopback, and stamps
when each request arrived and when its reply was sent, so the webhook's own share is known:

    total   = INVITE at free agent - 486 from busy agent
    webhook = reply sent - request received            (the application's time)
    bridge  = total - webhook                          (Asterisk + bridge + HTTP on loopback)

Every loop is bounded (a fixed number of calls, a timeout per call); the lab, the bridge and
the agents are stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.lab import LabOptions, lab_down, lab_up  # noqa: E402
from bridge.lab.sipp import Agent, RtpReceiver, free_port, place_call  # noqa: E402

BUSY_PREFIX = "41555"
FREE_PREFIX = "44207"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def sipp_times(messages: str, kind: str) -> dict[str, float]:
    """Call index -> wall-clock time of the first '486 sent' or 'INVITE received'."""
    out: dict[str, float] = {}
    for block in messages.split("----------------------------------------------- ")[1:]:
        stamp, _, rest = block.partition("\n")
        if kind == "486" and "message sent" in rest and "SIP/2.0 486" in rest:
            match = re.search(rf"To: <sip:{BUSY_PREFIX}(\d+)@", rest)
        elif kind == "INVITE" and "message received" in rest and "\nINVITE sip:" in rest:
            match = re.search(rf"To: <sip:{FREE_PREFIX}(\d+)@", rest)
        else:
            continue
        if match and match.group(1) not in out:
            moment = datetime.strptime(stamp.strip()[:26], "%Y-%m-%d %H:%M:%S.%f")
            out[match.group(1)] = moment.timestamp()
    return out


class Application:
    """answer_url and eventUrl on loopback; records when each busy event came and went."""

    def __init__(self) -> None:
        self.port = free_port(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.hook_times: dict[str, tuple[float, float]] = {}

    async def answer(self, request: web.Request) -> web.Response:
        index = request.query["to"][4:]
        return web.json_response([{
            "action": "connect", "from": "4155550123", "timeout": "10",
            "eventType": "synchronous", "eventUrl": [f"{self.url}/event/{index}"],
            "endpoint": [{"type": "phone", "number": f"{BUSY_PREFIX}{index}"}]}])

    async def event(self, request: web.Request) -> web.Response:
        arrived = time.time()
        body = await request.json()
        if body.get("status") != "busy":
            return web.Response(status=204)
        index = request.match_info["index"]
        reply = web.json_response([{
            "action": "connect", "from": "442038973494",
            "endpoint": [{"type": "phone", "number": f"{FREE_PREFIX}{index}"}]}])
        self.hook_times[index] = (arrived, time.time())
        return reply

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/answer", self.answer)
        app.router.add_post("/event/{index}", self.event)
        app.router.add_post("/status", lambda r: web.Response(status=204))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


async def run(calls: int, concurrency: int, state: Path) -> dict[str, Any]:
    opts = LabOptions(state_dir=state / "lab", ari_port=free_port(1), sip_port=free_port(),
                      rtp_start=14000, rtp_end=15999)
    info = lab_up(opts, progress=lambda line: None)
    app = Application()
    runner = await app.start()
    bridge: subprocess.Popen[bytes] | None = None
    try:
        async with Agent(486) as busy, Agent(200, hangup_after_ms=200) as free:
            config = {
                "ari": {"url": info.ari_url, "username": info.ari_username, "app": info.app_name},
                "http": {"host": "127.0.0.1", "port": free_port(1)},
                "store": {"path": str(state / "calls.sqlite3")},
                "media": {"path": str(state / "media")},
                "log": {"level": "warning"},
                "applications": [{"id": "bench", "answer_url": f"{app.url}/answer",
                                  "event_url": f"{app.url}/status"}],
                "numbers": {"*": "bench"},
                "trunks": [{"name": "busy", "host": "127.0.0.1", "port": busy.port},
                           {"name": "free", "host": "127.0.0.1", "port": free.port}],
                "routes": [{"prefix": BUSY_PREFIX, "trunk": "busy"},
                           {"prefix": FREE_PREFIX, "trunk": "free"}],
            }
            config_file = state / "config.json"  # JSON is YAML
            config_file.write_text(json.dumps(config))
            env = dict(os.environ, ARI_BRIDGE_ARI__PASSWORD=info.ari_password)
            bridge = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
                [str(REPO / ".venv/bin/ari-bridge"), "serve", "--config", str(config_file)],
                env=env, stdout=subprocess.DEVNULL, stderr=(state / "bridge.log").open("wb"))
            await wait_healthy(config["http"]["port"])  # type: ignore[index]
            failed = 0
            queue = list(range(calls))

            async def caller() -> None:
                nonlocal failed
                while queue:
                    index = queue.pop(0)
                    receiver = await RtpReceiver.open()
                    try:
                        result = await place_call(info.sip_host, info.sip_port,
                                                  f"1555{index:06d}", rtp_port=receiver.port,
                                                  timeout_s=30)
                    finally:
                        receiver.close()
                    failed += 0 if result.ok else 1

            started = time.monotonic()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            elapsed = time.monotonic() - started
            busy_at = sipp_times(busy.messages, "486")
            invite_at = sipp_times(free.messages, "INVITE")
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(10)
        await runner.cleanup()
        lab_down(opts)
    totals, webhook, bridge_part = [], [], []
    for index, sent in busy_at.items():
        if index in invite_at and index in app.hook_times:
            total = (invite_at[index] - sent) * 1000
            arrived, replied = app.hook_times[index]
            totals.append(total)
            webhook.append((replied - arrived) * 1000)
            bridge_part.append(total - (replied - arrived) * 1000)
    return {"calls": calls, "failed_calls": failed, "measured": len(totals),
            "elapsed_s": round(elapsed, 1), "concurrency": concurrency,
            "total_ms": stats(totals), "webhook_ms": stats(webhook),
            "bridge_ms": stats(bridge_part)}


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": round(percentile(values, 50), 2), "p99": round(percentile(values, 99), 2),
            "max": round(max(values), 2)}


async def wait_healthy(port: int) -> None:
    import aiohttp

    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the bridge did not become healthy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ari-bridge-failover-") as tmp:
        report = asyncio.run(run(args.calls, args.concurrency, Path(tmp)))
    print(json.dumps(report, indent=2))
    return 0 if report["failed_calls"] == 0 and report["measured"] else 1


if __name__ == "__main__":
    sys.exit(main())
