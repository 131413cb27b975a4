"""The cluster's overhead: the same calls through one plain bridge and through cluster setups.

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/cluster_rate.py [--rate 30] [--seconds 20] [--json-out FILE]
    .venv/bin/python bench/cluster_rate.py --quick    # 20 calls/s, 10 s each, < 3 minutes

One run places the call of ``bench/callrate.py``'s ``bridge`` variant (sipp calls a number,
the dialplan hands it to Stasis, the bridge asks ``bench/answer_app.py`` and plays one
``talk``, then hangs up) at one fixed rate, in four set-ups, one after the other:

``single``       one bridge, no cluster (SQLite call store), one Asterisk node;
``cluster-1x1``  one bridge in cluster mode (Redis call and agent store, slot lease,
                 heartbeat), one node whose dialplan spreads calls over 2 slots;
``cluster-2x1``  two bridges in cluster mode (one slot each), one node;
``cluster-2x2``  two bridges, two nodes, every bridge connected to both; one sipp per node at
                 half the rate each.

For each it reports the calls placed and succeeded, INVITE -> 200 OK p50/p99, and the CPU ms
per call of every process: each bridge, each Asterisk, redis-server and the application
server, and their sum (sipp, the load generator, is listed apart and not in the sum).

On a 2-core machine this measures what the cluster costs per call (Redis round trips of the
call store, slot heartbeats, a second bridge's and node's idle work), not a higher rate: all
processes share the same two cores, so more bridges cannot carry more calls here.

Every set-up gets its own labs (state directory ``/var/tmp/ari-bridge-cluster-bench``, free
ports, RTP 20000-22999), its own redis-server (no persistence) and bridges; everything is
stopped by PID or by its own stop method at the end, also on errors. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

from callrate import Bench, StepResult, free_port, say  # noqa: E402
from cluster_lab import APP, Node, cluster_configs  # noqa: E402

from bridge.agents.redis_server import RedisServer  # noqa: E402
from bridge.lab import LabInfo, LabOptions, lab_down, lab_up  # noqa: E402

DEFAULT_STATE = Path("/var/tmp/ari-bridge-cluster-bench")
#: Slots of the cluster nodes' dialplan: one per bridge of the largest set-up.
SLOTS = 2
#: Each lab's RTP range, apart from callrate's, cluster_lab's and the test labs' ranges.
RTP_RANGES = {"single": (20000, 20999), "a": (21000, 21999), "b": (22000, 22999)}
STOP_TIMEOUT_S = 20.0
#: The processes of the table, in this order; a set-up without one shows "-".
PROCESSES = ("bridge-1", "bridge-2", "asterisk-a", "asterisk-b", "redis", "app")


@dataclass(frozen=True)
class Setup:
    name: str
    cluster: bool
    bridges: int
    nodes: int


SETUPS = (
    Setup("single", cluster=False, bridges=1, nodes=1),
    Setup("cluster-1x1", cluster=True, bridges=1, nodes=1),
    Setup("cluster-2x1", cluster=True, bridges=2, nodes=1),
    Setup("cluster-2x2", cluster=True, bridges=2, nodes=2),
)


class ClusterBench(Bench):
    """callrate's harness with several labs, bridges and a Redis; run_step is callrate's."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.node_opts: dict[str, LabOptions] = {}
        self.nodes: dict[str, LabInfo] = {}
        self.active_nodes: list[str] = []
        self.redis: RedisServer | None = None
        self.bridges: list[str] = []
        self.bridge_ports: dict[str, int] = {}

    # --------------------------------------------------------------------- labs
    def _lab(self, name: str) -> LabInfo:
        """Lab ``name`` up (``single``: no slots; ``a``, ``b``: the cluster's nodes)."""
        if name in self.nodes:
            return self.nodes[name]
        rtp_start, rtp_end = RTP_RANGES[name]
        opts = LabOptions(
            state_dir=self.args.state_dir / f"node-{name}",
            ari_port=free_port(socket.SOCK_STREAM), sip_port=free_port(),
            rtp_start=rtp_start, rtp_end=rtp_end, app_name=APP,
            slots=0 if name == "single" else SLOTS,
        )
        # Recorded before the start, so a half-started lab is taken down too.
        self.node_opts[name] = opts
        info = lab_up(opts, progress=lambda line: say(f"  lab {name}:", line))
        self.nodes[name] = info
        return info

    def _lab_down(self, name: str) -> None:
        self.nodes.pop(name, None)
        opts = self.node_opts.pop(name, None)
        if opts is not None:
            lab_down(opts)

    def use_nodes(self, setup: Setup) -> None:
        wanted = ["single"] if not setup.cluster else ["a", "b"][:setup.nodes]
        for name in list(self.node_opts):
            if name not in wanted:  # the plain lab's dialplan has no slots: not reused
                self._lab_down(name)
        for name in wanted:
            self._lab(name)
        self.active_nodes = wanted

    # ---------------------------------------------------------------- processes
    def start_app(self) -> None:
        self.app_port = free_port(socket.SOCK_STREAM)
        self._spawn("app", [sys.executable, str(BENCH_DIR / "answer_app.py"),
                            "--port", str(self.app_port), "--text", self.args.text], {})
        self._wait_http(f"http://127.0.0.1:{self.app_port}/stats", "application server",
                        name="app")

    def start_bridges(self, setup: Setup) -> None:
        home = self.work / setup.name
        home.mkdir(parents=True, exist_ok=True)
        ports = [free_port(socket.SOCK_STREAM) for _ in range(setup.bridges)]
        app_url = f"http://127.0.0.1:{self.app_port}"
        application: dict[str, Any] = {"id": "bench", "answer_url": f"{app_url}/answer"}
        if self.args.event_url:
            application["event_url"] = f"{app_url}/event"
        infos = [self.nodes[name] for name in self.active_nodes]
        if setup.cluster:
            self.redis = RedisServer().start()
            configs = cluster_configs(
                [Node(name, info.ari_url, info.ari_password, info.ari_username)
                 for name, info in zip(self.active_nodes, infos, strict=True)],
                redis_url=self.redis.url, state_dir=home, http_ports=ports, app_url=app_url,
                slots=SLOTS, heartbeat_s=self.args.heartbeat_s,
                dead_after_s=3 * self.args.heartbeat_s)
        else:
            info = infos[0]
            configs = [{
                "ari": {"url": info.ari_url, "username": info.ari_username,
                        "password": info.ari_password, "app": info.app_name},
                "store": {"path": str(home / "bridge-1" / "calls.sqlite3")},
                "http": {"host": "127.0.0.1", "port": ports[0]},
                "media": {"path": str(home / "bridge-1" / "media")},
            }]
        for index, (config, port) in enumerate(zip(configs, ports, strict=True), start=1):
            name = f"bridge-{index}"
            config.update({
                "log": {"level": self.args.bridge_log_level},
                "applications": [application],
                "numbers": {"*": "bench"},
            })
            (home / name).mkdir(parents=True, exist_ok=True)
            path = home / name / "config.yaml"
            # It holds the nodes' ARI passwords. JSON is valid YAML.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(config, indent=2) + "\n")
            bridge_bin = Path(sys.executable).with_name("ari-bridge")
            extra = dict(item.split("=", 1) for item in self.args.bridge_env)
            # Keyed by set-up, so each set-up's bridges keep their logs (<set-up>/bridge-N.log).
            key = f"{setup.name}/{name}"
            self._spawn(key, [str(bridge_bin), "serve", "--config", str(path)], extra)
            self.bridges.append(key)
            self.bridge_ports[name] = port
            # One after the other: the second finds the first's slot taken at once.
            self._wait_http(f"http://127.0.0.1:{port}/readyz", name, name=key)

    def stop_bridges(self) -> None:
        for name in self.bridges:
            self._stop_proc(name)
        self.bridges = []
        self.bridge_ports = {}
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def _stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        try:
            self.stop_bridges()
            self._stop_proc("app")
        finally:
            if self.sink is not None:
                self.sink.close()
                self.sink = None
            for name in list(self.node_opts):
                self._lab_down(name)

    # -------------------------------------------------- what callrate's step reads
    def pids(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {
            key.rsplit("/", 1)[1]: self.procs[key].pid for key in self.bridges
            if key in self.procs}
        for node, label in zip(self.active_nodes, ("a", "b"), strict=False):
            found[f"asterisk-{label}"] = self.nodes[node].pid
        if self.redis is not None and self.redis.proc is not None:
            found["redis"] = self.redis.proc.pid
        found["app"] = self.procs["app"].pid if "app" in self.procs else None
        return found

    def sipp_targets(self) -> list[str]:
        return [f"{self.nodes[name].sip_host}:{self.nodes[name].sip_port}"
                for name in self.active_nodes]

    def ari_channels(self) -> int:
        from bridge.lab._model import ari_get

        total = 0
        for name in self.active_nodes:
            info = self.nodes[name]
            status, body = ari_get(f"{info.ari_url}/ari/channels", info.ari_username,
                                   info.ari_password, timeout=5)
            if status != 200 or not isinstance(body, list):
                return -1
            total += len(body)
        return total

    def bridge_live_calls(self) -> int:
        """Calls the bridges still hold after a step (0 when all ended cleanly)."""
        live = 0
        for port in self.bridge_ports.values():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz",
                                            timeout=5) as resp:
                    live += int(json.loads(resp.read()).get("live_calls") or 0)
            except (OSError, ValueError, urllib.error.URLError):
                continue
        return live

    # -------------------------------------------------------------------- a run
    def speech_length(self) -> float:
        import wave

        wavs = sorted(self.work.glob("*/bridge-*/media/*.wav"), key=lambda p: p.stat().st_mtime)
        if not wavs:
            return math.nan
        with wave.open(str(wavs[-1])) as w:
            return round(w.getnframes() / w.getframerate(), 3)

    def measure(self, setup: Setup) -> dict[str, Any]:
        say(f"{setup.name}: {setup.bridges} bridge(s), {setup.nodes} node(s), "
            f"{'cluster' if setup.cluster else 'no cluster'} ...")
        self.use_nodes(setup)
        self.start_bridges(setup)
        try:
            # TTS synthesis, Asterisk's media cache, the bridges' connections.
            self.run_step(setup.name, "warmup", 5, 1.0)
            if math.isnan(self.speech_s):
                self.speech_s = self.speech_length()
                say(f"  talk '{self.args.text}' lasts {self.speech_s} s")
                if math.isnan(self.speech_s):
                    raise RuntimeError("no synthesized speech found in the media stores")
            step = self.run_step(setup.name, "measure", self.args.rate, self.args.seconds)
            self.settle()
            live = self.bridge_live_calls()
        finally:
            self.stop_bridges()
        return setup_report(setup, step, live)

    def run_all(self, names: list[str]) -> dict[str, Any]:
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        # RTP from Asterisk goes here and is never read (as in callrate).
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.start_app()
        results = [self.measure(setup) for setup in SETUPS if setup.name in names]
        return {
            "rate": self.args.rate,
            "seconds": self.args.seconds,
            "heartbeat_s": self.args.heartbeat_s,
            "speech_s": self.speech_s,
            "setups": results,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                "python": sys.version.split()[0],
                "asterisk": sorted({info.asterisk_version for info in self.nodes.values()}),
            },
        }


def setup_report(setup: Setup, step: StepResult, live_calls: int) -> dict[str, Any]:
    cpu = {name: step.cpu_ms_per_call[name] for name in PROCESSES
           if name in step.cpu_ms_per_call}
    return {
        "setup": setup.name,
        "cluster": setup.cluster,
        "bridges": setup.bridges,
        "nodes": setup.nodes,
        "calls_placed": step.calls,
        "calls_succeeded": step.successful,
        "calls_failed": step.failed,
        "short_calls": step.short_calls,
        "achieved_rate": step.achieved_rate,
        "setup_p50_ms": step.setup_p50_ms,
        "setup_p99_ms": step.setup_p99_ms,
        "cpu_ms_per_call": cpu,
        "cpu_ms_per_call_sum": round(sum(cpu.values()), 2),
        "sipp_cpu_ms_per_call": step.cpu_ms_per_call.get("sipp", math.nan),
        "machine_busy_pct": step.machine_busy_pct,
        "other_cpu_pct": step.other_cpu_pct,
        "live_calls_after": live_calls,
        "passed": step.passed and live_calls == 0,
        "failure_reasons": step.failure_reasons,
        "note": step.note,
        "step": asdict(step),
    }


def markdown(report: dict[str, Any]) -> str:
    head = ["setup", "calls ok/placed", "INVITE->200 p50/p99 ms",
            *(f"{name} ms/call" for name in PROCESSES), "sum ms/call", "other load %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["setups"]:
        cpu = row["cpu_ms_per_call"]
        cells = [row["setup"], f"{row['calls_succeeded']}/{row['calls_placed']}",
                 f"{row['setup_p50_ms']:g} / {row['setup_p99_ms']:g}",
                 *(f"{cpu[name]:g}" if name in cpu else "-" for name in PROCESSES),
                 f"{row['cpu_ms_per_call_sum']:g}", f"{row['other_cpu_pct']:g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    parser.add_argument("--rate", type=float, default=30.0, help="calls per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of calls per set-up")
    parser.add_argument("--quick", action="store_true",
                        help="20 calls/s for 10 s per set-up (under 3 minutes)")
    parser.add_argument("--setups", default=",".join(s.name for s in SETUPS),
                        help="comma-separated subset of the set-ups, in their fixed order")
    parser.add_argument("--heartbeat-s", type=float, default=1.0,
                        help="cluster.heartbeat_s (dead_after_s is 3 times it)")
    parser.add_argument("--limit-seconds", type=float, default=8.0,
                        help="sipp -l = rate x this (most calls in flight)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between steps")
    parser.add_argument("--text", default="Hello there.")
    parser.add_argument("--bridge-log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--event-url", action="store_true",
                        help="also give the application an event_url (4 webhooks per call)")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every bridge (repeatable)")
    parser.add_argument("--json-out", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rate, args.seconds = 20.0, 10.0
    names = [n.strip() for n in args.setups.split(",") if n.strip()]
    unknown = set(names) - {s.name for s in SETUPS}
    if unknown:
        parser.error(f"unknown set-ups: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        say("cluster_rate: the rootfs lab needs root")
        return 2
    for binary, package in (("sipp", "sip-tester"), ("redis-server", "redis-server")):
        if shutil.which(binary) is None:
            say(f"cluster_rate: {binary} is not installed (package {package})")
            return 2
    bench = ClusterBench(args)
    try:
        report = bench.run_all(names)
    finally:
        bench.stop()
    say("")
    say(markdown(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        say(f"report: {args.json_out}")
    return 0 if all(row["passed"] for row in report["setups"]) else 1


if __name__ == "__main__":
    sys.exit(main())
