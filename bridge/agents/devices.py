"""Agents' SIP devices, provisioned in Asterisk from the bridge's configuration.

For every ``agents.devices`` entry the bridge creates (or updates) three PJSIP objects, all
named after the device, through ARI's dynamic configuration
(``PUT /asterisk/config/dynamic/res_pjsip/{auth,aor,endpoint}/<name>``):

* ``auth``: digest, user name = the device name, the configured password;
* ``aor``: one contact at a time (``max_contacts = 1``, a new registration replaces the old);
* ``endpoint``: G.711, RFC 4733 DTMF, media through Asterisk, calls from the device into
  ``context`` (by default the trunks' path to the bridge).

Asterisk keeps them in its ``memory`` sorcery wizard (asterisk-config/sorcery.conf): nothing is
written to its disk, and they vanish when Asterisk restarts. The bridge therefore provisions
at start and after every ARI (re)connect, which is also when a restarted Asterisk comes back.
A device then registers with its credentials, and an applet dials it as ``sip:<name>`` after
checking that it is registered and not in use.

Passwords never reach a log: Asterisk's answers (which echo every field) are not read, and
errors carry only Asterisk's message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from bridge.ari.errors import AriError, AriUnavailable
from bridge.ari.gateway import AriGateway
from bridge.config import DeviceConfig

log = structlog.get_logger(__name__)

#: ARI's configuration class of PJSIP objects.
CONFIG_CLASS = "res_pjsip"
#: ``auth_type`` values to try in turn: Asterisk 22 before 22.2 knows only ``userpass``.
AUTH_TYPES = ("digest", "userpass")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def auth_fields(device: DeviceConfig, auth_type: str = AUTH_TYPES[0]) -> dict[str, str]:
    return {"auth_type": auth_type, "username": device.name, "password": device.secret()}


def aor_fields(device: DeviceConfig) -> dict[str, str]:
    return {
        # One registered phone per agent; a new registration replaces the old contact.
        "max_contacts": "1",
        "remove_existing": "yes",
        "qualify_frequency": str(device.qualify_frequency_s),
    }


def endpoint_fields(device: DeviceConfig) -> dict[str, str]:
    fields = {
        "auth": device.name,
        "aors": device.name,
        "context": device.context,
        "allow": "!all," + ",".join(device.codecs),
        "dtmf_mode": "rfc4733",
        # Media always through Asterisk: the bridge plays, records and bridges it.
        "direct_media": "no",
        # No mid-call re-INVITE just to tell the phone who it now talks to.
        "send_connected_line": "no",
        # Identified by the user name it registers and calls with, never by address.
        "identify_by": "username",
        "trust_id_inbound": "no",
        "rewrite_contact": _yes(device.nat),
        "rtp_symmetric": _yes(device.nat),
        "force_rport": _yes(device.nat),
    }
    if device.transport:
        fields["transport"] = device.transport
    return fields


@dataclass
class ProvisionReport:
    """What one provisioning pass did."""

    provisioned: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # device name -> reason


class DeviceProvisioner:
    """Creates the configured devices in Asterisk; ``provision()`` runs after every connect."""

    def __init__(self, gateway: AriGateway, devices: Sequence[DeviceConfig]) -> None:
        self.gateway = gateway
        self.devices = list(devices)
        self.passes = 0
        self.last_report: ProvisionReport | None = None
        self._auth_type = AUTH_TYPES[0]
        self._lock = asyncio.Lock()  # two reconnects in a row must not interleave their PUTs

    async def provision(self) -> ProvisionReport:
        """Create or update every device; failures are logged per device, never raised."""
        report = ProvisionReport()
        if not self.devices:
            return report
        async with self._lock:
            for device in self.devices:
                try:
                    await self._provision_one(device)
                except AriUnavailable as exc:
                    # The connection is gone: the next connect provisions everything again.
                    log.warning("devices.provision_interrupted", device=device.name,
                                error=exc.details)
                    report.failed[device.name] = f"Asterisk unavailable: {exc.details}"
                    break
                except AriError as exc:
                    reason = _reason(exc)
                    log.error("devices.provision_failed", device=device.name, reason=reason)
                    report.failed[device.name] = reason
                else:
                    report.provisioned.append(device.name)
            self.passes += 1
            self.last_report = report
        log.info("devices.provisioned", count=len(report.provisioned),
                 failed=sorted(report.failed))
        return report

    async def _provision_one(self, device: DeviceConfig) -> None:
        # The endpoint names its auth and aor: those first.
        await self._put_auth(device)
        await self._put("aor", device.name, aor_fields(device))
        await self._put("endpoint", device.name, endpoint_fields(device))

    async def _put_auth(self, device: DeviceConfig) -> None:
        for auth_type in AUTH_TYPES[AUTH_TYPES.index(self._auth_type):]:
            try:
                await self._put("auth", device.name, auth_fields(device, auth_type))
            except AriError as exc:
                # 400: a field value Asterisk refuses; an older Asterisk 22 lacks "digest".
                if exc.status == 400 and auth_type != AUTH_TYPES[-1]:
                    continue
                raise
            self._auth_type = auth_type
            return

    async def _put(self, object_type: str, object_id: str, fields: dict[str, str]) -> None:
        try:
            await self.gateway.put_dynamic_config(CONFIG_CLASS, object_type, object_id, fields)
        except AriError as exc:
            # Name the object that failed; the message never holds the fields.
            raise type(exc)(exc.method, f"{object_type} {object_id}", exc.status,
                            exc.details) from None


def _reason(exc: AriError) -> str:
    where = f"{exc.path}: " if exc.path else ""
    if exc.status == 403:
        # The config wizard is read-only: the id is taken by an object of pjsip.conf.
        return (f"{where}{exc.details} (an object with this name is defined in pjsip.conf, "
                "or sorcery.conf lacks a writable wizard for it)")
    if exc.status == 404:
        return f"{where}{exc.details} (ARI dynamic configuration unavailable: res_pjsip?)"
    return f"{where}{exc.details} (HTTP {exc.status})"
