"""Which agent a request should go to, best first.  Framework-free.

Conversation-aware routing: every request is summarised as a chain of prefix
hashes (one per message of a conversation, one per 256-character block of a
raw prompt).  An agent reports, for each of its slots, the chain of what that
slot's KV cache holds (the request it served plus the answer it generated).
The longer the common chain, the more of the prompt the slot can reuse instead
of evaluating it again.  Both sides compute the chains with the functions
below, so they agree.

An agent also reports the hashes of what its host-memory tier holds (KV
caches saved when their slot was taken by another conversation; see
``agents.host_cache``).  A request whose chain holds one of them can have that
much restored there instead of evaluated: a host-tier match ranks just below a
slot match of the same length (a restore costs a copy, a slot match nothing),
and above any shorter match.

The Lua claim in ``registry`` takes the first candidate that still has a free
slot, so the order returned here is a preference, and the claim the authority.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from balancer.chat_template import message_text
from balancer.contract import Message, PromptParams
from balancer.images import image_urls, url_digest

TEXT_BLOCK = 256
# Slots report at most this many hashes: enough to tell conversations apart.
MAX_PREFIX_HASHES = 64

POLICIES = ("prefix", "least_busy", "round_robin")


def _chain(previous: str, payload: str) -> str:
    return hashlib.blake2b(
        f"{previous}\x00{payload}".encode(), digest_size=8
    ).hexdigest()


def conversation_prefix(messages: list[Message]) -> list[str]:
    """One hash per message, each covering every message before it too.

    A message's hash covers its role, its text and the fingerprints of its
    images in order (``images.url_digest``: the decoded bytes' digest, cached
    so that a large image is decoded once), so the same image in the next
    turn matches and another image does not.  A message without images hashes
    as it did before images existed.
    """
    hashes: list[str] = []
    previous = "conversation"
    for message in messages[:MAX_PREFIX_HASHES]:
        role = str(message.get("role", ""))
        raw = message.get("content", "")
        payload = f"{role}\x00{message_text(raw).strip()}"
        for url in image_urls(raw):
            payload += f"\x00image:{url_digest(url)}"
        previous = _chain(previous, payload)
        hashes.append(previous)
    return hashes


def text_prefix(text: str) -> list[str]:
    """One hash per whole block of ``TEXT_BLOCK`` characters of a raw prompt."""
    hashes: list[str] = []
    previous = "text"
    blocks = min(len(text) // TEXT_BLOCK, MAX_PREFIX_HASHES)
    for index in range(blocks):
        previous = _chain(previous, text[index * TEXT_BLOCK : (index + 1) * TEXT_BLOCK])
        hashes.append(previous)
    return hashes


# Both tiers hash prompts alike: the web tier with a request's params, the
# agent with the prompt part of its job (``Generation.prefix_params``), both
# ``PromptParams``.  Their TypedDicts are final, so the key a value holds says
# its kind.


def request_prefix(params: PromptParams) -> list[str]:
    if "conversation_history" in params:
        return conversation_prefix(params["conversation_history"])
    if "raw_prompt" in params:
        return text_prefix(params["raw_prompt"])
    return []  # embeddings: nothing a slot would keep


def served_prefix(params: PromptParams, generated: str) -> list[str]:
    """What a slot holds after serving a request: the prompt and its answer."""
    if "conversation_history" in params:
        history = params["conversation_history"]
        return conversation_prefix(
            [*history, {"role": "assistant", "content": generated}]
        )
    if "raw_prompt" in params:
        return text_prefix(params["raw_prompt"] + generated)
    return []


def host_matched_length(prefix: list[str], held: frozenset[str]) -> int:
    """How much of ``prefix`` a host tier holding the hashes ``held`` covers.

    Each hash covers the whole prefix before it, so the match is the deepest
    hash of the chain the tier holds.
    """
    for index in range(len(prefix) - 1, -1, -1):
        if prefix[index] in held:
            return index + 1
    return 0


def matched_length(left: list[str], right: list[str]) -> int:
    length = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        length += 1
    return length


@dataclass(frozen=True)
class Candidate:
    agent_id: str
    slots_total: int
    slots_busy: int
    # Prefix chains of the agent's idle slots.
    idle_prefixes: list[list[str]] = field(default_factory=list)
    # Hashes of what the agent's host-memory tier holds.
    host_prefixes: frozenset[str] = frozenset()
    # Whether it has a projection that reads images loaded.
    serves_images: bool = False

    @property
    def load(self) -> float:
        return self.slots_busy / self.slots_total if self.slots_total else 1.0

    @property
    def empty_slots(self) -> int:
        """Idle slots that hold no conversation (never used, or cleared)."""
        return sum(1 for prefix in self.idle_prefixes if not prefix)


@dataclass(frozen=True)
class Decision:
    """The routing choice, for the request's log record."""

    order: list[str]
    matched: int  # prefix hashes the preferred agent's best slot shares
    why: str


class NoAgentServesImages(Exception):
    """A request with images, and agents ready that cannot read them."""


def serving_images(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates for a request with images: those that serve images.

    When agents with a model loaded are there and none serves images, no
    amount of waiting helps: ``NoAgentServesImages``, for an error at once.
    With none ready (none yet, scaling from zero, or all still loading), an
    empty list: the request waits in the buffer as any other.
    """
    serving = [c for c in candidates if c.serves_images]
    if not serving and any(c.slots_total > 0 for c in candidates):
        raise NoAgentServesImages
    return serving


def _least_busy(candidates: list[Candidate]) -> list[Candidate]:
    """By load; between equally loaded agents, the one with more empty slots
    first, so a new conversation does not evict another's cache while a slot
    elsewhere holds nothing."""
    return sorted(
        candidates,
        key=lambda c: (
            c.load,
            -(c.slots_total - c.slots_busy),
            -c.empty_slots,
            c.agent_id,
        ),
    )


def decide(
    candidates: list[Candidate],
    prefix: list[str],
    *,
    policy: str = "prefix",
    max_load_gap: float = 0.5,
    turn: int = 0,
) -> Decision:
    """Order the agents for a request.

    ``prefix``: the request's chain.  ``max_load_gap``: a cache match loses
    when the matching agent's load (busy slots / slots) exceeds the least busy
    agent's by more than this, so one popular conversation cannot pile work
    onto one agent.  With 0.5, an agent of 2 slots with one busy still gets
    its conversation back; one of 8 slots with 5 busy does not, while another
    agent idles.
    ``turn``: a counter for round-robin.
    """
    usable = [c for c in candidates if c.slots_total > 0]
    if not usable:
        return Decision([], 0, "no agent has slots")
    by_load = _least_busy(usable)
    if policy == "round_robin":
        ring = sorted(usable, key=lambda c: c.agent_id)
        start = turn % len(ring)
        rotated = ring[start:] + ring[:start]
        return Decision([c.agent_id for c in rotated], 0, "round robin")
    if policy == "least_busy" or not prefix:
        return Decision([c.agent_id for c in by_load], 0, "least busy")
    # (length, 1 for a slot match or 0 for a host-tier one): longer first,
    # then a slot's over a restore of the same length.
    best, best_score = by_load[0], (0, 0)
    for candidate in by_load:
        in_slot = max(
            (matched_length(prefix, cached) for cached in candidate.idle_prefixes),
            default=0,
        )
        in_host = host_matched_length(prefix, candidate.host_prefixes)
        score = max((in_slot, 1), (in_host, 0))
        if score[0] > 0 and score > best_score:
            best, best_score = candidate, score
    best_match = best_score[0]
    if best_match == 0:
        return Decision([c.agent_id for c in by_load], 0, "least busy (no cache match)")
    if best.load - by_load[0].load > max_load_gap:
        return Decision(
            [c.agent_id for c in by_load],
            0,
            f"least busy (cache match on {best.agent_id} skipped: load "
            f"{best.load:.2f} vs {by_load[0].load:.2f})",
        )
    order = [best.agent_id] + [c.agent_id for c in by_load if c is not best]
    where = "slot" if best_score[1] else "host-tier"
    return Decision(
        order, best_match, f"{where} cache match of {best_match} prefix blocks"
    )
