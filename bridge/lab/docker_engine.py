"""The "docker" lab engine: the image from docker/asterisk.Dockerfile.

The image carries the shipped asterisk-config/. The lab renders the same
files with its overrides into ``state_dir/docker-etc`` and mounts that
directory read-only where the image's entrypoint copies its configuration
from (see docker/asterisk-entrypoint.sh), and runs the container
with host networking so ARI, SIP and RTP are on 127.0.0.1 as with the rootfs
engine. The Python ``docker`` SDK is imported only when this engine is used.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from typing import Any

from bridge.lab import render
from bridge.lab._model import (
    LabError,
    LabInfo,
    LabOptions,
    check_ports_free,
    info_from_state,
    instance_id,
    load_state,
    password_for,
    read_password,
    resolve_config_dir,
    save_state,
    wait_for_ari,
    write_credentials,
)

IMAGE_TAG = "ari-bridge-asterisk:lab"
DOCKERFILE = "docker/asterisk.Dockerfile"
START_DEADLINE_S = 60.0
#: Where the image's entrypoint looks for the configuration to install.
CONFIG_MOUNT = "/usr/local/share/ari-bridge/asterisk-config"


def _container_name(opts: LabOptions) -> str:
    return f"ari-bridge-lab-{instance_id(opts.state_dir)}"


def client() -> Any:
    """A connected Docker client, or LabError saying no engine is reachable."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        # importlib: the repository's docker/ directory would otherwise shadow
        # the SDK for type checkers.
        docker: Any = importlib.import_module("docker")
    except ImportError as exc:
        raise LabError(
            "the docker engine needs the Python package 'docker' "
            "(pip install 'ari-bridge[docker]'), or use --engine rootfs"
        ) from exc
    try:
        c = docker.from_env(timeout=10)
        c.ping()
    except Exception as exc:
        raise LabError(
            f"no Docker engine reachable at {where} ({type(exc).__name__}): "
            "start Docker or use --engine rootfs"
        ) from exc
    return c


def _find(c: Any, name: str) -> Any | None:
    errors: Any = importlib.import_module("docker.errors")
    try:
        return c.containers.get(name)
    except errors.NotFound:
        return None


def status(opts: LabOptions) -> LabInfo | None:
    """LabInfo of the running container for ``opts.state_dir``, or None."""
    state = load_state(opts.state_dir)
    if state is None or state.get("engine") != "docker":
        return None
    container = _find(client(), _container_name(opts))
    if container is None or container.status != "running":
        return None
    return info_from_state(state, read_password(opts.state_dir) or "")


def up(opts: LabOptions, progress: Callable[[str], None]) -> LabInfo:
    """Build the image (cached by Docker) and run the lab container."""
    config_dir = resolve_config_dir(opts)
    c = client()
    existing = status(opts)
    if existing is not None:
        return existing
    check_ports_free(opts)
    repo = config_dir.resolve().parent
    if not (repo / DOCKERFILE).is_file():
        raise LabError(f"{repo / DOCKERFILE} not found: the docker engine needs the repository")
    progress(f"building image {IMAGE_TAG} from {DOCKERFILE} ...")
    c.images.build(path=str(repo), dockerfile=DOCKERFILE, tag=IMAGE_TAG, rm=True)

    state_dir = opts.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    password = password_for(state_dir)
    etc = state_dir / "docker-etc"
    render.render_config(
        config_dir,
        etc,
        render.lab_overrides(
            ari_port=opts.ari_port,
            sip_port=opts.sip_port,
            rtp_start=opts.rtp_start,
            rtp_end=opts.rtp_end,
            ari_password=password,
            app_name=opts.app_name,
        ),
    )
    ari_url = f"http://127.0.0.1:{opts.ari_port}"
    creds = write_credentials(state_dir, ari_url=ari_url, password=password, app_name=opts.app_name)
    name = _container_name(opts)
    old = _find(c, name)
    if old is not None:
        old.remove(force=True)
    progress(f"starting container {name} (ARI {ari_url}, SIP 127.0.0.1:{opts.sip_port}/udp)")
    container = c.containers.run(
        IMAGE_TAG,
        name=name,
        detach=True,
        network_mode="host",
        # The entrypoint copies this directory into /etc/asterisk at start.
        volumes={str(etc.resolve()): {"bind": CONFIG_MOUNT, "mode": "ro"}},
        labels={"ari-bridge.lab.state_dir": str(state_dir.resolve())},
    )

    def running() -> bool:
        container.reload()
        return bool(container.status in ("created", "running"))

    def failure(reason: str) -> LabError:
        logs = container.logs(tail=25).decode(errors="replace")
        container.remove(force=True)
        return LabError(f"{reason}.\n--- container log (tail) ---\n{logs}")

    version = wait_for_ari(
        ari_url, password, deadline_s=START_DEADLINE_S, still_running=running, on_failure=failure
    )
    progress(f"Asterisk {version} ready in {name}; ARI credentials in {creds}")
    info = LabInfo(
        ari_url=ari_url,
        ari_username=render.ARI_USERNAME,
        ari_password=password,
        credentials_file=creds,
        sip_host="127.0.0.1",
        sip_port=opts.sip_port,
        pid=None,
        engine="docker",
        asterisk_version=version,
        app_name=opts.app_name,
        container_id=str(container.id),
    )
    save_state(state_dir, info, {"container_name": name, "started_at": time.time()})
    return info


def down(opts: LabOptions) -> bool:
    """Stop and remove the lab container; True if one was running."""
    container = _find(client(), _container_name(opts))
    if container is None:
        return False
    was_running = container.status == "running"
    container.stop(timeout=10)
    container.remove(force=True)
    return bool(was_running)


def cli(opts: LabOptions, command: str) -> str:
    """Run ``asterisk -rx command`` in the lab container."""
    container = _find(client(), _container_name(opts))
    if container is None or container.status != "running":
        raise LabError(f"no lab container is running for {opts.state_dir}: run lab up first")
    code, output = container.exec_run(["asterisk", "-rx", command])
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    if code != 0:
        raise LabError(f"asterisk -rx {command!r} failed (exit {code}): {text}")
    return text
