"""Agent state: who is on a call (busy leases) and who last served a caller (sticky agents).

Two real backends behind one interface (:class:`AgentStore`): embedded SQLite (the default, no
server; bridges on one host may share the file) and Redis (several bridge instances share one
view). See :func:`open_agent_store`.
"""

from bridge.agents.store import (
    AgentStore,
    RedisAgentStore,
    SqliteAgentStore,
    agent_key,
    open_agent_store,
)

__all__ = ["AgentStore", "RedisAgentStore", "SqliteAgentStore", "agent_key", "open_agent_store"]
