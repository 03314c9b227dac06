"""Talking to a real agent process as a web process does, with no web server.

The test plays the web tier's part: it writes the desired state where agents
read it, keeps a web heartbeat alive (an agent cancels the requests of a web
process whose heartbeat is gone), sends ``inference.request`` and
``inference.cancel`` messages to the agent's own channel on the Channels
layer, and reads the agent's output batches from its inbox list.  Everything
travels through the real Redis, as in production.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels_redis.core import RedisChannelLayer

from balancer import keys
from balancer.contract import OutputItem
from balancer.events import expand_item
from tests.support.processes import wait_until

# The layer prefix of ``paddler_project.settings``: the agent listens there.
LAYER_PREFIX = "paddler:layer:"


@dataclass
class Answer:
    """A request's output: its content text, and its last item."""

    text: str
    final: OutputItem
    items: list[OutputItem] = field(default_factory=list)

    @property
    def usage(self) -> dict[str, int]:
        response: Any = self.final["response"]
        assert isinstance(response, dict), self.final
        return dict(response["GeneratedToken"]["Done"]["usage"])

    @property
    def failure(self) -> tuple[str, str] | None:
        """(variant, message) of a GenerationFailed end, or None."""
        response: Any = self.final["response"]
        if not isinstance(response, dict) or "GeneratedToken" not in response:
            return None
        ((variant, payload),) = response["GeneratedToken"].items()
        if variant == "Done":
            return None
        return variant, str(payload)


class AgentLink:
    """One web process's view of the agents on a Redis."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.web_id = uuid.uuid4().hex[:8]
        self.inbox = keys.web_inbox(self.web_id)
        self.layer = RedisChannelLayer(hosts=[redis_url], prefix=LAYER_PREFIX)
        self.client.set(keys.web_alive(self.web_id), "1")
        # Items read from the inbox for requests not asked about yet.
        self._held: dict[str, list[OutputItem]] = {}

    def close(self) -> None:
        self.client.delete(keys.web_alive(self.web_id), self.inbox)
        self.client.close()

    def put_desired_state(self, state: dict[str, Any], pool: str = "default") -> None:
        """Where an agent of ``pool`` reads the state when it starts."""
        self.client.set(keys.desired_state(pool), json.dumps(state))

    def report(self, name: str) -> dict[str, Any] | None:
        """The status report of the agent called ``name``, if registered."""
        members: Any = self.client.smembers(keys.agents_set())
        for member in members:
            raw: Any = self.client.get(keys.agent_status(member.decode()))
            if raw is not None:
                report: dict[str, Any] = json.loads(raw)
                if report["name"] == name:
                    return report
        return None

    def wait_for(self, name: str, status: str, timeout: float = 120) -> dict[str, Any]:
        """The agent's report once its state application status is ``status``."""

        def reached() -> dict[str, Any] | None:
            report = self.report(name)
            if report and report["state_application_status"] == status:
                return report
            return None

        result: dict[str, Any] = wait_until(reached, timeout, f"{name} {status}")
        return result

    def send(self, channel: str, message: dict[str, Any]) -> None:
        async_to_sync(self.layer.send)(channel, message)

    def converse(
        self,
        channel: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 4,
        request_id: str | None = None,
    ) -> str:
        """Send a conversation request; its request id."""
        request_id = request_id or uuid.uuid4().hex
        self.send(
            channel,
            {
                "type": "inference.request",
                "request_id": request_id,
                "reply_to": self.inbox,
                "kind": "conversation",
                "params": {
                    "conversation_history": messages,
                    "add_generation_prompt": True,
                    "enable_thinking": False,
                    "max_tokens": max_tokens,
                    "grammar": None,
                    "tools": [],
                },
            },
        )
        return request_id

    def cancel(self, channel: str, request_id: str) -> None:
        self.send(channel, {"type": "inference.cancel", "request_id": request_id})

    def next_item(self, request_id: str, timeout: float = 120) -> OutputItem:
        """The next output item of ``request_id``."""
        held = self._held.setdefault(request_id, [])
        deadline = time.monotonic() + timeout
        while not held:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no output for {request_id} in {timeout} s")
            raw = self.client.blpop([self.inbox], timeout=max(1, int(left)))
            if raw is None:
                continue
            batch = json.loads(raw[1])
            for item in map(expand_item, batch["items"]):
                self._held.setdefault(item["request_id"], []).append(item)
        return held.pop(0)

    def answer(self, request_id: str, timeout: float = 120) -> Answer:
        """All of ``request_id``'s output, up to its last item."""
        items: list[OutputItem] = []
        text = ""
        while True:
            item = self.next_item(request_id, timeout)
            items.append(item)
            response = item["response"]
            if isinstance(response, dict) and "GeneratedToken" in response:
                text += str(response["GeneratedToken"].get("ContentToken", ""))
            if item["final"]:
                return Answer(text, item, items)
