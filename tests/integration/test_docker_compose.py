"""docker/compose.yaml for real: ``docker-compose`` builds and brings up Asterisk, the bridge,
Redis and the example application, a sipp call runs the example's NCCO through them, and
``docker-compose down`` removes it all.

The engine is conftest's ``docker_engine`` (the running one, or a private dockerd). The base
image is the one the docker lab uses: ``debian:testing-slim`` when it can be pulled, else
the base made from the lab's debootstrap tree.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.lab import LabOptions
from bridge.lab.docker_engine import BUILD_TIMEOUT_S, client, ensure_base_image
from bridge.lab.sipp import RtpReceiver, free_port, place_call

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
BUILD_EXTRA = REPO / "docker" / "build-extra"
#: Seconds for ``docker-compose build`` (the first one builds the bridge image: apt, pip and a
#: compiler for pocketsphinx) and ``up`` (waits for the health checks), ``down`` and readiness.
BUILD_DEADLINE_S = 1500.0
UP_DEADLINE_S = 300.0
DOWN_DEADLINE_S = 120.0
READY_DEADLINE_S = 120.0


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    sip_port: int
    bridge_port: int
    example_port: int

    def compose(self, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        binary = shutil.which("docker-compose")
        assert binary, "docker-compose is not installed: apt-get install docker-compose"
        cmd = [binary, "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL, cwd=REPO)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"docker-compose {' '.join(args)} did not finish within "
                        f"{timeout_s:.0f} s:\n{exc.stdout!r}\n{exc.stderr!r}\n{self.logs()}")

    def logs(self, service: str = "") -> str:
        binary = shutil.which("docker-compose") or "docker-compose"
        cmd = [binary, "-f", str(COMPOSE_FILE), "-p", self.project, "logs", "--no-color",
               "--tail", "40", *([service] if service else [])]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60,
                                  stdin=subprocess.DEVNULL, cwd=REPO)
        except subprocess.TimeoutExpired:
            return "(docker-compose logs timed out)"
        return done.stdout + done.stderr

    def containers(self) -> list[Any]:
        return list(client(30).containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.project}"}))


def _machine_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip uses, if it names one (a TLS-inspecting network)."""
    named = os.environ.get("PIP_CERT")
    if not named:
        done = subprocess.run(["python3", "-m", "pip", "config", "get", "global.cert"],
                              capture_output=True, text=True, check=False)
        named = done.stdout.strip() if done.returncode == 0 else ""
    return Path(named) if named and Path(named).is_file() else None


def _ok(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == 0


@pytest.fixture(scope="module")
def stack(docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("compose")
    base = ensure_base_image(client(BUILD_TIMEOUT_S), LabOptions(state_dir=tmp), print)
    ports = {"ARI_PORT": free_port(socket.SOCK_STREAM), "SIP_PORT": free_port(),
             "BRIDGE_PORT": free_port(socket.SOCK_STREAM),
             "EXAMPLE_PORT": free_port(socket.SOCK_STREAM),
             "REDIS_PORT": free_port(socket.SOCK_STREAM)}
    rtp = 12000 + free_port() % 7000
    # The example configuration, pointed at this test's example port.
    config = yaml.safe_load((REPO / "docker" / "example-config.yaml").read_text())
    app = config["applications"][0]
    example = f"http://127.0.0.1:{ports['EXAMPLE_PORT']}"
    app["answer_url"], app["event_url"] = f"{example}/answer", f"{example}/event"
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    config_path.chmod(0o644)  # read by the image's user
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ARI_BRIDGE_")}
    env.update({
        "DOCKER_HOST": docker_engine, "BASE_IMAGE": base,
        "ARI_PASSWORD": secrets.token_hex(16), "REDIS_PASSWORD": secrets.token_hex(16),
        "SIP_BIND": f"127.0.0.1:{ports['SIP_PORT']}",
        "RTP_START": str(rtp), "RTP_END": str(rtp + 400),
        "ARI_BRIDGE_CONFIG": str(config_path),
        **{k: str(v) for k, v in ports.items() if k != "SIP_PORT"},
    })
    stack = Stack(f"ari-bridge-test-{os.getpid()}", env, ports["SIP_PORT"],
                  ports["BRIDGE_PORT"], ports["EXAMPLE_PORT"])

    # pip in the bridge image's build stage trusts what this machine's pip trusts.
    ca_bundle = _machine_ca_bundle()
    placed = BUILD_EXTRA / "ca.crt"
    we_placed = ca_bundle is not None and not placed.exists()
    if we_placed:
        shutil.copyfile(ca_bundle, placed)  # type: ignore[arg-type]
    try:
        build = stack.compose("build", timeout_s=BUILD_DEADLINE_S)
    finally:
        if we_placed:
            placed.unlink(missing_ok=True)
    assert _ok(build), f"docker-compose build failed:\n{build.stdout[-4000:]}\n{build.stderr}"
    try:
        up = stack.compose("up", "-d", timeout_s=UP_DEADLINE_S)
        assert _ok(up), f"docker-compose up failed:\n{up.stdout}\n{up.stderr}\n{stack.logs()}"
        yield stack
    finally:
        down = stack.compose("down", "--volumes", "--timeout", "30", timeout_s=DOWN_DEADLINE_S)
        leftovers = stack.containers()
        for container in leftovers:  # never leave one running, whatever failed
            container.remove(force=True)
        assert _ok(down), f"docker-compose down failed:\n{down.stdout}\n{down.stderr}"
        assert not leftovers, f"docker-compose down left {[c.name for c in leftovers]}"


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


async def test_a_call_runs_the_example_through_the_whole_stack(stack: Stack) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    status, body = 0, ""
    while time.monotonic() < deadline:
        status, body = _readyz(stack.bridge_port)
        if status == 200:
            break
        await asyncio.sleep(0.5)
    assert status == 200, f"bridge not ready: {status} {body}\n{stack.logs()}"
    # Every service is up; the ones compose waited for reported healthy.
    states = {c.labels["com.docker.compose.service"]: c.attrs["State"]
              for c in stack.containers()}
    assert set(states) == {"asterisk", "bridge", "redis", "example"}, states
    for service in ("asterisk", "redis", "example"):
        assert states[service]["Health"]["Status"] == "healthy", (service, states[service])

    receiver = await RtpReceiver.open()
    try:
        result = await place_call("127.0.0.1", stack.sip_port, "15551230000",
                                  rtp_port=receiver.port, timeout_s=60)
    finally:
        receiver.close()
    assert result.ok, f"{result.errors}\n{stack.logs()}"
    # The example's greeting (espeak-ng in the bridge's container) was heard.
    assert receiver.voiced_seconds() > 1.0, stack.logs()

    # The example application received the call's events, up to completed.
    deadline = time.monotonic() + 30
    example_log = ""
    while time.monotonic() < deadline:
        example_log = stack.logs("example")
        if "event   completed" in example_log:
            break
        await asyncio.sleep(0.5)
    assert "event   answered" in example_log and "event   completed" in example_log, (
        example_log)
    # The call store is in its named volume, and the agent store is Redis.
    bridge = next(c for c in stack.containers()
                  if c.labels["com.docker.compose.service"] == "bridge")
    code, listing = bridge.exec_run(["ls", "/var/lib/ari-bridge"])
    assert code == 0 and b"calls.sqlite3" in listing, listing
    mounts = {m["Destination"]: m for m in bridge.attrs["Mounts"]}
    for target, volume in (("/var/lib/ari-bridge", "bridge-state"),
                           ("/var/lib/ari-bridge/recordings", "bridge-recordings"),
                           ("/var/lib/ari-bridge/media", "bridge-media")):
        assert mounts[target]["Name"] == f"{stack.project}_{volume}", mounts[target]
    assert json.loads(body)["checks"]["agent_store"] == {"ok": True}, body
    start_log = stack.logs("bridge")
    assert '"backend": "redis"' in start_log or "'backend': 'redis'" in start_log, start_log


