"""The operator console in a real browser (Debian's chromium, driven by selenium) while real
calls go through the lab: calls appear, change state and leave the live list, and a call's
timeline shows its webhook exchanges and NCCO actions. The page is also photographed; with
``ARI_BRIDGE_SCREENSHOT=1`` the picture replaces the README's (docs/console.png).

Selenium's calls block, so they run in a thread while the bridge keeps serving on the loop.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import BridgeService
from bridge.config import Config
from bridge.lab.sipp import Agent
from tests.integration.conftest import bridge_config
from tests.integration.harness import Reply, WebhookApp, new_number

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "console-test-token-0123456789"
USER, PASSWORD = "ops", "ops-password-1"
#: Where the README's picture of the page goes: only when asked (``ARI_BRIDGE_SCREENSHOT=1``),
#: so that a test run never changes a tracked file.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
AGENT_PREFIX = "4477009"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("the console tests need Debian's chromium and chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1120", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def console_bridge(lab, webhooks: WebhookApp, tmp_path: Path
                         ) -> AsyncIterator[tuple[BridgeService, Agent]]:
    async with Agent(200, ring_ms=400, hangup_after_ms=5000) as agent:
        base = bridge_config(lab, webhooks, tmp_path, routes={AGENT_PREFIX: agent.port})
        data = base.model_dump(by_alias=True)
        data["ari"]["password"] = base.ari.password.get_secret_value()
        data["console"] = {"enabled": True, "token": TOKEN, "users": {USER: PASSWORD}}
        data["agents"] = {"devices": [{"name": f"desk{uuid.uuid4().hex[:8]}",
                                       "password": "device-password-1"}]}
        service = BridgeService(Config.model_validate(data))
        await service.start()
        assert await service.gateway.wait_connected(20), service.gateway.last_error
        try:
            yield service, agent
        finally:
            await service.stop()


# JavaScript run in the page: the rows of a table as lists of cell texts.
ROWS = """return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(
    tr => [tr.dataset.uuid || '', ...[...tr.cells].map(td => td.textContent)]);"""


def wait_for(driver: Any, condition: Any, timeout: float = 30.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def watch_calls(driver: Any, numbers: dict[str, str], connect_number: str,
                shot: Path, timeout: float = 60.0) -> dict[str, list[tuple[str, str, str]]]:
    """Read the live table until every number in ``numbers`` has come and gone; return what
    each call's row showed over time ((state, action, legs), one entry per change). When the
    connected call's leg is answered, select the first call and photograph the page."""
    seen: dict[str, list[tuple[str, str, str]]] = {n: [] for n in numbers}
    deadline = time.monotonic() + timeout
    photographed = False
    while time.monotonic() < deadline:
        live = {row[3]: row for row in driver.execute_script(ROWS, "#live-calls")}
        for number in numbers:
            row = live.get(number)
            if row is not None:
                view = (row[5], row[6], row[8])
                if not seen[number] or seen[number][-1] != view:
                    seen[number].append(view)
        bridged = live.get(connect_number)
        first = live.get(next(iter(numbers)))
        if not photographed and bridged is not None and "answered" in bridged[8] \
                and first is not None:
            driver.find_element("css selector", f'#live-calls tr[data-uuid="{first[0]}"]').click()
            wait_for(driver, lambda d: "webhook answer" in d.find_element(
                "id", "timeline").text, 10)
            time.sleep(0.3)  # the next batch of updates paints the durations
            driver.save_screenshot(str(shot))
            photographed = True
        if all(seen[n] for n in numbers) and not any(n in live for n in numbers):
            break
        time.sleep(0.1)
    return seen


async def test_calls_appear_change_state_and_leave_with_their_timeline(
        console_bridge, webhooks, dial, browser, tmp_path):
    service, _agent = console_bridge
    played, bridged, failing = new_number(), new_number(), new_number()
    webhooks.answer(played, [
        {"action": "stream", "streamUrl": [f"{webhooks.url}/audio/tone.wav"], "loop": 2},
        {"action": "talk", "text": "Thank you, goodbye."}])
    webhooks.answer(bridged, [
        {"action": "talk", "text": "Connecting you now."},
        {"action": "connect", "endpoint": [{"type": "phone", "number": AGENT_PREFIX + "0001"}]}])
    webhooks.answer(failing, Reply(status=404))
    webhooks.fallback(failing, Reply(status=500))

    await asyncio.to_thread(browser.get, f"{service.base_url}/console?token={TOKEN}")
    await asyncio.to_thread(wait_for, browser, lambda d: d.find_element("id", "feed").text
                            == "live")
    shot = tmp_path / "console.png"
    watcher = asyncio.create_task(asyncio.to_thread(
        watch_calls, browser, {played: "played", bridged: "bridged"}, bridged, shot))
    calls = await asyncio.gather(dial(played), dial(bridged), dial(failing, expect_status=503))
    seen = await watcher

    assert calls[0].sip.ok and calls[1].sip.ok, (calls[0].sip.errors, calls[1].sip.errors)
    # The played call was seen running each action in turn, then left the live list.
    actions = [action for _, action, _ in seen[played]]
    assert "stream" in actions and "talk" in actions, seen[played]
    assert actions.index("stream") < actions.index("talk"), seen[played]
    assert {state for state, _, _ in seen[played]} >= {"running"}
    # The connected call showed its leg ringing and then answered.
    legs = [leg for _, _, leg in seen[bridged]]
    assert any("answered" in leg for leg in legs), seen[bridged]
    assert shot.exists(), "the page was never photographed with both calls live"
    if os.environ.get("ARI_BRIDGE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(shot.read_bytes())

    # All three are in the ended list with their final status.
    def ended(driver: Any) -> Any:
        rows = {row[3]: row for row in driver.execute_script(ROWS, "#ended-calls")}
        return rows if {played, bridged, failing} <= set(rows) else None
    rows = await asyncio.to_thread(wait_for, browser, ended)
    assert rows[played][5] == "completed"
    assert rows[played][6] == "ncco_done"
    assert rows[failing][6] == "no_ncco"  # why it ended: no NCCO from answer_url or fallback

    # The played call's timeline: the answer_url exchange, then each action with its outcome.
    # The webhook application is shared by the whole session: take only this test's calls.
    uuid_of = {r.query["to"]: r.query["uuid"] for r in webhooks.of("/answer")
               if r.query.get("to") in (played, bridged, failing)}
    await asyncio.to_thread(lambda: browser.find_element(
        "css selector", f'#ended-calls tr[data-uuid="{uuid_of[played]}"]').click())
    await asyncio.to_thread(wait_for, browser, lambda d: "state ending" in d.find_element(
        "id", "timeline").text and uuid_of[played] in d.find_element("id", "timeline-title").text)
    lines = await asyncio.to_thread(lambda: [
        li.text for li in browser.find_elements("css selector", "#timeline li")])
    text = "\n".join(lines)
    assert f"webhook answer GET {webhooks.url}/answer" in text
    assert "→ 200" in text
    answer_at = next(i for i, line in enumerate(lines) if "webhook answer" in line)
    stream_at = next(i for i, line in enumerate(lines) if "action stream #0 started" in line)
    talk_at = next(i for i, line in enumerate(lines) if "action talk #1 started" in line)
    assert answer_at < stream_at < talk_at, text
    assert "action stream #0 finished" in text
    assert any("webhook event POST" in line for line in lines), text  # status events too


async def test_the_json_view_shows_the_failover_and_needs_credentials(
        console_bridge, webhooks, dial):
    service, _ = console_bridge
    number = new_number()
    webhooks.answer(number, Reply(status=503))
    webhooks.fallback(number, [{"action": "talk", "text": "Sorry, please call later."}])

    call = await dial(number)
    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    call_uuid = next(r.query["uuid"] for r in webhooks.of("/answer")
                     if r.query.get("to") == number)

    url = f"{service.base_url}/v1/console/calls/{call_uuid}"
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    async with aiohttp.ClientSession() as http:
        for path in ("/console", "/v1/console/calls", f"/v1/console/calls/{call_uuid}",
                     "/v1/console/events"):
            async with http.get(service.base_url + path) as resp:
                assert resp.status == 401, path
        async with http.get(url, headers={"Authorization": auth}) as resp:
            assert resp.status == 200
            detail = await resp.json()
    hooks = [(e["webhook"], e["response"]["status"]) for e in detail["timeline"]
             if e["kind"] == "webhook" and e["webhook"] in ("answer", "fallback")]
    # 503 is retried once (Vonage's rule), then the fallback answers with the NCCO.
    assert hooks == [("answer", 503), ("fallback", 200)]
    fallback = next(e for e in detail["timeline"] if e.get("webhook") == "fallback")
    assert fallback["request"]["data"]["reason"] == "http 503"
    assert "Sorry, please call later." in fallback["response"]["body"]
    assert detail["final_status"] == "completed"
    assert [e["action"] for e in detail["timeline"]
            if e["kind"] == "action" and e["phase"] == "start"] == ["talk"]


async def test_with_the_console_off_its_routes_do_not_exist(bridge):
    async with aiohttp.ClientSession() as http:
        for path in ("/console", "/v1/console/state", "/v1/console/events"):
            async with http.get(f"{bridge.base_url}{path}?token={TOKEN}") as resp:
                assert resp.status == 404, path
