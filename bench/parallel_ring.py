"""Parallel ringing: from the winner's 200 OK to the CANCEL that reaches each losing leg.

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/parallel_ring.py [--calls 100] [--concurrency 4] [--losers 2]

Each call reaches an Exotel Connect applet whose application answers with ``1 + --losers``
destinations and ``parallel_ringing: {activate: true}``: every destination rings at once.
The first destination is an agent that answers after ``--answer-after-ms`` of ringing; the
others ring until they are cancelled. Every agent is a sipp process whose message log stamps
each SIP message on this machine's clock (microseconds), so for every call and every loser:

    cancel latency = CANCEL received by the loser - 200 OK sent by the winner

The legs of one call are matched through the ``X-Exotel-CallSid`` header of their INVITEs and
then through each leg's Call-ID. The bridge runs as its own process (``ari-bridge serve``); the
applet's application runs in this process on loopback.

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
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.lab import LabOptions, lab_down, lab_up  # noqa: E402
from bridge.lab.sipp import Agent, RtpReceiver, free_port, place_call  # noqa: E402
from bridge.lab.sipp.traces import header, messages  # noqa: E402

NUMBER = "15558880000"
def leg_times(trace: str, wanted: str) -> dict[str, float]:
    """CallSid -> time of the first ``wanted`` message on that call's leg: '200 sent' (the
    winner's answer) or 'CANCEL received' (a loser's cancel)."""
    sid_of_leg: dict[str, str] = {}
    stamps: dict[str, float] = {}
    for stamp, text in messages(trace):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        direction, first = lines[0], lines[1]
        call_id = header(text, "Call-ID") or ""
        if "received" in direction and first.startswith("INVITE "):
            sid_of_leg.setdefault(call_id, header(text, "X-Exotel-CallSid") or "")
        else:
            answer = (wanted == "200" and "sent" in direction and first.startswith("SIP/2.0 200")
                      and re.search(r"CSeq: *\d+ INVITE", text) is not None)
            cancel = (wanted == "CANCEL" and "received" in direction
                      and first.startswith("CANCEL "))
            if answer or cancel:
                stamps.setdefault(call_id, stamp)
    return {sid_of_leg[c]: t for c, t in stamps.items() if sid_of_leg.get(c)}


class Application:
    """The applet's primary URL: every destination, ringing together."""

    def __init__(self, destinations: list[str]) -> None:
        self.destinations = destinations
        self.port = free_port(1)
        self.url = f"http://127.0.0.1:{self.port}"

    async def primary(self, request: web.Request) -> web.Response:
        return web.json_response({
            "destination": [{"contact_uri": number} for number in self.destinations],
            "parallel_ringing": {"activate": True,
                                 "max_parallel_attempts": len(self.destinations)},
            "max_ringing_duration": 20,
        })

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/primary", self.primary)
        app.router.add_get("/goodbye",
                           lambda r: web.json_response([{"action": "talk", "text": "Bye."}]))
        app.router.add_route("*", "/event", lambda r: web.Response(status=204))  # type: ignore[arg-type,return-value]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


async def wait_healthy(port: int, bridge: subprocess.Popen[bytes]) -> None:
    import aiohttp

    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if bridge.poll() is not None:
                raise RuntimeError("the bridge exited at start")
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the bridge did not become ready")


async def run(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    opts = LabOptions(state_dir=state / "lab", ari_port=free_port(1), sip_port=free_port(),
                      rtp_start=16000, rtp_end=17999)
    info = lab_up(opts, progress=lambda line: None)
    numbers = [f"4478{i:07d}" for i in range(1 + args.losers)]
    app = Application(["+" + n for n in numbers])
    runner = await app.start()
    bridge: subprocess.Popen[bytes] | None = None
    agents = [Agent(200, ring_ms=args.answer_after_ms, hangup_after_ms=args.hold_ms)]
    agents += [Agent(180) for _ in range(args.losers)]
    try:
        for agent in agents:
            await agent.__aenter__()
        config = {
            "ari": {"url": info.ari_url, "username": info.ari_username, "app": info.app_name},
            "http": {"host": "127.0.0.1", "port": free_port(1)},
            "store": {"path": str(state / "calls.sqlite3")},
            "media": {"path": str(state / "media")},
            "log": {"level": "warning"},
            "applications": [{"id": "bench", "answer_url": f"{app.url}/goodbye"}],
            "numbers": {"*": "bench"},
            "trunks": [{"name": f"a{i}", "host": "127.0.0.1", "port": a.port}
                       for i, a in enumerate(agents)],
            "routes": [{"prefix": n, "trunk": f"a{i}"} for i, n in enumerate(numbers)],
            "connect_applets": {NUMBER: {
                "application": "bench", "primary_url": f"{app.url}/primary",
                "nobody_dialled": {"url": f"{app.url}/goodbye"},
                "after_conversation": {}, "nobody_answered": {}}},
        }
        config_file = state / "config.json"  # JSON is YAML
        config_file.write_text(json.dumps(config))
        env = dict(os.environ, ARI_BRIDGE_ARI__PASSWORD=info.ari_password, PYTHONPATH=str(REPO))
        bridge = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
            [str(Path(sys.executable).with_name("ari-bridge")), "serve", "--config",
             str(config_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=(state / "bridge.log").open("wb"))
        await wait_healthy(config["http"]["port"], bridge)  # type: ignore[index]
        failed = 0
        queue = list(range(args.calls))

        async def caller() -> None:
            nonlocal failed
            while queue:
                index = queue.pop(0)
                receiver = await RtpReceiver.open()
                try:
                    result = await place_call(info.sip_host, info.sip_port, NUMBER,
                                              rtp_port=receiver.port,
                                              caller=f"9190{index:06d}", timeout_s=30)
                finally:
                    receiver.close()
                failed += 0 if result.ok else 1

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        answered = leg_times(agents[0].messages, "200")
        cancelled = [leg_times(agent.messages, "CANCEL") for agent in agents[1:]]
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(10)
        await runner.cleanup()
        for agent in agents:
            await agent.__aexit__(None, None, None)
        lab_down(opts)
    latencies = [(stamps[sid] - at) * 1000
                 for sid, at in answered.items() for stamps in cancelled if sid in stamps]
    return {"calls": args.calls, "failed_calls": failed, "concurrency": args.concurrency,
            "losers_per_call": args.losers, "answered_legs": len(answered),
            "cancelled_legs_measured": len(latencies),
            "elapsed_s": round(elapsed, 1), "cancel_after_200_ms": stats(latencies)}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": round(percentile(values, 50), 2), "p99": round(percentile(values, 99), 2),
            "max": round(max(values), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--losers", type=int, default=2, help="legs that ring and lose")
    parser.add_argument("--answer-after-ms", type=int, default=300)
    parser.add_argument("--hold-ms", type=int, default=200)
    args = parser.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="ari-bridge-parallel-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report["loadavg_before"] = load_before
    print(json.dumps(report, indent=2))
    ok = report["failed_calls"] == 0 and report["cancelled_legs_measured"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
