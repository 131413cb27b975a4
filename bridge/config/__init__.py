"""One validated configuration: a YAML file plus environment overrides.

Environment variables named ``ARI_BRIDGE_<SECTION>__<KEY>`` override the file, for example
``ARI_BRIDGE_ARI__PASSWORD``; secrets belong there rather than in the file. Names are not
case-sensitive and ``__`` goes one level down, as in pydantic-settings. A list item is addressed
by its id (``id``, else ``name``) spelled as :func:`env_segment` does, so the application
``my-app`` is ``ARI_BRIDGE_APPLICATIONS__MY_APP__SIGNATURE_SECRET``; a list without ids (routes)
by position. A setting that is a list, mapping or section may also be given whole, as JSON.
Every error names the key (or variable) that is wrong, so a bad configuration fails at start and
never in the middle of a call.

The package: ``sections`` (one model per section), ``root`` (:class:`Config`, the whole
document), ``env`` (the environment overrides) and ``loading`` (:func:`load_config`). Every
public name is importable from ``bridge.config``.
"""

from __future__ import annotations

from bridge.config.env import ENV_PREFIX, env_segment
from bridge.config.loading import load_config
from bridge.config.root import Config
from bridge.config.sections import (
    DEFAULT_CODECS,
    DEVICE_NAME_PATTERN,
    AgentsConfig,
    AppletTransition,
    ApplicationConfig,
    AriConfig,
    AriNodeConfig,
    ClusterConfig,
    Codec,
    ConfigError,
    ConnectAppletConfig,
    ConsoleConfig,
    DeviceConfig,
    EventsConfig,
    HttpConfig,
    LogConfig,
    MediaConfig,
    RecordingsConfig,
    RouteConfig,
    ServiceConfig,
    StoreConfig,
    TrunkConfig,
    WebhookTimeouts,
)

__all__ = [
    "DEFAULT_CODECS",
    "DEVICE_NAME_PATTERN",
    "ENV_PREFIX",
    "AgentsConfig",
    "AppletTransition",
    "ApplicationConfig",
    "AriConfig",
    "AriNodeConfig",
    "ClusterConfig",
    "Codec",
    "Config",
    "ConfigError",
    "ConnectAppletConfig",
    "ConsoleConfig",
    "DeviceConfig",
    "EventsConfig",
    "HttpConfig",
    "LogConfig",
    "MediaConfig",
    "RecordingsConfig",
    "RouteConfig",
    "ServiceConfig",
    "StoreConfig",
    "TrunkConfig",
    "WebhookTimeouts",
    "env_segment",
    "load_config",
]
