"""One validated configuration: a YAML file plus environment overrides.

Environment variables named ``ARI_BRIDGE_<SECTION>__<KEY>`` override the file, for example
``ARI_BRIDGE_ARI__PASSWORD``; secrets belong there rather than in the file. Names are not
case-sensitive and ``__`` goes one level down, as in pydantic-settings. A list item is addressed
by its id (``id``, else ``name``) spelled as :func:`env_segment` does, so the application
``my-app`` is ``ARI_BRIDGE_APPLICATIONS__MY_APP__SIGNATURE_SECRET``; a list without ids (routes)
by position. A setting that is a list, mapping or section may also be given whole, as JSON.
Every error names the key (or variable) that is wrong, so a bad configuration fails at start and
never in the middle of a call.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

ENV_PREFIX = "ARI_BRIDGE_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value


class AriConfig(_Strict):
    url: str = "http://127.0.0.1:8088"
    username: str = "ari-bridge"
    password: SecretStr = SecretStr("")
    app: str = "ari-bridge"
    request_timeout_s: float = Field(5.0, gt=0, le=60)
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

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


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
    path: Path = Path("/var/lib/ari-bridge/calls.sqlite3")


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
    track_all_calls: bool = Field(
        True, description="mark the remote party of every call busy (an agent calling in, or "
                          "called by a REST outbound call, is skipped by applets)")
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


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_output: bool = Field(False, alias="json")


class Config(_Strict):
    ari: AriConfig = AriConfig()
    http: HttpConfig = HttpConfig()
    store: StoreConfig = StoreConfig()
    media: MediaConfig = MediaConfig()
    recordings: RecordingsConfig = RecordingsConfig()
    events: EventsConfig = EventsConfig()
    log: LogConfig = LogConfig()
    service: ServiceConfig = ServiceConfig()
    applications: list[ApplicationConfig] = []
    numbers: dict[str, str] = Field(
        default_factory=dict, description="inbound number -> application id; '*' is the default"
    )
    trunks: list[TrunkConfig] = []
    routes: list[RouteConfig] = []
    agents: AgentsConfig = AgentsConfig()
    connect_applets: dict[str, ConnectAppletConfig] = Field(
        default_factory=dict, description="inbound number -> Exotel Connect applet")

    def model_post_init(self, __context: Any) -> None:
        ids = [a.id for a in self.applications]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"applications: duplicate id {sorted(dupes)[0]!r}")
        for number, app_id in self.numbers.items():
            if app_id not in ids:
                raise ValueError(f"numbers.{number}: unknown application {app_id!r}")
        trunk_names = {t.name for t in self.trunks}
        for i, route in enumerate(self.routes):
            if route.trunk not in trunk_names:
                raise ValueError(f"routes.{i}.trunk: unknown trunk {route.trunk!r}")
        for number, applet in self.connect_applets.items():
            if applet.application not in ids:
                raise ValueError(f"connect_applets.{number}.application: unknown application "
                                 f"{applet.application!r}")

    def application(self, app_id: str) -> ApplicationConfig | None:
        return next((a for a in self.applications if a.id == app_id), None)

    def numbers_of(self, app_id: str) -> list[str]:
        """The inbound numbers assigned to an application (its randomFromNumber pool)."""
        return [n for n, a in self.numbers.items() if a == app_id and n != "*"]

    def application_for_number(self, number: str) -> ApplicationConfig | None:
        """The application an inbound call to ``number`` runs: exact match, then '*'."""
        candidates = [number, number.lstrip("+"), "+" + number.lstrip("+"), "*"]
        for key in candidates:
            if key in self.numbers:
                return self.application(self.numbers[key])
        return None

    def applet_for_number(self, number: str) -> ConnectAppletConfig | None:
        """The Exotel Connect applet on inbound number ``number`` (exact, with or without +)."""
        for key in (number, number.lstrip("+"), "+" + number.lstrip("+")):
            if key in self.connect_applets:
                return self.connect_applets[key]
        return None

    def agents_path(self) -> Path:
        return self.agents.path or self.store.path.with_name("agents.sqlite3")

    def route_for(self, number: str) -> TrunkConfig | None:
        """The trunk for ``number`` by longest matching prefix."""
        digits = number.lstrip("+")
        best: RouteConfig | None = None
        for route in self.routes:
            if digits.startswith(route.prefix.lstrip("+")) and (
                best is None or len(route.prefix) > len(best.prefix)
            ):
                best = route
        if best is None:
            return None
        return next(t for t in self.trunks if t.name == best.trunk)


def env_segment(key: str) -> str:
    """How a list item's id or a mapping key is spelled inside an environment variable name:
    upper case, every character other than a letter or a digit as ``_`` (``my-app`` ->
    ``MY_APP``, ``+4420`` -> ``_4420``)."""
    return re.sub(r"[^A-Z0-9]", "_", key.upper())


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _model_field(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _item_key(item: Any) -> str | None:
    """The field that names a list item (``id``, else ``name``), if its type has one."""
    item = _unwrap(item)
    if isinstance(item, type) and issubclass(item, BaseModel):
        return next((k for k in ("id", "name") if k in item.model_fields), None)
    return None


def _is_structured(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    return get_origin(annotation) in (list, dict) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel | list | dict))


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    """``ARI_BRIDGE_A__B__C=v`` -> ``{"A": {"B": {"C": ("ARI_BRIDGE_A__B__C", "v")}}}``.

    Names are not case-sensitive: field names are matched in lower case, list ids and mapping
    keys by :func:`env_segment`."""
    tree: dict[str, Any] = {}
    for name, value in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [part for part in name[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        if len(path) == 1 and path[0].lower() not in Config.model_fields:
            continue  # ARI_BRIDGE_CONFIG and the like: not a setting, never was
        node = tree
        for depth, part in enumerate(part.upper() for part in path):
            child = node.get(part)
            if isinstance(child, tuple) or (child is not None and depth == len(path) - 1):
                # ARI_BRIDGE_AGENTS (whole, as JSON) and ARI_BRIDGE_AGENTS__LEASE_S, or two
                # spellings of one name: which wins would be a guess.
                raise ConfigError(f"{_a_name(child)} and {name} both set the same setting; "
                                  "keep one")
            if depth == len(path) - 1:
                node[part] = (name, value)
            else:
                node = node.setdefault(part, {})
    return tree


def _a_name(node: Any) -> str:
    """A variable name inside an ``_env_tree`` node."""
    while isinstance(node, dict):
        node = next(iter(node.values()))
    return str(node[0])


def _decode(name: str, value: str, annotation: Any) -> Any:
    # As pydantic-settings does: a list, mapping or section given whole is JSON.
    if not _is_structured(annotation):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ConfigError(f"{name}: must be JSON for this setting") from None


def _overlay(base: Any, env: Any, annotation: Any, trail: str) -> Any:
    """``base`` (from the file) with the environment's values in ``env`` laid over it.

    ``annotation`` is the type of the setting at this place; ``trail`` the variable name so
    far, for errors."""
    if isinstance(env, tuple):  # a leaf: (variable name, value)
        return _decode(env[0], env[1], annotation)
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out = dict(base) if isinstance(base, dict) else {}
        for part, sub in env.items():
            key = part.lower()
            field = _model_field(annotation, key)
            # An unknown key stays in: validation then rejects it by name, as in the file.
            out[key] = _overlay(out.get(key), sub, field.annotation if field else Any,
                                f"{trail}__{part}" if trail else ENV_PREFIX + part)
        return out
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        return _overlay_items(base, env, item, trail)
    if origin is dict:
        value_type = get_args(annotation)[1] if get_args(annotation) else Any
        out = dict(base) if isinstance(base, dict) else {}
        for part, sub in env.items():
            key = next((k for k in out if env_segment(str(k)) == env_segment(part)),
                       part.lower())
            out[key] = _overlay(out.get(key), sub, value_type, f"{trail}__{part}")
        return out
    # Untyped: nested mappings as they come (lower-case keys), as before.
    out = dict(base) if isinstance(base, dict) else {}
    for part, sub in env.items():
        out[part.lower()] = _overlay(out.get(part.lower()), sub, Any, f"{trail}__{part}")
    return out


def _overlay_items(base: Any, env: dict[str, Any], item: Any, trail: str) -> list[Any]:
    """List items are addressed by their id (``id``, else ``name``), else by position."""
    items = list(base) if isinstance(base, list) else []
    key = _item_key(item)
    for part, sub in env.items():
        here = f"{trail}__{part}"
        matches = [i for i, it in enumerate(items) if key is not None and isinstance(it, dict)
                   and env_segment(str(it.get(key, ""))) == env_segment(part)]
        if len(matches) > 1:
            names = ", ".join(repr(items[i][key]) for i in matches)
            raise ConfigError(f"{here}: ambiguous, matches {names}; give them ids that differ "
                              "by more than dashes, dots or case")
        if matches:
            index = matches[0]
        elif part.isdigit() and int(part) < len(items):
            index = int(part)
        else:
            known = ", ".join(repr(it.get(key)) for it in items
                              if key is not None and isinstance(it, dict)) or "none"
            what = f"no item with {key} {part!r}" if key else f"no item {part}"
            raise ConfigError(f"{here}: {what} in the configuration (have: {known})")
        items[index] = _overlay(items[index], sub, item, here)
    return items


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Lay ``ARI_BRIDGE_*`` variables over the file's data (see the README's rules)."""
    tree = _env_tree(environ)
    if not tree:
        return data
    merged = _overlay(data, tree, Config, "")
    assert isinstance(merged, dict)
    return merged


def _format_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"{loc}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read ``path`` (YAML), apply ``ARI_BRIDGE_*`` variables, then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            # Bytes: the YAML reader detects the encoding and reports bad bytes as YAML errors.
            loaded = yaml.safe_load(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    environ = os.environ if environ is None else environ
    data = _apply_env(data, environ)
    if overrides:
        data = _merge(data, dict(overrides))
    try:
        # The environment also resolves agents.devices[].password_env.
        return Config.model_validate(data, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
