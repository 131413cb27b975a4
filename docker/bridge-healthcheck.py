#!/usr/bin/env python3
"""Docker HEALTHCHECK of the bridge image: exit 0 when GET /readyz answers 200, else 1.

The address is the bridge's own: ``http.host`` and ``http.port`` of the configuration file
(``ARI_BRIDGE_CONFIG``, default /etc/ari-bridge/config.yaml), overridden by
``ARI_BRIDGE_HTTP__HOST``/``ARI_BRIDGE_HTTP__PORT`` as the bridge does; a wildcard address
is reached on loopback. Only the standard library and PyYAML, so a check costs a few
milliseconds rather than the bridge's start-up imports.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = "/etc/ari-bridge/config.yaml"
WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def _env(name: str) -> str | None:
    # The bridge reads its variables case-insensitively.
    wanted = name.upper()
    return next((v for k, v in os.environ.items() if k.upper() == wanted), None)


def readyz_url() -> str:
    http: dict[str, Any] = {}
    try:
        data = yaml.safe_load(Path(os.environ.get("ARI_BRIDGE_CONFIG", DEFAULT_CONFIG))
                              .read_bytes())
        if isinstance(data, dict) and isinstance(data.get("http"), dict):
            http = data["http"]
    except (OSError, yaml.YAMLError):  # the bridge would not start either: not ready
        pass
    host = str(_env("ARI_BRIDGE_HTTP__HOST") or http.get("host", "127.0.0.1"))
    port = str(_env("ARI_BRIDGE_HTTP__PORT") or http.get("port", 8080))
    if host in WILDCARDS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    url = readyz_url()
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503: not ready (the body says which check)
        print(f"{url}: {exc.code} {exc.read(500).decode(errors='replace')}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
