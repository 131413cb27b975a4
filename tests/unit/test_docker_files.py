"""The docker/ files cannot run here (no Docker engine): check they stay in
step with the repository and with asterisk-config/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

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
        if m:
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
    assert "FROM debian:testing-slim" in text
    for package in rootfs.PACKAGES:
        assert re.search(rf"\b{re.escape(package)}\b", text), package


def test_bridge_image_runs_serve() -> None:
    text = (DOCKER / "bridge.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
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
            '\nset_key "$1/extensions.conf" globals ARI_APP other-app',
            "sh",
            str(tmp_path),
            password,
        ],
        check=True,
    )
    ari = (tmp_path / "ari.conf").read_text()
    assert f"\npassword = {password}\n" in ari
    assert "change-me" not in ari
    assert "\nARI_APP = other-app\n" in (tmp_path / "extensions.conf").read_text()
