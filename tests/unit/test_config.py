"""Configuration: one YAML file plus environment; every error names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import ConfigError, load_config

GOOD = """
ari:
  url: http://127.0.0.1:8088
  username: ari-bridge
applications:
  - id: shop
    answer_url: https://shop.example/answer
    event_url: https://shop.example/event
    timeouts: {connect_ms: 500, answer_read_ms: 2000}
numbers:
  "442079460000": shop
  "*": shop
trunks:
  - {name: uk, host: 127.0.0.2}
  - {name: world, host: 127.0.0.3, port: 5080}
routes:
  - {prefix: "", trunk: world}
  - {prefix: "44", trunk: uk}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_file_and_environment_make_one_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={"ARI_BRIDGE_ARI__PASSWORD": "s3cret",
                                                        "ARI_BRIDGE_HTTP__PORT": "9090"})
    assert config.ari.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    assert config.http.port == 9090
    assert config.application_for_number("+442079460000").id == "shop"  # type: ignore[union-attr]
    assert config.route_for("+447700900000").name == "uk"  # type: ignore[union-attr]
    assert config.route_for("15551234567").name == "world"  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "key"), [
    (GOOD.replace("connect_ms: 500", "connect_ms: 5000"), "applications.0.timeouts.connect_ms"),
    (GOOD.replace("    timeouts:", "    ring_after_ms: -1\n    timeouts:"),
     "applications.0.ring_after_ms"),
    (GOOD.replace("    timeouts:", "    ring_after_ms: 5001\n    timeouts:"),
     "applications.0.ring_after_ms"),
    (GOOD.replace("https://shop.example/answer", "shop.example/answer"),
     "applications.0.answer_url"),
    (GOOD.replace('"*": shop', '"*": nobody'), "numbers.*: unknown application 'nobody'"),
    (GOOD.replace("trunk: uk", "trunk: mars"), "routes.1.trunk: unknown trunk 'mars'"),
    (GOOD + "\nbogus: 1\n", "bogus"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    ("ari: [unclosed\n", "not valid YAML"),
    (GOOD + "\nevents: {retention_hours: 0}\n", "events.retention_hours"),
    (GOOD + "\nevents: {retry_base_s: -1}\n", "events.retry_base_s"),
    (GOOD + "\nevents: {retry_cap_s: 0}\n", "events.retry_cap_s"),
    (GOOD + "\nevents: {max_in_flight: 0}\n", "events.max_in_flight"),
    (GOOD + "\nevents: {retry_base_s: 10, retry_cap_s: 5}\n",
     "events.retry_cap_s (5.0) must not be below events.retry_base_s (10.0)"),
])
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    assert key in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", environ={})


APPLET = {"connect_applets": {"+918044001234": {"primary_url": "https://crm.example/agents",
                                                "application": "shop"}}}


@pytest.mark.parametrize(("overrides", "tracks"), [
    ({}, False),  # nothing reads the marks: no applets, the agent file is this bridge's own
    (APPLET, True),
    ({"agents": {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"}}, True),
    ({"agents": {"path": "/var/lib/ari-bridge/shared-agents.sqlite3"}}, True),
    ({"agents": {"track_all_calls": True}}, True),
    ({**APPLET, "agents": {"track_all_calls": False}}, False),
])
def test_every_calls_party_is_marked_busy_where_something_reads_the_marks(
        tmp_path: Path, overrides: dict[str, Any], tracks: bool) -> None:
    config = load_config(write(tmp_path, GOOD), environ={}, overrides=overrides)
    assert config.tracks_all_calls() is tracks


def test_track_all_calls_from_the_environment(tmp_path: Path) -> None:
    for value, tracks in (("false", False), ("true", True), ("auto", False)):
        config = load_config(write(tmp_path, GOOD),
                             environ={"ARI_BRIDGE_AGENTS__TRACK_ALL_CALLS": value})
        assert config.tracks_all_calls() is tracks, value


def test_the_documented_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    config = load_config(example, environ={})
    assert config.application_for_number("442079460000") is not None
    assert config.events.retention_s == 24 * 3600.0


# ------------------------------------------------------------------ environment overrides
APPS = """
applications:
  - id: my-app
    answer_url: https://shop.example/answer
  - id: Billing.EU
    answer_url: https://billing.example/answer
    timeouts: {connect_ms: 500}
trunks:
  - {name: uk-carrier, host: 127.0.0.2}
routes:
  - {prefix: "44", trunk: uk-carrier}
agents:
  devices:
    - {name: alice, password: first-secret}
numbers:
  "+442079460000": my-app
connect_applets:
  "+918047091234": {application: my-app, primary_url: "https://shop.example/applet"}
"""


def test_an_application_is_addressed_by_its_id(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, APPS), environ={
        "ARI_BRIDGE_APPLICATIONS__MY_APP__SIGNATURE_SECRET": "my-app-secret",
        # dots, like dashes, become underscores; case does not matter
        "ari_bridge_applications__billing_eu__timeouts__connect_ms": "800",
        "ARI_BRIDGE_APPLICATIONS__BILLING_EU__EVENT_URL": "https://billing.example/event",
    })
    shop, billing = config.applications
    assert shop.signature_secret is not None
    assert shop.signature_secret.get_secret_value() == "my-app-secret"
    assert billing.signature_secret is None
    assert billing.timeouts.connect_ms == 800
    assert billing.timeouts.answer_read_ms == 5000  # the rest of the item is the file's
    assert billing.event_url == "https://billing.example/event"
    assert shop.answer_url == "https://shop.example/answer"


def test_other_lists_and_mappings_are_reachable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, APPS), environ={
        "ARI_BRIDGE_TRUNKS__UK_CARRIER__PORT": "5080",
        "ARI_BRIDGE_ROUTES__0__PREFIX": "4420",  # no id: by position
        "ARI_BRIDGE_AGENTS__DEVICES__ALICE__PASSWORD": "from-env",
        "ARI_BRIDGE_AGENTS__DEVICES__ALICE__CODECS": '["alaw"]',  # a list, as JSON
        "ARI_BRIDGE_AGENTS__CALLER_IDS": '["+918047091234"]',
        # a mapping key is matched the same way: "+" is "_"
        "ARI_BRIDGE_CONNECT_APPLETS___918047091234__RING_TIMEOUT_S": "20",
        "ARI_BRIDGE_NUMBERS__15551230000": "my-app",  # a new key, as before
    })
    assert config.trunks[0].port == 5080
    assert config.routes[0].prefix == "4420"
    assert config.agents.devices[0].secret() == "from-env"
    assert config.agents.devices[0].codecs == ["alaw"]
    assert config.agents.caller_ids == ["+918047091234"]
    assert config.connect_applets["+918047091234"].ring_timeout_s == 20
    assert set(config.numbers) == {"+442079460000", "15551230000"}


def test_existing_section_variables_keep_working(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, APPS), environ={
        "ARI_BRIDGE_ARI__URL": "http://127.0.0.1:8089",
        "ARI_BRIDGE_ARI__PASSWORD": "pw",
        "ARI_BRIDGE_LOG__JSON": "true",
        "ARI_BRIDGE_LOG__LEVEL": "debug",
        "ARI_BRIDGE_AGENTS__BACKEND": "redis",
        "ARI_BRIDGE_AGENTS__REDIS_URL": "redis://127.0.0.1:6379/0",
        "ARI_BRIDGE_STORE__PATH": str(tmp_path / "calls.sqlite3"),
        "ARI_BRIDGE_CONFIG": "/etc/ari-bridge/config.yaml",  # not a setting: ignored
        "OTHER_ARI_BRIDGE_ARI__URL": "not ours",
    })
    assert config.ari.url == "http://127.0.0.1:8089"
    assert config.log.json_output is True and config.log.level == "debug"
    assert config.agents.backend == "redis"
    assert config.store.path == tmp_path / "calls.sqlite3"


def test_a_whole_list_may_be_given_as_json() -> None:
    config = load_config(None, environ={
        "ARI_BRIDGE_APPLICATIONS": '[{"id": "env-app", "answer_url": "https://e.example/a"}]',
        "ARI_BRIDGE_NUMBERS": '{"*": "env-app"}',
    })
    assert [a.id for a in config.applications] == ["env-app"]
    assert config.application_for_number("123") is config.applications[0]


@pytest.mark.parametrize(("environ", "message"), [
    ({"ARI_BRIDGE_APPLICATIONS__NO_SUCH_APP__SIGNATURE_SECRET": "x"},
     "ARI_BRIDGE_APPLICATIONS__NO_SUCH_APP: no item with id 'NO_SUCH_APP' in the configuration "
     "(have: 'my-app', 'Billing.EU')"),
    ({"ARI_BRIDGE_ROUTES__3__PREFIX": "1"}, "ARI_BRIDGE_ROUTES__3: no item 3"),
    ({"ARI_BRIDGE_APPLICATIONS__MY_APP__SIGNATURE_SECRT": "x"},
     "applications.0.signature_secrt"),
    ({"ARI_BRIDGE_ARI__PASWORD": "x"}, "ari.pasword"),
    ({"ARI_BRIDGE_AGENTS__CALLER_IDS": "+918047091234"},
     "ARI_BRIDGE_AGENTS__CALLER_IDS: must be JSON"),
    ({"ARI_BRIDGE_ARI__PASSWORD": "a", "ari_bridge_ari__password": "b"},
     "both set the same setting"),
    ({"ARI_BRIDGE_AGENTS": '{"lease_s": 5}', "ARI_BRIDGE_AGENTS__LEASE_S": "6"},
     "both set the same setting"),
])
def test_a_wrong_variable_is_named(tmp_path: Path, environ: dict[str, str],
                                   message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, APPS), environ=environ)
    assert message in str(caught.value)


def test_ids_that_differ_only_by_punctuation_are_ambiguous(tmp_path: Path) -> None:
    text = APPS.replace("id: Billing.EU", "id: my_app")
    with pytest.raises(ConfigError, match="ambiguous, matches 'my-app', 'my_app'"):
        load_config(write(tmp_path, text),
                    environ={"ARI_BRIDGE_APPLICATIONS__MY_APP__EVENT_URL": "https://x.example/"})



def test_events_defaults_and_environment() -> None:
    config = load_config(None, environ={"ARI_BRIDGE_EVENTS__RETENTION_HOURS": "2",
                                        "ARI_BRIDGE_EVENTS__MAX_IN_FLIGHT": "8"})
    assert config.events.retention_s == 7200.0 and config.events.max_in_flight == 8
    assert (config.events.retry_base_s, config.events.retry_cap_s) == (0.5, 30.0)
