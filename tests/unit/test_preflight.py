"""The start checks serve and check-config share: each problem is found and named by key."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Config, load_config
from bridge.preflight import describe_stores, redact_url, run_checks


def config(tmp_path: Path, **overrides: Any) -> Config:
    base: dict[str, Any] = {
        "ari": {"password": "set"},
        "store": {"path": str(tmp_path / "state" / "calls.sqlite3")},
        "media": {"path": str(tmp_path / "state" / "media")},
        "recordings": {"path": str(tmp_path / "state" / "recordings")},
        "applications": [{"id": "shop", "answer_url": "http://127.0.0.1:9/answer"}],
    }
    base.update(overrides)
    return load_config(None, environ={}, overrides=base)


def test_a_fresh_machine_passes_and_nothing_is_created(tmp_path: Path) -> None:
    report = run_checks(config(tmp_path))
    assert report.errors == []
    assert not (tmp_path / "state").exists()  # judged by the nearest existing directory
    assert list(tmp_path.iterdir()) == []  # the probe file is gone too


def test_each_problem_is_named_by_its_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    not_a_db = tmp_path / "calls.sqlite3"
    not_a_db.write_bytes(b"this is not an SQLite database, just bytes" * 100)
    cfg = config(
        tmp_path,
        store={"path": str(not_a_db)},
        media={"path": str(blocker / "media")},
        recordings={"path": str(blocker)},
        agents={"path": str(tmp_path)},  # a directory where the database file should be
        applications=[{"id": "shop", "answer_url": "http://127.0.0.1:9/answer",
                       "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
                      {"id": "billing", "answer_url": "http://127.0.0.1:9/answer",
                       "public_key_path": str(tmp_path / "missing.pem")}],
        connect_applets={"+918047091234": {
            "application": "shop", "primary_url": "http://127.0.0.1:9/applet",
            "after_conversation": {"ncco": [{"action": "talk", "text": "bye",
                                             "voiceName": "NoSuchVoice"}]},
            "nobody_answered": {"ncco": [{"action": "dance"}]},
        }},
    )
    errors = run_checks(cfg).errors
    expected = [
        "applications.shop.public_key: not a PEM public key",
        "applications.billing.public_key_path: cannot read: No such file or directory",
        f"store.path: cannot open {not_a_db} as an SQLite database: file is not a database",
        f"agents.path: {tmp_path} is not a file",
        f"media.path: {blocker} is not a directory",
        f"recordings.path: {blocker} is not a directory",
        "connect_applets.+918047091234.after_conversation.ncco: [0].voiceName:",
        "connect_applets.+918047091234.nobody_answered.ncco: [0]",
    ]
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), (error, start)


def test_redis_backend_needs_a_url_redis_can_use(tmp_path: Path) -> None:
    errors = run_checks(config(tmp_path, agents={"backend": "redis"})).errors
    assert errors == ["agents.redis_url: required for the redis backend"]
    errors = run_checks(config(tmp_path, agents={
        "backend": "redis", "redis_url": "redis://:s3cr3t@127.0.0.1:sixthousand/0"})).errors
    assert len(errors) == 1
    assert errors[0].startswith("agents.redis_url: redis://:***@127.0.0.1:sixthousand/0: ")
    assert "s3cr3t" not in errors[0]
    # A well-formed URL passes without a Redis server: nothing is contacted.
    assert run_checks(config(tmp_path, agents={
        "backend": "redis", "redis_url": "redis://127.0.0.1:9/0"})).ok


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])
def test_http_host_must_be_of_this_machine(tmp_path: Path, host: str) -> None:
    errors = run_checks(config(tmp_path, http={"host": host, "port": 8080})).errors
    assert len(errors) == 1 and errors[0].startswith(f"http.host: cannot listen on {host!r}: ")


def test_a_port_in_use_is_no_obstacle_to_the_check(tmp_path: Path) -> None:
    with socket.socket() as running:  # as if the bridge were already serving
        running.bind(("127.0.0.1", 0))
        running.listen()
        port = running.getsockname()[1]
        assert run_checks(config(tmp_path, http={"host": "127.0.0.1", "port": port})).ok


def test_warnings_do_not_stop_a_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng, sox or ffmpeg here
    report = run_checks(config(tmp_path, ari={"password": ""}))
    assert report.ok
    assert [w.split()[0] for w in report.warnings] == ["espeak-ng", "sox", "ffmpeg",
                                                       "ari.password"]


def test_stores_are_described_without_secrets(tmp_path: Path) -> None:
    sqlite = describe_stores(config(tmp_path))
    assert sqlite == [
        {"store": "calls", "backend": "sqlite", "path": f"{tmp_path}/state/calls.sqlite3"},
        {"store": "agents", "backend": "sqlite", "path": f"{tmp_path}/state/agents.sqlite3"},
    ]
    redis = describe_stores(config(tmp_path, agents={
        "backend": "redis", "redis_url": "rediss://bridge:s3cr3t@10.0.0.5:6380/1"}))
    assert redis[1] == {"store": "agents", "backend": "redis",
                        "url": "rediss://bridge:***@10.0.0.5:6380/1", "prefix": "ari-bridge:"}


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://user@127.0.0.1", "redis://user@127.0.0.1"),
    ("redis://127.0.0.1/0?password=pw&ssl_cert_reqs=none",
     "redis://127.0.0.1/0?password=***&ssl_cert_reqs=none"),
    ("unix://:p%40ss@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
