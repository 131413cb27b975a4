"""Configuration: one YAML file plus environment; every error names its key."""

from __future__ import annotations

from pathlib import Path

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


def test_the_documented_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    config = load_config(example, environ={})
    assert config.application_for_number("442079460000") is not None
    assert config.events.retention_s == 24 * 3600.0


def test_events_defaults_and_environment() -> None:
    config = load_config(None, environ={"ARI_BRIDGE_EVENTS__RETENTION_HOURS": "2",
                                        "ARI_BRIDGE_EVENTS__MAX_IN_FLIGHT": "8"})
    assert config.events.retention_s == 7200.0 and config.events.max_in_flight == 8
    assert (config.events.retry_base_s, config.events.retry_cap_s) == (0.5, 30.0)
