"""The service's event loop: uvloop when installed and wanted, asyncio's own when switched off
(``service.uvloop: false`` or ARI_BRIDGE_SERVICE__UVLOOP=false)."""

from __future__ import annotations

import asyncio

import pytest

from bridge.cli import event_loop_factory, run_on_loop
from bridge.config import load_config


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_runs_the_service_by_default() -> None:
    pytest.importorskip("uvloop")
    assert load_config(None, environ={}).service.uvloop is True
    assert run_on_loop(_loop_module(), use_uvloop=True).startswith("uvloop")


def test_switched_off_it_is_asyncios_own_loop() -> None:
    assert event_loop_factory(False) is None
    assert run_on_loop(_loop_module(), use_uvloop=False).startswith("asyncio")


def test_the_environment_switches_it_off() -> None:
    config = load_config(None, environ={"ARI_BRIDGE_SERVICE__UVLOOP": "false"})
    assert config.service.uvloop is False
