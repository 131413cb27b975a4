"""Types and helpers shared by the lab engines."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bridge.lab.render import ARI_USERNAME

#: Environment variable naming the asterisk-config directory to use.
CONFIG_DIR_ENV = "ARI_BRIDGE_ASTERISK_CONFIG"
#: File names inside ``LabOptions.state_dir``.
CREDENTIALS_NAME = "ari.env"
STATE_NAME = "lab.json"
PID_NAME = "asterisk.pid"
LOG_NAME = "asterisk.log"


class LabError(Exception):
    """The lab could not be brought up, inspected or stopped.

    The message is meant for a person: it says what failed and what to do.
    """


@dataclass(frozen=True)
class LabOptions:
    """How to run one local lab Asterisk.

    Two labs run side by side when their ``state_dir`` and ports differ.
    """

    #: Directory for the PID file, ``ari.env`` (credentials), ``lab.json``
    #: (what is running) and the Asterisk log; created when missing.
    state_dir: Path
    #: TCP port of Asterisk's HTTP server (ARI), bound to 127.0.0.1.
    ari_port: int = 8088
    #: UDP port of the PJSIP transport, bound to 127.0.0.1.
    sip_port: int = 5060
    #: First and last UDP port for RTP media (inclusive).
    rtp_start: int = 10000
    rtp_end: int = 10999
    #: Debian suite the root filesystem is built from ("testing" or "sid").
    suite: str = "testing"
    #: Where root filesystems are built once, outside the repository.
    cache_dir: Path = Path("/var/cache/ari-bridge")
    #: Stasis application name written to extensions.conf [globals] ARI_APP.
    app_name: str = "ari-bridge"
    #: Cluster slots written to extensions.conf [globals] ARI_SLOTS: 0 hands calls to
    #: ``app_name``; N > 0 spreads them over ``app_name-1`` .. ``app_name-N``.
    slots: int = 0
    #: "rootfs" (debootstrap tree + chroot) or "docker" (Docker engine).
    engine: str = "rootfs"
    #: asterisk-config source; default: $ARI_BRIDGE_ASTERISK_CONFIG, else
    #: the repository's asterisk-config/ next to the bridge package.
    config_dir: Path | None = None


@dataclass(frozen=True)
class LabInfo:
    """What a running lab serves."""

    #: ARI base URL without the ``/ari`` suffix, e.g. ``http://127.0.0.1:8088``.
    ari_url: str
    ari_username: str
    #: Never shown in ``repr``; read it from :attr:`credentials_file`.
    ari_password: str = field(repr=False)
    #: ``state_dir/ari.env``, mode 0600, ``export ARI_BRIDGE_ARI__*=...`` lines (``source`` it).
    credentials_file: Path
    #: Where SIP (UDP) is served.
    sip_host: str
    sip_port: int
    #: Asterisk's process id on this host (None for the docker engine).
    pid: int | None
    engine: str
    #: e.g. "22.10.1+dfsg+~cs6.17.60671434-1"
    asterisk_version: str
    app_name: str = "ari-bridge"
    #: Cluster slots of the dialplan (``LabOptions.slots``).
    slots: int = 0
    #: Asterisk's stdout/stderr (rootfs engine) or None.
    log_file: Path | None = None
    #: Container id (docker engine) or None.
    container_id: str | None = None


def instance_id(state_dir: Path) -> str:
    """Short stable id of a lab instance, derived from its state directory."""
    digest = hashlib.sha256(str(state_dir.expanduser().resolve()).encode()).hexdigest()
    return digest[:12]


def resolve_config_dir(opts: LabOptions) -> Path:
    """The asterisk-config directory to render, checked to exist."""
    if opts.config_dir is not None:
        candidate = opts.config_dir
    elif os.environ.get(CONFIG_DIR_ENV):
        candidate = Path(os.environ[CONFIG_DIR_ENV])
    else:
        candidate = Path(__file__).resolve().parents[2] / "asterisk-config"
    if not (candidate / "asterisk.conf").is_file():
        raise LabError(
            f"no Asterisk configuration at {candidate}: pass config_dir or set "
            f"{CONFIG_DIR_ENV} to the repository's asterisk-config/ directory"
        )
    return candidate


def read_password(state_dir: Path) -> str | None:
    """The ARI password stored in ``state_dir/ari.env``, if any."""
    path = state_dir / CREDENTIALS_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        # Files written before the lines were exported have no "export ".
        name, _, value = line.removeprefix("export ").partition("=")
        if name.strip() == "ARI_BRIDGE_ARI__PASSWORD":
            words = shlex.split(value)
            return words[0] if words else None
    return None


def password_for(state_dir: Path) -> str:
    """The state directory's ARI password, generated once (URL-safe, 32 chars)."""
    return read_password(state_dir) or secrets.token_urlsafe(24)


def write_credentials(state_dir: Path, *, ari_url: str, password: str, app_name: str) -> Path:
    """Write ``state_dir/ari.env`` (mode 0600) and return its path.

    The lines are shell ``export`` statements, so ``source ari.env; ari-bridge serve`` hands
    the credentials to the bridge (plain assignments would stay in the shell)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / CREDENTIALS_NAME
    values = {
        "ARI_BRIDGE_ARI__URL": ari_url,
        "ARI_BRIDGE_ARI__USERNAME": ARI_USERNAME,
        "ARI_BRIDGE_ARI__PASSWORD": password,
        "ARI_BRIDGE_ARI__APP": app_name,
    }
    text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def save_state(state_dir: Path, info: LabInfo, extra: dict[str, Any]) -> None:
    """Record what runs in ``state_dir/lab.json`` (without the password)."""
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(info).items()}
    data.pop("ari_password", None)
    data.update(extra)
    path = state_dir / STATE_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load_state(state_dir: Path) -> dict[str, Any] | None:
    """Contents of ``state_dir/lab.json`` or None."""
    try:
        data = json.loads((state_dir / STATE_NAME).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def info_from_state(data: dict[str, Any], password: str) -> LabInfo:
    """Rebuild a :class:`LabInfo` from ``lab.json`` contents."""
    log_file = data.get("log_file")
    return LabInfo(
        ari_url=str(data["ari_url"]),
        ari_username=str(data["ari_username"]),
        ari_password=password,
        credentials_file=Path(data["credentials_file"]),
        sip_host=str(data["sip_host"]),
        sip_port=int(data["sip_port"]),
        pid=int(data["pid"]) if data.get("pid") is not None else None,
        engine=str(data["engine"]),
        asterisk_version=str(data["asterisk_version"]),
        app_name=str(data.get("app_name", "ari-bridge")),
        slots=int(data.get("slots", 0)),
        log_file=Path(log_file) if log_file else None,
        container_id=data.get("container_id"),
    )


def check_ports_free(opts: LabOptions, host: str = "127.0.0.1") -> None:
    """Raise LabError when the ARI (TCP) or SIP (UDP) port is already taken."""
    for kind, port, sock_type in (
        ("ARI (TCP)", opts.ari_port, socket.SOCK_STREAM),
        ("SIP (UDP)", opts.sip_port, socket.SOCK_DGRAM),
    ):
        with socket.socket(socket.AF_INET, sock_type) as s:
            if sock_type == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise LabError(
                    f"{kind} port {host}:{port} is already in use ({exc.strerror}): "
                    "choose another port or stop what listens there"
                ) from exc
    if not 0 < opts.rtp_start <= opts.rtp_end < 65536:
        raise LabError(f"bad RTP range {opts.rtp_start}-{opts.rtp_end}")


def ari_get(url: str, username: str, password: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET an ARI URL with basic auth; return (HTTP status, decoded JSON or None)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        return exc.code, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def wait_for_ari(
    ari_url: str,
    password: str,
    *,
    deadline_s: float,
    still_running: Callable[[], bool],
    on_failure: Callable[[str], LabError],
) -> str:
    """Poll ``GET {ari_url}/ari/asterisk/info`` until it answers 200.

    Returns Asterisk's version string. ``deadline_s`` is in seconds. When the
    process dies or the deadline passes, raises ``on_failure(reason)``.
    """
    end = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < end:
        if not still_running():
            raise on_failure("Asterisk exited during start-up")
        status = 0
        body: Any = None
        with contextlib.suppress(OSError):
            status, body = ari_get(f"{ari_url}/ari/asterisk/info", ARI_USERNAME, password)
            last = f"HTTP {status}"
        if status == 200 and isinstance(body, dict):
            return str(body.get("system", {}).get("version", "unknown"))
        time.sleep(0.2)
    raise on_failure(f"ARI at {ari_url} did not answer 200 within {deadline_s:.0f} s ({last})")


def check_same_slots(existing: LabInfo, opts: LabOptions) -> LabInfo:
    """``existing`` when it runs the dialplan ``opts`` asks for; LabError otherwise (the
    dialplan is rendered at start, so a running lab cannot change its slots)."""
    if existing.slots != opts.slots:
        raise LabError(
            f"a lab already runs for {opts.state_dir} with {existing.slots} slot(s), not "
            f"{opts.slots}: take it down first"
        )
    return existing


def tail(path: Path, lines: int = 25) -> str:
    """Last ``lines`` lines of a text file ('' when missing)."""
    try:
        data = path.read_bytes()[-16384:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
