"""Call-rate benchmark: plain Asterisk dialplan against the same call through ari-bridge.

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/callrate.py [--step-seconds 10] [--rates 25,50,100,...]
                                       [--profile] [--rest-requests 1000] [--json-out FILE]
    .venv/bin/python bench/callrate.py --quick     # one 50 calls/s step each, < 2 minutes

One run, one machine, one lab Asterisk (its own state directory and free ports):

(a) ``dialplan``: sipp calls the exact extension ``dialplan-bench`` in ``from-trunk``:
    Answer(), Playback(silence/1), Hangup().
(b) ``bridge``: sipp calls a number; the dialplan hands it to Stasis; ``ari-bridge serve``
    (its own process, credentials passed through the environment) asks answer_url (the
    application server in ``bench/answer_app.py``, its own process) and gets one ``talk``
    action ("Hello there.", about one second of speech); it rings, answers, plays, hangs up.

For each variant the call rate is stepped up (each step ``--step-seconds`` of calls); a step
passes when every call succeeded (200 OK, then a BYE from the far end after at least 80 % of
the expected media time), and sipp really offered the rate (>= 90 % of the target). The
highest passing step is the variant's maximum; then a latency run at half that rate gives
INVITE -> 200 OK p50/p99 (sipp ``-trace_rtt``, 1 ms resolution). Optionally py-spy profiles
the bridge during one more half-rate run, and the ARI REST client cost of raw aiohttp and
aioari is compared (``bench/ari_rest.py``).

Every loop is bounded: each sipp run has a global timeout, the rate list is finite, and the
lab, the bridge and the application server are stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SCENARIO = BENCH_DIR / "scenarios" / "uac_wait_bye.xml"
DIALPLAN_EXTEN = "dialplan-bench"
BRIDGE_NUMBER = "15551230000"
DEFAULT_RATES = (25, 50, 100, 150, 200, 250, 300, 400, 500)
CLK_TCK = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, str(BENCH_DIR))
from ari_rest import compare as rest_compare  # noqa: E402


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------ measurements
def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_sys_cpu_s(pid: int | None) -> float:
    """System (kernel) CPU seconds of a process so far."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return int(fields[12]) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return float(total - idle), float(total)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class StepResult:
    variant: str
    phase: str
    target_rate: float
    calls: int
    successful: int = 0
    failed: int = 0
    short_calls: int = 0
    achieved_rate: float = 0.0
    setup_p50_ms: float = math.nan
    setup_p99_ms: float = math.nan
    setup_max_ms: float = math.nan
    held_p50_ms: float = math.nan
    wall_s: float = 0.0
    sipp_rc: int = 0
    cpu_ms_per_call: dict[str, float] = field(default_factory=dict)
    machine_busy_pct: float = 0.0
    other_cpu_pct: float = 0.0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def passed(self) -> bool:
        return (
            self.sipp_rc == 0 and self.failed == 0 and self.short_calls == 0
            and self.successful == self.calls
            and self.achieved_rate >= 0.9 * self.target_rate
        )


# ----------------------------------------------------------------------- the harness
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.state_dir / "run"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lab_opts: Any = None
        self.lab: Any = None
        self.env_creds: dict[str, str] = {}
        self.sink: socket.socket | None = None
        self.bridge_port = 0
        self.app_port = 0
        self.speech_s = math.nan
        self.silence_s = 1.0
        self.results: list[StepResult] = []
        self.report: dict[str, Any] = {}
        #: Put before the bridge's (or the floor application's) command line, e.g. valgrind
        #: (bench/instructions.py), with a longer wait for it to become ready.
        self.bridge_prefix: list[str] = []
        self.ready_deadline_s = 30.0

    # ----------------------------------------------------------- start and stop
    def start(self) -> None:
        from bridge.lab import LabOptions, lab_up

        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.lab_opts = LabOptions(
            state_dir=self.args.state_dir,
            ari_port=free_port(socket.SOCK_STREAM),
            sip_port=free_port(),
            rtp_start=30000,
            rtp_end=39999,
        )
        self.lab = lab_up(self.lab_opts, progress=lambda line: say("  lab:", line))
        from bridge.lab._model import read_password

        password = read_password(self.args.state_dir) or ""
        self.env_creds = {
            "ARI_BRIDGE_ARI__URL": self.lab.ari_url,
            "ARI_BRIDGE_ARI__USERNAME": self.lab.ari_username,
            "ARI_BRIDGE_ARI__PASSWORD": password,
            "ARI_BRIDGE_ARI__APP": self.lab.app_name,
        }
        # RTP from Asterisk goes here and is never read: the kernel drops it once the
        # socket buffer is full, without ICMP errors back to Asterisk.
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))

        self.app_port = free_port(socket.SOCK_STREAM)
        self._spawn("app", [sys.executable, str(BENCH_DIR / "answer_app.py"),
                            "--port", str(self.app_port), "--text", self.args.text], {})
        self._wait_http(f"http://127.0.0.1:{self.app_port}/stats", "application server")

        self.bridge_port = free_port(socket.SOCK_STREAM)
        app_url = f"http://127.0.0.1:{self.app_port}"
        config = {
            "http": {"host": "127.0.0.1", "port": self.bridge_port},
            "store": {"path": str(self.work / "calls.sqlite3")},
            "media": {"path": str(self.args.state_dir / "media")},
            "log": {"level": self.args.bridge_log_level},
            "applications": [{
                "id": "bench",
                "answer_url": f"{app_url}/answer",
                **({"event_url": f"{app_url}/event"} if self.args.event_url else {}),
                **({"ring_after_ms": self.args.ring_after_ms}
                   if self.args.ring_after_ms is not None else {}),
            }],
            "numbers": {"*": "bench"},
        }
        config_file = self.work / "bridge.yaml"
        config_file.write_text(json.dumps(config, indent=2) + "\n")  # JSON is valid YAML
        bridge_bin = Path(sys.executable).with_name("ari-bridge")
        extra = dict(item.split("=", 1) for item in self.args.bridge_env)
        self._spawn("bridge", [*self.bridge_prefix, str(bridge_bin), "serve", "--config",
                               str(config_file)], {**self.env_creds, **extra})
        self._wait_http(f"http://127.0.0.1:{self.bridge_port}/healthz", "bridge",
                        self.ready_deadline_s)

    def start_floor(self) -> None:
        """Replace the bridge with ``bench/floor_app.py``: the same ARI application, the same
        wire traffic per call, none of the bridge's own work. Its CPU is counted under
        ``bridge``."""
        proc = self.procs.pop("bridge")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        media = max((self.args.state_dir / "media").glob("*.wav"),
                    key=lambda path: path.stat().st_mtime)
        self._spawn("bridge", [
            *self.bridge_prefix, sys.executable, str(BENCH_DIR / "floor_app.py"),
            "--ari-url", self.lab.ari_url, "--username", self.lab.ari_username,
            "--app", self.lab.app_name, "--answer-url", f"http://127.0.0.1:{self.app_port}/answer",
            "--media-file", str(media), "--port", str(self.bridge_port),
            *(["--ring-after-ms", str(self.args.ring_after_ms)]
              if self.args.ring_after_ms is not None else []),
        ], {"ARI_PASSWORD": self.env_creds["ARI_BRIDGE_ARI__PASSWORD"]})
        self._wait_http(f"http://127.0.0.1:{self.bridge_port}/healthz", "floor application",
                        self.ready_deadline_s)
        time.sleep(1.0)  # the event filter is set just after the websocket opens

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARI_BRIDGE_")}
        env.update(extra_env)
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=self.work,
        )
        log.close()

    def _wait_http(self, url: str, what: str, deadline_s: float = 30.0,
                   name: str | None = None) -> None:
        end = time.monotonic() + deadline_s
        name = name or ("app" if what.startswith("application") else "bridge")
        while time.monotonic() < end:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"the {what} exited; see {self.work / (name + '.log')}")
            with (contextlib.suppress(OSError, urllib.error.URLError),
                  urllib.request.urlopen(url, timeout=2) as resp):
                if resp.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the {what} did not become ready within {deadline_s:.0f} s")

    def stop(self) -> None:
        for name in ("bridge", "app"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.sink is not None:
            self.sink.close()
        if self.lab_opts is not None and not self.args.keep_lab:
            from bridge.lab import lab_down

            lab_down(self.lab_opts)

    # ------------------------------------------------------------------ helpers
    def pids(self) -> dict[str, int | None]:
        return {
            "asterisk": self.lab.pid if self.lab else None,
            "bridge": self.procs["bridge"].pid if "bridge" in self.procs else None,
            "app": self.procs["app"].pid if "app" in self.procs else None,
        }

    def sipp_targets(self) -> list[str]:
        """The SIP addresses the calls go to, split evenly (one sipp each)."""
        return [f"127.0.0.1:{self.lab.sip_port}"]

    def ari_channels(self) -> int:
        from bridge.lab._model import ari_get

        status, body = ari_get(
            f"{self.lab.ari_url}/ari/channels", self.lab.ari_username,
            self.env_creds["ARI_BRIDGE_ARI__PASSWORD"], timeout=5,
        )
        return len(body) if status == 200 and isinstance(body, list) else -1

    def settle(self, deadline_s: float = 30.0) -> None:
        """Wait until Asterisk has no channel left (bounded), then a short pause."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with contextlib.suppress(OSError):
                if self.ari_channels() == 0:
                    break
            time.sleep(0.25)
        time.sleep(self.args.pause)

    def bridge_health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.bridge_port}/healthz"
        with (contextlib.suppress(OSError, ValueError, urllib.error.URLError),
              urllib.request.urlopen(url, timeout=5) as resp):
            return dict(json.loads(resp.read()))
        return {}

    def ari_traffic(self) -> Counter[str]:
        """ARI requests the bridge has made so far, by HTTP method, and the ARI events it has
        received (key ``events``), from its /metrics."""
        counts: Counter[str] = Counter()
        url = f"http://127.0.0.1:{self.bridge_port}/metrics"
        with (contextlib.suppress(OSError, urllib.error.URLError),
              urllib.request.urlopen(url, timeout=5) as resp):
            for line in resp.read().decode().splitlines():
                if "ari_request_duration_seconds_count{" in line:
                    labels, _, value = line.rpartition(" ")
                    method = labels.split('method="', 1)[1].split('"', 1)[0]
                    counts[method] += int(float(value))
                elif line.startswith("ari_bridge_ari_events_total "):
                    counts["events"] += int(float(line.rpartition(" ")[2]))
        return counts

    # --------------------------------------------------------------------- a step
    def run_step(self, variant: str, phase: str, rate: float, seconds: float,
                 profile_out: Path | None = None) -> StepResult:
        number = DIALPLAN_EXTEN if variant == "dialplan" else BRIDGE_NUMBER
        expected_media_s = self.silence_s if variant == "dialplan" else self.speech_s
        calls = max(1, round(rate * seconds))
        self.settle()
        step_dir = self.work / f"{variant}-{phase}-{rate:g}"
        step_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(SCENARIO, step_dir / SCENARIO.name)
        targets = self.sipp_targets()
        limit = max(50, int(rate * self.args.limit_seconds / len(targets)))
        timeout_s = int(seconds + 45)
        argvs = []
        for index, target in enumerate(targets):
            # Each target takes an even share of the calls at its share of the rate.
            target_calls = max(1, calls // len(targets) + int(index < calls % len(targets)))
            suffix = f"-{index}" if index else ""
            argvs.append([
                "sipp", target,
                "-sf", SCENARIO.name, "-s", number,
                "-r", f"{rate / len(targets):g}", "-m", str(target_calls), "-l", str(limit),
                "-i", "127.0.0.1", "-p", str(free_port()),
                "-key", "rtp_port", str(self.sink.getsockname()[1]) if self.sink else "9",
                "-nostdin", "-timeout", f"{timeout_s}s", "-timeout_error",
                "-trace_stat", "-fd", "1", "-stf", f"stat{suffix}.csv",
                "-trace_rtt", "-rtt_freq", "1",
                "-trace_err", "-error_file", f"errors{suffix}.log",
            ])
        pids = self.pids()
        cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        bridge_sys0 = proc_sys_cpu_s(pids.get("bridge"))
        sipp_cpu0 = children_cpu_s()
        busy0, total0 = machine_cpu()
        spy = None
        if profile_out is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                 str(pids.get("bridge")), "--rate", "200", "--duration", str(int(seconds + 3)),
                 "--format", "raw", "--idle", "--nonblocking", "-o", str(profile_out)],
                stdout=subprocess.DEVNULL, stderr=open(step_dir / "py-spy.log", "wb"),  # noqa: SIM115
            )
            time.sleep(1.0)  # let py-spy attach
        started = time.monotonic()
        sipps = []
        for index, argv in enumerate(argvs):
            with open(step_dir / f"sipp{f'-{index}' if index else ''}.stderr", "wb") as err:
                sipps.append(subprocess.Popen(argv, cwd=step_dir, stdout=subprocess.DEVNULL,
                                              stderr=err))
        rc = 0
        for sipp in sipps:
            try:
                code = sipp.wait(max(1.0, started + timeout_s + 30 - time.monotonic()))
            except subprocess.TimeoutExpired:
                sipp.kill()
                sipp.wait(5)
                code = -9
            rc = rc or code
        wall = time.monotonic() - started
        busy1, total1 = machine_cpu()
        cpu1 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        bridge_sys = proc_sys_cpu_s(pids.get("bridge")) - bridge_sys0
        sipp_cpu = children_cpu_s() - sipp_cpu0
        if spy is not None:
            try:
                spy.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)

        result = StepResult(variant=variant, phase=phase, target_rate=rate, calls=calls,
                            sipp_rc=rc, wall_s=round(wall, 2))
        self._read_stats(step_dir, result)
        setup, held, dates = self._read_rtt(step_dir)
        if setup:
            result.setup_p50_ms = percentile(setup, 50)
            result.setup_p99_ms = percentile(setup, 99)
            result.setup_max_ms = max(setup)
        if held:
            result.held_p50_ms = percentile(held, 50)
            result.short_calls = sum(1 for h in held if h < 800 * expected_media_s)
        if len(dates) > 1 and dates[-1] > dates[0]:
            result.achieved_rate = round((len(dates) - 1) / ((dates[-1] - dates[0]) / 1000), 1)
        elif calls == 1 and dates:
            result.achieved_rate = rate
        used = {name: cpu1[name] - cpu0[name] for name in cpu0}
        used["sipp"] = sipp_cpu
        done = max(1, result.successful + result.failed)
        result.cpu_ms_per_call = {k: round(v * 1000 / done, 2) for k, v in used.items()}
        if "bridge" in pids:
            # Of the bridge's CPU, the part spent in the kernel (socket system calls).
            result.cpu_ms_per_call["bridge_kernel"] = round(bridge_sys * 1000 / done, 2)
        jiffies = max(1.0, total1 - total0)
        ncpu = os.cpu_count() or 1
        result.machine_busy_pct = round(100 * (busy1 - busy0) / jiffies, 1)
        ours_pct = 100 * sum(used.values()) / (wall * ncpu)
        result.other_cpu_pct = round(max(0.0, result.machine_busy_pct - ours_pct), 1)
        if variant == "bridge":
            health = self.bridge_health()
            if health.get("live_calls"):
                result.note = f"bridge still had {health['live_calls']} live calls"
        self.results.append(result)
        self._print_step(result)
        return result

    def _read_stats(self, step_dir: Path, result: StepResult) -> None:
        """The last line of each sipp's statistics (one sipp per target), added up."""
        paths = sorted(step_dir.glob("stat*.csv"))
        if len(paths) < len(self.sipp_targets()):
            result.note = "no sipp statistics"
        reasons: Counter[str] = Counter()
        for path in paths:
            try:
                lines = [ln for ln in path.read_text(errors="replace").splitlines()
                         if ln.strip()]
            except OSError:
                result.note = "no sipp statistics"
                continue
            if not lines:
                continue
            header = lines[0].split(";")
            row = dict(zip(header, lines[-1].split(";"), strict=False))

            def num(key: str, row: dict[str, str] = row) -> int:
                with contextlib.suppress(ValueError, TypeError):
                    return int(float(row.get(key, "0")))
                return 0

            result.successful += num("SuccessfulCall(C)")
            result.failed += num("FailedCall(C)")
            for key in header:
                if key.startswith("Failed") and key.endswith("(C)") and key != "FailedCall(C)":
                    reasons[key[len("Failed"):-3]] += num(key)
            reasons["(retransmissions, not failures)"] += num("Retransmissions(C)")
        result.failure_reasons = {k: v for k, v in reasons.items() if v}

    def _read_rtt(self, step_dir: Path) -> tuple[list[float], list[float], list[float]]:
        setup: list[float] = []
        held: list[float] = []
        dates: list[float] = []
        for path in step_dir.glob("*_rtt.csv"):
            for line in path.read_text(errors="replace").splitlines()[1:]:
                parts = line.split(";")
                if len(parts) < 3:
                    continue
                try:
                    date, value, rtd = float(parts[0]), float(parts[1]), parts[2].strip()
                except ValueError:
                    continue
                if rtd == "1":
                    setup.append(value)
                    dates.append(date)
                elif rtd == "2":
                    held.append(value)
        dates.sort()
        return setup, held, dates

    def _print_step(self, r: StepResult) -> None:
        cpu = " ".join(f"{k}={v:g}" for k, v in r.cpu_ms_per_call.items())
        say(
            f"  {r.variant:8} {r.phase:8} rate {r.target_rate:>5g}/s: "
            f"{'PASS' if r.passed else 'FAIL'} ok {r.successful}/{r.calls} failed {r.failed} "
            f"short {r.short_calls} achieved {r.achieved_rate:g}/s "
            f"setup p50 {r.setup_p50_ms:g} p99 {r.setup_p99_ms:g} max {r.setup_max_ms:g} ms "
            f"held p50 {r.held_p50_ms:g} ms | CPU ms/call {cpu} | machine {r.machine_busy_pct}% "
            f"other {r.other_cpu_pct}%"
            + (f" | {r.failure_reasons}" if r.failure_reasons else "")
            + (f" | {r.note}" if r.note else "")
        )

    # ------------------------------------------------------------------- phases
    def warm_up(self) -> None:
        """A few calls of each kind: TTS synthesis, Asterisk's media cache, connections."""
        say("warm-up ...")
        for variant in ("dialplan", "bridge"):
            self.run_step(variant, "warmup", 5, 1.0)
        wavs = sorted((self.args.state_dir / "media").glob("*.wav"),
                      key=lambda p: p.stat().st_mtime)
        if wavs:
            with wave.open(str(wavs[-1])) as w:
                self.speech_s = round(w.getnframes() / w.getframerate(), 3)
        say(f"  talk '{self.args.text}' lasts {self.speech_s} s; Playback(silence/1) "
            f"{self.silence_s} s")
        if math.isnan(self.speech_s):
            raise RuntimeError("no synthesized speech found in the media store")

    def ramp(self, variant: str) -> float:
        """Step the rate up until a step fails; one bisection step between the last pass and
        the first failure. Returns the highest passing rate (0 when none passed)."""
        best = 0.0
        failed_at: float | None = None
        for rate in self.args.rates:
            result = self.run_step(variant, "ramp", rate, self.args.step_seconds)
            if not result.passed:
                failed_at = rate
                break
            best = rate
        if failed_at is not None and self.args.bisect:
            middle = round((best + failed_at) / 2 / 5) * 5
            if best < middle < failed_at and self.run_step(
                variant, "bisect", middle, self.args.step_seconds
            ).passed:
                best = middle
        return best

    def profile(self, rate: float) -> dict[str, Any]:
        out = self.work / "bridge-profile.txt"
        self.run_step("bridge", "profile", rate, self.args.step_seconds, profile_out=out)
        if not out.exists():
            return {"error": "py-spy wrote no profile (see the step's py-spy.log)"}
        return summarize_profile(out)

    def run(self) -> dict[str, Any]:
        args = self.args
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        self.start()
        say(f"lab: Asterisk {self.lab.asterisk_version} pid {self.lab.pid}, SIP "
            f"127.0.0.1:{self.lab.sip_port}; bridge pid {self.procs['bridge'].pid} "
            f"(log level {args.bridge_log_level}); app pid {self.procs['app'].pid}")
        self.warm_up()
        maxima: dict[str, float] = {}
        for variant in ("dialplan", "bridge"):
            say(f"ramp {variant} ...")
            maxima[variant] = self.ramp(variant)
            say(f"  {variant}: highest rate with zero failed calls {maxima[variant]:g}/s")
        latency: dict[str, dict[str, Any]] = {}
        for variant in ("dialplan", "bridge"):
            half = maxima[variant] / 2
            if half <= 0:
                continue
            say(f"latency {variant} at {half:g}/s ...")
            r = self.run_step(variant, "latency", half, args.latency_seconds)
            latency[variant] = asdict(r) | {"passed": r.passed}
        prof: dict[str, Any] | None = None
        if args.profile and maxima["bridge"] > 0:
            say(f"profile bridge at {maxima['bridge'] / 2:g}/s with py-spy ...")
            prof = self.profile(maxima["bridge"] / 2)
            print_profile(prof)
        rest = None
        if args.rest_requests > 0:
            say("ARI REST client cost (raw aiohttp vs aioari) ...")
            rest = asyncio.run(rest_compare(
                self.lab.ari_url, self.lab.ari_username,
                self.env_creds["ARI_BRIDGE_ARI__PASSWORD"], args.rest_requests,
            ))
            for row in rest["results"]:
                say(f"  {row['client']:32} client CPU {row['client_cpu_us_per_request']:>7} "
                    f"us/request, wall p50 {row['wall_us_per_request_p50']:>7} us")
        ratio = maxima["bridge"] / maxima["dialplan"] if maxima["dialplan"] else math.nan
        self.report = {
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                "python": sys.version.split()[0],
                "asterisk": self.lab.asterisk_version,
            },
            "settings": {
                "step_seconds": args.step_seconds, "latency_seconds": args.latency_seconds,
                "rates": list(args.rates), "bridge_log_level": args.bridge_log_level,
                "event_url": args.event_url, "text": args.text,
                "speech_s": self.speech_s, "silence_s": self.silence_s,
            },
            "max_rate": maxima,
            "ratio_bridge_over_dialplan": round(ratio, 3),
            "latency_at_half_rate": latency,
            "steps": [asdict(r) | {"passed": r.passed} for r in self.results],
            "profile": prof,
            "rest_client": rest,
        }
        return self.report


    def quick(self) -> dict[str, Any]:
        """One step of each variant at ``--quick-rate``: the CPU per call of every process,
        and the goals of the lean call path checked against it."""
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        self.start()
        self.warm_up()
        steps = {"dialplan": self.run_step("dialplan", "quick", self.args.quick_rate,
                                           self.args.step_seconds)}
        before = self.ari_traffic()
        steps["bridge"] = self.run_step("bridge", "quick", self.args.quick_rate,
                                        self.args.step_seconds)
        done = max(1, steps["bridge"].successful + steps["bridge"].failed)
        traffic = self.ari_traffic() - before
        events = traffic.pop("events", 0)
        ari_per_call = {method: round(n / done, 2) for method, n in sorted(traffic.items())}
        ari_per_call["all"] = round(sum(traffic.values()) / done, 2)
        cpu = {variant: r.cpu_ms_per_call for variant, r in steps.items()}
        prof = None
        if self.args.profile:
            say(f"profile bridge at {self.args.quick_rate:g}/s with py-spy ...")
            prof = self.profile(self.args.quick_rate)
            print_profile(prof)
        if self.args.floor:
            self.start_floor()
            self.run_step("floor", "warmup", 5, 1.0)
            steps["floor"] = self.run_step("floor", "quick", self.args.quick_rate,
                                           self.args.step_seconds)
            cpu["floor"] = steps["floor"].cpu_ms_per_call
        bridge_ms = cpu["bridge"].get("bridge", math.nan)
        asterisk_extra_ms = (cpu["bridge"].get("asterisk", math.nan)
                             - cpu["dialplan"].get("asterisk", math.nan))
        return {
            "rate": self.args.quick_rate,
            "bridge_env": self.args.bridge_env,
            "step_seconds": self.args.step_seconds,
            "cpu_ms_per_call": cpu,
            "bridge_ari_requests_per_call": ari_per_call,
            "bridge_ari_events_per_call": round(events / done, 2),
            "passed": {variant: r.passed for variant, r in steps.items()},
            "setup_p99_ms": {variant: r.setup_p99_ms for variant, r in steps.items()},
            "other_cpu_pct": {variant: r.other_cpu_pct for variant, r in steps.items()},
            "goals": {
                "bridge_cpu_ms_per_call <= 2.0": {"value": bridge_ms,
                                                  "met": bridge_ms <= 2.0},
                "asterisk_extra_ms_per_bridge_call <= 1.5": {
                    "value": round(asterisk_extra_ms, 2), "met": asterisk_extra_ms <= 1.5},
            },
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                "asterisk": self.lab.asterisk_version,
            },
            "profile": prof,
        }


# ------------------------------------------------------------------------ profile
# Leaf frames that mean "waiting": the event loop in epoll, idle executor threads.
_IDLE_LEAVES = (
    "selectors.py:EpollSelector.select",
    "concurrent/futures/thread.py:_worker",
    "threading.py:Condition.wait",
    "queue.py:Queue.get",
)


def _frame_key(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'file.py:func' with a short path."""
    frame = frame.strip()
    if " (" not in frame:
        return frame
    func, rest = frame.split(" (", 1)
    path = rest.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "lib/python3.", "/bridge/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            if marker == "lib/python3.":
                tail = "stdlib/" + tail.split("/", 1)[1]
            elif marker == "/bridge/":
                tail = "bridge/" + tail
            path = tail
            break
    return f"{path}:{func}"


def _layer(key: str) -> str:
    path = key.split(":", 1)[0]
    if not path.startswith(("stdlib/", "bridge/")) and path.split("/", 1)[0] in (
        "asyncio", "json", "logging", "sqlite3", "selectors.py", "concurrent", "email"
    ):
        path = "stdlib/" + path  # py-spy names standard-library files relative to the lib
    if path.startswith(("aioari/", "aioswagger11/")):
        return "aioari + aioswagger11"
    if path.startswith("aiohttp/"):
        return "aiohttp"
    if path.startswith(("yarl/", "multidict/", "propcache/")):
        return "yarl/multidict (aiohttp's URL/header types)"
    if path.startswith("structlog/") or path.startswith("stdlib/logging"):
        return "logging (structlog + logging)"
    if path.startswith("stdlib/asyncio") or path.startswith("stdlib/selectors"):
        return "asyncio event loop"
    if path.startswith("stdlib/json"):
        return "json"
    if path.startswith("stdlib/sqlite3") or path.startswith("bridge/calls/store.py"):
        return "sqlite (call store)"
    if path.startswith("pydantic"):
        return "pydantic"
    if path.startswith("bridge/"):
        return "bridge code (own frames)"
    return "other (" + path.split("/", 1)[0] + ")"


# Bridge entry points: a sample counts for the first of these found from the stack's root.
_ENTRY_POINTS = (
    ("ARI REST requests (gateway.request)", "bridge/ari/gateway.py:AriGateway.request"),
    ("ARI event reading + routing (gateway._read)", "bridge/ari/gateway.py:AriGateway._read"),
    ("aioari / aioswagger11 (anywhere in the stack)", "aioari/"),
    ("answer_url webhook (webhooks client)", "bridge/webhooks/"),
    ("media HTTP server (Asterisk fetching /media)", "bridge/app.py:media_file"),
    ("call store (sqlite)", "bridge/calls/store.py:"),
    ("logging", "structlog/"),
)


def summarize_profile(path: Path) -> dict[str, Any]:
    total = 0
    idle = 0
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if " (" in f]
        total += count
        keys = [_frame_key(f) for f in frames]
        if not keys or keys[-1].endswith(_IDLE_LEAVES):
            idle += count
            continue
        self_counts[keys[-1]] += count
        layers[_layer(keys[-1])] += count
        for key in set(keys):
            incl_counts[key] += count
        joined = ";".join(keys)
        for name, marker in _ENTRY_POINTS:
            if marker in joined or (marker == "aioari/" and "aioswagger11/" in joined):
                entries[name] += count
    busy = total - idle

    def pct(n: int) -> float:
        return round(100 * n / busy, 1) if busy else 0.0

    return {
        "samples": total,
        "busy_samples": busy,
        "busy_pct_of_wall": round(100 * busy / total, 1) if total else 0.0,
        "top_self": [(k, pct(v)) for k, v in self_counts.most_common(15)],
        "top_inclusive": [(k, pct(v)) for k, v in incl_counts.most_common(25)],
        "layers": [(k, pct(v)) for k, v in layers.most_common()],
        "entry_points": [(k, pct(v)) for k, v in entries.most_common()],
    }


def print_profile(prof: dict[str, Any]) -> None:
    if "error" in prof:
        say("  profile:", prof["error"])
        return
    say(f"  {prof['samples']} samples, busy {prof['busy_pct_of_wall']}% of wall time; "
        "percentages below are of busy samples")
    for title, key in (("by library (leaf frame)", "layers"),
                       ("by bridge entry point (inclusive)", "entry_points"),
                       ("top functions (self)", "top_self"),
                       ("top functions (inclusive)", "top_inclusive")):
        say(f"  {title}:")
        for name, value in prof[key]:
            say(f"    {value:5.1f}%  {name}")


# --------------------------------------------------------------------------- tables
def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| variant | phase | target calls/s | achieved | calls ok/total | failed | "
        "setup p50 ms | setup p99 ms | setup max ms | held p50 ms | "
        "CPU ms/call asterisk / bridge / app / sipp | machine busy % | other load % | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["steps"]:
        if s["phase"] == "warmup":
            continue
        cpu = s["cpu_ms_per_call"]
        lines.append(
            f"| {s['variant']} | {s['phase']} | {s['target_rate']:g} | {s['achieved_rate']:g} | "
            f"{s['successful']}/{s['calls']} | {s['failed']} | {s['setup_p50_ms']:g} | "
            f"{s['setup_p99_ms']:g} | {s['setup_max_ms']:g} | {s['held_p50_ms']:g} | "
            f"{cpu.get('asterisk', 0):g} / {cpu.get('bridge', 0):g} / {cpu.get('app', 0):g} / "
            f"{cpu.get('sipp', 0):g} | {s['machine_busy_pct']:g} | {s['other_cpu_pct']:g} | "
            f"{'yes' if s['passed'] else 'no'} |"
        )
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> str:
    m = report["max_rate"]
    out = [
        f"max rate with zero failed calls: dialplan {m.get('dialplan', 0):g}/s, "
        f"bridge {m.get('bridge', 0):g}/s, ratio bridge/dialplan "
        f"{report['ratio_bridge_over_dialplan']:g} (goal >= 0.8: "
        f"{'met' if report['ratio_bridge_over_dialplan'] >= 0.8 else 'NOT met'})",
    ]
    for variant, r in report["latency_at_half_rate"].items():
        ok = r["setup_p99_ms"] <= 30
        out.append(
            f"{variant} at {r['target_rate']:g}/s: INVITE->200 p50 {r['setup_p50_ms']:g} ms, "
            f"p99 {r['setup_p99_ms']:g} ms (goal p99 <= 30 ms: {'met' if ok else 'NOT met'}), "
            f"{r['successful']}/{r['calls']} ok"
        )
    return "\n".join(out)


def step_tool_args(name: str, calls: int, rate: float, tools: tuple[str, ...] = ()
                   ) -> tuple[argparse.Namespace, argparse.Namespace] | None:
    """The arguments of a tool that measures one step of calls: its own ``--calls`` and
    ``--rate``, then this script's. None (the reason said) when it cannot run here: the
    rootfs lab needs root, and sipp and ``tools`` must be installed."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--calls", type=int, default=calls)
    own.add_argument("--rate", type=float, default=rate)
    mine, rest = own.parse_known_args()
    args = build_parser().parse_args(rest)
    args.rates = []
    if os.geteuid() != 0:
        say(f"{name}: the rootfs lab needs root")
        return None
    for tool in ("sipp", *tools):
        if shutil.which(tool) is None:
            say(f"{name}: {tool} is not installed"
                + (" (package sip-tester)" if tool == "sipp" else ""))
            return None
    return mine, args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=Path("/var/tmp/ari-bridge-bench"))
    parser.add_argument("--rates", default=",".join(str(r) for r in DEFAULT_RATES),
                        help="comma-separated call rates to step through")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--limit-seconds", type=float, default=8.0,
                        help="sipp -l = rate x this (most calls in flight)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between steps")
    parser.add_argument("--no-bisect", dest="bisect", action="store_false")
    parser.add_argument("--text", default="Hello there.")
    parser.add_argument("--bridge-log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--event-url", action="store_true",
                        help="also give the application an event_url (4 webhooks per call)")
    parser.add_argument("--ring-after-ms", type=int, metavar="MS",
                        help="the application's ring_after_ms (default: the bridge's); 0 sends "
                             "180 Ringing at once, as releases before it did")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the bridge during one more half-rate run")
    parser.add_argument("--rest-requests", type=int, default=1000,
                        help="requests per client in the ARI REST comparison (0: skip)")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab running")
    parser.add_argument("--json-out", type=Path, help="write the full report here")
    parser.add_argument("--quick", action="store_true",
                        help="only one --quick-rate step of each variant (under 2 minutes); "
                             "prints the CPU per call of each process as JSON")
    parser.add_argument("--floor", action="store_true",
                        help="with --quick: one more step with bench/floor_app.py in place of "
                             "the bridge (the same ARI and webhook traffic, nothing else)")
    parser.add_argument("--quick-rate", type=float, default=50.0)
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the bridge, e.g. "
                             "ARI_BRIDGE_ARI__REST_TRANSPORT=http (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if os.geteuid() != 0:
        say("callrate: the rootfs lab needs root")
        return 2
    if shutil.which("sipp") is None:
        say("callrate: sipp is not installed (package sip-tester)")
        return 2
    bench = Bench(args)
    if args.quick:
        try:
            report = bench.quick()
        finally:
            bench.stop()
        print(json.dumps(report, indent=2))
        if args.json_out:
            args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        return 0 if all(report["passed"].values()) else 1
    try:
        report = bench.run()
    finally:
        bench.stop()
    say("")
    say(markdown(report))
    say("")
    say(summary(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
