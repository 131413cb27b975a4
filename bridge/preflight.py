"""What ``serve`` checks before it connects, shared with ``check-config``.

Both commands run :func:`run_checks` on a loaded configuration, so a file that passes
``ari-bridge check-config`` also starts: public keys parse, the call store and the agent store
can be opened, the media and recordings directories can be written, ``http.host`` is an address
of this machine, and the NCCOs written into the configuration (Exotel Connect transitions) are
runnable, voices included. Checks never
change anything: a directory that does not exist yet is judged by the nearest one that does
(``serve`` creates the rest).

Warnings are for what cannot stop a start but will hurt calls (a missing media tool, an empty
ARI password). Nothing here contacts Asterisk or Redis.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bridge.config import Config, ConfigError, env_segment

#: External programs the media pipeline runs (text to speech, conversion to 8 kHz WAV).
MEDIA_TOOLS = ("espeak-ng", "sox", "ffmpeg")


@dataclass
class Report:
    """Problems that stop a start (``errors``) and ones that only hurt calls (``warnings``)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def run_checks(config: Config) -> Report:
    report = Report()
    _check_public_keys(config, report)
    if config.store.backend == "sqlite":
        _check_sqlite("store.path", config.store.path, report)
    else:
        _check_redis_url("store.redis_url", config.store.redis_url, report)
    if config.agents.backend == "sqlite":
        key = "agents.path" if config.agents.path else "agents.path (beside store.path)"
        _check_sqlite(key, config.agents_path(), report)
    else:
        _check_redis_url("agents.redis_url", config.agents.redis_url, report)
    _check_http_host(config.http.host, report)
    _check_directory("media.path", config.media.path, report)
    _check_directory("recordings.path", config.recordings.path, report)
    _check_applet_nccos(config, report)
    for tool in MEDIA_TOOLS:
        if shutil.which(tool) is None:
            report.warnings.append(f"{tool} is not installed (or not on PATH): calls that "
                                   "speak or play media will fail")
    if not config.ari.nodes and not config.ari.password.get_secret_value():
        report.warnings.append("ari.password is empty: set ARI_BRIDGE_ARI__PASSWORD, or "
                               "Asterisk will refuse the connection")
    for node in config.ari.nodes:
        if not node.password.get_secret_value():
            variable = f"ARI_BRIDGE_ARI__NODES__{env_segment(node.name)}__PASSWORD"
            report.warnings.append(f"ari.nodes.{node.name}.password is empty: set {variable}, "
                                   "or that Asterisk will refuse the connection")
    return report


def describe_stores(config: Config) -> list[dict[str, str]]:
    """One entry per store in use, for the start-up log and ``check-config``; never a
    password."""
    if config.store.backend == "redis":
        calls = {"store": "calls", "backend": "redis",
                 "url": redact_url(config.store.redis_url or ""),
                 "prefix": config.store.redis_prefix}
    else:
        calls = {"store": "calls", "backend": "sqlite", "path": str(config.store.path)}
    if config.agents.backend == "redis":
        agents = {"store": "agents", "backend": "redis",
                  "url": redact_url(config.agents.redis_url or ""),
                  "prefix": config.agents.redis_prefix}
    else:
        agents = {"store": "agents", "backend": "sqlite", "path": str(config.agents_path())}
    return [calls, agents]


def redact_url(url: str) -> str:
    """``url`` with any password (in the user part or a ``password`` query parameter)
    replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostport}"
    query = urlencode([(k, "***" if k.lower() == "password" else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                      safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# --------------------------------------------------------------------------- checks
def _check_public_keys(config: Config, report: Report) -> None:
    from bridge.api.auth import load_public_key

    for app in config.applications:
        try:
            load_public_key(app)
        except ConfigError as exc:
            report.errors.append(str(exc))


def _check_sqlite(key: str, path: Path, report: Report) -> None:
    """The database file opens for writing, or can be created; its directory takes the
    journal files SQLite writes beside it."""
    if path.exists():
        if not path.is_file():
            report.errors.append(f"{key}: {path} is not a file")
            return
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=5)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                db.close()
        except sqlite3.Error as exc:
            report.errors.append(f"{key}: cannot open {path} as an SQLite database: {exc}")
            return
    problem = _writable(path.parent)
    if problem:
        report.errors.append(f"{key}: {problem}")


def _check_redis_url(key: str, url: str | None, report: Report) -> None:
    """The URL a store's connection pool is built from at start (parsed, not connected:
    Redis may come up after the bridge)."""
    if not url:
        report.errors.append(f"{key}: required for the redis backend")
        return
    import redis.asyncio as aioredis

    try:
        aioredis.BlockingConnectionPool.from_url(url)
    except ValueError as exc:
        report.errors.append(f"{key}: {redact_url(url)}: {exc}")


def _check_http_host(host: str, report: Report) -> None:
    """``http.host`` is an IPv4 address (or name) of this machine, bound as ``serve`` binds it
    but on port 0, so a bridge already running on the configured port is no obstacle."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError as exc:
        report.errors.append(f"http.host: cannot listen on {host!r}: {exc.strerror or exc}")


def _check_directory(key: str, path: Path, report: Report) -> None:
    if path.exists() and not path.is_dir():
        report.errors.append(f"{key}: {path} is not a directory")
        return
    problem = _writable(path)
    if problem:
        report.errors.append(f"{key}: {problem}")


def _writable(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` (or in the directories ``serve`` would
    create down to it), or None. Tried with a temporary file, so permissions, ACLs and
    read-only mounts all count."""
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".ari-bridge-check-"):
            pass
    except OSError as exc:
        how = "cannot create files in" if existing == directory else "cannot create"
        target = existing if existing == directory else directory
        return f"{how} {target}: {exc.strerror or exc} (as uid {os.geteuid()})"
    return None


def _check_applet_nccos(config: Config, report: Report) -> None:
    """Transitions are NCCOs like any other; a bad one would otherwise fail mid-call."""
    from bridge.ncco.actions import check as check_runnable
    from bridge.ncco.models import NccoError, parse_ncco

    for number, applet in config.connect_applets.items():
        transitions: dict[str, Any] = {
            "after_conversation": applet.after_conversation,
            "nobody_answered": applet.nobody_answered,
            "nobody_dialled": applet.nobody_dialled,
        }
        for name, transition in transitions.items():
            if transition is None or transition.ncco is None:
                continue
            try:
                check_runnable(parse_ncco(transition.ncco))
            except NccoError as exc:
                report.errors.append(f"connect_applets.{number}.{name}.ncco: {exc}")
