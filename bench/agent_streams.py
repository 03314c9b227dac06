"""Tokens/s of one agent at several numbers of concurrent streams, driven as
the web tier drives it: requests on its channel, output from a Redis inbox.

No web process: this measures the agent (llama.cpp, its batch loop and its
relay to Redis), for ``scripts/gpu_check.sh``.  Each round sends ``streams``
raw-prompt requests at once and waits for all of them to end.

    python bench/agent_streams.py --streams 1,8,32,64 --tokens 256

Needs ``REDIS_URL`` (and ``DJANGO_SETTINGS_MODULE``) as the agent has them,
and one agent serving.  Prints one JSON line per round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid

import django


async def one_round(streams: int, tokens: int) -> dict[str, float]:
    import redis.asyncio as aioredis
    from channels.layers import get_channel_layer
    from django.conf import settings

    from balancer import keys
    from balancer.contract import RawPromptParams
    from balancer.events import InferenceRequestEvent, expand_item

    redis = aioredis.Redis.from_url(settings.REDIS_URL)
    layer = get_channel_layer()
    assert layer is not None
    members: set[bytes] = await redis.smembers(keys.agents_set())  # type: ignore[assignment]
    channel = ""
    for member in members:
        raw = await redis.get(keys.agent_status(member.decode()))
        if raw and json.loads(raw)["slots_total"] > 0:
            channel = json.loads(raw)["channel"]
    assert channel, "no agent is serving"
    inbox = keys.web_inbox(uuid.uuid4().hex)
    # The agent stops generating for a web process whose heartbeat is gone.
    await redis.set(keys.web_alive_for_inbox(inbox), 1, px=600_000)
    ids = [uuid.uuid4().hex for _ in range(streams)]
    started = time.perf_counter()
    for number, request_id in enumerate(ids):
        params: RawPromptParams = {
            "raw_prompt": f"Stream {number}:",
            "max_tokens": tokens,
            "grammar": None,
        }
        event: InferenceRequestEvent = {
            "type": "inference.request",
            "request_id": request_id,
            "reply_to": inbox,
            "kind": "raw_prompt",
            "params": params,
        }
        await layer.send(channel, dict(event))
    first_token: dict[str, float] = {}
    generated = 0
    open_ids = set(ids)
    errors = 0
    while open_ids:
        popped = await redis.blpop([inbox], timeout=120)
        assert popped is not None, "the agent went silent"
        for raw in json.loads(popped[1])["items"]:
            item = expand_item(raw)
            request_id = item["request_id"]
            first_token.setdefault(request_id, time.perf_counter() - started)
            if item["final"]:
                open_ids.discard(request_id)
                errors += item["error"] is not None
            else:
                generated += 1
    elapsed = time.perf_counter() - started
    await redis.delete(inbox, keys.web_alive_for_inbox(inbox))
    await redis.aclose()
    ttfts = sorted(first_token.values())
    return {
        "streams": streams,
        "tokens": generated,
        "seconds": elapsed,
        "tokens_per_s": generated / elapsed,
        "ttft_p50_ms": ttfts[len(ttfts) // 2] * 1000,
        "errors": errors,
    }


async def llama_server_round(url: str, streams: int, tokens: int) -> dict[str, float]:
    """The same round against llama.cpp's own server (``/completion``)."""
    import httpx

    async def one(http: httpx.AsyncClient, number: int) -> int:
        response = await http.post(
            f"{url}/completion",
            json={
                "prompt": f"Stream {number}:",
                "n_predict": tokens,
                "ignore_eos": True,
                "cache_prompt": False,
            },
        )
        response.raise_for_status()
        return int(response.json()["tokens_predicted"])

    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(http, n) for n in range(streams)))
        elapsed = time.perf_counter() - started
    return {
        "streams": streams,
        "tokens": sum(counts),
        "seconds": elapsed,
        "tokens_per_s": sum(counts) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1,8,32,64")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument(
        "--llama-server", help="drive llama.cpp's server at this URL instead"
    )
    args = parser.parse_args()
    if args.llama_server is None:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")
        django.setup()
    for streams in (int(s) for s in args.streams.split(",")):
        if args.llama_server:
            row = asyncio.run(
                llama_server_round(args.llama_server, streams, args.tokens)
            )
        else:
            row = asyncio.run(one_round(streams, args.tokens))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
