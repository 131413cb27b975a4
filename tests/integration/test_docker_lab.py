"""The docker lab engine for real: ``ari-bridge lab up --engine docker`` builds the Asterisk
image from docker/asterisk.Dockerfile and our asterisk-config/, runs it with host networking,
and a smoke set of the integration tests places real SIP calls into the container's Asterisk.

The engine is the one running, or a private dockerd started for the session (conftest's
``docker_engine``). The smoke tests are the integration tests themselves, imported here so
they run a second time with this module's ``lab`` fixture: the docker lab instead of the
rootfs one.
"""

from __future__ import annotations

import importlib
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.lab import LabInfo
from bridge.lab._model import info_from_state, load_state, read_password
from bridge.lab.docker_engine import IMAGE_TAG
from bridge.lab.sipp import free_port

# The smoke set, with the fixtures they need from their own modules.
from tests.integration.test_calls import (  # noqa: F401
    test_talk_is_heard_and_status_events_arrive_once_in_order,
)
from tests.integration.test_connect import (  # noqa: F401
    agents_bridge,
    test_seed_000_busy_agent_fails_over_to_the_next_agent,
    tones,
)
from tests.integration.test_exotel import (  # noqa: F401
    applet_app,
    exotel,
    hold_audio,
    redis_server,
    test_state_management_more_callers_than_agents,
)
from tests.integration.test_resilience import (  # noqa: F401
    test_restarted_bridge_resumes_a_call_left_in_stasis,
)

pytestmark = pytest.mark.integration

#: Seconds for ``lab up``: the first run on a machine makes the base image (and, without a
#: cached debootstrap tree, the tree itself) and builds the image; later runs reuse them.
LAB_UP_DEADLINE_S = 1200.0
LAB_DOWN_DEADLINE_S = 60.0
HEALTHY_DEADLINE_S = 120.0


def _cli_env() -> dict[str, str]:
    """This environment (with DOCKER_HOST) without the bridge's own settings."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("ARI_BRIDGE_")}


def _lab_cli(action: str, state_dir: Path, *extra: str, timeout_s: float
             ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bridge.cli", "lab", action, "--engine", "docker",
           "--state-dir", str(state_dir), *extra]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=_cli_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"ari-bridge lab {action} did not finish within {timeout_s:.0f} s:\n"
                    f"{out or ''}\n{err or ''}")


def _client() -> Any:
    return importlib.import_module("docker").from_env(timeout=30)


def _container_log(container_id: str) -> str:
    try:
        return str(_client().containers.get(container_id).logs(tail=40)
                   .decode(errors="replace"))
    except Exception as exc:  # the log is only context for a failure message
        return f"(no container log: {exc})"


class DockerLab:
    """What ``lab up`` printed and left in the state directory."""

    def __init__(self, state_dir: Path, up_output: str) -> None:
        self.state_dir = state_dir
        self.up_output = up_output
        state = load_state(state_dir)
        assert state is not None, f"lab up wrote no lab.json:\n{up_output}"
        self.state = state
        self.info = info_from_state(state, read_password(state_dir) or "")


@pytest.fixture(scope="module")
def docker_lab(docker_engine: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[DockerLab]:
    state_dir = tmp_path_factory.mktemp("docker-lab")
    rtp = free_port()
    up = _lab_cli("up", state_dir,
                  "--ari-port", str(free_port(socket.SOCK_STREAM)),
                  "--sip-port", str(free_port()),
                  "--rtp-start", str(12000 + (rtp % 7000)),
                  "--rtp-end", str(12000 + (rtp % 7000) + 600),
                  timeout_s=LAB_UP_DEADLINE_S)
    assert up.returncode == 0, f"lab up failed ({docker_engine}):\n{up.stdout}\n{up.stderr}"
    lab = DockerLab(state_dir, up.stdout)
    try:
        yield lab
    finally:
        down = _lab_cli("down", state_dir, timeout_s=LAB_DOWN_DEADLINE_S)
        container_id = lab.info.container_id
        leftover = None
        if container_id:
            try:
                leftover = _client().containers.get(container_id)
            except Exception:
                leftover = None
            if leftover is not None:  # never leave it running, whatever failed
                leftover.remove(force=True)
        assert down.returncode == 0 and "lab stopped" in down.stdout, (
            f"lab down: {down.stdout}\n{down.stderr}")
        assert leftover is None, f"lab down left container {container_id}"


@pytest.fixture(scope="module")
def lab(docker_lab: DockerLab) -> LabInfo:
    """The docker lab, in place of conftest's rootfs lab for the tests of this module."""
    return docker_lab.info


def test_lab_up_builds_the_image_and_runs_asterisk_in_a_container(docker_lab: DockerLab
                                                                   ) -> None:
    out = docker_lab.up_output
    # The base was pulled, or made from the lab's tree and said so; the build was reported
    # step by step, on that base.
    if "on debian:testing-slim ..." not in out:
        assert "no image registry answered" in out, out
        assert "local base image ari-bridge-base:testing" in out, out
    assert "building image ari-bridge-asterisk:lab from docker/asterisk.Dockerfile on " in out
    assert "Step 1/" in out and "image ari-bridge-asterisk:lab built in" in out
    info = docker_lab.info
    assert info.engine == "docker" and info.pid is None and info.container_id
    assert f"(engine docker, container {info.container_id[:12]})" in out
    assert info.asterisk_version.startswith("22."), info.asterisk_version
    # ari.env as the rootfs engine writes it: exported, private.
    creds = docker_lab.state_dir / "ari.env"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert f"export ARI_BRIDGE_ARI__URL={info.ari_url}\n" in creds.read_text()
    assert info.ari_password and len(info.ari_password) >= 24
    container = _client().containers.get(info.container_id)
    assert container.status == "running"
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert IMAGE_TAG in container.image.tags
    # lab status finds the same container.
    status = _lab_cli("status", docker_lab.state_dir, timeout_s=LAB_DOWN_DEADLINE_S)
    assert status.returncode == 0, status.stderr
    assert f"container {info.container_id[:12]}" in status.stdout


def test_the_image_reports_healthy(docker_lab: DockerLab) -> None:
    """The image's HEALTHCHECK (Asterisk's own CLI) turns healthy in the running lab."""
    container_id = docker_lab.info.container_id
    assert container_id
    deadline = time.monotonic() + HEALTHY_DEADLINE_S
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = _client().containers.get(container_id).attrs["State"].get("Health") or {}
        if health.get("Status") == "healthy":
            break
        time.sleep(1)
    assert health.get("Status") == "healthy", (
        f"not healthy within {HEALTHY_DEADLINE_S:.0f} s: {health}\n"
        + _container_log(container_id))
