"""ARI REST client cost: raw aiohttp (what the gateway uses) against aioari's swagger operations.

Both clients send the same requests to the same Asterisk, one at a time, and we count the
client process's CPU time per request (``time.process_time``), which is what a busy bridge pays,
plus the wall time per request (which includes Asterisk's own work).

Standalone (credentials from the lab's ``ari.env``, never printed)::

    python bench/ari_rest.py --env-file /var/tmp/ari-bridge-bench/ari.env [--requests 1000]

``bench/callrate.py`` runs it as one phase of its report.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from pathlib import Path
from typing import Any


async def _timed(label: str, n: int, op: Any) -> dict[str, Any]:
    for _ in range(min(50, n)):  # warm up connections and caches
        await op()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        await op()
        walls.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    return {
        "client": label,
        "requests": n,
        "client_cpu_us_per_request": round(cpu / n * 1e6, 1),
        "wall_us_per_request_p50": round(statistics.median(walls) * 1e6, 1),
        "requests_per_s": round(n / wall, 1),
    }


async def compare(url: str, username: str, password: str, n: int = 1000,
                  rounds: int = 3) -> dict[str, Any]:
    """Alternate the clients for ``rounds`` rounds of ``n // rounds`` requests each (so a
    burst of other load on a shared machine hits both alike); per client the median round."""
    import aioari
    import aiohttp

    base = url.rstrip("/") + "/ari"
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    per_round = max(1, n // rounds)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    client = await aioari.connect(url, username, password)
    connect = {"wall_s": round(time.perf_counter() - t0, 3),
               "client_cpu_s": round(time.process_time() - cpu0, 3)}
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Basic {token}"},
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
        ) as http:

            async def raw_ping() -> None:
                async with http.get(base + "/asterisk/ping") as resp:
                    json.loads(await resp.text())

            async def raw_channels() -> None:
                async with http.get(base + "/channels") as resp:
                    json.loads(await resp.text())

            async def ari_ping() -> None:
                await client.asterisk.ping()

            async def ari_channels() -> None:
                await client.channels.list()

            ops = [
                ("aiohttp GET /asterisk/ping", raw_ping),
                ("aioari asterisk.ping()", ari_ping),
                ("aiohttp GET /channels", raw_channels),
                ("aioari channels.list()", ari_channels),
            ]
            for _ in range(rounds):
                for label, op in ops:
                    runs.setdefault(label, []).append(await _timed(label, per_round, op))
    finally:
        await client.close()
    results = []
    for rows in runs.values():
        rows.sort(key=lambda r: r["client_cpu_us_per_request"])
        best = dict(rows[len(rows) // 2])
        best["requests"] = per_round * rounds
        best["rounds_cpu_us"] = [r["client_cpu_us_per_request"] for r in rows]
        results.append(best)
    return {"aioari_connect": connect, "results": results}


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, required=True,
                        help="ari.env of a lab (ARI_BRIDGE_ARI__* lines)")
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    env = read_env_file(args.env_file)
    report = asyncio.run(compare(
        env["ARI_BRIDGE_ARI__URL"], env["ARI_BRIDGE_ARI__USERNAME"],
        env["ARI_BRIDGE_ARI__PASSWORD"], args.requests,
    ))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
