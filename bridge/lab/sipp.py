"""Real SIP callers for the lab, the demo, the tests and the benchmarks: sipp, driven from Python.

A caller is a sipp UAC scenario built here (so each test says what its caller does: wait, press
keys, hang up after a while). Its SDP advertises a media port owned by an ``RtpReceiver`` in
this process, so what reached the caller can be measured: packets, duration, loudness.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from bridge.lab.ports import free_media_port, free_port

PCAP_DIR = Path("/usr/share/sip-tester")
_DTMF_FILES = {"*": "star", "#": "pound"}


# ------------------------------------------------------------------------- scenario steps
@dataclass(frozen=True)
class Pause:
    ms: int


@dataclass(frozen=True)
class Dtmf:
    """Send one key as RFC 4733 events (sipp plays its bundled pcap)."""

    digit: str


@dataclass(frozen=True)
class HangUp:
    """The caller sends BYE."""


@dataclass(frozen=True)
class Audio:
    """Send the RTP in a pcap file (see bridge.lab.pcap); sipp plays it in the background."""

    pcap: Path


Step = Pause | Dtmf | HangUp | Audio

#: The audio offer/answer of our callers and agents: PCMU plus RFC 4733 events, media sent to
#: the test's RTP receiver on {rtp_port}. Formatted into the scenarios below with ``user``.
_SDP = """      v=0
      o={user} 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio {rtp_port} RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16
      a=sendrecv
"""


_INVITE = """
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
"""

_ACK = """
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""

_BYE = """
  <send retrans="500">
    <![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" crlf="true"/>
"""

_WAIT_BYE = """
  <recv request="BYE" timeout="{timeout_ms}"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Content-Length: 0
    ]]>
  </send>
"""


def uac_scenario(
    caller: str,
    rtp_port: int,
    steps: list[Step] | None = None,
    expect_status: int = 200,
    wait_bye_ms: int = 120_000,
) -> str:
    """A caller scenario: INVITE, then either the expected final status (a failure code: the
    scenario ends there) or 200 + ACK, the ``steps``, and a wait for the far end's BYE unless
    a step hangs up first."""
    caller = escape(caller)
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>', '<scenario name="caller">']
    sdp = _SDP.format(user="caller", rtp_port=rtp_port)
    parts.append(_INVITE.format(caller=caller, sdp=sdp))
    if expect_status != 200:
        parts.append(f'  <recv response="{expect_status}"/>')
        parts.append(_ACK.format(caller=caller).replace("[peer_tag_param]", "[peer_tag_param]"))
        parts.append("</scenario>")
        return "\n".join(parts)
    parts.append('  <recv response="200" rtd="true"/>')
    parts.append(_ACK.format(caller=caller))
    hung_up = False
    for step in steps or []:
        if isinstance(step, Pause):
            parts.append(f'  <pause milliseconds="{step.ms}"/>')
        elif isinstance(step, Dtmf):
            name = _DTMF_FILES.get(step.digit, step.digit)
            pcap = PCAP_DIR / f"dtmf_2833_{name}.pcap"
            parts.append(
                f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>'
            )
        elif isinstance(step, Audio):
            parts.append(
                f'  <nop><action><exec play_pcap_audio="{step.pcap}"/></action></nop>'
            )
        elif isinstance(step, HangUp):
            parts.append(_BYE.format(caller=caller))
            hung_up = True
            break
    if not hung_up:
        parts.append(_WAIT_BYE.format(caller=caller, timeout_ms=wait_bye_ms))
    parts.append("</scenario>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- RTP receiver
_ULAW = []
for _byte in range(256):
    _u = ~_byte & 0xFF
    _t = ((_u & 0x0F) << 3) + 0x84
    _t <<= (_u & 0x70) >> 4
    _ULAW.append((0x84 - _t) if _u & 0x80 else (_t - 0x84))


@dataclass
class RtpPacket:
    arrived: float
    payload_type: int
    seq: int
    payload: bytes


class RtpReceiver(asyncio.DatagramProtocol):
    """Listens where the caller's SDP says media goes; keeps every packet."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> RtpReceiver:
        loop = asyncio.get_running_loop()
        receiver = cls()
        transport, _ = await loop.create_datagram_endpoint(lambda: receiver, local_addr=(host, 0))
        receiver.transport = transport
        receiver.port = int(transport.get_extra_info("sockname")[1])
        return receiver

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        header_len = 12 + 4 * (data[0] & 0x0F)
        self.packets.append(RtpPacket(
            arrived=time.monotonic(),
            payload_type=data[1] & 0x7F,
            seq=int.from_bytes(data[2:4], "big"),
            payload=data[header_len:],
        ))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def audio_packets(self) -> list[RtpPacket]:
        return [p for p in self.packets if p.payload_type == 0]

    def audio_seconds(self) -> float:
        """Seconds of PCMU received (8000 samples per second, one byte per sample)."""
        return sum(len(p.payload) for p in self.audio_packets()) / 8000.0

    def voiced_seconds(self, threshold: float = 500.0) -> float:
        """Seconds of 20 ms frames whose RMS level exceeds ``threshold`` (not silence)."""
        voiced = 0.0
        for packet in self.audio_packets():
            samples = [_ULAW[b] for b in packet.payload]
            if samples:
                rms = math.sqrt(sum(s * s for s in samples) / len(samples))
                if rms > threshold:
                    voiced += len(samples) / 8000.0
        return voiced


# ----------------------------------------------------------------------------- running
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


# ------------------------------------------------------------------------- agents (UAS)
_UAS_REPLY = """
  <send>
    <![CDATA[
      SIP/2.0 {code} {reason}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:agent@[local_ip]:[local_port]>
      Content-Length: 0
    ]]>
  </send>
"""

_UAS_200 = """
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:agent@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}    ]]>
  </send>
  <recv request="ACK" rtd="true" crlf="true"/>
"""

_UAS_BYE = """
  <send retrans="500">
    <![CDATA[
      BYE [$remote_contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: [$inv_to];tag=[pid]SIPpTag01[call_number]
      To: [$inv_from]
      [last_Call-ID:]
      CSeq: 2 BYE
      Contact: <sip:agent@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" crlf="true"/>
"""

_REASONS = {180: "Ringing", 200: "OK", 404: "Not Found", 408: "Request Timeout",
            480: "Temporarily Unavailable", 486: "Busy Here", 487: "Request Terminated",
            500: "Server Internal Error", 503: "Service Unavailable", 603: "Decline"}

_UAS_NEVER_ANSWER = """
  <recv request="CANCEL"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
  <send>
    <![CDATA[
      SIP/2.0 487 Request Terminated
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: [$invite_cseq] INVITE
      Content-Length: 0
    ]]>
  </send>
  <recv request="ACK"/>
"""


def uas_scenario(
    status: int, rtp_port: int = 0, ring_ms: int = 0, hangup_after_ms: int | None = None,
    audio: Path | None = None,
) -> str:
    """An agent: answers every INVITE with ``status`` after ringing ``ring_ms``.

    ``status`` 200 answers (media to ``rtp_port``) and waits for BYE, or hangs up itself after
    ``hangup_after_ms``; 180 rings until the caller cancels; anything else rejects."""
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>', '<scenario name="agent">',
             '  <recv request="INVITE" crlf="true">',
             '    <action>',
             '      <ereg regexp="CSeq: *([0-9]+)" search_in="msg" '
             'assign_to="cseq_all,invite_cseq"/>',
             '      <ereg regexp="[^ ].*" search_in="hdr" header="From:" assign_to="inv_from"/>',
             '      <ereg regexp="[^ ].*" search_in="hdr" header="To:" assign_to="inv_to"/>',
             '      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" '
             'assign_to="contact_all,remote_contact"/>',
             '    </action>',
             '  </recv>']
    if status != 180 and status >= 300 and ring_ms == 0:
        parts.append(_UAS_REPLY.format(code=status, reason=_REASONS.get(status, "Error")))
        parts.append('  <recv request="ACK"/>')
    else:
        parts.append(_UAS_REPLY.format(code=180, reason="Ringing"))
        if status == 180:
            parts.append(_UAS_NEVER_ANSWER)
        else:
            if ring_ms:
                parts.append(f'  <pause milliseconds="{ring_ms}"/>')
            if status == 200:
                parts.append(_UAS_200.format(sdp=_SDP.format(user="agent", rtp_port=rtp_port)))
                if audio is not None:
                    parts.append(
                        f'  <nop><action><exec play_pcap_audio="{audio}"/></action></nop>'
                    )
                if hangup_after_ms is not None:
                    parts.append(f'  <pause milliseconds="{hangup_after_ms}"/>')
                    parts.append(_UAS_BYE)
                else:
                    parts.append(_WAIT_BYE.format(caller="agent", timeout_ms=600_000))
            else:
                parts.append(_UAS_REPLY.format(code=status, reason=_REASONS.get(status, "Err")))
                parts.append('  <recv request="ACK"/>')
    # sipp refuses variables that are set but never read; these are read only sometimes.
    parts.append('  <Reference variables="cseq_all,invite_cseq,inv_from,inv_to,contact_all,'
                 'remote_contact"/>')
    parts.append("</scenario>")
    return "\n".join(parts)


class Agent:
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

    @property
    def messages(self) -> str:
        return _read(Path(self._tmp.name) / "messages.log") if self._tmp else ""

    def invites(self) -> int:
        """INVITEs this agent received."""
        return len(re.findall(r"message received[^\n]*\n+\s*INVITE ", self.messages))

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

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()  # our own child, by PID
            await self._proc.wait()
        if self.receiver is not None:
            self.receiver.close()
        if self._tmp is not None:
            self._tmp.cleanup()


# ------------------------------------------------------------- registered devices (UAS)
_REGISTER = """
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{user}@[remote_ip]:[remote_port]>;tag=[pid]reg[call_number]
      To: <sip:{user}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: {cseq} REGISTER
      Contact: <sip:{user}@[local_ip]:[local_port]>
      Expires: {expires}
      {auth}
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""


def register_scenario(user: str, password: str, expires_s: int = 600,
                      hold_ms: int = 3_600_000) -> str:
    """A device registering ``user``: REGISTER, the 401 challenge, REGISTER with digest
    credentials, 200; then it stays up for ``hold_ms`` (its INVITEs are answered by the
    out-of-call scenario, see :class:`Device`). A refused registration (401/403 again) ends
    the scenario with an error."""
    for value, what in ((user, "user"), (password, "password")):
        if not value or re.search(r"[\s\]\[<>&]", value):
            raise ValueError(f"sipp cannot send this {what} (spaces, brackets, <, >, &)")
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>', '<scenario name="register">',
             _REGISTER.format(user=user, cseq=1, expires=expires_s, auth=""),
             '  <recv response="401" auth="true"/>',
             _REGISTER.format(user=user, cseq=2, expires=expires_s,
                              auth=f"[authentication username={user} password={password}]"),
             '  <recv response="200"/>',
             f'  <pause milliseconds="{hold_ms}"/>',
             "</scenario>"]
    return "\n".join(parts)


class Device:
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

    @property
    def messages(self) -> str:
        return _read(Path(self._tmp.name) / "messages.log") if self._tmp else ""

    def register_statuses(self) -> list[int]:
        """Final statuses Asterisk answered this device's REGISTERs with, in order."""
        return [int(code) for code in re.findall(
            r"message received[^\n]*\n+\s*SIP/2\.0 (\d{3})[^\n]*\n(?:[^\n]+\n)*?"
            r"\s*CSeq: *\d+ REGISTER", self.messages)]

    def invites(self) -> int:
        """INVITEs this device received."""
        return len(re.findall(r"message received[^\n]*\n+\s*INVITE ", self.messages))

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

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()  # our own child, by PID
            await self._proc.wait()
        if self.receiver is not None:
            self.receiver.close()
        if self._tmp is not None:
            self._tmp.cleanup()
