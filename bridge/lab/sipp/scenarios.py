"""sipp scenarios, written per test: a caller (UAC) that follows a list of steps, an agent
(UAS) that answers with a given status, and a device that registers with digest auth.

The XML is sipp's; the ``[...]`` fields are filled by sipp itself, the ``{...}`` ones here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

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
