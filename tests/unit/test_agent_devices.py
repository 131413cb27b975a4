"""agents.devices: configuration errors name the key; provisioning builds the PJSIP objects,
keeps going past a failing device and never logs a password."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from bridge.agents.devices import DeviceProvisioner, aor_fields, endpoint_fields
from bridge.ari.errors import AriError, AriUnavailable
from bridge.config import ConfigError, load_config


def devices(*items: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    return load_config(None, environ=environ or {},
                       overrides={"agents": {"devices": list(items)}}).agents.devices


class FakeGateway:
    def __init__(self, fail: dict[tuple[str, str], AriError] | None = None) -> None:
        self.puts: list[tuple[str, str, str, dict[str, str]]] = []
        self.fail = fail or {}

    async def put_dynamic_config(self, config_class: str, object_type: str, object_id: str,
                                 fields: dict[str, str]) -> None:
        self.puts.append((config_class, object_type, object_id, fields))
        error = self.fail.get((object_type, fields.get("auth_type", object_id)))
        if error is not None:
            raise error


def test_password_from_config_or_environment() -> None:
    a, b = devices({"name": "gauravjfb55d386", "password": "s3cret"},
                   {"name": "b", "password_env": "B_PW"}, environ={"B_PW": "from-env"})
    assert a.secret() == "s3cret" and b.secret() == "from-env"
    assert "s3cret" not in repr(a) and "from-env" not in repr(b)


@pytest.mark.parametrize(("item", "environ", "message"), [
    ({"name": "a", "password_env": "A_PW"}, {},
     "agents.devices.0.password_env: Value error, environment variable A_PW is not set"),
    ({"name": "a"}, {}, "agents.devices.0: Value error, device 'a': set exactly one of "
                        "password and password_env"),
    ({"name": "a", "password": "x", "password_env": "A_PW"}, {"A_PW": "y"},
     "set exactly one of password and password_env"),
    ({"name": "a", "password": ""}, {}, "agents.devices.0.password: Value error, must not be "
                                        "empty"),
    ({"name": "a b", "password": "x"}, {}, "agents.devices.0.name: String should match"),
    ({"name": "a/../b", "password": "x"}, {}, "agents.devices.0.name: String should match"),
    ({"name": "a", "password": "x", "codecs": ["g729"]}, {}, "agents.devices.0.codecs.0:"),
    ({"name": "a", "password": "x", "qualify_frequency_s": -1}, {},
     "agents.devices.0.qualify_frequency_s:"),
    ({"name": "a", "password": "x", "pasword": "y"}, {}, "agents.devices.0.pasword: Extra"),
])
def test_config_errors_name_the_key(item: dict[str, Any], environ: dict[str, str],
                                    message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as err:
        devices(item, environ=environ)
    assert message in str(err.value)


def test_duplicate_device_names_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        devices({"name": "a", "password": "x"}, {"name": "a", "password": "y"})
    assert "agents.devices: Value error, duplicate device name 'a'" in str(err.value)


def test_objects_of_a_device() -> None:
    (device,) = devices({"name": "dev1", "password": "x"})
    assert aor_fields(device) == {"max_contacts": "1", "remove_existing": "yes",
                                  "qualify_frequency": "0"}
    fields = endpoint_fields(device)
    assert fields["auth"] == fields["aors"] == "dev1"
    assert fields["context"] == "from-trunk" and fields["allow"] == "!all,ulaw,alaw"
    assert fields["dtmf_mode"] == "rfc4733" and fields["direct_media"] == "no"
    assert fields["rtp_symmetric"] == "yes" and "transport" not in fields
    (other,) = devices({"name": "d", "password": "x", "nat": False, "codecs": ["alaw"],
                        "transport": "transport-udp", "context": "agents"})
    fields = endpoint_fields(other)
    assert fields["rewrite_contact"] == fields["rtp_symmetric"] == "no"
    assert fields["allow"] == "!all,alaw" and fields["transport"] == "transport-udp"
    assert fields["context"] == "agents"


async def test_provisioning_creates_auth_aor_endpoint_in_order() -> None:
    gateway = FakeGateway()
    provisioner = DeviceProvisioner(gateway, devices(  # type: ignore[arg-type]
        {"name": "a", "password": "pa"}, {"name": "b", "password": "pb"}))
    report = await provisioner.provision()
    assert report.provisioned == ["a", "b"] and report.failed == {}
    assert [(c, t, i) for c, t, i, _ in gateway.puts] == [
        ("res_pjsip", "auth", "a"), ("res_pjsip", "aor", "a"), ("res_pjsip", "endpoint", "a"),
        ("res_pjsip", "auth", "b"), ("res_pjsip", "aor", "b"), ("res_pjsip", "endpoint", "b")]
    assert gateway.puts[0][3] == {"auth_type": "digest", "username": "a", "password": "pa"}
    assert provisioner.passes == 1


async def test_older_asterisk_gets_userpass_auth() -> None:
    gateway = FakeGateway({("auth", "digest"): AriError("PUT", "x", 400, "failed field "
                                                                       "value validation")})
    provisioner = DeviceProvisioner(gateway, devices(  # type: ignore[arg-type]
        {"name": "a", "password": "pa"}, {"name": "b", "password": "pb"}))
    report = await provisioner.provision()
    assert report.provisioned == ["a", "b"]
    auth_types = [f["auth_type"] for _, t, _, f in gateway.puts if t == "auth"]
    assert auth_types == ["digest", "userpass", "userpass"]  # remembered after the first


async def test_a_failing_device_is_reported_and_the_others_provisioned() -> None:
    gateway = FakeGateway({("endpoint", "trunk-in"): AriError(
        "PUT", "x", 403, "Cannot update sorcery objects of type 'endpoint'")})
    provisioner = DeviceProvisioner(gateway, devices(  # type: ignore[arg-type]
        {"name": "trunk-in", "password": "hunter2-secret"}, {"name": "b", "password": "pb"}))
    with structlog.testing.capture_logs() as logs:
        report = await provisioner.provision()
    assert report.provisioned == ["b"]
    assert "endpoint trunk-in" in report.failed["trunk-in"]
    assert "pjsip.conf" in report.failed["trunk-in"]
    failed = [e for e in logs if e["event"] == "devices.provision_failed"]
    assert failed and failed[0]["device"] == "trunk-in"
    assert "hunter2-secret" not in repr(logs) and "pb" not in repr(logs)


async def test_asterisk_going_away_ends_the_pass() -> None:
    gateway = FakeGateway({("aor", "a"): AriUnavailable("PUT", "x", None, "closed")})
    provisioner = DeviceProvisioner(gateway, devices(  # type: ignore[arg-type]
        {"name": "a", "password": "pa"}, {"name": "b", "password": "pb"}))
    report = await provisioner.provision()
    assert report.provisioned == [] and list(report.failed) == ["a"]
    assert all(i == "a" for _, _, i, _ in gateway.puts)  # b waits for the next connect


async def test_no_devices_no_requests() -> None:
    gateway = FakeGateway()
    report = await DeviceProvisioner(gateway, []).provision()  # type: ignore[arg-type]
    assert report.provisioned == [] and gateway.puts == []
