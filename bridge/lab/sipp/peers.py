"""SIP peers that stay up for an ``async with``: an agent (a sipp UAS on 127.0.0.1) and an
agent's registered phone (a device). Each keeps the RTP that reached it in ``receiver``."""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from pathlib import Path

from bridge.lab.ports import free_port
from bridge.lab.sipp.rtp import RtpReceiver
from bridge.lab.sipp.runner import _read, _start_listening, sipp_binary
from bridge.lab.sipp.scenarios import register_scenario, uas_scenario


class _SippPeer:
    """What an agent and a device share: a sipp process in a temporary directory, its message
    log, and the RTP receiver; stopped (by PID) when the ``async with`` ends."""

    receiver: RtpReceiver | None
    _proc: asyncio.subprocess.Process | None
    _tmp: tempfile.TemporaryDirectory[str] | None

    @property
    def messages(self) -> str:
        return _read(Path(self._tmp.name) / "messages.log") if self._tmp else ""

    def invites(self) -> int:
        """INVITEs this peer received."""
        return len(re.findall(r"message received[^\n]*\n+\s*INVITE ", self.messages))

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()  # our own child, by PID
            await self._proc.wait()
        if self.receiver is not None:
            self.receiver.close()
        if self._tmp is not None:
            self._tmp.cleanup()


class Agent(_SippPeer):
    """A SIP agent (sipp UAS) listening on 127.0.0.1 for as long as the ``async with`` lasts.

    ``receiver`` holds the RTP that reached the agent when it answers (status 200)."""

    def __init__(self, status: int, ring_ms: int = 0, hangup_after_ms: int | None = None,
                 audio: Path | None = None):
        self.audio = audio
        self.status = status
        self.ring_ms = ring_ms
        self.hangup_after_ms = hangup_after_ms
        self.port = free_port()
        self.receiver: RtpReceiver | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None



    async def __aenter__(self) -> Agent:
        self.receiver = await RtpReceiver.open()
        self._tmp = tempfile.TemporaryDirectory(prefix="ari-bridge-agent-")
        workdir = Path(self._tmp.name)
        (workdir / "agent.xml").write_text(
            uas_scenario(self.status, self.receiver.port, self.ring_ms, self.hangup_after_ms,
                         self.audio))
        self._proc, self.port = await _start_listening(
            "sipp agent", "127.0.0.1", self.port, workdir, lambda port, media: [
                sipp_binary(), "-sf", "agent.xml", "-i", "127.0.0.1", "-p", str(port),
                "-mp", str(media), "-nostdin", "-trace_msg", "-message_file", "messages.log",
            ])
        return self


class Device(_SippPeer):
    """An agent's SIP phone (sipp): registers ``name`` with its password to Asterisk, then
    answers INVITEs like :class:`Agent` (``status``, ``ring_ms``, ...) for as long as the
    ``async with`` lasts; ``receiver`` holds the RTP that reached it.

    It sends from ``address``, a loopback address other than 127.0.0.1: requests from the
    trunk's addresses (pjsip.conf ``[trunk-in-identify]``) are the trunk's, never a device's.
    """

    def __init__(self, registrar: tuple[str, int], name: str, password: str,
                 status: int = 200, ring_ms: int = 0, hangup_after_ms: int | None = None,
                 audio: Path | None = None, address: str = "127.0.0.2",
                 expires_s: int = 600) -> None:
        self.registrar = registrar
        self.name = name
        self.address = address
        self.scenario = register_scenario(name, password, expires_s)
        self.status = status
        self.ring_ms = ring_ms
        self.hangup_after_ms = hangup_after_ms
        self.audio = audio
        self.port = free_port(host=address)
        self.receiver: RtpReceiver | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None


    def register_statuses(self) -> list[int]:
        """Final statuses Asterisk answered this device's REGISTERs with, in order."""
        return [int(code) for code in re.findall(
            r"message received[^\n]*\n+\s*SIP/2\.0 (\d{3})[^\n]*\n(?:[^\n]+\n)*?"
            r"\s*CSeq: *\d+ REGISTER", self.messages)]


    @property
    def exited(self) -> bool:
        """sipp has stopped (a refused registration ends it)."""
        return self._proc is not None and self._proc.returncode is not None

    async def wait_registration(self, timeout_s: float = 10.0) -> int:
        """The status that ended the registration: 200, or the refusal after the credentials
        were sent (401/403). Polls sipp's message log until then (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            statuses = self.register_statuses()
            if 200 in statuses:
                return 200
            if len(statuses) >= 2:  # the challenge, then the answer to the credentials
                return statuses[1]
            await asyncio.sleep(0.05)
        raise RuntimeError(f"device {self.name}: no answer to REGISTER in {timeout_s} s "
                           f"(statuses {self.register_statuses()})")

    async def __aenter__(self) -> Device:
        self.receiver = await RtpReceiver.open(self.address)
        self._tmp = tempfile.TemporaryDirectory(prefix="ari-bridge-device-")
        workdir = Path(self._tmp.name)
        (workdir / "register.xml").write_text(self.scenario)
        (workdir / "answer.xml").write_text(
            uas_scenario(self.status, self.receiver.port, self.ring_ms, self.hangup_after_ms,
                         self.audio))
        host, port = self.registrar
        self._proc, self.port = await _start_listening(
            f"device {self.name}", self.address, self.port, workdir, lambda own, media: [
                sipp_binary(), f"{host}:{port}", "-sf", "register.xml", "-oocsf", "answer.xml",
                "-m", "1", "-i", self.address, "-p", str(own), "-mp", str(media),
                "-nostdin", "-trace_msg", "-message_file", "messages.log",
            ])
        return self

