"""Render the shipped ``asterisk-config/`` for one lab instance.

The shipped files stay plain, valid Asterisk configuration. A lab instance
copies them and overrides only a fixed, explicit set of keys (ports, bind
addresses, the ARI password, the Stasis application name, the number of
cluster slots, the RTP range and the per-instance directories); every other
line is copied byte for byte.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "ARI_USERNAME",
    "INSTANCE_DIR_KEYS",
    "Overrides",
    "lab_overrides",
    "parse_conf",
    "render_config",
    "set_option",
]

#: The ARI user defined in ``asterisk-config/ari.conf`` (its section name).
ARI_USERNAME = "ari-bridge"

#: ``asterisk.conf`` [directories] keys that each lab instance gets for itself.
INSTANCE_DIR_KEYS: Mapping[str, str] = {
    "astetcdir": "etc",
    "astrundir": "run",
    "astspooldir": "spool",
    "astlogdir": "log",
    "astdbdir": "db",
    "astcachedir": "cache",
}

#: ``{file name: {section: {key: value}}}``
Overrides = dict[str, dict[str, dict[str, str]]]

_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]")
_OPTION_RE = re.compile(r"^(\s*)([A-Za-z0-9_.+-]+)(\s*=>?\s*)(.*)$")


def _classify(line: str, section: str | None) -> tuple[str | None, str | None]:
    """Return (section after this line, option key on this line or None)."""
    stripped = line.strip()
    if not stripped or stripped.startswith(";"):
        return section, None
    m = _SECTION_RE.match(line)
    if m:
        return m.group(1).strip(), None
    m = _OPTION_RE.match(line)
    if m and section is not None:
        return section, m.group(2)
    return section, None


def set_option(text: str, section: str, key: str, value: str) -> str:
    """Set ``key`` in ``[section]`` of an Asterisk config file's text.

    The first uncommented ``key =``/``key =>`` line in the section is
    rewritten (keeping its operator); when the key is absent it is added
    after the section's last option; when the section is absent it is
    appended to the file. Every other line is left untouched.
    """
    lines = text.splitlines(keepends=True)
    current: str | None = None
    section_last_option: int | None = None
    section_header: int | None = None
    for i, line in enumerate(lines):
        current, found = _classify(line, current)
        if current == section and _SECTION_RE.match(line):
            section_header = i
            continue
        if current == section and found is not None:
            section_last_option = i
            if found == key:
                m = _OPTION_RE.match(line)
                assert m is not None
                newline = "\n" if line.endswith("\n") else ""
                lines[i] = f"{m.group(1)}{key}{m.group(3)}{value}{newline}"
                return "".join(lines)
    new_line = f"{key} = {value}\n"
    if section_header is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f"\n[{section}]\n{new_line}")
        return "".join(lines)
    at = (section_last_option if section_last_option is not None else section_header) + 1
    lines.insert(at, new_line)
    return "".join(lines)


def parse_conf(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse Asterisk config text into ``{section: {key: [values]}}``.

    Good enough for comparing rendered files; template suffixes such as
    ``(!)`` are dropped from section names and trailing ``;`` comments kept.
    """
    result: dict[str, dict[str, list[str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        current, key = _classify(line, current)
        if current is not None:
            result.setdefault(current, {})
        if key is not None and current is not None:
            m = _OPTION_RE.match(line)
            assert m is not None
            result[current].setdefault(key, []).append(m.group(4).strip())
    return result


def lab_overrides(
    *,
    ari_port: int,
    sip_port: int,
    rtp_start: int,
    rtp_end: int,
    ari_password: str,
    app_name: str,
    slots: int = 0,
    bind_address: str = "127.0.0.1",
    instance_dir: str | None = None,
) -> Overrides:
    """The exact keys a lab instance changes in the shipped configuration.

    ``instance_dir`` is the instance directory as seen by Asterisk (inside
    the root filesystem); when given, the per-instance directories of
    :data:`INSTANCE_DIR_KEYS` are pointed below it. ``slots`` > 0 makes the
    dialplan spread calls over the applications ``<app_name>-1`` .. ``-<slots>``.
    """
    if slots < 0:
        raise ValueError(f"slots must be 0 or more, not {slots}")
    overrides: Overrides = {
        "http.conf": {"general": {"bindaddr": bind_address, "bindport": str(ari_port)}},
        "ari.conf": {ARI_USERNAME: {"password_format": "plain", "password": ari_password}},
        "pjsip.conf": {"transport-udp": {"bind": f"{bind_address}:{sip_port}"}},
        "rtp.conf": {"general": {"rtpstart": str(rtp_start), "rtpend": str(rtp_end)}},
        "extensions.conf": {"globals": {"ARI_APP": app_name, "ARI_SLOTS": str(slots)}},
    }
    if instance_dir is not None:
        base = instance_dir.rstrip("/")
        overrides["asterisk.conf"] = {
            "directories": {k: f"{base}/{sub}" for k, sub in INSTANCE_DIR_KEYS.items()}
        }
    return overrides


def render_config(source: Path, dest: Path, overrides: Overrides) -> list[Path]:
    """Copy every ``*.conf`` of ``source`` into ``dest`` applying ``overrides``.

    Files in ``dest`` that are not in ``source`` are removed, so the
    instance sees exactly the shipped set. Returns the written paths.

    Raises FileNotFoundError when ``source`` lacks a file named in
    ``overrides``.
    """
    sources = sorted(p for p in source.iterdir() if p.is_file() and p.suffix == ".conf")
    names = {p.name for p in sources}
    missing = sorted(set(overrides) - names)
    if missing:
        raise FileNotFoundError(f"{source} lacks {', '.join(missing)}")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.is_file() and old.name not in names:
            old.unlink()
    written = []
    for src in sources:
        text = src.read_text()
        for section, keys in overrides.get(src.name, {}).items():
            for key, value in keys.items():
                text = set_option(text, section, key, value)
        target = dest / src.name
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        shutil.copymode(src, tmp)
        if src.name == "ari.conf":
            tmp.chmod(0o600)
        tmp.replace(target)
        written.append(target)
    return written
