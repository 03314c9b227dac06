"""``balancer.agent_channel.send_to_agent``: a channel layer message in one
round trip, which the agent's ``layer.receive`` reads as any other.

On a Redis of the test's own and the real ``channels_redis`` layer, as the
agent runs it: what the web tier sends is what the agent receives, the
channel's capacity and expiry hold as with ``layer.send``, and a send is one
command where ``layer.send`` is four.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.test import override_settings

from balancer.agent_channel import send_to_agent
from tests.support.redis_server import RedisServer, channel_layers

CAPACITY = 5
EXPIRY_S = 60


@pytest.fixture
def layer(own_redis: RedisServer) -> Iterator[RedisChannelLayer]:
    layers = channel_layers(
        own_redis.url, "paddler:layer:", capacity=CAPACITY, expiry=EXPIRY_S
    )
    with override_settings(CHANNEL_LAYERS=layers):
        channel_layer = get_channel_layer()
        assert isinstance(channel_layer, RedisChannelLayer)
        yield channel_layer


def commands_run(server: RedisServer) -> dict[str, int]:
    with redis.Redis.from_url(server.url) as client:
        stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(entry["calls"])
        for name, entry in stats.items()
        if name not in {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_hello"}
    }


def reset_counts(server: RedisServer) -> None:
    with redis.Redis.from_url(server.url) as client:
        client.config_resetstat()


def request(number: int) -> dict[str, object]:
    return {
        "type": "inference.request",
        "request_id": f"r{number}",
        "reply_to": "paddler:inbox:web-1",
        "kind": "raw_prompt",
        "params": {"raw_prompt": "Hello", "max_tokens": 3, "grammar": None},
    }


async def test_the_agent_receives_what_was_sent(layer: RedisChannelLayer) -> None:
    channel = await layer.new_channel("paddler.agent.")
    await send_to_agent(channel, request(1))
    await send_to_agent(channel, {"type": "inference.cancel", "request_id": "r1"})
    assert await layer.receive(channel) == request(1)
    assert await layer.receive(channel) == {
        "type": "inference.cancel",
        "request_id": "r1",
    }


async def test_one_command_per_send_where_the_layer_takes_four(
    layer: RedisChannelLayer, own_redis: RedisServer
) -> None:
    channel = await layer.new_channel("paddler.agent.")
    await send_to_agent(channel, request(0))  # the connection is open now
    reset_counts(own_redis)
    await send_to_agent(channel, request(1))
    # One script, which Redis counts with the commands it ran.
    assert commands_run(own_redis) == {
        "eval": 1,
        "zremrangebyscore": 1,
        "zcard": 1,
        "zadd": 1,
        "expire": 1,
    }
    reset_counts(own_redis)
    await layer.send(channel, request(2))
    assert commands_run(own_redis) == {
        "zremrangebyscore": 1,
        "zcount": 1,
        "zadd": 1,
        "expire": 1,
    }
    for number in range(3):
        assert (await layer.receive(channel))["request_id"] == f"r{number}"


async def test_a_full_channel_refuses_as_the_layer_does(
    layer: RedisChannelLayer,
) -> None:
    channel = await layer.new_channel("paddler.agent.")
    for number in range(CAPACITY):
        await send_to_agent(channel, request(number))
    with pytest.raises(ChannelFull):
        await send_to_agent(channel, request(CAPACITY))
    with pytest.raises(ChannelFull):
        await layer.send(channel, request(CAPACITY))
    # Nothing was added past the capacity, and the rest is intact.
    received = [(await layer.receive(channel))["request_id"] for _ in range(CAPACITY)]
    assert received == [f"r{number}" for number in range(CAPACITY)]


async def test_expired_messages_make_room_and_the_key_expires(
    layer: RedisChannelLayer, own_redis: RedisServer
) -> None:
    channel = await layer.new_channel("paddler.agent.")
    key = layer.prefix + layer.non_local_name(channel)
    with redis.Redis.from_url(own_redis.url) as client:
        # A full channel of messages older than the expiry, as a reader that
        # died leaves them.
        stale = time.time() - EXPIRY_S - 10
        client.zadd(key, {f"stale-{n}".encode(): stale for n in range(CAPACITY)})
        await send_to_agent(channel, request(1))
        assert client.zcard(key) == 1
        assert 0 < client.ttl(key) <= EXPIRY_S
    assert await layer.receive(channel) == request(1)
