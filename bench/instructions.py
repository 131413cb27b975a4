"""Instructions per call: the bridge's work counted exactly, for changes too small for CPU time.

CPU time per call (``bench/callrate.py --quick``) moves by up to 10 % between two runs of the
same code on a virtual machine, so a change worth 3 % cannot be told from noise. This counts
the instructions the bridge executes per call instead: the bridge runs under valgrind's
callgrind tool with instrumentation off, it is switched on for one step of calls at a low
rate and off again, and the count is divided by the calls. Two runs of the same code agree
to within about 1 %.

The same flow as ``callrate.py``: sipp calls a number, the bridge asks answer_url (one
``talk``), rings, answers, plays, hangs up. With ``--floor`` the same step is counted for
``bench/floor_app.py`` too, the same wire traffic without the bridge's own work.

Run by hand (as root, for the rootfs lab; needs valgrind), never by pytest::

    .venv/bin/python bench/instructions.py [--calls 100] [--rate 2] [--floor]
                                           [--bridge-env NAME=VALUE] [--json-out FILE]

Instructions are not time: a system call counts as the few instructions that make it, so the
kernel's share (socket writes, most of all) is not in the figure. Compare like with like.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from callrate import Bench, say, step_tool_args  # noqa: E402


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL,
                   timeout=120)


def dumps(out_prefix: Path) -> list[Path]:
    """The callgrind dumps written under ``out_prefix``, oldest first."""
    return sorted(out_prefix.parent.glob(out_prefix.name + ".*"),
                  key=lambda path: path.stat().st_mtime)


class Counting:
    """Instructions the process executes inside ``with``: zeroed and switched on at the
    start, switched off and dumped at the end; ``instructions`` holds the dump's total."""

    def __init__(self, pid: str, out_prefix: Path) -> None:
        self.pid = pid
        self.out_prefix = out_prefix
        self.instructions = 0

    def __enter__(self) -> Counting:
        callgrind_control("--zero", self.pid)
        callgrind_control("--instr=on", self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        before = len(dumps(self.out_prefix))
        callgrind_control("--instr=off", self.pid)
        callgrind_control("--dump", self.pid)
        # The dump is written by the process itself, a moment after the request.
        deadline = time.monotonic() + 60
        while len(dumps(self.out_prefix)) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"callgrind wrote no dump at {self.out_prefix}.*")
            time.sleep(0.1)
        newest = dumps(self.out_prefix)[-1]
        while not (total := _totals(newest)):  # the file may still be being written
            if time.monotonic() > deadline:
                raise RuntimeError(f"no totals in {newest}")
            time.sleep(0.1)
        self.instructions = total


def _totals(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


def count(bench: Bench, variant: str, rate: float, calls: int, out_prefix: Path
          ) -> dict[str, Any]:
    """Instructions per call of one step, less what the process does in the same time with
    no calls (timers, health checks), counted just before."""
    pid = str(bench.procs["bridge"].pid)
    bench.run_step(variant, "warmup", rate, 3 / rate)  # connections, caches, media
    bench.settle()
    seconds = calls / rate
    with Counting(pid, out_prefix) as idle:
        time.sleep(seconds)  # the length of the step to come, with no calls
    with Counting(pid, out_prefix) as busy:
        result = bench.run_step(variant, "counted", rate, seconds)
    done = max(1, result.successful + result.failed)
    # The step runs a little longer than its calls take to start (the last call's media,
    # sipp's exit); the idle figure is scaled to the step's wall time.
    idle_share = idle.instructions * result.wall_s / seconds
    return {"calls": done, "failed": result.failed, "wall_s": result.wall_s,
            "instructions_idle_per_s": round(idle.instructions / seconds),
            "instructions_per_call": round((busy.instructions - idle_share) / done)}


def main() -> int:
    parsed = step_tool_args("instructions", 100, 2.0, ("valgrind", "callgrind_control"))
    if parsed is None:
        return 2
    mine, args = parsed
    bench = Bench(args)
    work = args.state_dir / "run"
    bench.bridge_prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={work / 'bridge.callgrind'}"]
    bench.ready_deadline_s = 300.0
    report: dict[str, Any] = {"rate": mine.rate, "bridge_env": args.bridge_env}
    try:
        bench.start()
        bench.warm_up()
        report["bridge"] = count(bench, "bridge", mine.rate, mine.calls,
                                 work / "bridge.callgrind")
        say(f"bridge: {report['bridge']}")
        if args.floor:
            bench.bridge_prefix[-1] = f"--callgrind-out-file={work / 'floor.callgrind'}"
            bench.start_floor()
            report["floor"] = count(bench, "floor", mine.rate, mine.calls,
                                    work / "floor.callgrind")
            say(f"floor: {report['floor']}")
    finally:
        bench.stop()
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
