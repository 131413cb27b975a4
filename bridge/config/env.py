"""Environment overrides: ``ARI_BRIDGE_<SECTION>__<KEY>`` variables laid over the file's data,
following the models' own shape (list items by id, whole values as JSON); see
:mod:`bridge.config`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from bridge.config.root import Config
from bridge.config.sections import ConfigError

ENV_PREFIX = "ARI_BRIDGE_"


def env_segment(key: str) -> str:
    """How a list item's id or a mapping key is spelled inside an environment variable name:
    upper case, every character other than a letter or a digit as ``_`` (``my-app`` ->
    ``MY_APP``, ``+4420`` -> ``_4420``)."""
    return re.sub(r"[^A-Z0-9]", "_", key.upper())


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _model_field(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _item_key(item: Any) -> str | None:
    """The field that names a list item (``id``, else ``name``), if its type has one."""
    item = _unwrap(item)
    if isinstance(item, type) and issubclass(item, BaseModel):
        return next((k for k in ("id", "name") if k in item.model_fields), None)
    return None


def _is_structured(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    return get_origin(annotation) in (list, dict) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel | list | dict))


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    """``ARI_BRIDGE_A__B__C=v`` -> ``{"A": {"B": {"C": ("ARI_BRIDGE_A__B__C", "v")}}}``.

    Names are not case-sensitive: field names are matched in lower case, list ids and mapping
    keys by :func:`env_segment`."""
    tree: dict[str, Any] = {}
    for name, value in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [part for part in name[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        if len(path) == 1 and path[0].lower() not in Config.model_fields:
            continue  # ARI_BRIDGE_CONFIG and the like: not a setting, never was
        node = tree
        for depth, part in enumerate(part.upper() for part in path):
            child = node.get(part)
            if isinstance(child, tuple) or (child is not None and depth == len(path) - 1):
                # ARI_BRIDGE_AGENTS (whole, as JSON) and ARI_BRIDGE_AGENTS__LEASE_S, or two
                # spellings of one name: which wins would be a guess.
                raise ConfigError(f"{_a_name(child)} and {name} both set the same setting; "
                                  "keep one")
            if depth == len(path) - 1:
                node[part] = (name, value)
            else:
                node = node.setdefault(part, {})
    return tree


def _a_name(node: Any) -> str:
    """A variable name inside an ``_env_tree`` node."""
    while isinstance(node, dict):
        node = next(iter(node.values()))
    return str(node[0])


def _decode(name: str, value: str, annotation: Any) -> Any:
    # As pydantic-settings does: a list, mapping or section given whole is JSON.
    if not _is_structured(annotation):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ConfigError(f"{name}: must be JSON for this setting") from None


def _overlay(base: Any, env: Any, annotation: Any, trail: str) -> Any:
    """``base`` (from the file) with the environment's values in ``env`` laid over it.

    ``annotation`` is the type of the setting at this place; ``trail`` the variable name so
    far, for errors."""
    if isinstance(env, tuple):  # a leaf: (variable name, value)
        return _decode(env[0], env[1], annotation)
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out = dict(base) if isinstance(base, dict) else {}
        for part, sub in env.items():
            key = part.lower()
            field = _model_field(annotation, key)
            # An unknown key stays in: validation then rejects it by name, as in the file.
            out[key] = _overlay(out.get(key), sub, field.annotation if field else Any,
                                f"{trail}__{part}" if trail else ENV_PREFIX + part)
        return out
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        return _overlay_items(base, env, item, trail)
    if origin is dict:
        value_type = get_args(annotation)[1] if get_args(annotation) else Any
        out = dict(base) if isinstance(base, dict) else {}
        for part, sub in env.items():
            key = next((k for k in out if env_segment(str(k)) == env_segment(part)),
                       part.lower())
            out[key] = _overlay(out.get(key), sub, value_type, f"{trail}__{part}")
        return out
    # Untyped: nested mappings as they come (lower-case keys), as before.
    out = dict(base) if isinstance(base, dict) else {}
    for part, sub in env.items():
        out[part.lower()] = _overlay(out.get(part.lower()), sub, Any, f"{trail}__{part}")
    return out


def _overlay_items(base: Any, env: dict[str, Any], item: Any, trail: str) -> list[Any]:
    """List items are addressed by their id (``id``, else ``name``), else by position."""
    items = list(base) if isinstance(base, list) else []
    key = _item_key(item)
    for part, sub in env.items():
        here = f"{trail}__{part}"
        matches = [i for i, it in enumerate(items) if key is not None and isinstance(it, dict)
                   and env_segment(str(it.get(key, ""))) == env_segment(part)]
        if len(matches) > 1:
            names = ", ".join(repr(items[i][key]) for i in matches)
            raise ConfigError(f"{here}: ambiguous, matches {names}; give them ids that differ "
                              "by more than dashes, dots or case")
        if matches:
            index = matches[0]
        elif part.isdigit() and int(part) < len(items):
            index = int(part)
        else:
            known = ", ".join(repr(it.get(key)) for it in items
                              if key is not None and isinstance(it, dict)) or "none"
            what = f"no item with {key} {part!r}" if key else f"no item {part}"
            raise ConfigError(f"{here}: {what} in the configuration (have: {known})")
        items[index] = _overlay(items[index], sub, item, here)
    return items


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Lay ``ARI_BRIDGE_*`` variables over the file's data (see the README's rules)."""
    tree = _env_tree(environ)
    if not tree:
        return data
    merged = _overlay(data, tree, Config, "")
    assert isinstance(merged, dict)
    return merged
