"""Running sipp: one call placed and waited for, or a sipp that listens (agents, devices)
started and waited for until it holds its SIP port, with port clashes retried."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.lab.ports import free_media_port, free_port
from bridge.lab.sipp.scenarios import Step, uac_scenario


@dataclass
class SippResult:
    returncode: int
    messages: str
    errors: str
    elapsed_s: float
    statuses: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is not installed: apt-get install sip-tester")
    return path


#: A clash on sipp's ports (another process bound one between our check and sipp's bind) is
#: retried on new ports this many times in all.
START_ATTEMPTS = 3

#: How long a sipp that listens (agent, device) may take to bind its SIP port, in seconds.
#: Generous: on a loaded 2-core machine a start has taken over a second.
START_TIMEOUT_S = 20.0


class SippStartError(RuntimeError):
    """sipp did not start: its exit code and stderr are in the message."""


def _port_clash(stderr: str) -> bool:
    """sipp's words for a port someone else holds (EADDRINUSE)."""
    return "errno = 98" in stderr or "Address already in use" in stderr


async def _start_listening(
    what: str, host: str, port: int, workdir: Path, command: Callable[[int, int], list[str]],
) -> tuple[asyncio.subprocess.Process, int]:
    """Start a sipp that listens on ``host:port`` and wait until it has bound the port.

    ``command(sip_port, media_port)`` gives sipp's arguments. A port clash is retried on new
    ports; any other early exit, or no bind within ``START_TIMEOUT_S``, raises
    :class:`SippStartError` with sipp's exit code and stderr. A sipp that binds and then ends
    (a device whose registration is refused) is returned as started: its caller looks at it.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        stderr_file = workdir / "stderr.log"
        with stderr_file.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *command(port, free_media_port(host)), cwd=workdir,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.returncode is None and time.monotonic() < deadline:
            if _holds_udp_port(proc.pid, port):
                return proc, port
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.02)
        errors = _read(stderr_file).strip()
        if proc.returncode is None:
            proc.kill()  # our own child, by PID
            await proc.wait()
            raise SippStartError(
                f"{what}: sipp did not bind {host}:{port} within {START_TIMEOUT_S:.0f} s; "
                f"stderr: {errors[-800:] or '(empty)'}")
        if _port_clash(errors) and attempt < START_ATTEMPTS:
            port = free_port(host=host)
            continue
        if _port_clash(errors) or "message received" not in _read(workdir / "messages.log"):
            raise SippStartError(
                f"{what}: sipp exited with code {proc.returncode} before listening on "
                f"{host}:{port}; stderr: {errors[-800:] or '(empty)'}")
        return proc, port  # it ran and ended (a device whose registration was refused)
    raise AssertionError("unreachable")


def _holds_udp_port(pid: int, port: int) -> bool:
    """Whether process ``pid`` has bound UDP ``port`` (Linux /proc: its sockets' inodes
    against the kernel's table). A plain bind probe would also say "taken" when the port
    was taken by someone else, and sipp then exits with EADDRINUSE instead of listening."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in _read(Path(table)).splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if str(fd.readlink()) in inodes:
                    return True
    return False


async def place_call(
    sip_host: str,
    sip_port: int,
    number: str,
    *,
    rtp_port: int,
    caller: str = "15550001111",
    steps: list[Step] | None = None,
    expect_status: int = 200,
    timeout_s: float = 60.0,
) -> SippResult:
    """Place one call with sipp and wait for it to end. Never raises for a failed call:
    the result says what sipp saw (SIP statuses received, exit code)."""
    scenario = uac_scenario(caller, rtp_port, steps, expect_status)
    started = time.monotonic()
    for attempt in range(1, START_ATTEMPTS + 1):
        with tempfile.TemporaryDirectory(prefix="ari-bridge-sipp-") as tmp:
            workdir = Path(tmp)
            (workdir / "caller.xml").write_text(scenario)
            args = [
                sipp_binary(), f"{sip_host}:{sip_port}",
                "-sf", "caller.xml", "-s", number, "-m", "1", "-l", "1",
                "-i", "127.0.0.1", "-p", str(free_port()),
                "-mp", str(free_media_port()),
                "-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error",
                "-trace_msg", "-message_file", "messages.log",
                "-trace_err", "-error_file", "errors.log",
            ]
            proc = await asyncio.create_subprocess_exec(
                *args, cwd=workdir, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, stderr = await asyncio.wait_for(proc.communicate(), timeout_s + 10)
            except TimeoutError:
                proc.kill()  # our own child, by PID
                await proc.wait()
                stderr = b"sipp did not finish in time"
            messages = _read(workdir / "messages.log")
            errors = _read(workdir / "errors.log") + stderr.decode(errors="replace")
        # A port clash before anything was sent: nothing happened yet, so try new ports.
        if attempt < START_ATTEMPTS and proc.returncode and not messages and _port_clash(errors):
            continue
        break
    elapsed = time.monotonic() - started
    statuses = [
        int(code) for code in re.findall(r"message received[^\n]*\n+\s*SIP/2\.0 (\d{3})", messages)
    ]
    return SippResult(proc.returncode or 0, messages, errors, elapsed, statuses)


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")
    return ""
