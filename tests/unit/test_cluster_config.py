"""The cluster's configuration: the shared call store, slots, heartbeats and several Asterisk
nodes; every error names its key."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bridge.config import Config, ConfigError, load_config
from bridge.preflight import describe_stores, run_checks


def empty_password_warnings(config: Config) -> list[str]:
    return [w for w in run_checks(config).warnings if "password is empty" in w]

CLUSTER = """
store:
  backend: redis
  redis_url: redis://:hunter2@127.0.0.1:6379/0
agents:
  backend: redis
  redis_url: redis://127.0.0.1:6379/0
cluster:
  enabled: true
  slots: 8
  heartbeat_s: 0.5
  dead_after_s: 2
  instance_id: bridge-a
ari:
  app: ari-bridge
  nodes:
    - {name: a, url: http://10.0.0.1:8088, password: first}
    - {name: b, url: https://10.0.0.2:8089, username: other, password: second}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_cluster_configuration_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CLUSTER), environ={})
    assert config.store.backend == "redis"
    assert config.store.redis_prefix == "ari-bridge:"
    assert config.cluster.slots == 8 and config.cluster.instance() == "bridge-a"
    assert [config.stasis_app(k) for k in (1, 8)] == ["ari-bridge-1", "ari-bridge-8"]


def test_defaults_are_one_bridge_on_sqlite() -> None:
    config = Config()
    assert config.store.backend == "sqlite" and config.store.redis_url is None
    assert not config.cluster.enabled
    assert (config.cluster.slots, config.cluster.heartbeat_s, config.cluster.dead_after_s) == (
        4, 1.0, 3.0)
    assert config.stasis_app(3) == "ari-bridge"  # the slot means nothing outside a cluster
    assert config.cluster.instance() == f"{socket.gethostname()}-{os.getpid()}"
    [single] = config.ari.node_configs()
    assert single is config.ari and single.name == "asterisk"


def test_each_node_gets_its_address_and_credentials_over_the_shared_settings(
        tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CLUSTER + "  request_timeout_s: 7\n"), environ={})
    a, b = config.ari.node_configs()
    assert (a.name, a.url, a.username, a.password.get_secret_value()) == (
        "a", "http://10.0.0.1:8088", "ari-bridge", "first")
    assert (b.name, b.url, b.username, b.password.get_secret_value()) == (
        "b", "https://10.0.0.2:8089", "other", "second")
    assert a.request_timeout_s == b.request_timeout_s == 7.0
    assert a.app == b.app == "ari-bridge" and a.nodes == b.nodes == []


def test_a_node_password_comes_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CLUSTER),
                         environ={"ARI_BRIDGE_ARI__NODES__B__PASSWORD": "from-env"})
    passwords = {n.name: n.password.get_secret_value() for n in config.ari.node_configs()}
    assert passwords == {"a": "first", "b": "from-env"}
    # Only in the environment (the file names the node, not its password).
    no_password = CLUSTER.replace("username: other, password: second", "username: other")
    config = load_config(write(tmp_path, no_password),
                         environ={"ARI_BRIDGE_ARI__NODES__B__PASSWORD": "env-only"})
    assert config.ari.node_configs()[1].password.get_secret_value() == "env-only"
    with pytest.raises(ConfigError, match="ARI_BRIDGE_ARI__NODES__C: no item with name"):
        load_config(write(tmp_path, CLUSTER),
                    environ={"ARI_BRIDGE_ARI__NODES__C__PASSWORD": "x"})


@pytest.mark.parametrize(("old", "new", "key"), [
    ("  backend: redis\n  redis_url: redis://:hunter2", "  backend: sqlite\n  redis_url: redis://:h",
     "cluster.enabled: needs store.backend: redis"),
    ("agents:\n  backend: redis", "agents:\n  backend: sqlite",
     "cluster.enabled: needs agents.backend: redis"),
    ("  redis_url: redis://:hunter2@127.0.0.1:6379/0\n", "", "store.redis_url: required"),
    ("redis://:hunter2@", "http://", "store.redis_url"),
    ("slots: 8", "slots: 0", "cluster.slots"),
    ("slots: 8", "slots: 65", "cluster.slots"),
    ("heartbeat_s: 0.5", "heartbeat_s: 0", "cluster.heartbeat_s"),
    ("dead_after_s: 2", "dead_after_s: 0.9", "cluster.dead_after_s (0.9) must be at least"),
    ("instance_id: bridge-a", "instance_id: 'bridge a'", "cluster.instance_id"),
    ("{name: b,", "{name: a,", "duplicate node name 'a'"),
    ("{name: b,", "{name: 'b/2',", "ari.nodes.1.name"),
    ("https://10.0.0.2:8089", "10.0.0.2:8089", "ari.nodes.1.url"),
    ("username: other, password: second", "username: other", "ari.nodes.1.password"),
])
def test_invalid_cluster_settings_name_the_key(tmp_path: Path, old: str, new: str,
                                               key: str) -> None:
    assert old in CLUSTER
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, CLUSTER.replace(old, new)), environ={})
    assert key in str(caught.value)


def test_stores_are_described_without_passwords_and_sqlite_is_not_opened(
        tmp_path: Path) -> None:
    # A store.path no SQLite file can be made at: the redis backend must not care.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = load_config(write(tmp_path, CLUSTER), environ={
        "ARI_BRIDGE_STORE__PATH": str(blocker / "calls.sqlite3"),
        "ARI_BRIDGE_MEDIA__PATH": str(tmp_path / "media"),
        "ARI_BRIDGE_RECORDINGS__PATH": str(tmp_path / "rec")})
    calls = describe_stores(config)[0]
    assert calls == {"store": "calls", "backend": "redis",
                     "url": "redis://:***@127.0.0.1:6379/0", "prefix": "ari-bridge:"}
    assert not [e for e in run_checks(config).errors if "store" in e]

    sqlite_config = config.model_copy(update={"store": config.store.model_copy(
        update={"backend": "sqlite"})})
    assert any(e.startswith("store.path") for e in run_checks(sqlite_config).errors)


def test_an_empty_node_password_is_warned_about_by_node(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CLUSTER.replace("password: first", "password: ''")),
                         environ={})
    # The shared ari.password is not used with nodes: no warning about it.
    assert empty_password_warnings(config) == [
        "ari.nodes.a.password is empty: set ARI_BRIDGE_ARI__NODES__A__PASSWORD, or that "
        "Asterisk will refuse the connection"]
