"""packaging/systemd: the unit verifies with systemd-analyze and agrees with the bridge's own
defaults (paths, user, drain time)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bridge.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "packaging" / "systemd"
UNIT = SYSTEMD / "ari-bridge.service"
#: The issue's drain bound when the configuration has no setting for it.
DEFAULT_DRAIN_TIMEOUT_S = 10.0


def _unit() -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat), comments and blank lines dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, line
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(section: str, key: str) -> str:
    values = _unit()[section][key]
    assert len(values) == 1, (key, values)
    return values[0]


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60}
    for suffix, factor in units.items():
        if value.endswith(suffix) and value[: -len(suffix)].isdigit():
            return int(value[: -len(suffix)]) * factor
    return float(value)


def _drain_timeout_default(model: type[Any] = Config) -> float | None:
    """The default of ``drain_timeout_s`` wherever the configuration defines it."""
    for name, field in model.model_fields.items():
        if name == "drain_timeout_s" and isinstance(field.default, int | float):
            return float(field.default)
        if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            found = _drain_timeout_default(field.annotation)
            if found is not None:
                return found
    return None


def test_the_unit_runs_serve_as_its_own_user_with_an_environment_file() -> None:
    assert _one("Service", "User") == "ari-bridge"
    assert _one("Service", "Group") == "ari-bridge"
    assert _one("Service", "EnvironmentFile") == "/etc/ari-bridge/ari-bridge.env"
    exec_start = _one("Service", "ExecStart").split()
    assert Path(exec_start[0]).name == "ari-bridge"
    assert exec_start[1:] == ["serve", "--config", "/etc/ari-bridge/config.yaml"]
    sysusers = (SYSTEMD / "ari-bridge.sysusers").read_text().split("\n")
    entry = next(line.split() for line in sysusers if line.startswith("u "))
    assert entry[1] == "ari-bridge" and entry[-1] == "/var/lib/ari-bridge"


def test_the_state_directories_hold_the_default_paths() -> None:
    state = Path("/var/lib")
    dirs = [state / d for d in _one("Service", "StateDirectory").split()]
    defaults = Config()
    for path in (defaults.store.path.parent, defaults.agents_path().parent,
                 defaults.media.path, defaults.recordings.path):
        assert path in dirs, path
    # ProtectSystem=strict: nothing else is writable, so every default must be in there.
    assert _one("Service", "ProtectSystem") == "strict"


def test_stop_and_restart_leave_the_drain_its_time() -> None:
    assert _one("Service", "KillSignal") == "SIGTERM"
    assert _one("Service", "KillMode") == "mixed"
    drain_s = _drain_timeout_default() or DEFAULT_DRAIN_TIMEOUT_S
    assert _seconds(_one("Service", "TimeoutStopSec")) > drain_s + 5
    assert _one("Service", "Restart") == "on-failure"
    # A configuration error (exit 2) is not retried in a loop.
    assert _one("Service", "RestartPreventExitStatus") == "2"


def test_the_example_environment_file_is_valid(tmp_path: Path) -> None:
    environ = {}
    for line in (SYSTEMD / "ari-bridge.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert not line.startswith("export "), "systemd does not read 'export'"
            name, _, value = line.partition("=")
            environ[name] = value
    assert environ, "the example sets at least the ARI password"
    config = load_config(None, environ=environ)
    assert config.ari.password.get_secret_value() == environ["ARI_BRIDGE_ARI__PASSWORD"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # systemd-analyze comes with ./run's packages (systemd), like every other test tool.
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: apt-get install systemd"
    # verify insists that ExecStart exists: point it at this environment's ari-bridge.
    script = Path(sys.executable).with_name("ari-bridge")
    assert script.is_file()
    unit = tmp_path / "ari-bridge.service"
    unit.write_text(UNIT.read_text().replace("/opt/ari-bridge/bin/ari-bridge", str(script)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # Unknown keys are only warned about: any output is a problem in the unit.
    assert result.stderr.strip() == "" and result.stdout.strip() == ""
