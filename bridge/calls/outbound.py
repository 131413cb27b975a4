"""Outbound calls (REST ``POST /v1/calls``): what to ring, and what to run once answered."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.ncco.models import Action, PhoneEndpoint, SipEndpoint, WebsocketEndpoint


class Draining(Exception):
    """The bridge is shutting down (SIGTERM) and places no new calls."""


@dataclass
class OutboundCall:
    application_id: str
    to: PhoneEndpoint | SipEndpoint | WebsocketEndpoint
    from_number: str
    ncco: list[Action] | None = None  # run this, or else fetch answer_url once answered
    answer_url: str | None = None
    answer_method: str = "GET"
    event_url: str | None = None  # overrides the application's, for this call
    event_method: str = "POST"
    ringing_timer_s: int = 60
    length_timer_s: int = 7200
    machine_detection: str | None = None

    @property
    def to_address(self) -> str:
        """The number or URI as status events name it."""
        if isinstance(self.to, PhoneEndpoint):
            return self.to.number
        return self.to.uri
