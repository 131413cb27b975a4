"""Console load: what the live console costs the bridge with many calls up at once.

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/console_load.py [--calls 300] [--window-s 15] [--json-out FILE]

One lab Asterisk, one application server (bench/answer_app.py, its own process) whose NCCO is
a ``talk`` with ``loop: 0`` (it repeats until the caller hangs up, so every call keeps making
ARI events and playbacks), and one sipp process that places ``--calls`` calls and holds them.
The bridge runs twice, as its own process (``ari-bridge serve``), and its CPU is read from
/proc over a fixed window once every call is up:

1. ``off``: the console is not configured (the recorder's hooks are one attribute check);
2. ``on_no_page``: the console is enabled, no page is open (the recorder records);
3. ``on_page``: the same bridge with one page's event stream open (``/v1/console/events``,
   read as a browser would), so updates are built and sent as well.

Then, with the calls still up and the stream still open, ``/console``, ``/v1/console/calls``,
``/v1/console/state`` and one call's timeline are each fetched ``--requests`` times in turn and
their latencies reported. The result is printed as JSON. Every wait has a deadline, the number
of calls is bounded, and the lab, the bridge, the application and sipp are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SCENARIO = BENCH_DIR / "scenarios" / "uac_hold.xml"
NUMBER = "15551239999"
TOKEN = "console-bench-token-0123456789"
MAX_CALLS = 2000
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOLD_NCCO = [{"action": "talk", "loop": 0,
              "text": "Thank you for holding. Your call is important to us. Please stay on "
                      "the line and an agent will be with you shortly."}]


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    if not ordered:
        return {}

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)
    return {"p50_ms": pct(50), "p95_ms": pct(95), "max_ms": round(ordered[-1], 2),
            "count": len(ordered)}


class ConsoleLoad:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.state_dir / "console-run"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lab_opts: Any = None
        self.lab: Any = None
        self.env: dict[str, str] = {}
        self.sink: socket.socket | None = None
        self.app_port = 0
        self.bridge_port = 0

    # ------------------------------------------------------------- start and stop
    def start_lab_and_app(self) -> None:
        from bridge.lab import LabOptions, lab_up
        from bridge.lab._model import read_password

        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.lab_opts = LabOptions(state_dir=self.args.state_dir, ari_port=free_port(),
                                   sip_port=free_port(socket.SOCK_DGRAM),
                                   rtp_start=30000, rtp_end=39999)
        self.lab = lab_up(self.lab_opts, progress=lambda line: say("  lab:", line))
        self.env = {
            "ARI_BRIDGE_ARI__URL": self.lab.ari_url,
            "ARI_BRIDGE_ARI__USERNAME": self.lab.ari_username,
            "ARI_BRIDGE_ARI__PASSWORD": read_password(self.args.state_dir) or "",
            "ARI_BRIDGE_ARI__APP": self.lab.app_name,
            "PYTHONPATH": str(REPO),
        }
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))  # RTP for the callers: never read
        self.app_port = free_port()
        self._spawn("app", [sys.executable, str(BENCH_DIR / "answer_app.py"),
                            "--port", str(self.app_port), "--ncco", json.dumps(HOLD_NCCO)], {})

    def start_bridge(self, console: bool) -> None:
        self.bridge_port = free_port()
        config: dict[str, Any] = {
            "http": {"host": "127.0.0.1", "port": self.bridge_port},
            "store": {"path": str(self.work / f"calls-{console}.sqlite3")},
            "media": {"path": str(self.args.state_dir / "media")},
            "log": {"level": "warning"},
            "agents": {"track_all_calls": False},
            "applications": [{"id": "bench",
                              "answer_url": f"http://127.0.0.1:{self.app_port}/answer",
                              "event_url": f"http://127.0.0.1:{self.app_port}/event"}],
            "numbers": {"*": "bench"},
        }
        if console:
            config["console"] = {"enabled": True, "token": TOKEN}
        path = self.work / f"bridge-{console}.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is valid YAML
        # This checkout's bridge package (PYTHONPATH), whatever the venv has installed.
        self._spawn("bridge", [sys.executable, "-c",
                               "import sys; from bridge.cli import main; sys.exit(main())",
                               "serve", "--config", str(path)], self.env)

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARI_BRIDGE_")}
        env.update(extra_env)
        with open(self.work / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, env=env,
                                                cwd=self.work)

    def stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # our own child, by PID
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        for name in ("sipp", "bridge", "app"):
            self.stop_proc(name)
        if self.sink is not None:
            self.sink.close()
        if self.lab_opts is not None and not self.args.keep_lab:
            from bridge.lab import lab_down

            lab_down(self.lab_opts)

    # ------------------------------------------------------------------ helpers
    @property
    def bridge_url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}"

    async def wait_ready(self, http: aiohttp.ClientSession, deadline_s: float = 60.0) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.procs["bridge"].poll() is not None:
                raise RuntimeError(f"the bridge exited; see {self.work / 'bridge.log'}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{self.bridge_url}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.3)
        raise RuntimeError("the bridge did not become ready in time")

    async def live_calls(self, http: aiohttp.ClientSession) -> int:
        with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
            async with http.get(f"{self.bridge_url}/readyz") as resp:
                return int((await resp.json()).get("live_calls", 0))
        return -1

    def place_calls(self, hold_s: float) -> None:
        """One sipp process: ``--calls`` calls at ``--rate`` per second, each held."""
        calls = self.args.calls
        self._spawn("sipp", [
            shutil.which("sipp") or "sipp", f"127.0.0.1:{self.lab_opts.sip_port}",
            "-sf", str(SCENARIO), "-s", NUMBER, "-m", str(calls), "-l", str(calls),
            "-r", str(self.args.rate), "-d", str(int(hold_s * 1000)),
            "-i", "127.0.0.1", "-p", str(free_port(socket.SOCK_DGRAM)),
            "-key", "rtp_port", str(self.sink.getsockname()[1]) if self.sink else "9",
            "-nostdin", "-timeout", f"{int(hold_s + 120)}s", "-timeout_error",
        ], {})

    async def wait_all_up(self, http: aiohttp.ClientSession, cpu0: float) -> dict[str, Any]:
        """Wait (bounded) until every call is up; the bridge's CPU per call set up meanwhile
        (answer webhook, status events, the first actions: where recording does most)."""
        deadline = time.monotonic() + self.args.calls / self.args.rate + 60
        live = 0
        while time.monotonic() < deadline:
            live = await self.live_calls(http)
            if live >= self.args.calls:
                break
            await asyncio.sleep(0.5)
        setup_cpu_s = proc_cpu_s(self.procs["bridge"].pid) - cpu0
        await asyncio.sleep(self.args.settle_s)  # answered and playing, past the ramp
        return {"live_calls": await self.live_calls(http),
                "setup_cpu_ms_per_call": round(setup_cpu_s * 1000 / max(live, 1), 2)}

    async def cpu_window(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        pid = self.procs["bridge"].pid
        before_live = await self.live_calls(http)
        cpu0, t0 = proc_cpu_s(pid), time.monotonic()
        await asyncio.sleep(self.args.window_s)
        cpu1, t1 = proc_cpu_s(pid), time.monotonic()
        return {"bridge_cpu_pct": round((cpu1 - cpu0) / (t1 - t0) * 100, 1),
                "window_s": round(t1 - t0, 2), "live_calls_before": before_live,
                "live_calls_after": await self.live_calls(http)}

    async def end_calls(self, http: aiohttp.ClientSession) -> None:
        """Stop sipp and hang up what is left over ARI, then wait (bounded) for silence."""
        self.stop_proc("sipp")
        credentials = f"{self.lab.ari_username}:{self.env['ARI_BRIDGE_ARI__PASSWORD']}"
        auth = {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}
        base = f"{self.lab.ari_url}/ari/channels"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with http.get(base, headers=auth) as resp:
                channels = await resp.json()
            if not channels:
                return
            for channel in channels:
                async with http.delete(f"{base}/{channel['id']}", headers=auth):
                    pass
            await asyncio.sleep(1)

    # --------------------------------------------------------------------- runs
    async def run_once(self, http: aiohttp.ClientSession, console: bool) -> dict[str, Any]:
        self.start_bridge(console)
        await self.wait_ready(http)
        windows = 2 if console else 1
        hold_s = (self.args.calls / self.args.rate + self.args.settle_s
                  + windows * (self.args.window_s + 3) + 60)
        cpu0 = proc_cpu_s(self.procs["bridge"].pid)
        self.place_calls(hold_s)
        result: dict[str, Any] = await self.wait_all_up(http, cpu0)
        say(f"  {result['live_calls']} calls up (console {'on' if console else 'off'})")
        if not console:
            result["off"] = await self.cpu_window(http)
        else:
            result["on_no_page"] = await self.cpu_window(http)
            stream = ConsoleStream(f"{self.bridge_url}/v1/console/events?token={TOKEN}")
            reader = asyncio.create_task(stream.read(http))
            try:
                await asyncio.wait_for(stream.first_state.wait(), 30)
                await asyncio.sleep(2)
                messages0, bytes0 = stream.messages, stream.bytes
                result["on_page"] = await self.cpu_window(http)
                result["on_page"]["sse_updates_per_s"] = round(
                    (stream.messages - messages0) / result["on_page"]["window_s"], 2)
                result["on_page"]["sse_kbytes_per_s"] = round(
                    (stream.bytes - bytes0) / 1024 / result["on_page"]["window_s"], 1)
                result["on_page"]["state_kbytes"] = round(stream.state_bytes / 1024, 1)
                result["requests"] = await self.time_requests(http)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        await self.end_calls(http)
        self.stop_proc("bridge")
        return result

    async def time_requests(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(f"{self.bridge_url}/v1/console/calls", headers=headers) as resp:
            some_call = (await resp.json())["live"][0]["uuid"]
        out: dict[str, Any] = {}
        for path in ("/console", "/v1/console/calls", "/v1/console/state",
                     f"/v1/console/calls/{some_call}"):
            samples = []
            for _ in range(self.args.requests):
                started = time.perf_counter()
                async with http.get(self.bridge_url + path, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{path} answered {resp.status}")
                samples.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.05)
            key = "/v1/console/calls/{uuid}" if path.endswith(some_call) else path
            out[key] = latency_summary(samples)
        return out

    async def run(self) -> dict[str, Any]:
        report: dict[str, Any] = {"calls": self.args.calls, "rate": self.args.rate,
                                  "window_s": self.args.window_s, "ncco": HOLD_NCCO}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            off = await self.run_once(http, console=False)
            on = await self.run_once(http, console=True)
        report["off"] = {**off["off"], "live_calls": off["live_calls"],
                         "setup_cpu_ms_per_call": off["setup_cpu_ms_per_call"]}
        report["on_no_page"] = {**on["on_no_page"], "live_calls": on["live_calls"],
                                "setup_cpu_ms_per_call": on["setup_cpu_ms_per_call"]}
        report["on_page"] = on["on_page"]
        report["requests"] = on["requests"]
        base = report["off"]["bridge_cpu_pct"]
        report["recording_cost_cpu_pct"] = round(report["on_no_page"]["bridge_cpu_pct"] - base, 1)
        report["page_open_cost_cpu_pct"] = round(report["on_page"]["bridge_cpu_pct"] - base, 1)
        return report


class ConsoleStream:
    """Reads the console's event stream as a page does; counts what arrives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages = 0
        self.bytes = 0
        self.state_bytes = 0
        self.first_state = asyncio.Event()

    async def read(self, http: aiohttp.ClientSession) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        async with http.get(self.url, timeout=timeout) as resp:
            event = ""
            async for line in resp.content:
                self.bytes += len(line)
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: "):
                    if event == "state":
                        self.state_bytes = len(line)
                        self.first_state.set()
                    else:
                        self.messages += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path,
                        default=Path("/var/tmp/ari-bridge-console-bench"))
    parser.add_argument("--calls", type=int, default=300, help=f"live calls (at most {MAX_CALLS})")
    parser.add_argument("--rate", type=float, default=30.0, help="calls placed per second")
    parser.add_argument("--window-s", type=float, default=15.0, help="CPU measuring window")
    parser.add_argument("--settle-s", type=float, default=5.0,
                        help="seconds after the last call is up before measuring")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per URL")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab running")
    parser.add_argument("--json-out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= MAX_CALLS:
        parser.error(f"--calls must be between 1 and {MAX_CALLS}")
    if os.geteuid() != 0:
        say("console_load: the rootfs lab needs root")
        return 2
    if shutil.which("sipp") is None:
        say("console_load: sipp is not installed (package sip-tester)")
        return 2
    sys.path.insert(0, str(REPO))
    bench = ConsoleLoad(args)
    try:
        bench.start_lab_and_app()
        report = asyncio.run(bench.run())
    finally:
        bench.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
