"""The docker/ files stay in step with the repository and with asterisk-config/ (the images
themselves are built and run by tests/integration/test_docker_lab.py)."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from bridge.lab import rootfs

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def _compose() -> dict:  # type: ignore[type-arg]
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _copies(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"^\s*(COPY|ADD)\s+(.*)$", line)
        if m and "--from=" not in m.group(2):  # a build stage's file, not the context's
            args = [a for a in m.group(2).split() if not a.startswith("--")]
            sources.extend(args[:-1])
    return sources


def test_compose_has_both_services() -> None:
    services = _compose()["services"]
    assert {"asterisk", "bridge"} <= set(services)
    for name, dockerfile in (("asterisk", "asterisk.Dockerfile"), ("bridge", "bridge.Dockerfile")):
        build = services[name]["build"]
        assert (DOCKER / build["context"]).resolve() == REPO
        assert build["dockerfile"] == f"docker/{dockerfile}"
        assert (REPO / build["dockerfile"]).is_file()


def test_asterisk_service_uses_asterisk_config() -> None:
    asterisk = _compose()["services"]["asterisk"]
    mounts = [v.split(":") for v in asterisk.get("volumes", [])]
    sources = {(DOCKER / m[0]).resolve(): m[1] for m in mounts}
    assert sources.get(REPO / "asterisk-config") == "/usr/local/share/ari-bridge/asterisk-config"
    copies = _copies(DOCKER / "asterisk.Dockerfile")
    assert "asterisk-config/" in copies
    assert "ARI_PASSWORD" in asterisk["environment"]


def test_bridge_service_gets_the_same_password() -> None:
    services = _compose()["services"]
    assert (
        services["bridge"]["environment"]["ARI_BRIDGE_ARI__PASSWORD"]
        == services["asterisk"]["environment"]["ARI_PASSWORD"]
    )


@pytest.mark.parametrize("name", ["asterisk.Dockerfile", "bridge.Dockerfile"])
def test_dockerfile_copy_sources_exist(name: str) -> None:
    copies = _copies(DOCKER / name)
    assert copies, name
    for src in copies:
        assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"


def test_asterisk_image_installs_the_lab_packages() -> None:
    text = (DOCKER / "asterisk.Dockerfile").read_text()
    assert set(rootfs.PACKAGES) <= set(_apt_installed(Path("asterisk.Dockerfile"))), text


def test_bridge_image_runs_serve() -> None:
    text = (DOCKER / "bridge.Dockerfile").read_text()
    for tool in ("espeak-ng", "sox", "ffmpeg"):
        assert tool in text
    assert '"serve", "--config", "/etc/ari-bridge/config.yaml"' in text


def test_entrypoint_sets_password_and_app(tmp_path: Path) -> None:
    script = (DOCKER / "asterisk-entrypoint.sh").read_text()
    func = re.search(r"^set_key\(\) \{.*?^\}", script, re.S | re.M)
    assert func is not None
    for name in ("ari.conf", "extensions.conf"):
        shutil.copy(REPO / "asterisk-config" / name, tmp_path / name)
    password = "p&a|s\\s/x"
    subprocess.run(
        [
            "sh",
            "-c",
            func.group(0) + '\nset_key "$1/ari.conf" ari-bridge password "$2"'
            '\nset_key "$1/extensions.conf" globals ARI_APP other-app'
            '\nset_key "$1/extensions.conf" globals ARI_SLOTS 4',
            "sh",
            str(tmp_path),
            password,
        ],
        check=True,
    )
    ari = (tmp_path / "ari.conf").read_text()
    assert f"\npassword = {password}\n" in ari
    assert "change-me" not in ari
    extensions = (tmp_path / "extensions.conf").read_text()
    assert "\nARI_APP = other-app\n" in extensions
    assert "\nARI_SLOTS = 4\n" in extensions


def _healthcheck(dockerfile: Path) -> str:
    """The HEALTHCHECK instruction, continuation lines joined."""
    text = (DOCKER / dockerfile).read_text().replace("\\\n", " ")
    found = re.findall(r"^HEALTHCHECK\s+(.*)$", text, re.M)
    assert len(found) == 1, found
    return str(found[0])


def test_bridge_image_reads_and_writes_mp3() -> None:
    assert "libsox-fmt-mp3" in _apt_installed(Path("bridge.Dockerfile"))


def _apt_installed(dockerfile: Path) -> list[str]:
    """The packages a Dockerfile installs through docker/apt-install.sh."""
    text = (DOCKER / dockerfile).read_text().replace("\\\n", " ")
    install = re.search(r"^RUN sh /usr/local/sbin/apt-install ([^&\n]*)$", text, re.M)
    assert install is not None, dockerfile
    return install.group(1).split()


@pytest.mark.parametrize("name", ["asterisk.Dockerfile", "bridge.Dockerfile"])
def test_both_images_build_on_a_chosen_base(name: str) -> None:
    lines = (DOCKER / name).read_text().splitlines()
    froms = [line.split()[1:] for line in lines if line.startswith("FROM ")]
    assert froms[0][0] == "${BASE_IMAGE}"
    # Later stages start from earlier ones only, never from another registry image.
    stages = {words[2] for words in froms if len(words) == 3 and words[1] == "AS"}
    assert all(words[0] in stages for words in froms[1:]), froms
    # The ARG comes before the first FROM, so --build-arg BASE_IMAGE=... reaches it.
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert lines.index("ARG BASE_IMAGE=debian:testing-slim") < first_from


def test_apt_install_skips_what_the_base_has(tmp_path: Path) -> None:
    """The script installs only missing packages (so a build on the lab's tree needs no
    network) and tells apt to accept testing's expired Release file."""
    script = (DOCKER / "apt-install.sh").read_text()
    assert "-o Acquire::Check-Valid-Until=false update" in script
    # A fake dpkg-query/apt-get on PATH: "present" is installed, nothing else is.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dpkg-query").write_text(
        '#!/bin/sh\nfor last; do :; done\n'
        '[ "$last" = present ] && printf "install ok installed" || exit 1\n')
    (bindir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/apt.log\n')
    for tool in bindir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", str(DOCKER / "apt-install.sh"), "present"], env=env,
                          capture_output=True, text=True, check=True)
    assert "already installed" in done.stdout
    assert not (tmp_path / "apt.log").exists()
    subprocess.run(["sh", str(DOCKER / "apt-install.sh"), "present", "absent"], env=env,
                   capture_output=True, text=True, check=True)
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0] == "-o Acquire::Check-Valid-Until=false update"
    assert calls[1].split()[-1:] == ["absent"] and "present" not in calls[1].split()


def test_compose_keeps_store_and_recordings_in_named_volumes() -> None:
    compose = _compose()
    bridge = compose["services"]["bridge"]
    named = set(compose["volumes"])
    mounts = {}
    for volume in bridge["volumes"]:
        source, target, *_ = volume.split(":")
        if source in named:
            mounts[target] = source
    cluster = {f"{name}-data" for name in CLUSTER_SERVICES}
    assert set(mounts.values()) == named - {"redis-data"} - cluster == {
        "bridge-state", "bridge-recordings", "bridge-media"}
    env = bridge["environment"]
    for key, volume in (("ARI_BRIDGE_STORE__PATH", "bridge-state"),
                        ("ARI_BRIDGE_MEDIA__PATH", "bridge-media"),
                        ("ARI_BRIDGE_RECORDINGS__PATH", "bridge-recordings")):
        path = Path(env[key])
        # The deepest mount holding the path is the one it lands in.
        holder = max((Path(t) for t in mounts if path == Path(t) or Path(t) in path.parents),
                     key=lambda p: len(p.parts))
        assert mounts[str(holder)] == volume, key
    # Those are the configuration's own defaults too, so nothing moves when they are unset.
    from bridge.config import Config

    defaults = Config()
    assert str(defaults.store.path) == env["ARI_BRIDGE_STORE__PATH"]
    assert str(defaults.media.path) == env["ARI_BRIDGE_MEDIA__PATH"]
    assert str(defaults.recordings.path) == env["ARI_BRIDGE_RECORDINGS__PATH"]
    # The image creates the mount points owned by its user, so new volumes are writable.
    dockerfile = (DOCKER / "bridge.Dockerfile").read_text()
    assert "/var/lib/ari-bridge/recordings" in dockerfile and "USER ari-bridge" in dockerfile


def test_compose_leaves_the_drain_its_time() -> None:
    bridge = _compose()["services"]["bridge"]
    assert bridge["stop_signal"] == "SIGTERM"
    grace = re.fullmatch(r"(\d+)s", bridge["stop_grace_period"])
    assert grace is not None
    # service.drain_timeout_s defaults to 10 s; Docker's own default grace is 10 s too.
    assert int(grace.group(1)) >= 20


def test_bridge_waits_for_a_healthy_asterisk() -> None:
    depends = _compose()["services"]["bridge"]["depends_on"]
    assert depends == {name: {"condition": "service_healthy"}
                       for name in ("asterisk", "redis", "example")}


def test_bridge_healthcheck_runs_the_copied_script() -> None:
    check = _healthcheck(Path("bridge.Dockerfile"))
    assert '"/usr/local/bin/ari-bridge-healthcheck"' in check
    text = (DOCKER / "bridge.Dockerfile").read_text()
    assert re.search(r"^COPY docker/bridge-healthcheck\.py /usr/local/bin/ari-bridge-healthcheck$",
                     text, re.M)


def test_asterisk_healthcheck_asks_asterisk_itself() -> None:
    check = _healthcheck(Path("asterisk.Dockerfile"))
    # Asterisk's own CLI socket, never the bridge: the bridge waits for this check.
    assert "asterisk -rx 'core waitfullybooted' | grep -q 'fully booted'" in check
    assert "asterisk -rx 'ari show status' | grep -q 'Enabled: Yes'" in check
    assert "readyz" not in check


# ------------------------------------------------------------ the bridge's healthcheck script
class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        body = b'{"status": "ok"}' if self.status == 200 else b'{"ari": "disconnected"}'
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readyz() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _probe(tmp_path: Path, config: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    if config is not None:
        path.write_text(config)
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("ARI_BRIDGE_")}
    return subprocess.run(
        [sys.executable, str(DOCKER / "bridge-healthcheck.py")],
        env={**clean, "ARI_BRIDGE_CONFIG": str(path), **env},
        capture_output=True, text=True, timeout=30, check=False)


def test_healthcheck_follows_readyz(tmp_path: Path, readyz: http.server.HTTPServer) -> None:
    port = readyz.server_address[1]
    _Readyz.status = 200
    # The port from the configuration file; a wildcard host is reached on loopback.
    ok = _probe(tmp_path, f"http: {{host: 0.0.0.0, port: {port}}}\n")
    assert ok.returncode == 0, ok.stderr
    assert _Readyz.paths[-1] == "/readyz"

    _Readyz.status = 503
    down = _probe(tmp_path, f"http: {{port: {port}}}\n")
    assert down.returncode == 1
    assert "503" in down.stderr and "disconnected" in down.stderr

    # The environment wins over the file, as for the bridge.
    _Readyz.status = 200
    wrong_file = _probe(tmp_path, "http: {port: 9}\n", ari_bridge_http__port=str(port))
    assert wrong_file.returncode == 0, wrong_file.stderr


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        result = _probe(tmp_path, f"http: {{port: {port}}}\n")
    assert result.returncode == 1
    assert f"http://127.0.0.1:{port}/readyz" in result.stderr


CLUSTER_SERVICES = {"asterisk-b", "cluster-bridge-1", "cluster-bridge-2"}


def test_the_cluster_profile_leaves_the_default_services_alone() -> None:
    services = _compose()["services"]
    assert {n for n, s in services.items() if s.get("profiles") == ["cluster"]} == CLUSTER_SERVICES
    assert all("profiles" not in s for n, s in services.items() if n not in CLUSTER_SERVICES)
    # Without ARI_SLOTS the default Asterisk hands calls to the one application, as before.
    assert services["asterisk"]["environment"]["ARI_SLOTS"] == "${ARI_SLOTS:-0}"


def test_the_cluster_profile_parses() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: apt-get install docker-compose"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ARI_BRIDGE_")}
    env.update({"ARI_PASSWORD": "p", "REDIS_PASSWORD": "r", "ARI_SLOTS": "4",
                "EXAMPLE_PORT": "18123"})
    done = subprocess.run([binary, "-f", str(DOCKER / "compose.yaml"), "--profile", "cluster",
                           "config"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) >= CLUSTER_SERVICES
    nodes = yaml.safe_load((DOCKER / "cluster-config.yaml").read_text())["ari"]["nodes"]
    ports = {"a": services["asterisk"]["environment"]["ARI_PORT"],
             "b": services["asterisk-b"]["environment"]["ARI_PORT"]}
    assert ports["a"] != ports["b"]
    assert services["asterisk"]["environment"]["ARI_SLOTS"] == "4"
    assert services["asterisk-b"]["environment"]["ARI_SLOTS"] == "4"
    seen = set()
    for name in ("cluster-bridge-1", "cluster-bridge-2"):
        bridge = services[name]
        env_vars = bridge["environment"]
        for node in nodes:
            key = f"ARI_BRIDGE_ARI__NODES__{node['name'].upper()}"
            assert env_vars[f"{key}__PASSWORD"] == "p"
            assert env_vars[f"{key}__URL"] == f"http://127.0.0.1:{ports[node['name']]}"
        assert env_vars["ARI_BRIDGE_STORE__REDIS_URL"].startswith("redis://:r@127.0.0.1:")
        # The example service wherever EXAMPLE_PORT puts it, not the file's port 8000.
        assert "18123" in services["example"]["command"]
        assert (env_vars["ARI_BRIDGE_APPLICATIONS__WELCOME__ANSWER_URL"]
                == "http://127.0.0.1:18123/answer")
        assert (env_vars["ARI_BRIDGE_APPLICATIONS__WELCOME__EVENT_URL"]
                == "http://127.0.0.1:18123/event")
        seen.add((env_vars["ARI_BRIDGE_CLUSTER__INSTANCE_ID"], env_vars["ARI_BRIDGE_HTTP__PORT"]))
        assert set(bridge["depends_on"]) == {"asterisk", "asterisk-b", "redis", "example"}
    assert len({i for i, _ in seen}) == len({p for _, p in seen}) == 2


def test_the_cluster_configuration_loads() -> None:
    from bridge.config import load_config

    compose = _compose()["services"]["cluster-bridge-2"]["environment"]
    env = {k: re.sub(r"\$\{[^}]*\}", "1", str(v)) for k, v in compose.items()}
    config = load_config(DOCKER / "cluster-config.yaml", environ=env)
    assert [n.name for n in config.ari.node_configs()] == ["a", "b"]
    assert config.cluster.enabled and config.cluster.instance_id == "cluster-bridge-2"
    assert config.store.backend == "redis"
    assert config.application("welcome").answer_url == "http://127.0.0.1:1/answer"
