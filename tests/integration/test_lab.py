"""Two lab Asterisks side by side from the cached root filesystem.

Needs root, chroot and sipp; the first run builds the root filesystem
(about 1 minute), later runs start each lab in about a second.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.lab import LabInfo, LabOptions, asterisk_cli, lab_down, lab_status, lab_up
from bridge.lab._model import ari_get

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _needs_root_and_sipp() -> None:
    # ./run test installs everything; a missing requirement fails loudly instead of skipping.
    if os.geteuid() != 0:
        pytest.fail("the rootfs lab needs root")
    if shutil.which("sipp") is None:
        pytest.fail("needs sipp (apt-get install sip-tester)")

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free on 127.0.0.1 a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _options(state_dir: Path, rtp_start: int) -> LabOptions:
    return LabOptions(
        state_dir=state_dir,
        ari_port=free_port(socket.SOCK_STREAM),
        sip_port=free_port(socket.SOCK_DGRAM),
        rtp_start=rtp_start,
        rtp_end=rtp_start + 99,
    )


@pytest.fixture(scope="module")
def labs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[tuple[LabOptions, LabInfo]]]:
    opts = [
        _options(tmp_path_factory.mktemp("lab-a"), 31000),
        _options(tmp_path_factory.mktemp("lab-b"), 31100),
    ]
    started: list[tuple[LabOptions, LabInfo]] = []
    try:
        for o in opts:
            started.append((o, lab_up(o, progress=print)))
        yield started
    finally:
        for o in opts:
            lab_down(o)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_both_labs_answer_ari(labs: list[tuple[LabOptions, LabInfo]]) -> None:
    (_, a), (_, b) = labs
    assert a.pid != b.pid and a.ari_url != b.ari_url and a.sip_port != b.sip_port
    for opts, info in labs:
        assert info.ari_url == f"http://127.0.0.1:{opts.ari_port}"
        assert info.asterisk_version.startswith("22."), info.asterisk_version
        status, body = ari_get(
            f"{info.ari_url}/ari/asterisk/info", info.ari_username, info.ari_password
        )
        assert status == 200 and body["system"]["version"] == info.asterisk_version
        # The other lab's password is not accepted here.
        other = b if info is a else a
        status, _ = ari_get(
            f"{info.ari_url}/ari/asterisk/info", info.ari_username, other.ari_password
        )
        assert status == 401
        creds = info.credentials_file
        assert creds == opts.state_dir / "ari.env"
        assert creds.stat().st_mode & 0o777 == 0o600
        assert f"ARI_BRIDGE_ARI__PASSWORD={info.ari_password}\n" in creds.read_text()


def test_status_reports_each_lab(labs: list[tuple[LabOptions, LabInfo]]) -> None:
    for opts, info in labs:
        status = lab_status(opts)
        assert status is not None
        assert (status.pid, status.ari_url, status.sip_port) == (
            info.pid,
            info.ari_url,
            info.sip_port,
        )
        # lab_up on a running lab returns it unchanged.
        assert lab_up(opts, progress=print).pid == info.pid


def test_every_configured_module_runs(labs: list[tuple[LabOptions, LabInfo]]) -> None:
    opts, _ = labs[0]
    wanted = re.findall(
        r"^load => (\S+)", (REPO / "asterisk-config" / "modules.conf").read_text(), re.M
    )
    shown = asterisk_cli(opts, "module show")
    running = {line.split()[0] for line in shown.splitlines() if " Running " in line}
    assert [m for m in wanted if m not in running] == []
    assert "res_pjsip_trunk" not in shown
    # Each lab uses its own configuration directory inside the tree.
    settings = asterisk_cli(opts, "core show settings")
    assert "/srv/ari-bridge-labs/" in settings


@pytest.mark.parametrize("number", ["4420001", "+4420001", "support"])
def test_call_without_ari_app_gets_503(
    labs: list[tuple[LabOptions, LabInfo]], number: str, tmp_path: Path
) -> None:
    _, info = labs[0]
    res = subprocess.run(
        [
            "sipp",
            f"{info.sip_host}:{info.sip_port}",
            "-sf",
            str(SCENARIOS / "uac_expect_503.xml"),
            "-s",
            number,
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-mp",
            str(free_port()),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "20s",
            "-timeout_error",
            "-trace_msg",
            "-message_file",
            str(tmp_path / "messages.log"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=40,
    )
    messages = (tmp_path / "messages.log").read_text()
    assert res.returncode == 0, messages[-2000:] or res.stderr
    assert "SIP/2.0 503 Service Unavailable" in messages
    assert "Reason: Q.850;cause=34" in messages


def test_the_asterisk_image_healthcheck_passes_on_a_running_lab(
    labs: list[tuple[LabOptions, LabInfo]],
) -> None:
    # docker/asterisk.Dockerfile's HEALTHCHECK: each `asterisk -rx '<command>' | grep -q
    # '<expected>'`, run against the same Asterisk and configuration.
    text = (REPO / "docker" / "asterisk.Dockerfile").read_text().replace("\\\n", " ")
    pairs = re.findall(r"asterisk -rx '([^']+)' \| grep -q '([^']+)'", text)
    assert len(pairs) == 2, pairs
    opts, _ = labs[0]
    for command, expected in pairs:
        assert expected in asterisk_cli(opts, command), command


def test_down_stops_exactly_its_pid(labs: list[tuple[LabOptions, LabInfo]]) -> None:
    (a_opts, a), (b_opts, b) = labs
    assert a.pid is not None and b.pid is not None
    assert lab_down(b_opts) is True
    assert not _alive(b.pid)
    assert lab_status(b_opts) is None
    assert not (b_opts.state_dir / "asterisk.pid").exists()
    assert lab_down(b_opts) is False
    # The other lab is untouched.
    assert _alive(a.pid)
    status = lab_status(a_opts)
    assert status is not None and status.pid == a.pid
    code, _ = ari_get(f"{a.ari_url}/ari/asterisk/info", a.ari_username, a.ari_password)
    assert code == 200
