"""The lean UUID helpers give exactly what the uuid module gives."""

from __future__ import annotations

import uuid

import pytest

from bridge.ids import name_uuid, random_uuid


def test_random_uuids_are_version_4_in_canonical_form_and_differ() -> None:
    seen = set()
    for _ in range(500):
        text = random_uuid()
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical: lower case, 8-4-4-4-12
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 500


@pytest.mark.parametrize("name", ["playback:0:0:0", "playback:3:12:1", "", "caf\u00e9 \u263a"])
def test_name_uuids_match_uuid5(name: str) -> None:
    for _ in range(50):
        namespace = str(uuid.uuid4())
        assert name_uuid(namespace, name) == str(uuid.uuid5(uuid.UUID(namespace), name))


def test_a_namespace_that_is_not_a_uuid_is_refused() -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        name_uuid("0123", "x")
    with pytest.raises(ValueError):
        name_uuid("not-hex-at-all", "x")
