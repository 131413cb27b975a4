"""What each SQLite statement of the call path costs inside the running bridge.

A statement timed back to back in a loop costs a fraction of what it costs in the bridge, where
calls arrive one every 20 ms and SQLite's code and pages leave the CPU's caches in between. This
times them where they run: the bridge starts with a ``sitecustomize`` module (written to a
scratch directory, put first on its ``PYTHONPATH``) that makes every ``sqlite3`` connection time
each ``execute`` with ``time.thread_time()`` (CPU time of the loop's thread, kernel work
included), and reports per statement, for one step of calls at ``--rate``.

Run by hand (as root, for the rootfs lab), never by pytest::

    .venv/bin/python bench/store_statements.py [--calls 1000] [--rate 50] [--json-out FILE]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from callrate import Bench, step_tool_args  # noqa: E402

#: Loaded by the bridge at start. SIGUSR1 zeroes the figures, SIGUSR2 writes them as JSON.
TIMING_MODULE = '''
import json, os, signal, sqlite3, time
_stats = {}
_connect = sqlite3.connect

class _Timed(sqlite3.Connection):
    def execute(self, sql, *args):
        started = time.thread_time()
        try:
            return super().execute(sql, *args)
        finally:
            entry = _stats.setdefault(" ".join(sql.split())[:70], [0, 0.0])
            entry[0] += 1
            entry[1] += time.thread_time() - started

def _timed_connect(*args, **kwargs):
    kwargs.setdefault("factory", _Timed)
    return _connect(*args, **kwargs)

def _write(*_):
    with open(os.environ["STORE_STATEMENTS_OUT"], "w") as out:
        json.dump(_stats, out)

sqlite3.connect = _timed_connect
signal.signal(signal.SIGUSR1, lambda *_: _stats.clear())
signal.signal(signal.SIGUSR2, _write)
'''


def main() -> int:
    parsed = step_tool_args("store_statements", 1000, 50.0)
    if parsed is None:
        return 2
    mine, args = parsed
    scratch = Path(tempfile.mkdtemp(prefix="store-statements-"))
    (scratch / "sitecustomize.py").write_text(TIMING_MODULE)
    out = scratch / "statements.json"
    # First on the path, before any PYTHONPATH given (an older checkout being compared).
    path = os.pathsep.join(filter(None, [str(scratch), os.environ.get("PYTHONPATH")]))
    args.bridge_env = [*args.bridge_env, f"PYTHONPATH={path}", f"STORE_STATEMENTS_OUT={out}"]
    bench = Bench(args)
    report: dict[str, Any] = {"rate": mine.rate, "calls": mine.calls,
                              "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    try:
        bench.start()
        bench.warm_up()
        pid = bench.procs["bridge"].pid
        bench.run_step("bridge", "warmup", mine.rate, 2.0)
        bench.settle()
        os.kill(pid, signal.SIGUSR1)
        result = bench.run_step("bridge", "timed", mine.rate, mine.calls / mine.rate)
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not out.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the bridge wrote no figures")
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, a moment after it appears
        stats = json.loads(out.read_text())
        calls = max(1, result.successful + result.failed)
        report["calls_done"] = calls
        report["bridge_cpu_ms_per_call"] = result.cpu_ms_per_call.get("bridge")
        report["statements"] = {
            sql: {"per_call": round(n / calls, 2), "cpu_us_each": round(cpu * 1e6 / n, 1)}
            for sql, (n, cpu) in sorted(stats.items(), key=lambda kv: -kv[1][1]) if n
        }
        report["cpu_us_per_call"] = round(sum(cpu for _, cpu in stats.values()) * 1e6 / calls)
    finally:
        bench.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
