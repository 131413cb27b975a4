"""Checks of the lab that need neither root nor a running Asterisk."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from bridge.lab import LabError, LabOptions, lab_status, lab_up, rootfs
from bridge.lab._model import password_for, read_password, write_credentials
from bridge.lab.render import (
    INSTANCE_DIR_KEYS,
    lab_overrides,
    parse_conf,
    render_config,
    set_option,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "asterisk-config"


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _opts(tmp_path: Path, **kw: object) -> LabOptions:
    base: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "cache_dir": tmp_path / "cache",
        "ari_port": _free_port(socket.SOCK_STREAM),
        "sip_port": _free_port(socket.SOCK_DGRAM),
        "config_dir": CONFIG,
    }
    base.update(kw)
    return LabOptions(**base)  # type: ignore[arg-type]


def test_not_root_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="root"):
        lab_up(_opts(tmp_path), progress=lambda _: None)


def test_missing_debootstrap_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which

    def which(name: str, *a: object, **kw: object) -> str | None:
        if name == "debootstrap":
            return None
        return real_which(name) or f"/usr/sbin/{name}"

    monkeypatch.setattr(rootfs.shutil, "which", which)
    with pytest.raises(LabError, match=r"debootstrap.*apt-get install debootstrap"):
        lab_up(_opts(tmp_path), progress=lambda _: None)
    assert not (tmp_path / "cache" / "rootfs-testing").exists()


def test_docker_engine_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    opts = _opts(tmp_path, engine="docker")
    with pytest.raises(LabError, match=r"no Docker engine reachable at unix:///nonexistent\.sock"):
        lab_up(opts, progress=lambda _: None)
    # Nothing was started, so status needs no engine and reports down.
    assert lab_status(opts) is None


def test_unknown_engine(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="unknown lab engine"):
        lab_up(_opts(tmp_path, engine="vagrant"), progress=lambda _: None)


def test_port_in_use_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LabError, match=f"127.0.0.1:{port} is already in use"):
            lab_up(_opts(tmp_path, ari_port=port), progress=lambda _: None)


def test_missing_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(LabError, match="no Asterisk configuration"):
        lab_up(_opts(tmp_path, config_dir=tmp_path / "nowhere"), progress=lambda _: None)


def test_render_overrides_exactly_the_variable_keys(tmp_path: Path) -> None:
    overrides = lab_overrides(
        ari_port=18123,
        sip_port=15123,
        rtp_start=30000,
        rtp_end=30099,
        ari_password="s3cret-Pw",
        app_name="my-app",
        slots=3,
        instance_dir="/srv/ari-bridge-labs/abc",
    )
    out = tmp_path / "etc"
    written = render_config(CONFIG, out, overrides)
    shipped = sorted(p.name for p in CONFIG.glob("*.conf"))
    assert sorted(p.name for p in written) == shipped
    assert (out / "ari.conf").stat().st_mode & 0o777 == 0o600

    expected_changes = {
        ("http.conf", "general", "bindaddr"): "127.0.0.1",
        ("http.conf", "general", "bindport"): "18123",
        ("ari.conf", "ari-bridge", "password"): "s3cret-Pw",
        ("ari.conf", "ari-bridge", "password_format"): "plain",
        ("pjsip.conf", "transport-udp", "bind"): "127.0.0.1:15123",
        ("rtp.conf", "general", "rtpstart"): "30000",
        ("rtp.conf", "general", "rtpend"): "30099",
        ("extensions.conf", "globals", "ARI_APP"): "my-app",
        ("extensions.conf", "globals", "ARI_SLOTS"): "3",
    }
    for key, sub in INSTANCE_DIR_KEYS.items():
        expected_changes[("asterisk.conf", "directories", key)] = f"/srv/ari-bridge-labs/abc/{sub}"

    seen = set()
    differing = set()
    for name in shipped:
        before_text = (CONFIG / name).read_text()
        after_text = (out / name).read_text()
        before, after = parse_conf(before_text), parse_conf(after_text)
        assert before.keys() == after.keys(), name
        for section in before:
            assert before[section].keys() == after[section].keys(), (name, section)
            for key in before[section]:
                want = expected_changes.get((name, section, key))
                if want is None:
                    assert after[section][key] == before[section][key], (name, section, key)
                else:
                    assert after[section][key] == [want], (name, section, key)
                    seen.add((name, section, key))
                    if before[section][key] != [want]:
                        differing.add((name, section, key))
        # Comments and layout are untouched: only the overridden lines differ.
        changed = [
            (a, b)
            for a, b in zip(before_text.splitlines(), after_text.splitlines(), strict=True)
            if a != b
        ]
        assert len(changed) == sum(1 for k in differing if k[0] == name)
    # Every override hit a key the shipped files already have.
    assert seen == set(expected_changes)


def test_shipped_defaults_are_the_documented_ones() -> None:
    http = parse_conf((CONFIG / "http.conf").read_text())["general"]
    assert http["bindaddr"] == ["127.0.0.1"] and http["bindport"] == ["8088"]
    rtp = parse_conf((CONFIG / "rtp.conf").read_text())["general"]
    assert rtp["rtpstart"] == ["10000"] and rtp["rtpend"] == ["20000"]
    assert rtp["icesupport"] == ["no"]
    pjsip = parse_conf((CONFIG / "pjsip.conf").read_text())
    assert pjsip["transport-udp"]["bind"] == ["0.0.0.0:5060"]
    assert pjsip["trunk-in"]["rtp_symmetric"] == ["no"]
    assert pjsip["trunk-in-identify"]["match"] == ["127.0.0.1"]
    assert "trunk-out" in pjsip and not any(
        v.get("endpoint") == ["trunk-out"] for v in pjsip.values()
    )
    ext = parse_conf((CONFIG / "extensions.conf").read_text())
    assert ext["globals"]["ARI_APP"] == ["ari-bridge"]
    assert ext["globals"]["ARI_SLOTS"] == ["0"]  # one bridge, as before clusters
    modules = parse_conf((CONFIG / "modules.conf").read_text())["modules"]
    assert modules["autoload"] == ["no"]
    assert len(modules["load"]) == len(set(modules["load"])), "a module is listed twice"


def test_set_option_adds_missing_key_and_section() -> None:
    text = "; c\n[general]\na = 1\n\n[other]\nb = 2\n"
    assert set_option(text, "general", "a", "9") == "; c\n[general]\na = 9\n\n[other]\nb = 2\n"
    assert (
        set_option(text, "general", "z", "3") == "; c\n[general]\na = 1\nz = 3\n\n[other]\nb = 2\n"
    )
    assert set_option(text, "new", "k", "v").endswith("\n[new]\nk = v\n")
    assert set_option("[d]\nx => 1\n", "d", "x", "2") == "[d]\nx => 2\n"
    # A commented-out key is not taken for the real one.
    assert set_option("[g]\n;a = 1\n", "g", "a", "2") == "[g]\na = 2\n;a = 1\n"


def test_password_generated_once_and_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert read_password(state) is None
    pw = password_for(state)
    assert len(pw) >= 24
    path = write_credentials(state, ari_url="http://127.0.0.1:1", password=pw, app_name="a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert password_for(state) == pw
    lines = path.read_text().splitlines()
    assert lines == [
        "export ARI_BRIDGE_ARI__URL=http://127.0.0.1:1",
        "export ARI_BRIDGE_ARI__USERNAME=ari-bridge",
        f"export ARI_BRIDGE_ARI__PASSWORD={pw}",
        "export ARI_BRIDGE_ARI__APP=a",
    ]


def test_password_of_a_state_directory_from_before_export(tmp_path: Path) -> None:
    (tmp_path / "ari.env").write_text("ARI_BRIDGE_ARI__URL=http://127.0.0.1:1\n"
                                      "ARI_BRIDGE_ARI__PASSWORD=old-format-pw\n")
    assert read_password(tmp_path) == "old-format-pw"


def test_lab_info_repr_hides_password() -> None:
    from bridge.lab import LabInfo

    info = LabInfo(
        ari_url="http://127.0.0.1:1",
        ari_username="ari-bridge",
        ari_password="hunter2-secret",
        credentials_file=Path("x/ari.env"),
        sip_host="127.0.0.1",
        sip_port=5060,
        pid=1,
        engine="rootfs",
        asterisk_version="22",
    )
    assert "hunter2-secret" not in repr(info)


def test_render_without_slots_keeps_the_single_application() -> None:
    overrides = lab_overrides(ari_port=1, sip_port=2, rtp_start=3, rtp_end=4,
                              ari_password="x", app_name="a")
    assert overrides["extensions.conf"]["globals"] == {"ARI_APP": "a", "ARI_SLOTS": "0"}


def test_render_refuses_negative_slots() -> None:
    with pytest.raises(ValueError, match="slots"):
        lab_overrides(ari_port=1, sip_port=2, rtp_start=3, rtp_end=4, ari_password="x",
                      app_name="a", slots=-1)


def test_lab_command_passes_slots_to_the_lab() -> None:
    from bridge.cli import _lab_opts, _parser

    args = _parser().parse_args(["lab", "up", "--slots", "4", "--state-dir", "/tmp/x"])
    assert _lab_opts(args).slots == 4
    assert _lab_opts(_parser().parse_args(["lab", "up"])).slots == 0
    assert _lab_opts(_parser().parse_args(["demo"])).slots == 0
