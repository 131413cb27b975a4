"""The whole configuration document: its sections, the checks that span sections (numbers
naming applications, routes naming trunks) and the look-ups the service makes per call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from bridge.config.sections import (
    AgentsConfig,
    ApplicationConfig,
    AriConfig,
    ClusterConfig,
    ConnectAppletConfig,
    ConsoleConfig,
    EventsConfig,
    HttpConfig,
    LogConfig,
    MediaConfig,
    RecordingsConfig,
    RouteConfig,
    ServiceConfig,
    StoreConfig,
    TrunkConfig,
    _Strict,
)


class Config(_Strict):
    ari: AriConfig = AriConfig()
    http: HttpConfig = HttpConfig()
    store: StoreConfig = StoreConfig()
    media: MediaConfig = MediaConfig()
    recordings: RecordingsConfig = RecordingsConfig()
    events: EventsConfig = EventsConfig()
    log: LogConfig = LogConfig()
    service: ServiceConfig = ServiceConfig()
    console: ConsoleConfig = ConsoleConfig()
    applications: list[ApplicationConfig] = []
    numbers: dict[str, str] = Field(
        default_factory=dict, description="inbound number -> application id; '*' is the default"
    )
    trunks: list[TrunkConfig] = []
    routes: list[RouteConfig] = []
    agents: AgentsConfig = AgentsConfig()
    connect_applets: dict[str, ConnectAppletConfig] = Field(
        default_factory=dict, description="inbound number -> Exotel Connect applet")
    cluster: ClusterConfig = ClusterConfig()

    def model_post_init(self, __context: Any) -> None:
        ids = [a.id for a in self.applications]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"applications: duplicate id {sorted(dupes)[0]!r}")
        for number, app_id in self.numbers.items():
            if app_id not in ids:
                raise ValueError(f"numbers.{number}: unknown application {app_id!r}")
        trunk_names = {t.name for t in self.trunks}
        for i, route in enumerate(self.routes):
            if route.trunk not in trunk_names:
                raise ValueError(f"routes.{i}.trunk: unknown trunk {route.trunk!r}")
        for number, applet in self.connect_applets.items():
            if applet.application not in ids:
                raise ValueError(f"connect_applets.{number}.application: unknown application "
                                 f"{applet.application!r}")
        if self.cluster.enabled:
            # Every bridge of a cluster must see the others' calls and agents.
            if self.store.backend != "redis":
                raise ValueError("cluster.enabled: needs store.backend: redis (the call store "
                                 "is shared)")
            if self.agents.backend != "redis":
                raise ValueError("cluster.enabled: needs agents.backend: redis (agent leases "
                                 "are shared)")

    def stasis_app(self, slot: int) -> str:
        """The Stasis application of ``slot``: ``<ari.app>-<slot>`` in a cluster, else
        ``ari.app`` (the slot is ignored)."""
        return f"{self.ari.app}-{slot}" if self.cluster.enabled else self.ari.app

    def application(self, app_id: str) -> ApplicationConfig | None:
        return next((a for a in self.applications if a.id == app_id), None)

    def numbers_of(self, app_id: str) -> list[str]:
        """The inbound numbers assigned to an application (its randomFromNumber pool)."""
        return [n for n, a in self.numbers.items() if a == app_id and n != "*"]

    def application_for_number(self, number: str) -> ApplicationConfig | None:
        """The application an inbound call to ``number`` runs: exact match, then '*'."""
        candidates = [number, number.lstrip("+"), "+" + number.lstrip("+"), "*"]
        for key in candidates:
            if key in self.numbers:
                return self.application(self.numbers[key])
        return None

    def applet_for_number(self, number: str) -> ConnectAppletConfig | None:
        """The Exotel Connect applet on inbound number ``number`` (exact, with or without +)."""
        for key in (number, number.lstrip("+"), "+" + number.lstrip("+")):
            if key in self.connect_applets:
                return self.connect_applets[key]
        return None

    def tracks_all_calls(self) -> bool:
        """Whether the remote party of every call is marked busy (``agents.track_all_calls``).

        ``auto`` marks them only where something reads the marks: this bridge's Connect
        applets, or other bridges that share the agent state (Redis, or a SQLite file at a
        path the operator chose, which another bridge may open too). Otherwise each call
        would write and delete a mark that nobody ever reads: two SQLite commits per call.
        """
        setting = self.agents.track_all_calls
        if setting != "auto":
            return setting
        return (bool(self.connect_applets) or self.agents.backend == "redis"
                or self.agents.path is not None)

    def agents_path(self) -> Path:
        return self.agents.path or self.store.path.with_name("agents.sqlite3")

    def route_for(self, number: str) -> TrunkConfig | None:
        """The trunk for ``number`` by longest matching prefix."""
        digits = number.lstrip("+")
        best: RouteConfig | None = None
        for route in self.routes:
            if digits.startswith(route.prefix.lstrip("+")) and (
                best is None or len(route.prefix) > len(best.prefix)
            ):
                best = route
        if best is None:
            return None
        return next(t for t in self.trunks if t.name == best.trunk)
