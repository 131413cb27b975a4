"""The service's event loop: uvloop when installed and wanted, asyncio's own when switched off
(``service.uvloop: false`` or ARI_BRIDGE_SERVICE__UVLOOP=false)."""

from __future__ import annotations

import asyncio
import gc

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


def test_once_up_the_startup_heap_leaves_the_collector_and_young_collections_are_rarer(
) -> None:
    from bridge.cli import GC_YOUNG_THRESHOLD, settle_garbage_collector
    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 1000  # the modules' objects at least
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
