"""Every Redis key and channel-layer group name shared by the web tier and agents.

One function per name, so that both sides always agree on the spelling.
"""

from __future__ import annotations

from balancer.pools import DEFAULT_POOL

PREFIX = "paddler:"

# Channel-layer group the default pool's agents join; its desired-state
# changes go to it.
AGENTS_GROUP = "paddler.agents"

# The default pool keeps the names it had before pools existed, so a running
# fleet upgrades without losing its desired state or buffer; other pools'
# names carry the pool.


def agents_group(pool: str = DEFAULT_POOL) -> str:
    """Channel-layer group of one pool's agents (desired-state changes)."""
    return AGENTS_GROUP if pool == DEFAULT_POOL else f"{AGENTS_GROUP}.{pool}"


def agents_set() -> str:
    """Ids of the agents that have registered (members may be stale)."""
    return f"{PREFIX}agents"


def agent_changes() -> str:
    """Pub/sub channel of the agents' reports and heartbeats
    (``registry.AgentChange``), which keep each web process's view current."""
    return f"{PREFIX}agents:changes"


def agent_status(agent_id: str) -> str:
    """The agent's latest status report (JSON); expires without a heartbeat."""
    return f"{PREFIX}agent:{agent_id}:status"


def agent_slots(agent_id: str) -> str:
    """How many slots the agent accepts work for now; expires with the status."""
    return f"{PREFIX}agent:{agent_id}:slots"


def agent_claims(agent_id: str) -> str:
    """Sorted set of request ids holding a slot on the agent, scored by lease end."""
    return f"{PREFIX}agent:{agent_id}:claims"


def agent_holdouts(agent_id: str) -> str:
    """Sorted set of the buffered requests holding out for a slot of the
    agent, scored by arrival time; a slot it frees goes to them first."""
    return f"{PREFIX}agent:{agent_id}:holdouts"


def agent_metadata(agent_id: str) -> str:
    """The GGUF metadata and chat template of the agent's model (JSON)."""
    return f"{PREFIX}agent:{agent_id}:metadata"


def buffer(pool: str = DEFAULT_POOL) -> str:
    """Sorted set of a pool's buffered request ids, scored by arrival time."""
    if pool == DEFAULT_POOL:
        return f"{PREFIX}buffer"
    return f"{PREFIX}pool:{pool}:buffer"


def buffer_holdouts(pool: str = DEFAULT_POOL) -> str:
    """Sorted set of a pool's buffered requests that hold out for the agent
    holding their conversation's cache, scored by arrival time (see
    ``registry``)."""
    if pool == DEFAULT_POOL:
        return f"{PREFIX}buffer:holdouts"
    return f"{PREFIX}pool:{pool}:buffer:holdouts"


def desired_state(pool: str = DEFAULT_POOL) -> str:
    """A pool's applicable desired state (JSON), read by its agents when
    they start."""
    if pool == DEFAULT_POOL:
        return f"{PREFIX}desired_state"
    return f"{PREFIX}pool:{pool}:desired_state"


def web_inbox(web_id: str) -> str:
    """List the agents push token batches to, read by one web process."""
    return f"{PREFIX}web:{web_id}:inbox"


def web_alive(web_id: str) -> str:
    """Heartbeat of one web process; expires when the process dies."""
    return f"{PREFIX}web:{web_id}:alive"


def web_alive_for_inbox(inbox: str) -> str:
    """The heartbeat key of the web process that reads ``inbox``."""
    return inbox.removesuffix(":inbox") + ":alive"


def request_log() -> str:
    """List of the most recent finished requests (JSON records), newest first."""
    return f"{PREFIX}requests"


def metrics_counters() -> str:
    """Hash of tier-wide request counters and histogram buckets (/metrics)."""
    return f"{PREFIX}metrics:counters"


def statsd_reporter() -> str:
    """Lease naming the one web replica that sends the fleet gauges."""
    return f"{PREFIX}metrics:statsd_reporter"


def login_attempts(kind: str, digest: str) -> str:
    """Counter of recent login attempts by one username or from one address
    (``kind``), by the digest of either; expires at the end of its window."""
    return f"{PREFIX}login:{kind}:{digest}"
