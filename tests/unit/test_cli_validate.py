"""``ari-bridge validate``: untrusted NCCO files get a clear verdict, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli import main


@pytest.mark.parametrize(("body", "cause"), [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a":' * 50_000, "nested too deeply"),
    (json.dumps([{"action": "notify", "eventUrl": ["http://127.0.0.1:9/n"],
                  "payload": {"d": json.loads("[" * 80 + "]" * 80)}}]).encode(),
     "at most 64 levels"),
])
def test_deeply_nested_ncco_is_invalid_with_its_cause(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, cause: str) -> None:
    ncco = tmp_path / "ncco.json"
    ncco.write_bytes(body)

    assert main(["validate", str(ncco)]) == 1

    err = capsys.readouterr().err
    assert err.startswith("invalid NCCO: ") and cause in err
    assert "Traceback" not in err


def test_a_valid_ncco_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ncco = tmp_path / "ncco.json"
    ncco.write_text(json.dumps([{"action": "talk", "text": "hello"}]))
    assert main(["validate", str(ncco)]) == 0
    assert capsys.readouterr().out.strip() == "valid NCCO: talk"
