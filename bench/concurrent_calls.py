"""Many bridged calls at once: the bridge's CPU and memory while they are up.

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/concurrent_calls.py [--calls 300] [--hold-s 60] [--rate 30]

Every call is a caller (sipp) whose number the application answers with an NCCO ``connect``
to a phone number routed to an agent (sipp). Asterisk bridges the two legs; RTP flows both
ways for the whole call: the caller streams a tone (sipp ``rtp_stream``), the agent echoes
what it receives back to Asterisk (sipp ``-rtp_echo``), so Asterisk relays media in both
directions of both legs. The bridge itself carries no media: what it costs while the calls
are up is its event loop, its ARI WebSocket and its timers.

Measured once every call is up, over ``--measure-s`` seconds: the CPU share of a core used by
the bridge and by Asterisk, the bridge's resident memory (VmRSS, and its peak VmHWM), and
packet counts from Asterisk (``pjsip show channelstats``) proving RTP flowed both ways on
both legs. Every loop is bounded: sipp has a global timeout, every wait has a deadline, and
the lab, the bridge and the agents are stopped at the end, also on errors.
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

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.lab import LabOptions, asterisk_cli, lab_down, lab_up  # noqa: E402
from bridge.lab.sipp import free_port, sipp_binary  # noqa: E402

NUMBER = "15559990000"
AGENT_PREFIX = "4479"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CALLER_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="streaming caller">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:1555[call_number]@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [rtpstream_audio_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:1555[call_number]@[local_ip]:[local_port]>;tag=[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <nop><action><exec rtp_stream="{wav},-1,0"/></action></nop>
  <pause milliseconds="{hold_ms}"/>
  <nop><action><exec rtp_stream="pause"/></action></nop>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:1555[call_number]@[local_ip]:[local_port]>;tag=[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""

AGENT_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="echoing agent">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]agent[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:agent@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=agent 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv request="ACK"/>
  <recv request="BYE" timeout="{bye_timeout_ms}"/>
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


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def channel_packets(stats: str) -> list[tuple[int, int]]:
    """(received, transmitted) RTP packets of every channel in ``pjsip show channelstats``:
    rows of BridgeId, ChannelId, UpTime, Codec, then Rx Count/Lost/Pct/Jitter, Tx Count..."""
    rows = []
    for line in stats.splitlines():
        match = re.match(r"\s*\S+\s+\S+-[0-9a-f]{8}\s+\d+:\d\d:\d\d\s+\S+\s+(\d+)\s+\d+\s+\d+"
                         r"\s+[\d.]+\s+(\d+)", line)
        if match:
            rows.append((int(match.group(1)), int(match.group(2))))
    return rows


async def wait_for(check: Any, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if await check():
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


async def run(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    opts = LabOptions(state_dir=state / "lab", ari_port=free_port(1), sip_port=free_port(),
                      rtp_start=40000, rtp_end=44999)
    info = lab_up(opts, progress=lambda line: None)
    wav = state / "tone.wav"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-e", "u-law", str(wav),  # noqa: ASYNC221
                    "synth", "2", "sine", "440"], check=True)
    agent_port, agent_media = free_port(), free_port()
    (state / "agent.xml").write_text(
        AGENT_XML.replace("{bye_timeout_ms}", str((args.hold_s + 120) * 1000)))
    (state / "caller.xml").write_text(
        CALLER_XML.replace("{wav}", str(wav)).replace("{hold_ms}", str(args.hold_s * 1000)))

    async def answer(request: web.Request) -> web.Response:
        index = request.query.get("from", "")[-6:]
        return web.json_response([{"action": "connect", "from": "4415550000",
                                   "endpoint": [{"type": "phone",
                                                 "number": f"{AGENT_PREFIX}{index}"}]}])

    app = web.Application()
    app.router.add_get("/answer", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    app_port = free_port(1)
    await web.TCPSite(runner, "127.0.0.1", app_port).start()
    procs: list[subprocess.Popen[bytes]] = []
    bridge: subprocess.Popen[bytes] | None = None
    http_port = free_port(1)
    try:
        timeout = f"{args.hold_s + 180}s"
        procs.append(subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
            [sipp_binary(), "-sf", "agent.xml", "-i", "127.0.0.1", "-p", str(agent_port),
             "-mp", str(agent_media), "-rtp_echo", "-nostdin", "-timeout", timeout,
             "-m", str(args.calls)],
            cwd=state, stdout=subprocess.DEVNULL, stderr=(state / "agent.log").open("wb")))
        config = {
            "ari": {"url": info.ari_url, "username": info.ari_username, "app": info.app_name},
            "http": {"host": "127.0.0.1", "port": http_port},
            "store": {"path": str(state / "calls.sqlite3")},
            "media": {"path": str(state / "media")},
            "log": {"level": "warning"},
            "applications": [{"id": "bench",
                              "answer_url": f"http://127.0.0.1:{app_port}/answer"}],
            "numbers": {"*": "bench"},
            "trunks": [{"name": "agents", "host": "127.0.0.1", "port": agent_port}],
            "routes": [{"prefix": AGENT_PREFIX, "trunk": "agents"}],
        }
        config_file = state / "config.json"  # JSON is YAML
        config_file.write_text(json.dumps(config))
        env = dict(os.environ, ARI_BRIDGE_ARI__PASSWORD=info.ari_password,
                   PYTHONPATH=str(REPO))
        bridge = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
            [str(Path(sys.executable).with_name("ari-bridge")), "serve", "--config",
             str(config_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=(state / "bridge.log").open("wb"))

        async with aiohttp.ClientSession() as http:
            async def health() -> dict[str, Any]:
                """The bridge's /readyz body when it is ready, else {}."""
                try:
                    async with http.get(f"http://127.0.0.1:{http_port}/readyz") as resp:
                        return dict(await resp.json()) if resp.status == 200 else {}
                except (aiohttp.ClientError, ValueError):
                    return {}

            async def ready() -> bool:
                return bool(await health())

            await wait_for(ready, 30, "the bridge")
            idle_rss = memory_mb(bridge.pid)
            procs.append(subprocess.Popen(  # noqa: ASYNC220 - the load itself
                [sipp_binary(), f"127.0.0.1:{info.sip_port}", "-sf", "caller.xml",
                 "-s", NUMBER, "-r", str(args.rate), "-m", str(args.calls),
                 "-l", str(args.calls), "-i", "127.0.0.1", "-p", str(free_port()),
                 "-mp", "50000",
                 "-nostdin", "-timeout", timeout, "-timeout_error",
                 "-trace_stat", "-stf", "caller-stat.csv", "-fd", "5"],
                cwd=state, stdout=subprocess.DEVNULL,
                stderr=(state / "caller.log").open("wb")))

            async def all_up() -> bool:
                return int((await health()).get("live_calls", 0)) >= args.calls
            await wait_for(all_up, args.calls / args.rate + 30, f"{args.calls} live calls")
            await asyncio.sleep(2)  # let the last calls' media start
            bridge_cpu0, ast_cpu0, t0 = cpu_s(bridge.pid), cpu_s(info.pid), time.monotonic()
            await asyncio.sleep(args.measure_s)
            elapsed = time.monotonic() - t0
            bridge_pct = 100 * (cpu_s(bridge.pid) - bridge_cpu0) / elapsed
            ast_pct = 100 * (cpu_s(info.pid) - ast_cpu0) / elapsed
            live = int((await health()).get("live_calls", 0))
            up_rss = memory_mb(bridge.pid)
            stats = await asyncio.to_thread(asterisk_cli, opts, "pjsip show channelstats")
            (state / "channelstats.txt").write_text(stats)
            packets = channel_packets(stats)
            flowing = sum(1 for rx, tx in packets if rx > 0 and tx > 0)
            caller_rc = await asyncio.to_thread(procs[-1].wait, args.hold_s + 200)
            ended_ok = await wait_for_end(health, 60)
    finally:
        for proc in [*procs, *([bridge] if bridge else [])]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        await runner.cleanup()
        lab_down(opts)
    return {
        "calls": args.calls, "hold_s": args.hold_s, "measure_s": args.measure_s,
        "live_calls_while_measured": live,
        "channels_with_rtp_both_ways": flowing, "channels_listed": len(packets),
        "bridge_cpu_pct_of_a_core": round(bridge_pct, 2),
        "asterisk_cpu_pct_of_a_core": round(ast_pct, 1),
        "bridge_memory_mb": {"idle": idle_rss, "with_calls_up": up_rss},
        "caller_sipp_exit": caller_rc, "all_calls_ended": ended_ok,
    }


async def wait_for_end(health: Any, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if int((await health()).get("live_calls", -1)) == 0:
            return True
        await asyncio.sleep(0.5)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--hold-s", type=int, default=60)
    parser.add_argument("--rate", type=int, default=30, help="calls per second while ramping")
    parser.add_argument("--measure-s", type=int, default=30)
    parser.add_argument("--state-dir", type=Path,
                        help="keep the logs here (default: a temporary directory)")
    args = parser.parse_args()
    if args.calls / args.rate + args.measure_s + 10 > args.hold_s:
        parser.error("--hold-s must cover the ramp, the measurement and 10 s of margin")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    if args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run(args, args.state_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="ari-bridge-concurrent-") as tmp:
            report = asyncio.run(run(args, Path(tmp)))
    report["loadavg_before"] = load_before
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(report, indent=2))
    ok = (report["live_calls_while_measured"] >= args.calls and report["all_calls_ended"]
          and report["channels_with_rtp_both_ways"] >= 2 * args.calls)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
