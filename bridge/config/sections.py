"""The configuration's sections, one pydantic model each, strict (unknown keys are errors) and
frozen; :class:`bridge.config.root.Config` holds them all."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value


#: Names of Asterisk nodes and bridge instances: used in Redis keys, logs and metrics labels.
NODE_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class AriNodeConfig(_Strict):
    """One Asterisk of several (``ari.nodes``): its own address and credentials; every other
    ARI setting is shared (taken from ``ari``)."""

    name: str = Field(pattern=NODE_NAME_PATTERN,
                      description="the node's name in logs and in the call store")
    url: str = Field(description="the node's ARI base URL, http(s)://host:port")
    username: str = Field("ari-bridge", description="the node's ari.conf user")
    password: SecretStr = Field(
        description="prefer the environment: ARI_BRIDGE_ARI__NODES__<NAME>__PASSWORD")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


class AriConfig(_Strict):
    name: str = Field(
        "asterisk", pattern=NODE_NAME_PATTERN,
        description="the name of the single Asterisk node when nodes is empty")
    url: str = "http://127.0.0.1:8088"
    username: str = "ari-bridge"
    password: SecretStr = SecretStr("")
    app: str = "ari-bridge"
    request_timeout_s: float = Field(
        5.0, gt=0, le=60, description="seconds an ARI request may wait for its answer (on the "
        "event websocket, checked every quarter of it: it fails within 1.25 times it)")
    reconnect_min_s: float = Field(
        0.5, gt=0, description="first backoff step after a lost connection (doubles, jittered)")
    reconnect_max_s: float = Field(
        5.0, gt=0, description="cap of the backoff between full reconnect attempts")
    probe_interval_s: float = Field(
        0.5, gt=0, le=10,
        description="while disconnected, how often ARI is probed (GET /asterisk/ping): the "
                    "bridge reconnects as soon as Asterisk answers again, without waiting out "
                    "the backoff")
    ping_interval_s: float = Field(5.0, gt=0, description="how often a live connection is checked")
    rest_transport: Literal["auto", "websocket", "http"] = Field(
        "auto", description="how REST requests reach Asterisk: on the event websocket (Asterisk "
                            "22.5, 21.10, 20.15 and later), over HTTP, or 'auto' (the websocket "
                            "when this Asterisk's version supports it)")
    nodes: list[AriNodeConfig] = Field(
        default_factory=list,
        description="several Asterisk nodes, each connected with the settings above and its "
                    "own name, url, username and password; empty: the one node at url")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, value: list[AriNodeConfig]) -> list[AriNodeConfig]:
        names = [n.name for n in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate node name {dupes[0]!r}")
        return value

    def node_configs(self) -> list[AriConfig]:
        """One ARI configuration per Asterisk node: ``[self]`` without ``nodes``; else each
        node's name, url and credentials over the shared settings."""
        if not self.nodes:
            return [self]
        return [self.model_copy(update={"name": n.name, "url": n.url, "username": n.username,
                                        "password": n.password, "nodes": []})
                for n in self.nodes]


class HttpConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = Field(
        None, description="URL at which Asterisk and webhook receivers reach this server"
    )
    max_body_bytes: int = Field(1 << 20, ge=1024)

    def base_url(self, bound_port: int | None = None) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{bound_port or self.port}"


class WebhookTimeouts(_Strict):
    """Per-application timeouts in milliseconds, within the ranges Vonage allows."""

    connect_ms: int = Field(1000, ge=300, le=1000)
    answer_read_ms: int = Field(5000, ge=1000, le=5000)
    event_read_ms: int = Field(10000, ge=1000, le=10000)


class ApplicationConfig(_Strict):
    id: str
    answer_url: str
    answer_method: Literal["GET", "POST"] = "GET"
    event_url: str | None = None
    event_method: Literal["GET", "POST"] = "POST"
    fallback_answer_url: str | None = None
    timeouts: WebhookTimeouts = WebhookTimeouts()
    signature_secret: SecretStr | None = None
    legacy_input_payload: bool = Field(
        False, description="input events in the 2017 form: top-level dtmf string and timed_out"
    )
    max_ncco_replacements: int = Field(
        25, ge=1, le=1000, description="NCCOs one call may receive from webhooks; stops loops"
    )
    ring_after_ms: int = Field(
        200, ge=0, le=5000,
        description="an inbound call is sent 180 Ringing once its answer_url has not replied "
                    "for this long (0: at once); an application that replies sooner has the "
                    "call answered without it, one ARI request fewer")
    public_key: str | None = Field(
        None, description="PEM public key that verifies this application's REST API tokens"
    )
    public_key_path: Path | None = Field(
        None, description="file holding that PEM public key (instead of public_key)"
    )

    @field_validator("answer_url", "event_url", "fallback_answer_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("answer_method", "event_method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class TrunkConfig(_Strict):
    name: str
    host: str
    port: int = Field(5060, ge=1, le=65535)
    transport: Literal["udp", "tcp", "tls"] = "udp"
    endpoint: str = Field("trunk-out", description="the PJSIP endpoint Asterisk dials through")


class RouteConfig(_Strict):
    prefix: str = Field("", description="longest matching number prefix wins; '' matches all")
    trunk: str


class StoreConfig(_Strict):
    """The call store: live calls and the event outbox."""

    backend: Literal["sqlite", "redis"] = Field(
        "sqlite", description="sqlite: one embedded file; redis: shared by the bridges of a "
                              "cluster")
    path: Path = Field(Path("/var/lib/ari-bridge/calls.sqlite3"),
                       description="SQLite file of the sqlite backend")
    redis_url: str | None = Field(
        None, description="redis://host:port/db (or rediss://) for the redis backend")
    redis_prefix: str = Field("ari-bridge:", description="prefix of every Redis key")
    write_delay_ms: int = Field(
        50, ge=0, le=1000,
        description="sqlite: live-call writes are gathered this long and committed together "
                    "(0: each at once); a crash loses at most this much of the last changes")

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in ("redis", "rediss"):
            raise ValueError(f"must be a redis:// or rediss:// URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _url_for_redis(self) -> StoreConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("store.redis_url: required for store.backend: redis")
        return self


class ClusterConfig(_Strict):
    """Several bridges sharing calls through Redis (see bridge/cluster).

    Calls are spread by slots: the dialplan tries the Stasis applications ``<ari.app>-1`` ..
    ``<ari.app>-<slots>``; each bridge holds one slot (a Redis key renewed every
    ``heartbeat_s``) and a survivor adopts the slot of a bridge silent for ``dead_after_s``.
    """

    enabled: bool = Field(False, description="run as one bridge of a cluster")
    slots: int = Field(4, ge=1, le=64,
                       description="Stasis applications <ari.app>-1 .. <ari.app>-<slots>; at "
                                   "least the number of bridges")
    heartbeat_s: float = Field(1.0, gt=0,
                               description="seconds between renewals of this bridge's slot")
    dead_after_s: float = Field(
        3.0, gt=0, description="seconds without renewal after which a slot is free for a "
                               "survivor (at least 2 * heartbeat_s)")
    instance_id: str | None = Field(
        None, pattern=NODE_NAME_PATTERN,
        description="this bridge's name in the cluster; default: <hostname>-<pid>")

    @model_validator(mode="after")
    def _dead_after_heartbeats(self) -> ClusterConfig:
        if self.dead_after_s < 2 * self.heartbeat_s:
            raise ValueError(f"cluster.dead_after_s ({self.dead_after_s}) must be at least "
                             f"2 * cluster.heartbeat_s ({2 * self.heartbeat_s})")
        return self

    def instance(self) -> str:
        """This bridge's id: ``instance_id``, else ``<hostname>-<pid>``."""
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"


class MediaConfig(_Strict):
    path: Path = Path("/var/lib/ari-bridge/media")
    max_download_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    fetch_timeout_s: float = Field(10.0, gt=0, le=120)
    playback_margin_s: float = Field(
        15.0, gt=0, le=600,
        description="seconds beyond a prompt's own length that Asterisk may take to start "
                    "it, and again to finish it once started, before it counts as stuck")


class RecordingsConfig(_Strict):
    path: Path = Path("/var/lib/ari-bridge/recordings")
    retention_hours: float = Field(
        720.0, gt=0, description="hours a recording is kept before it is deleted"
    )


class EventsConfig(_Strict):
    """Delivery of status events through the durable outbox (see bridge/webhooks/outbox.py).

    An event that cannot be delivered is tried again with exponential backoff and full jitter:
    the n-th wait is a random time between 0 and ``min(retry_cap_s, retry_base_s * 2**(n-1))``
    seconds, for as long as ``retention_hours`` allows after the event was written.
    """

    retention_hours: float = Field(
        24.0, gt=0, description="hours an undelivered event is retried before it is dropped")
    retry_base_s: float = Field(
        0.5, gt=0, description="seconds: upper bound of the first wait after a failed attempt")
    retry_cap_s: float = Field(
        30.0, gt=0, description="seconds: the longest wait between two attempts")
    max_in_flight: int = Field(
        64, gt=0, le=10000, description="events being delivered at the same time (one per "
                                        "call at most: a call's events go out in order)")

    @model_validator(mode="after")
    def _cap_above_base(self) -> EventsConfig:
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError(f"events.retry_cap_s ({self.retry_cap_s}) must not be below "
                             f"events.retry_base_s ({self.retry_base_s})")
        return self

    @property
    def retention_s(self) -> float:
        """The retention in seconds."""
        return self.retention_hours * 3600.0


Codec = Literal["ulaw", "alaw"]
DEFAULT_CODECS: tuple[Codec, ...] = ("ulaw", "alaw")
#: PJSIP object ids and SIP user names: also used in ARI paths and ``sip:<name>`` contacts.
DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"


class DeviceConfig(_Strict):
    """An agent's SIP device (phone, softphone) that registers to Asterisk with digest auth.

    The bridge creates its PJSIP auth, aor and endpoint (all named ``name``) over ARI at start
    and after every reconnect; an applet dials it as ``sip:<name>``.
    """

    name: str = Field(pattern=DEVICE_NAME_PATTERN,
                      description="SIP user name and PJSIP endpoint/aor/auth id")
    password: SecretStr | None = Field(
        None, description="digest password; prefer password_env (never logged)")
    password_env: str | None = Field(
        None, description="environment variable holding the password (read at start)")
    context: str = Field(
        "from-trunk", pattern=r"^[A-Za-z0-9_-]+$",
        description="dialplan context of calls the device places (from-trunk: to the bridge)")
    codecs: list[Codec] = Field(default_factory=lambda: list(DEFAULT_CODECS), min_length=1,
                                description="offered in this order")
    nat: bool = Field(
        True, description="answer the device where its SIP and RTP come from "
                          "(rewrite_contact, rtp_symmetric, force_rport)")
    qualify_frequency_s: int = Field(
        0, ge=0, le=3600,
        description="seconds between OPTIONS checks of the registered contact; 0: none (the "
                    "device counts as on while its registration lasts)")
    transport: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="pjsip.conf transport; default: any")
    _secret: str = PrivateAttr("")

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        environ = _environ(info)
        if not environ.get(value):
            raise ValueError(f"environment variable {value} is not set (or empty)")
        return value

    @model_validator(mode="after")
    def _one_password(self, info: ValidationInfo) -> DeviceConfig:
        if (self.password is None) == (self.password_env is None):
            raise ValueError(f"device {self.name!r}: set exactly one of password and "
                             "password_env")
        # Resolved once, at load (a private attribute: dumping the model never shows it).
        self._secret = (self.password.get_secret_value() if self.password is not None
                        else _environ(info)[self.password_env or ""])
        return self

    def secret(self) -> str:
        """The digest password (from ``password`` or the ``password_env`` variable)."""
        return self._secret


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    context = info.context if isinstance(info.context, dict) else {}
    environ = context.get("environ")
    return environ if isinstance(environ, Mapping) else os.environ


class AgentsConfig(_Strict):
    """Agent state for Exotel Connect applets: busy leases and sticky agents."""

    backend: Literal["sqlite", "redis"] = Field(
        "sqlite", description="sqlite: embedded, no server; redis: shared by several bridges")
    path: Path | None = Field(
        None, description="SQLite file; default: agents.sqlite3 beside store.path")
    redis_url: str | None = Field(None, description="redis://host:port/db for the redis backend")
    redis_prefix: str = "ari-bridge:"
    lease_s: float = Field(
        30.0, ge=1, le=3600,
        description="seconds a busy mark lives unless refreshed (refreshed every lease_s/3 "
                    "while the call lasts; a crashed bridge's marks expire after this)")
    sticky_ttl_s: float = Field(
        7 * 86400.0, gt=0, description="seconds a caller -> agent sticky mapping is kept")
    track_all_calls: bool | Literal["auto"] = Field(
        "auto", description="mark the remote party of every call busy (an agent calling in, or "
                            "called by a REST outbound call, is skipped by applets); auto: "
                            "when something reads the marks (this bridge's connect_applets, "
                            "or agent state shared through redis or an explicit path)")
    caller_ids: list[str] = Field(
        default_factory=list,
        description="operator numbers an applet may use as outgoing_phone_number, besides "
                    "the inbound numbers configured in numbers and connect_applets")
    devices: list[DeviceConfig] = Field(
        default_factory=list,
        description="agents' SIP devices the bridge provisions in Asterisk (dialled as "
                    "sip:<name>; see docs/exotel-connect.md)")

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"must be a redis:// URL, got {value!r}")
        return value

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, value: list[DeviceConfig]) -> list[DeviceConfig]:
        names = [d.name for d in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate device name {dupes[0]!r}")
        return value


class AppletTransition(_Strict):
    """Where an applet goes next: an inline NCCO, an NCCO fetched from ``url`` (GET with the
    applet's query parameters), or, with neither, hang up."""

    ncco: list[dict[str, Any]] | None = None
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)


class ConnectAppletConfig(_Strict):
    """An Exotel Connect applet on one inbound number (see docs/exotel-connect.md)."""

    application: str = Field(description="application whose event_url, timeouts and signing "
                                         "the call and its transition NCCOs use")
    primary_url: str
    fallback_url: str | None = None
    dialect: Literal["1.1", "dial_whom"] = Field(
        "1.1", description="1.1: JSON parameters; dial_whom: text/plain comma-separated numbers")
    fetch_after_attempt: bool = Field(
        True, description="dial_whom only: ask the URL again after every unanswered attempt "
                          "(1.1 responses say it themselves)")
    request_timeout_s: float | None = Field(
        None, gt=0, le=30, description="seconds the URL may take; default 5 (1.1), 10 (dial_whom)")
    ring_timeout_s: int = Field(
        30, ge=1, le=60, description="ringing seconds per attempt when the response sets none")
    after_conversation: AppletTransition = AppletTransition()
    nobody_answered: AppletTransition = AppletTransition()
    nobody_dialled: AppletTransition | None = Field(
        None, description="unset: nobody_answered is used, as Exotel does")

    @field_validator("primary_url", "fallback_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @property
    def timeout_s(self) -> float:
        if self.request_timeout_s is not None:
            return self.request_timeout_s
        return 5.0 if self.dialect == "1.1" else 10.0


class ServiceConfig(_Strict):
    drain_timeout_s: float = Field(
        10.0, gt=0, le=600,
        description="on SIGTERM, how long (seconds) pending events may take to be delivered "
                    "before the process exits anyway")
    uvloop: bool = Field(
        True, description="run on uvloop's event loop when it is installed (less CPU per "
                          "event and request); false: asyncio's own loop")


class ConsoleConfig(_Strict):
    """The operator console at ``/console`` and its JSON under ``/v1/console`` (off unless
    enabled; see bridge/console). Either ``token`` or ``users`` must be set to enable it."""

    enabled: bool = False
    token: SecretStr | None = Field(
        None, description="bearer token (header, or ?token= in the page's URL); prefer the "
                          "environment: ARI_BRIDGE_CONSOLE__TOKEN")
    users: dict[str, SecretStr] = Field(
        default_factory=dict, description="basic-auth users: name -> password")
    max_entries_per_call: int = Field(500, ge=10, le=100_000,
                                      description="timeline entries kept per call (oldest go)")
    max_live_calls: int = Field(5000, ge=1, description="live calls followed at once")
    keep_ended: int = Field(200, ge=0, le=100_000, description="ended calls kept")
    keep_ended_minutes: float = Field(30.0, gt=0, description="minutes an ended call is kept")
    update_interval_s: float = Field(
        0.5, ge=0.05, le=10, description="how often the page receives what changed")

    @model_validator(mode="after")
    def _credentials(self) -> ConsoleConfig:
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError("console.token: must be at least 16 characters")
        if any(not p.get_secret_value() for p in self.users.values()):
            raise ValueError("console.users: a password must not be empty")
        if self.enabled and self.token is None and not self.users:
            raise ValueError("console.enabled needs console.token or console.users")
        return self


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_output: bool = Field(False, alias="json")
