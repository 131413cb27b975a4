"""Exotel Connect under state management: 100 concurrent callers against 20 agents.

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/exotel_agents.py [--callers 100] [--agents 20] [--hold-ms 3000]
                                            [--backends sqlite,redis] [--json-out FILE]
                                            [--ari-transport auto|websocket|http]

One lab Asterisk (own state directory, free ports), one bridge in this process, one applet
application (aiohttp, in this process) that answers every request with all agents in the same
order and ``state_management: true``, so every caller walks the list and races the others for
the same free agents. The agents are sipp UAS processes that answer at once and hang up after
``--hold-ms``; one sipp UAC process places all callers together (a 1 ms rate period).

Measured per backend (embedded SQLite, then a redis-server started here on a free port):

* **routed/s**: callers that reached an agent, divided by the time from the first caller's
  INVITE to the last agent INVITE;
* **INVITE -> agent INVITE**: p50/p99 over routed callers, matched through the caller number
  (CallFrom), the CallSid the application saw, and the ``X-Exotel-CallSid`` header on the
  agent's INVITE (all timestamps from sipp traces on this machine);
* **double bookings**: an agent receiving an INVITE while one of its calls is still up
  (INVITE .. BYE intervals per agent overlap). Must be 0.

Every loop is bounded (sipp global timeouts, a deadline for the callers), and the lab, sipp
processes and redis-server are stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bridge.agents.redis_server import RedisServer  # noqa: E402
from bridge.app import BridgeService  # noqa: E402
from bridge.config import load_config  # noqa: E402
from bridge.lab import LabOptions, lab_down, lab_up  # noqa: E402
from bridge.lab.sipp import Agent, free_port, sipp_binary  # noqa: E402
from bridge.lab.sipp.traces import double_bookings, messages, start_lines  # noqa: E402
from bridge.logging import setup_logging  # noqa: E402

NUMBER = "15557770000"

CALLER_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="exotel caller">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:91900[call_number]@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:91900[call_number]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:91900[call_number]@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv request="BYE" timeout="60000"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
</scenario>
"""


async def start_app(agents: list[str]) -> tuple[web.AppRunner, str, dict[str, str]]:
    sids: dict[str, str] = {}  # caller number -> CallSid

    async def primary(request: web.Request) -> web.Response:
        sids.setdefault(request.query.get("CallFrom", ""), request.query.get("CallSid", ""))
        return web.json_response({
            "destination": [{"contact_uri": a} for a in agents],
            "state_management": True, "max_ringing_duration": 10,
        })

    async def goodbye(request: web.Request) -> web.Response:
        return web.json_response([{"action": "talk", "text": "Goodbye."}])

    app = web.Application()
    app.router.add_get("/primary", primary)
    app.router.add_get("/goodbye", goodbye)
    app.router.add_route("*", "/event", lambda r: web.Response(status=204))  # type: ignore[arg-type,return-value]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(socket.SOCK_STREAM)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", sids


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_backend(lab: Any, backend: str, args: argparse.Namespace,
                      redis_url: str | None, workdir: Path) -> dict[str, Any]:
    agents_cfg: dict[str, Any] = {"backend": backend, "lease_s": 30}
    if backend == "redis":
        agents_cfg.update(redis_url=redis_url, redis_prefix=f"bench{time.time_ns()}:")
    agent_procs = [Agent(200, hangup_after_ms=args.hold_ms) for _ in range(args.agents)]
    numbers = [f"+4477{i:07d}" for i in range(args.agents)]
    for agent in agent_procs:
        await agent.__aenter__()
    runner, url, sids = await start_app(numbers)
    service = None
    try:
        config = load_config(None, environ={}, overrides={
            "ari": {"url": lab.ari_url, "username": lab.ari_username,
                    "password": lab.ari_password, "app": lab.app_name,
                    "rest_transport": args.ari_transport},
            "http": {"host": "127.0.0.1", "port": 0},
            "store": {"path": str(workdir / f"{backend}-calls.sqlite3")},
            "media": {"path": str(workdir / "media")},
            "log": {"level": "warning"},
            "applications": [{"id": "main", "answer_url": f"{url}/goodbye"}],
            "numbers": {"*": "main"},
            "trunks": [{"name": f"a{i}", "host": "127.0.0.1", "port": a.port}
                       for i, a in enumerate(agent_procs)],
            "routes": [{"prefix": n.lstrip("+"), "trunk": f"a{i}"}
                       for i, n in enumerate(numbers)],
            "agents": agents_cfg,
            "connect_applets": {NUMBER: {
                "application": "main", "primary_url": f"{url}/primary",
                "nobody_dialled": {"url": f"{url}/goodbye"},
                "after_conversation": {}, "nobody_answered": {}}},
        })
        service = BridgeService(config)
        await service.start()
        if not await service.gateway.wait_connected(20):
            raise RuntimeError(f"bridge did not connect: {service.gateway.last_error}")
        scenario = workdir / "caller.xml"
        scenario.write_text(CALLER_XML)
        trace = workdir / f"{backend}-callers.log"
        proc = await asyncio.create_subprocess_exec(
            sipp_binary(), f"{lab.sip_host}:{lab.sip_port}", "-sf", str(scenario),
            "-s", NUMBER, "-m", str(args.callers), "-l", str(args.callers),
            "-r", str(args.callers), "-rp", "1", "-i", "127.0.0.1", "-p", str(free_port()),
            "-mp", str(free_port()), "-nostdin", "-timeout", "90s", "-timeout_error",
            "-trace_msg", "-message_file", str(trace),
            cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.wait_for(proc.wait(), 120)
        # Agents hang up after --hold-ms: wait (bounded) for their BYEs to be in the traces.
        await asyncio.sleep(args.hold_ms / 1000 + 1)
        caller_invites: dict[str, float] = {}
        for stamp, text in messages(trace.read_text(errors="replace")):
            direction, first = start_lines(text)
            if "sent" in direction and first.startswith("INVITE "):
                match = re.search(r"From: <sip:(\d+)@", text)
                if match:
                    caller_invites.setdefault(match.group(1), stamp)
        sid_to_caller = {sid: caller for caller, sid in sids.items()}
        overlaps = 0
        latencies: list[float] = []
        agent_invite_times: list[float] = []
        for agent in agent_procs:
            count, invites = double_bookings(agent.messages)
            overlaps += count
            for sid, stamp in invites:
                agent_invite_times.append(stamp)
                caller = sid_to_caller.get(sid)
                if caller in caller_invites:
                    latencies.append((stamp - caller_invites[caller]) * 1000)
        routed = len(agent_invite_times)
        window = (max(agent_invite_times) - min(caller_invites.values())
                  if agent_invite_times and caller_invites else float("nan"))
        return {
            "backend": backend, "callers": args.callers, "agents": args.agents,
            "sipp_exit": proc.returncode, "callers_seen_by_app": len(sids),
            "routed": routed, "routed_per_s": round(routed / window, 1) if window else None,
            "invite_to_agent_invite_ms": {
                "p50": round(pct(latencies, 0.5), 1), "p99": round(pct(latencies, 0.99), 1),
                "mean": round(statistics.fmean(latencies), 1) if latencies else None},
            "double_bookings": overlaps,
        }
    finally:
        if service is not None:
            await service.stop()
        await runner.cleanup()
        for agent in agent_procs:
            await agent.__aexit__(None, None, None)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--hold-ms", type=int, default=3000)
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--ari-transport", default="auto", choices=["auto", "websocket", "http"],
                        help="the bridge's ari.rest_transport")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    setup_logging("warning", False)
    state = Path("/var/tmp/ari-bridge-bench-exotel")
    rtp = free_port()
    opts = LabOptions(state_dir=state, ari_port=free_port(socket.SOCK_STREAM),
                      sip_port=free_port(), rtp_start=12000 + rtp % 7000,
                      rtp_end=12000 + rtp % 7000 + 2000)
    lab = lab_up(opts)
    results = []
    redis = RedisServer().start() if "redis" in args.backends else None
    try:
        with tempfile.TemporaryDirectory(prefix="ari-bridge-bench-") as tmp:
            for backend in args.backends.split(","):
                workdir = Path(tmp) / backend
                workdir.mkdir()
                result = await run_backend(lab, backend, args,
                                           redis.url if redis else None, workdir)
                print(json.dumps(result))
                results.append(result)
    finally:
        if redis is not None:
            redis.stop()
        lab_down(opts)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 1 if any(r["double_bookings"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
