"""Whom the applet may dial: each destination becomes a dialable agent or a skip reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridge.agents.leases import HeldAgents
from bridge.agents.store import agent_key
from bridge.ari.errors import AriError
from bridge.dial.dialer import NoRoute
from bridge.exotel.params import AppletParams, contact_kind
from bridge.ncco.context import CallServices

INVALID_FORMAT = "invalid format"
#: agent_skipped reasons -> the AGENTS_SKIPPED label (a small fixed set: the reason text
#: can carry details, such as Asterisk's answer, that must not become label values).
_SKIP_LABELS = {
    "busy": "busy",
    INVALID_FORMAT: "invalid",
    "no outbound route": "no_route",
    "no such device": "no_such_device",
    "device off (not registered)": "device_offline",
    "device in use": "device_in_use",
}


def skip_label(reason: str) -> str:
    """The ``reason`` label of the agents-skipped metric for an agent_skipped reason."""
    if reason.startswith("device state unknown"):
        return "device_state_unknown"
    return _SKIP_LABELS.get(reason, "other")


@dataclass
class Candidate:
    contact: str
    key: str
    kind: Literal["phone", "sip"]
    endpoint: str


async def find_candidate(contact: str, params: AppletParams, services: CallServices,
                         held: HeldAgents) -> Candidate | str:
    """A dialable agent (leased or held in ``held``), or the reason it is skipped."""
    kind = contact_kind(contact)
    if kind is None:
        return INVALID_FORMAT
    key = agent_key(contact)
    dialer = services.dialer
    if kind == "phone":
        try:
            endpoint = dialer.phone_endpoint(contact)
        except NoRoute:
            return "no outbound route"
    elif "@" in contact:
        endpoint = dialer.sip_endpoint(contact)
    else:
        # A device registered to this Asterisk: sip:<endpoint name>.
        name = contact[4:]
        try:
            state = await services.gateway.endpoint_state("PJSIP", name)
        except AriError as exc:
            return f"device state unknown ({exc.details})"
        if state is None:
            return "no such device"
        if str(state.get("state", "")).lower() != "online":
            return "device off (not registered)"
        if state.get("channel_ids"):
            return "device in use"
        endpoint = f"PJSIP/{name}"
    # SIP URIs are always state-managed, as on Exotel.
    managed = params.state_management or kind == "sip"
    if managed:
        if not await held.acquire(key):
            return "busy"
    else:
        await held.hold(key)
    return Candidate(contact, key, kind, endpoint)
