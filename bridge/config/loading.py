"""Reading the configuration: the YAML file, then the environment, then explicit overrides,
validated in one go so that every error names its key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bridge.config.env import _apply_env
from bridge.config.root import Config
from bridge.config.sections import ConfigError


def _format_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"{loc}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read ``path`` (YAML), apply ``ARI_BRIDGE_*`` variables, then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            # Bytes: the YAML reader detects the encoding and reports bad bytes as YAML errors.
            loaded = yaml.safe_load(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    environ = os.environ if environ is None else environ
    data = _apply_env(data, environ)
    if overrides:
        data = _merge(data, dict(overrides))
    try:
        # The environment also resolves agents.devices[].password_env.
        return Config.model_validate(data, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
