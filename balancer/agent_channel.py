"""Sending a request or a cancel to one agent's channel in one round trip.

``channels_redis``'s ``send`` takes four commands, one after the other, each
waiting for its answer: drop the expired messages, count the channel against
its capacity, add the message, renew the key's expiry.  Every request the
web tier places paid those four round trips to Redis after its claim (about
a tenth of a web process's CPU under a load of short requests, see
``docs/benchmarks.md``).  ``send_to_agent`` does the same four steps in one
script: the same key, the same serialized message, the same capacity and
expiry, so the agent's ``layer.receive`` reads it as any other
(``tests/test_agent_channel.py`` holds the two to each other, with the real
layer, on a real Redis).

Another layer (Channels' in-memory one, in unit tests) gets its own
``send``.
"""

from __future__ import annotations

import time
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer

# KEYS[1]: the channel's key.  ARGV: the message, its score (the time it was
# sent), the cut-off for expired messages, the capacity, the expiry (s).
_SEND = """
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, 0, ARGV[3])
if redis.call('ZCARD', key) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', key, ARGV[2], ARGV[1])
redis.call('EXPIRE', key, ARGV[5])
return 1
"""


async def send_to_agent(channel: str, message: dict[str, Any]) -> None:
    """``layer.send(channel, message)`` in one round trip.

    Raises ``ChannelFull`` when the channel holds its capacity already, as
    ``layer.send`` does."""
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    if not isinstance(layer, RedisChannelLayer):
        await layer.send(channel, message)
        return
    await _send_in_one_call(layer, channel, message)


async def _send_in_one_call(
    layer: RedisChannelLayer, channel: str, message: dict[str, Any]
) -> None:
    assert layer.require_valid_channel_name(channel), "Channel name not valid"
    assert "__asgi_channel__" not in message
    name = channel
    if "!" in channel:
        # A process-specific channel (an agent's): its process reads one key
        # for all of its channels and sorts the messages by this field.
        message = {**message, "__asgi_channel__": channel}
        name = layer.non_local_name(channel)
    # The host the layer reads a process-specific channel from; any of them
    # serves a general channel, whose readers go round all hosts.
    index = layer.consistent_hash(channel)
    now = time.time()
    sent = await layer.connection(index).eval(
        _SEND,
        1,
        layer.prefix + name,
        layer.serialize(message),
        now,
        int(now) - int(layer.expiry),
        layer.get_capacity(channel),
        int(layer.expiry),
    )
    if not sent:
        raise ChannelFull()
