"""The ari-bridge command as operators run it: a real process, its exit code and its output."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parents[2]
# The console script the package installs, beside this interpreter (``python -m`` otherwise).
_SCRIPT = Path(sys.executable).with_name("ari-bridge")
ARI_BRIDGE = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "bridge.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ARI_BRIDGE, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False, env=_clean_environ() if env is None else env)


def _clean_environ() -> dict[str, str]:
    """This environment without ARI_BRIDGE_* settings, which would change the outcome."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("ARI_BRIDGE_")}


def unreadable_paths(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    yield "missing", tmp_path / "absent.yaml"
    yield "a directory", tmp_path
    if os.geteuid() != 0:  # root reads any file whatever its mode
        locked = tmp_path / "locked.yaml"
        locked.write_text("{}")
        locked.chmod(0)
        yield "no permission", locked


def test_version_is_the_package_version() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ari-bridge {version('ari-bridge')}"


@pytest.mark.parametrize("command", [["validate"], ["check-config", "--config"]])
def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    for what, path in unreadable_paths(tmp_path):
        result = run(*command, str(path))
        assert result.returncode == 2, (what, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (what, result.stderr)
        assert lines[0].startswith(f"ari-bridge: cannot read {path}: "), what
        assert "Traceback" not in result.stderr and result.stdout == ""


# ------------------------------------------------------------------ check-config and serve
def _config(tmp_path: Path, **applications: str) -> Path:
    """A configuration whose state lives under tmp_path and whose ARI is a closed port."""
    state = tmp_path / "state"
    lines = [
        "ari: {url: 'http://127.0.0.1:9', password: not-empty}",
        "http: {host: 127.0.0.1, port: 0}",
        f"store: {{path: '{state}/calls.sqlite3'}}",
        f"media: {{path: '{state}/media'}}",
        f"recordings: {{path: '{state}/recordings'}}",
        "log: {json: true}",
        "applications:",
    ]
    for app_id, key_path in applications.items():
        lines += [f"  - id: {app_id}", "    answer_url: http://127.0.0.1:9/answer",
                  f"    public_key_path: '{key_path}'"]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _public_pem(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_check_config_catches_a_bad_public_key_and_serve_refuses_it_too(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    config = _config(tmp_path, good=str(_public_pem(tmp_path / "good.pem")), shop=str(bad_key))

    checked = run("check-config", "--config", str(config))
    assert checked.returncode == 2, checked.stdout
    assert "error: applications.shop.public_key_path: not a PEM public key" in checked.stderr
    assert "applications.good" not in checked.stderr
    assert "Traceback" not in checked.stderr

    # serve runs the same checks: it stops before it binds or connects.
    served = run("serve", "--config", str(config))
    assert served.returncode == 2
    records = [json.loads(line) for line in served.stderr.splitlines()]
    invalid = [r for r in records if r["event"] == "config.invalid"]
    assert [r["problem"] for r in invalid] == [
        "applications.shop.public_key_path: not a PEM public key"]
    assert not any(r["event"] == "bridge.listening" for r in records)


def test_a_config_that_passes_check_config_starts(tmp_path: Path) -> None:
    config = _config(tmp_path, shop=str(_public_pem(tmp_path / "shop.pem")))
    checked = run("check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("configuration OK: 1 application(s)")
    assert f"store=calls backend=sqlite path={tmp_path}/state/calls.sqlite3" in checked.stdout
    assert f"store=agents backend=sqlite path={tmp_path}/state/agents.sqlite3" in checked.stdout

    env = {**_clean_environ(), "ARI_BRIDGE_AGENTS__BACKEND": "redis",
           "ARI_BRIDGE_AGENTS__REDIS_URL": "redis://:redis-pw-marker@127.0.0.1:9/2"}
    process = subprocess.Popen([*ARI_BRIDGE, "serve", "--config", str(config)], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 90
        # Up to the first failed ARI connection (ARI is a closed port here).
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([process.stderr], [], [], left)[0]:
                break
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if '"ari.disconnected"' in line:
                break
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, rest = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, rest = process.communicate()
    lines += rest.splitlines()
    records = [json.loads(line) for line in lines]  # log.json: every line is JSON
    events = [r["event"] for r in records]
    assert "bridge.listening" in events and "ari.disconnected" in events, events
    starting = next(r for r in records if r["event"] == "bridge.starting")
    assert starting["version"] == version("ari-bridge")
    assert starting["config"] == str(config)
    stores = {r["store"]: r for r in records if r["event"] == "store.opened"}
    assert stores["calls"]["backend"] == "sqlite"
    assert stores["calls"]["path"] == f"{tmp_path}/state/calls.sqlite3"
    assert stores["agents"]["backend"] == "redis"
    assert stores["agents"]["url"] == "redis://:***@127.0.0.1:9/2"
    assert "redis-pw-marker" not in "".join(lines)


# ------------------------------------------------------------------ the lab's ari.env
def test_sourcing_the_lab_credentials_reaches_the_bridge(tmp_path: Path) -> None:
    from bridge.lab._model import read_password, write_credentials

    password = "it's $HOME; `no` \"subshell\""  # quoting must survive the shell
    creds = write_credentials(tmp_path / "lab", ari_url="http://127.0.0.1:18088",
                              password=password, app_name="lab-app")
    assert read_password(tmp_path / "lab") == password
    config = tmp_path / "config.yaml"
    config.write_text(f"store: {{path: '{tmp_path}/calls.sqlite3'}}\n"
                      f"media: {{path: '{tmp_path}/media'}}\n"
                      f"recordings: {{path: '{tmp_path}/recordings'}}\n")
    env = _clean_environ()
    script = 'source "$1" && exec "${@:2}"'  # bash, as in the README
    for shell in (["bash", "-c", script], ["sh", "-c", '. "$1" && shift && exec "$@"']):
        result = subprocess.run(
            [*shell, "sh", str(creds), *ARI_BRIDGE, "check-config", "--config", str(config)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert ("ari: url=http://127.0.0.1:18088 username=ari-bridge app=lab-app password=set"
                in result.stdout), shell
        assert "ari.password is empty" not in result.stderr

    # Without it, check-config says what is missing.
    bare = run("check-config", "--config", str(config), env=env)
    assert "password=EMPTY" in bare.stdout
    assert "warning: ari.password is empty" in bare.stderr


def test_check_config_of_a_cluster_names_each_node_and_the_slots(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "ari:\n  app: pbx\n  nodes:\n"
        "    - {name: east, url: 'http://127.0.0.1:18088', password: ''}\n"
        "    - {name: west, url: 'http://127.0.0.1:18089', password: ''}\n"
        "store: {backend: redis, redis_url: 'redis://127.0.0.1:1/0'}\n"
        "agents: {backend: redis, redis_url: 'redis://127.0.0.1:1/0'}\n"
        "cluster: {enabled: true, slots: 3, instance_id: b1}\n"
        f"media: {{path: '{tmp_path}/media'}}\n"
        f"recordings: {{path: '{tmp_path}/recordings'}}\n")
    env = _clean_environ() | {"ARI_BRIDGE_ARI__NODES__EAST__PASSWORD": "from-the-environment"}
    result = run("check-config", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert ("ari: node=east url=http://127.0.0.1:18088 username=ari-bridge app=pbx-1..pbx-3 "
            "password=set") in result.stdout
    assert "ari: node=west url=http://127.0.0.1:18089" in result.stdout
    assert "password=EMPTY" in result.stdout  # west's
    assert "cluster: instance=b1 slots=3 heartbeat_s=1 dead_after_s=3" in result.stdout
    assert "from-the-environment" not in result.stdout + result.stderr
