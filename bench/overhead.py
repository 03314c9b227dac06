"""Platform overhead: the full stack against llama.cpp called directly.

One agent with 1 slot behind daphne and Redis, reached over HTTP NDJSON
(``/api/v1/continue_from_raw_prompt``), the inference WebSocket
(``/api/v1/inference_socket``) and OpenAI's streaming text completions
(``/v1/completions``), against llama-cpp-python's low-level API called in
this process: the decode loop the agent runs (``llama_decode`` one token at a
time, a greedy sampler chain, ``llama_token_to_piece``) with nothing around
it.  Same model, same context parameters as the agent creates (context size,
batch sizes, F16 cache, full sliding-window cache, llama.cpp's automatic flash
attention, every core as threads), same greedy settings, same prompt lengths,
and the same reuse of the cached prefix (none: consecutive prompts differ
from their first word on).

Figures, per run: decode tokens/s of each surface (tokens after the first,
over the time from the first to the last), as a share of the direct figure
of the same run; and the time to first token each surface adds to the direct
one (p50 and p95 over the requests of the run; client side for the stack,
from the call to the first token's text for the direct loop).  Medians over
the runs.

    .venv/bin/python -m bench.overhead [--runs 3] [--requests 10] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import ctypes
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import redis
from websockets.asyncio.client import ClientConnection, connect

from balancer import keys
from bench.common import MODEL, goal, median, percentile, report
from tests.support.constants import GREEDY_PARAMETERS
from tests.support.fleet import running_platform
from tests.support.web import WebServer

SURFACES = ("direct", "http_ndjson", "websocket", "openai_sse")
LABELS = {
    "direct": "llama.cpp direct",
    "http_ndjson": "HTTP NDJSON",
    "websocket": "WebSocket",
    "openai_sse": "OpenAI SSE",
}
BASELINES = {
    "lowlevel": "llama-cpp-python's low-level API (llama_decode one token a step, "
    "a greedy sampler chain, llama_token_to_piece: the least work a caller can do "
    "per token)",
    "llama": "llama_cpp.Llama.create_completion(stream=True)",
}
THROUGHPUT_GOAL = 0.95
TTFT_GOAL_MS = 10.0
# Each prompt starts with a word of its own, so a request never finds the
# previous request's prompt in the slot's cache (the agent would then skip its
# evaluation, which the direct loop, given the same rule, would also do).
WORDS = [
    "Alice",
    "Bruno",
    "Clara",
    "David",
    "Emma",
    "Felix",
    "Grace",
    "Henry",
    "Irene",
    "James",
    "Karen",
    "Louis",
    "Maria",
    "Nathan",
    "Olga",
    "Peter",
    "Quentin",
    "Rosa",
    "Simon",
    "Tanya",
    "Ursula",
    "Victor",
    "Wendy",
    "Xavier",
    "Yvonne",
    "Zoe",
    "Albert",
    "Bella",
    "Carl",
    "Diana",
    "Edgar",
    "Fiona",
    "George",
    "Helen",
    "Ivan",
    "Julia",
    "Kevin",
    "Laura",
    "Martin",
    "Nina",
    "Oscar",
    "Paula",
    "Robert",
    "Sarah",
    "Thomas",
    "Vera",
    "Walter",
]
# The demo model keeps counting for hundreds of tokens: every request
# generates exactly --tokens tokens, on every surface and directly.
PROMPT = "{word} counts to one thousand, slowly and without stopping: 1, 2, 3, 4, 5,"


@dataclass
class Timing:
    """One request: seconds to the first token, to the last, tokens made."""

    first: float
    last: float
    tokens: int

    @property
    def decode_seconds(self) -> float:
        return self.last - self.first


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _silent_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


class Direct:
    """llama-cpp-python's low-level API in this process: the baseline.

    The context is made as ``agents.engine.Engine`` makes it for 1 slot; the
    loop is the engine's without the slots, the queue and the output callback.
    ``llama_cpp.Llama`` adds its own Python per token (logits copied into
    numpy, its sampler chain, detokenizing, stop handling) to the same
    llama.cpp calls, so this loop is the fastest fair baseline; ``--direct
    llama`` measures that one instead, to check.
    """

    def __init__(self, parameters: dict[str, Any], threads: int) -> None:
        llama_cpp.llama_log_set(_silent_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(
            str(MODEL).encode(), model_params
        )
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = parameters["context_size"]
        context_params.n_batch = parameters["n_batch"]
        context_params.n_ubatch = min(parameters["n_batch"], 512)
        context_params.n_seq_max = 1
        context_params.n_threads = threads
        context_params.n_threads_batch = threads
        context_params.type_k = llama_cpp.GGML_TYPE_F16
        context_params.type_v = llama_cpp.GGML_TYPE_F16
        context_params.swa_full = True
        context_params.no_perf = True
        self.context = llama_cpp.llama_init_from_model(self.model, context_params)
        self.memory = llama_cpp.llama_get_memory(self.context)
        self.n_batch = parameters["n_batch"]
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.piece = ctypes.create_string_buffer(256)
        self.cache: list[int] = []

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        tokens = (llama_cpp.llama_token * (len(data) + 8))()
        count = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), tokens, len(data) + 8, True, True
        )
        return list(tokens[:count])

    def _decode(self, tokens: list[int], start: int) -> None:
        """Evaluate ``tokens`` at positions ``start``..; logits for the last."""
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            for index, token in enumerate(chunk):
                self.batch.token[index] = token
                self.batch.pos[index] = start + offset + index
                self.batch.n_seq_id[index] = 1
                self.batch.seq_id[index][0] = 0
                self.batch.logits[index] = offset + index == len(tokens) - 1
            self.batch.n_tokens = len(chunk)
            if llama_cpp.llama_decode(self.context, self.batch) != 0:
                raise RuntimeError("llama_decode failed")

    def generate(self, prompt: str, max_tokens: int) -> Timing:
        started = time.perf_counter()
        tokens = self.tokenize(prompt)
        keep = 0
        while (
            keep < min(len(self.cache), len(tokens) - 1)
            and self.cache[keep] == tokens[keep]
        ):
            keep += 1
        llama_cpp.llama_memory_seq_rm(self.memory, 0, keep, -1)
        sampler = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        llama_cpp.llama_sampler_chain_add(
            sampler, llama_cpp.llama_sampler_init_greedy()
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending, position = tokens[keep:], keep
        first = last = 0.0
        generated = 0
        text = ""
        while True:
            self._decode(pending, position)
            position += len(pending)
            token = llama_cpp.llama_sampler_sample(sampler, self.context, -1)
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                break
            size = llama_cpp.llama_token_to_piece(
                self.vocab, token, self.piece, len(self.piece), 0, False
            )
            text += decoder.decode(self.piece.raw[:size])
            generated += 1
            last = time.perf_counter() - started
            if generated == 1:
                first = last
            if generated >= max_tokens:
                break
            tokens.append(token)
            pending = [token]
        llama_cpp.llama_sampler_free(sampler)
        self.cache = tokens[:position]
        return Timing(first, last, generated)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.context)
        llama_cpp.llama_model_free(self.model)


class DirectLlama:
    """``llama_cpp.Llama`` (the high-level API, streaming), for comparison.

    Same context parameters, same llama.cpp calls, plus its own Python per
    token; ``Direct`` is the default baseline.
    """

    def __init__(self, parameters: dict[str, Any], threads: int) -> None:
        self.llm = llama_cpp.Llama(
            str(MODEL),
            n_gpu_layers=0,
            n_ctx=parameters["context_size"],
            n_batch=parameters["n_batch"],
            n_ubatch=min(parameters["n_batch"], 512),
            n_threads=threads,
            n_threads_batch=threads,
            type_k=llama_cpp.GGML_TYPE_F16,
            type_v=llama_cpp.GGML_TYPE_F16,
            flash_attn=True,  # what llama.cpp's "auto" picks on the CPU
            swa_full=True,
            no_perf=True,
            verbose=False,
        )

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=True, special=True))

    def generate(self, prompt: str, max_tokens: int) -> Timing:
        started = time.perf_counter()
        first = last = 0.0
        generated = 0
        chunks = self.llm.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=0.0,
            repeat_penalty=1.0,
            stream=True,
        )
        for chunk in chunks:
            # One chunk a token (the last one, with the finish reason, empty).
            if chunk["choices"][0]["text"]:  # type: ignore[index]
                generated += 1
                last = time.perf_counter() - started
                if generated == 1:
                    first = last
        return Timing(first, last, generated)

    def close(self) -> None:
        self.llm.close()


def equal_length_prompts(direct: Direct | DirectLlama, count: int) -> list[str]:
    """``count`` prompts of one token length, whose first words differ."""
    by_length: dict[int, list[str]] = {}
    for word in WORDS:
        prompt = PROMPT.format(word=word)
        by_length.setdefault(len(direct.tokenize(prompt)), []).append(prompt)
    length, _ = Counter({k: len(v) for k, v in by_length.items()}).most_common(1)[0]
    chosen = by_length[length]
    starts = {direct.tokenize(p)[1] for p in chosen}
    assert len(starts) == len(chosen), "two prompts share their first token"
    if len(chosen) < count:
        raise SystemExit(f"--requests: at most {len(chosen)} prompts of one length")
    return chosen[:count]


# -------------------------------------------------------------- the surfaces
async def over_http(
    client: httpx.AsyncClient, url: str, prompt: str, tokens: int
) -> Timing:
    started = time.perf_counter()
    first = 0.0
    made = -1
    async with client.stream(
        "POST",
        f"{url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": prompt, "max_tokens": tokens},
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line:
                continue
            generated = json.loads(line)["Response"]["response"]["GeneratedToken"]
            if not first and "ContentToken" in generated:
                first = time.perf_counter() - started
            if "Done" in generated:
                made = generated["Done"]["usage"]["content_tokens"]
                break
    return Timing(first, time.perf_counter() - started, made)


async def over_socket(
    socket: ClientConnection, prompt: str, tokens: int, request_id: str
) -> Timing:
    started = time.perf_counter()
    await socket.send(
        json.dumps(
            {
                "Request": {
                    "id": request_id,
                    "request": {
                        "ContinueFromRawPrompt": {
                            "raw_prompt": prompt,
                            "max_tokens": tokens,
                        }
                    },
                }
            }
        )
    )
    first = 0.0
    while True:
        message = json.loads(await socket.recv())
        if "Response" not in message:
            raise RuntimeError(f"socket error: {message}")
        generated = message["Response"]["response"]["GeneratedToken"]
        if not first and "ContentToken" in generated:
            first = time.perf_counter() - started
        if "Done" in generated:
            made = int(generated["Done"]["usage"]["content_tokens"])
            return Timing(first, time.perf_counter() - started, made)


async def over_openai(
    client: httpx.AsyncClient, url: str, prompt: str, tokens: int
) -> Timing:
    started = time.perf_counter()
    first = last = 0.0
    made = -1
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("text") and not first:
                first = time.perf_counter() - started
            if choices and choices[0].get("finish_reason"):
                last = time.perf_counter() - started
            if chunk.get("usage"):
                made = chunk["usage"]["completion_tokens"]
    return Timing(first, last, made)


# ---------------------------------------------------------- where it goes
CPU_PARTS = ("client", "web", "redis", "agent_relay", "agent_engine")
CPU_LABELS = {
    "client": "client",
    "web": "web (daphne)",
    "redis": "Redis",
    "agent_relay": "agent relay",
    "agent_engine": "agent engine",
}
TICKS = os.sysconf("SC_CLK_TCK")


def _thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time of each thread of a process, by thread id, from /proc."""
    seconds: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


class CpuMeter:
    """CPU time of each process of the stack, split by what it does.

    The client is this process (for the direct block: the direct loop).  The
    agent's main thread runs its event loop (requests in, tokens out to
    Redis); its other threads are the engine and llama.cpp's.
    """

    def __init__(self) -> None:
        mine = os.getpid()
        self.pids: dict[str, int] = {"client": mine}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != mine:
                continue  # not started by this benchmark
            if b"run_agent" in command:
                self.pids["agent"] = int(entry.name)
            elif b"daphne" in command:
                self.pids["web"] = int(entry.name)
            elif b"redis-server" in command:
                self.pids["redis"] = int(entry.name)

    def read(self) -> dict[str, float]:
        agent = _thread_cpu_seconds(self.pids["agent"])
        # The main thread's id is the process id.
        relay = agent.get(self.pids["agent"], 0.0)
        return {
            "client": sum(_thread_cpu_seconds(self.pids["client"]).values()),
            "web": sum(_thread_cpu_seconds(self.pids["web"]).values()),
            "redis": sum(_thread_cpu_seconds(self.pids["redis"]).values()),
            "agent_relay": relay,
            "agent_engine": sum(agent.values()) - relay,
        }


def web_ttfts(redis_url: str, count: int) -> list[float]:
    """Time to first token at the web process of the last ``count`` requests:
    from the request's creation by the dispatcher to the first token reaching
    it (``time_to_first_token_ms`` of the request log)."""
    client = redis.Redis.from_url(redis_url)
    try:
        records = [
            json.loads(raw) for raw in client.lrange(keys.request_log(), 0, count - 1)
        ]
    finally:
        client.close()
    return [float(r["time_to_first_token_ms"]) for r in records]


# --------------------------------------------------------------------- runs
def summary(
    timings: list[Timing], cpu: dict[str, float], web_ttft: list[float]
) -> dict[str, Any]:
    ttfts = [t.first * 1000 for t in timings]
    decoded = sum(t.tokens - 1 for t in timings)
    made = sum(t.tokens for t in timings)
    return {
        "requests": [asdict(t) for t in timings],
        "tokens_per_s": decoded / sum(t.decode_seconds for t in timings),
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "ttft_p95_ms": percentile(ttfts, 0.95),
        "web_ttft_p50_ms": percentile(web_ttft, 0.5) if web_ttft else None,
        "cpu_ms_per_token": {part: cpu[part] * 1000 / made for part in cpu},
        "tokens": sorted({t.tokens for t in timings}),
    }


async def block(
    name: str,
    url: str,
    direct: Direct | DirectLlama,
    prompts: list[str],
    tokens: int,
    *,
    meter: CpuMeter,
) -> tuple[list[Timing], dict[str, float]]:
    """One surface's requests, one at a time, after a warm-up request.

    The socket is open only during its own block: the direct block blocks
    this event loop, which would leave the socket's pings unanswered.
    """
    warm = PROMPT.format(word="Warm")
    timings: list[Timing] = []
    if name == "direct":
        direct.generate(warm, 4)
        before = meter.read()
        timings = [direct.generate(prompt, tokens) for prompt in prompts]
    elif name in ("http_ndjson", "openai_sse"):
        over = over_http if name == "http_ndjson" else over_openai
        async with httpx.AsyncClient(timeout=600) as client:
            await over(client, url, warm, 4)
            before = meter.read()
            timings = [await over(client, url, p, tokens) for p in prompts]
    else:
        socket_url = url.replace("http://", "ws://", 1) + "/api/v1/inference_socket"
        async with connect(socket_url, max_size=None) as socket:
            await over_socket(socket, warm, 4, "warm")
            before = meter.read()
            timings = [
                await over_socket(socket, prompt, tokens, f"r{index}")
                for index, prompt in enumerate(prompts)
            ]
    after = meter.read()
    return timings, {part: after[part] - before[part] for part in CPU_PARTS}


async def one_run(
    run: int,
    web: WebServer,
    direct: Direct | DirectLlama,
    prompts: list[str],
    tokens: int,
    *,
    meter: CpuMeter,
) -> dict[str, Any]:
    # Each run starts with another surface, so a drift in the machine's speed
    # during a run does not always fall on the same one.
    shift = run % len(SURFACES)
    order = [*SURFACES[shift:], *SURFACES[:shift]]
    results: dict[str, dict[str, Any]] = {}
    for name in order:
        # llama.cpp's OpenMP threads spin a while after a decode: let the
        # previous block's (in this process or in the agent) go to sleep.
        await asyncio.sleep(0.5)
        timings, cpu = await block(name, web.url, direct, prompts, tokens, meter=meter)
        web_ttft = (
            [] if name == "direct" else web_ttfts(web.env["REDIS_URL"], len(prompts))
        )
        results[name] = summary(timings, cpu, web_ttft)
    base = results["direct"]
    for result in results.values():
        result["ratio"] = result["tokens_per_s"] / base["tokens_per_s"]
        result["ttft_added_p50_ms"] = result["ttft_p50_ms"] - base["ttft_p50_ms"]
        result["ttft_added_p95_ms"] = result["ttft_p95_ms"] - base["ttft_p95_ms"]
    return {"order": order, "surfaces": {name: results[name] for name in SURFACES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10, help="per surface, run")
    parser.add_argument("--tokens", type=int, default=128, help="per request")
    parser.add_argument(
        "--direct",
        choices=("lowlevel", "llama"),
        default="lowlevel",
        help="the baseline: the low-level decode loop, or llama_cpp.Llama",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="llama.cpp threads, direct and in the agent (default: every core, "
        "as run_agent does)",
    )
    args = parser.parse_args()
    if args.requests < 2:
        parser.error("--requests must be at least 2 (see WORDS)")
    threads = args.threads or os.cpu_count() or 1
    parameters = dict(GREEDY_PARAMETERS)
    state = {
        "model": {"LocalToAgent": str(MODEL)},
        "inference_parameters": parameters,
    }
    direct = (Direct if args.direct == "lowlevel" else DirectLlama)(parameters, threads)
    prompts = equal_length_prompts(direct, args.requests)
    prompt_tokens = len(direct.tokenize(prompts[0]))
    runs = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_platform(
            Path(tmp),
            state,
            agent_name="overhead",
            slots=1,
            agent_args=("--threads", str(threads)),
            PADDLER_LOG_LEVEL="WARNING",
        ) as web,
    ):
        meter = CpuMeter()
        for run in range(args.runs):
            outcome = asyncio.run(
                one_run(run, web, direct, prompts, args.tokens, meter=meter)
            )
            runs.append(outcome)
            print(
                f"run {run + 1}: "
                + ", ".join(
                    f"{name} {r['tokens_per_s']:.1f} tok/s ({r['ratio']:.3f}x) "
                    f"TTFT p50 {r['ttft_p50_ms']:.1f} ms"
                    for name, r in outcome["surfaces"].items()
                ),
                flush=True,
            )
    direct.close()

    def med(surface: str, key: str) -> float:
        return median([run["surfaces"][surface][key] for run in runs])

    medians: dict[str, dict[str, Any]] = {
        surface: {
            key: med(surface, key)
            for key in (
                "tokens_per_s",
                "ratio",
                "ttft_p50_ms",
                "ttft_p95_ms",
                "ttft_added_p50_ms",
                "ttft_added_p95_ms",
            )
        }
        for surface in SURFACES
    }
    for surface in SURFACES:
        if surface != "direct":
            medians[surface]["web_ttft_p50_ms"] = med(surface, "web_ttft_p50_ms")
        medians[surface]["cpu_ms_per_token"] = {
            part: median(
                [r["surfaces"][surface]["cpu_ms_per_token"][part] for r in runs]
            )
            for part in CPU_PARTS
        }
    stack = SURFACES[1:]
    goals = [
        goal(
            f"{LABELS[s]}: at least {THROUGHPUT_GOAL}x the direct decode tokens/s",
            medians[s]["ratio"] >= THROUGHPUT_GOAL,
            f"{medians[s]['ratio']:.3f}x",
        )
        for s in stack
    ] + [
        goal(
            f"{LABELS[s]}: under {TTFT_GOAL_MS:.0f} ms added to the first token (p50)",
            medians[s]["ttft_added_p50_ms"] < TTFT_GOAL_MS,
            f"{medians[s]['ttft_added_p50_ms']:+.1f} ms p50, "
            f"{medians[s]['ttft_added_p95_ms']:+.1f} ms p95",
        )
        for s in stack
    ]
    mismatched = {
        s: run["surfaces"][s]["tokens"]
        for run in runs
        for s in SURFACES
        if run["surfaces"][s]["tokens"] != [args.tokens]
    }
    cores = os.cpu_count() or 1
    report(
        "overhead" if threads == cores else f"overhead-threads-{threads}",
        title="Platform overhead: the full stack against llama.cpp called directly"
        + ("" if threads == cores else f", {threads} of {cores} cores to llama.cpp"),
        columns=[
            "surface",
            "decode tok/s",
            "vs direct",
            "TTFT p50 (ms)",
            "TTFT p95 (ms)",
            "TTFT added p50 (ms)",
            "TTFT added p95 (ms)",
            "TTFT at the web p50 (ms)",
        ],
        rows=[
            [
                LABELS[s],
                f"{m['tokens_per_s']:.1f}",
                f"{m['ratio']:.3f}x",
                f"{m['ttft_p50_ms']:.1f}",
                f"{m['ttft_p95_ms']:.1f}",
                "" if s == "direct" else f"{m['ttft_added_p50_ms']:+.1f}",
                "" if s == "direct" else f"{m['ttft_added_p95_ms']:+.1f}",
                "" if s == "direct" else f"{m['web_ttft_p50_ms']:.1f}",
            ]
            for s, m in medians.items()
        ],
        notes=[
            f"Greedy, {args.tokens} tokens per request, prompts of "
            f"{prompt_tokens} tokens, {args.requests} requests per surface and "
            f"run, one request at a time, median of {args.runs} runs; ratios and "
            "added times are computed within each run, then their median taken.",
            f"Direct: {BASELINES[args.direct]} in the benchmark's process, with "
            f"the context the agent makes for 1 slot ({parameters['context_size']} "
            f"tokens, n_batch {parameters['n_batch']}, F16 cache, flash "
            f"attention, {threads} threads).",
            f"Stack: daphne, Redis and one agent of 1 slot (run_agent --threads "
            f"{threads}), measured by a client in the benchmark's process; decode "
            "tokens/s counts the tokens after the first over the time from the "
            "first to the last, TTFT runs from sending the request to the first "
            "token's arrival.  Client, web process, Redis and agent share the "
            "machine's cores.",
            "TTFT at the web: from the web process creating the request (after "
            "its HTTP handling and validation) to the first token reaching it: "
            "the claim, Redis to the agent and back, and the agent's work.  The "
            "rest of the added time is HTTP or WebSocket handling, in the web "
            "process and in the client.",
            "CPU per token, ms (median over the runs; each process's CPU time "
            "during the surface's requests over the tokens made; 'agent relay' "
            "is the agent's event loop thread, 'agent engine' its engine and "
            "llama.cpp threads; for the direct loop, 'client' is the loop): "
            + "; ".join(
                f"{LABELS[s]}: "
                + ", ".join(
                    f"{CPU_LABELS[part]} {m['cpu_ms_per_token'][part]:.2f}"
                    for part in CPU_PARTS
                )
                for s, m in medians.items()
            )
            + ".",
            *(
                [f"Requests that did not make {args.tokens} tokens: {mismatched}."]
                if mismatched
                else []
            ),
        ],
        goals=goals,
        data={
            "args": vars(args),
            "prompt_tokens": prompt_tokens,
            "threads": threads,
            "baseline": BASELINES[args.direct],
            "medians": medians,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
