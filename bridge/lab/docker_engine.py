"""The "docker" lab engine: the image from docker/asterisk.Dockerfile.

The image carries the shipped asterisk-config/. The lab renders the same
files with its overrides into ``state_dir/docker-etc`` and mounts that
directory read-only where the image's entrypoint copies its configuration
from (see docker/asterisk-entrypoint.sh), and runs the container
with host networking so ARI, SIP and RTP are on 127.0.0.1 as with the rootfs
engine. The Python ``docker`` SDK is imported only when this engine is used.

The image builds on ``BASE_IMAGE`` when it is present or can be pulled. When no image registry
answers, the base is made locally from the rootfs engine's debootstrap tree (``docker import``
of the tree, about 10 s); that tree already holds Asterisk, so the build then needs no network.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.lab._model import (
    LabError,
    LabInfo,
    LabOptions,
    check_ports_free,
    check_same_slots,
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
from bridge.lab.layout import LABS_DIR, STAMP_NAME
from bridge.lab.render import ARI_USERNAME, lab_overrides, render_config
from bridge.lab.rootfs import ensure_rootfs

IMAGE_TAG = "ari-bridge-asterisk:lab"
DOCKERFILE = "docker/asterisk.Dockerfile"
#: The Dockerfiles' default base (their ``ARG BASE_IMAGE``).
BASE_IMAGE = "debian:testing-slim"
#: Repository of the base made from the debootstrap tree; the tag is the Debian suite.
LOCAL_BASE_REPO = "ari-bridge-base"
#: Environment variable of the local base naming the tree build it was imported from, so a
#: rebuilt tree gives a new base.
ROOTFS_STAMP_ENV = "ARI_BRIDGE_ROOTFS_BUILT_AT"
START_DEADLINE_S = 60.0
#: Seconds Asterisk gets to stop after SIGTERM before Docker kills it.
STOP_TIMEOUT_S = 10
#: Seconds an API call of a build or an import may stay silent (apt and pip steps are).
BUILD_TIMEOUT_S = 1800
#: Where the image's entrypoint looks for the configuration to install.
CONFIG_MOUNT = "/usr/local/share/ari-bridge/asterisk-config"


def _container_name(opts: LabOptions) -> str:
    return f"ari-bridge-lab-{instance_id(opts.state_dir)}"


def client(timeout_s: float = 10) -> Any:
    """A connected Docker client, or LabError saying no engine is reachable.

    ``timeout_s`` bounds each API call, in seconds."""
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
        c = docker.from_env(timeout=timeout_s)
        c.ping()
    except Exception as exc:
        raise LabError(
            f"no Docker engine reachable at {where} ({type(exc).__name__}): "
            "start Docker or use --engine rootfs"
        ) from exc
    return c


def ensure_base_image(c: Any, opts: LabOptions, progress: Callable[[str], None]) -> str:
    """The image to build on: :data:`BASE_IMAGE` when present or pullable, else the local base
    ``ari-bridge-base:<suite>`` made from the lab's debootstrap tree (built first if needed)."""
    errors: Any = importlib.import_module("docker.errors")
    try:
        c.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except errors.ImageNotFound:
        pass
    try:
        progress(f"pulling {BASE_IMAGE} ...")
        c.images.pull(BASE_IMAGE)
        return BASE_IMAGE
    except errors.APIError as exc:
        reason = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:200]
    local = f"{LOCAL_BASE_REPO}:{opts.suite}"
    tree = ensure_rootfs(opts, progress)
    stamp = _rootfs_stamp(tree)
    try:
        env = c.images.get(local).attrs.get("Config", {}).get("Env") or []
        if f"{ROOTFS_STAMP_ENV}={stamp}" in env:
            progress(f"no image registry answered ({reason}); building on the local base "
                     f"image {local}, made from the lab's debootstrap tree {tree}")
            return local
    except errors.ImageNotFound:
        pass
    progress(f"no image registry answered ({reason}); making the local base image {local} "
             f"from the lab's debootstrap tree {tree} ...")
    started = time.monotonic()
    import_tree(c, tree, local, [f"ENV {ROOTFS_STAMP_ENV}={stamp}"])
    progress(f"base image {local} made in {time.monotonic() - started:.0f} s")
    return local


def _rootfs_stamp(tree: Path) -> str:
    try:
        data = json.loads((tree / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return "unknown"
    return str(data.get("built_at", "unknown")) if isinstance(data, dict) else "unknown"


def import_tree(c: Any, tree: Path, name: str, changes: list[str]) -> None:
    """``tar -C tree -c . | docker import - name``, without the lab instances' directories
    (other labs' live state) and the build stamp."""
    repository, _, tag = name.partition(":")
    proc = subprocess.Popen(
        ["tar", "-C", str(tree), "--numeric-owner",
         f"--exclude=.{LABS_DIR}/*", f"--exclude=./{STAMP_NAME}", "-c", "."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        c.api.import_image(src=proc.stdout, repository=repository, tag=tag or "latest",
                           changes=changes, stream_src=True)
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        raise LabError(f"tar of {tree} failed (exit {rc}): "
                       + proc.stderr.read().decode(errors="replace")[-2000:])


def build_image(c: Any, context: Path, dockerfile: str, tag: str, base: str,
                progress: Callable[[str], None]) -> None:
    """``docker build --network host --build-arg BASE_IMAGE=base``, reporting each step
    (``Step 3/13 : RUN ...``) through ``progress``; LabError with the build's last lines when
    it fails."""
    progress(f"building image {tag} from {dockerfile} on {base} ...")
    started = time.monotonic()
    recent: list[str] = []
    for chunk in c.api.build(path=str(context), dockerfile=dockerfile, tag=tag, rm=True,
                             network_mode="host", buildargs={"BASE_IMAGE": base}, decode=True):
        if "error" in chunk:
            detail = "\n".join(recent[-20:])
            raise LabError(f"building {tag} failed: {str(chunk['error']).strip()}\n{detail}")
        for line in str(chunk.get("stream", "")).splitlines():
            line = line.rstrip()
            if not line:
                continue
            recent = [*recent[-39:], line]
            if line.startswith("Step ") or line.startswith("Successfully built"):
                progress(f"  {line[:160]}")
    progress(f"image {tag} built in {time.monotonic() - started:.0f} s")


def _find(c: Any, name: str) -> Any | None:
    errors: Any = importlib.import_module("docker.errors")
    try:
        return c.containers.get(name)
    except errors.NotFound:
        return None


def _lab_container(c: Any, opts: LabOptions) -> Any | None:
    """The container this state directory started: by the id in lab.json, else by name."""
    state = load_state(opts.state_dir) or {}
    if state.get("engine") == "docker" and state.get("container_id"):
        found = _find(c, str(state["container_id"]))
        if found is not None:
            return found
    return _find(c, _container_name(opts))


def status(opts: LabOptions) -> LabInfo | None:
    """LabInfo of the running container for ``opts.state_dir``, or None."""
    state = load_state(opts.state_dir)
    if state is None or state.get("engine") != "docker":
        return None
    container = _lab_container(client(), opts)
    if container is None or container.status != "running":
        return None
    return info_from_state(state, read_password(opts.state_dir) or "")


def up(opts: LabOptions, progress: Callable[[str], None]) -> LabInfo:
    """Build the image (cached by Docker) and run the lab container."""
    config_dir = resolve_config_dir(opts)
    c = client()
    existing = status(opts)
    if existing is not None:
        return check_same_slots(existing, opts)
    check_ports_free(opts)
    repo = config_dir.resolve().parent
    if not (repo / DOCKERFILE).is_file():
        raise LabError(f"{repo / DOCKERFILE} not found: the docker engine needs the repository")
    builder = client(BUILD_TIMEOUT_S)
    base = ensure_base_image(builder, opts, progress)
    build_image(builder, repo, DOCKERFILE, IMAGE_TAG, base, progress)

    state_dir = opts.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    password = password_for(state_dir)
    etc = state_dir / "docker-etc"
    render_config(
        config_dir,
        etc,
        lab_overrides(
            ari_port=opts.ari_port,
            sip_port=opts.sip_port,
            rtp_start=opts.rtp_start,
            rtp_end=opts.rtp_end,
            ari_password=password,
            app_name=opts.app_name,
            slots=opts.slots,
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
        ari_username=ARI_USERNAME,
        ari_password=password,
        credentials_file=creds,
        sip_host="127.0.0.1",
        sip_port=opts.sip_port,
        pid=None,
        engine="docker",
        asterisk_version=version,
        app_name=opts.app_name,
        slots=opts.slots,
        container_id=str(container.id),
    )
    save_state(state_dir, info, {"container_name": name, "started_at": time.time()})
    return info


def down(opts: LabOptions) -> bool:
    """Stop and remove the lab container (by the id in lab.json); True if one was running."""
    container = _lab_container(client(STOP_TIMEOUT_S + 20), opts)
    if container is None:
        return False
    was_running = container.status == "running"
    container.stop(timeout=STOP_TIMEOUT_S)
    container.remove(force=True)
    return bool(was_running)


def cli(opts: LabOptions, command: str) -> str:
    """Run ``asterisk -rx command`` in the lab container."""
    container = _lab_container(client(), opts)
    if container is None or container.status != "running":
        raise LabError(f"no lab container is running for {opts.state_dir}: run lab up first")
    code, output = container.exec_run(["asterisk", "-rx", command])
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    if code != 0:
        raise LabError(f"asterisk -rx {command!r} failed (exit {code}): {text}")
    return text
