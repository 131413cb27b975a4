"""Bridges as child processes (``ari-bridge serve``), and direct ARI requests, for the tests
that kill, restart or run several bridges."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bridge.lab import LabInfo
from bridge.lab.sipp import free_port
from tests.integration.conftest import bridge_config
from tests.integration.harness import WebhookApp


async def poll(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


class BridgeProcess:
    """``ari-bridge serve`` as a child process, with a configuration file written by the test.

    Every start uses the same HTTP port, store and media folder: what a restarted service
    finds. Its output goes to ``log`` (shown when a test fails)."""

    def __init__(self, config: dict[str, Any], folder: Path) -> None:
        self.config_path = folder / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = folder / "bridge.log"
        self.url = f"http://127.0.0.1:{config['http']['port']}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        command = Path(sys.executable).parent / "ari-bridge"
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(command), "serve", "--config", str(self.config_path),
                stdout=out, stderr=asyncio.subprocess.STDOUT)
        await poll(self.healthy, timeout=30)

    async def healthy(self) -> bool:
        assert self.proc is not None and self.proc.returncode is None, self.output()
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as http, http.get(f"{self.url}/healthz") as resp:
                return resp.status == 200
        return False

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # our own child, by PID
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()  # our own child, by PID
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                await self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def process_config(lab: LabInfo, webhooks: WebhookApp, folder: Path,
                   **media: Any) -> dict[str, Any]:
    base = bridge_config(lab, webhooks, folder)
    data = base.model_dump(mode="json", by_alias=True)
    data["ari"]["password"] = base.ari.password.get_secret_value()
    data["http"]["port"] = free_port(socket.SOCK_STREAM)
    data["media"].update(media)
    return data


async def ari_hangup(lab: LabInfo, channel_id: str) -> None:
    token = base64.b64encode(f"{lab.ari_username}:{lab.ari_password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http, \
            http.delete(f"{lab.ari_url}/ari/channels/{channel_id}"):
        pass


async def ari_channel_ids(lab: LabInfo) -> list[str]:
    token = base64.b64encode(f"{lab.ari_username}:{lab.ari_password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http, \
            http.get(f"{lab.ari_url}/ari/channels") as resp:
        return [c["id"] for c in await resp.json()]
