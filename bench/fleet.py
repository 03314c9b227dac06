"""A fleet of synthetic agents on one Redis: what placing requests costs.

100 agents of 8 slots (``--agents``), run many to a process
(``bench/fleet_agents.py``) but each with its own Redis connection, channel
and heartbeat; 2 and 4 web replicas (daphne); clients posting short requests
(a few tokens each) for a fixed time, on loopback, at each load of
``--rates``: as fast as answers come (the most the stack places) and at a
fixed number of requests/s (the latency of that load).  For each replica
count and load:

- placement latency, p50 and p99: routing and the slot claim, from the
  request's arrival in the web process to its claim (the request log's
  ``queue_wait_ms``; no request waits in the buffer at this load);
- placements/s the web tier sustained (each request is one placement);
- Redis: CPU (``INFO cpu``), commands/s, and the Lua claim's mean cost
  (``INFO commandstats``), under load and idle (the heartbeats alone);
- the CPU of the web processes, the agents' processes and the client
  (``/proc``): they all share the machine's cores.

And, in this process, the routing step alone against fleets of 10 to 1,000
agents: ``routing.decide`` over every agent's report (what each request paid
before the registry view) against ``agent_index.AgentIndex.decide``.

``--web-cpus 0`` gives the web processes CPU 0 to themselves and runs the
rest (Redis, the agents' processes, the client) on the other CPUs: in a
deployment the fleet runs on its own hosts, and the web tier's placement
latency should not wait for a simulated agent's time slice.  Without it all
share every core.

``--agents-nice 19`` models the same on one machine differently: the
agents' processes run at that nice value, so they take the CPU the web
processes and Redis leave (their heartbeats and notifications still reach
Redis and every web process, as in a deployment).  With 2 web replicas on a
2-core machine, ``--web-cpus 0`` crowds both replicas onto one core; this
keeps both cores for them.

``--root`` runs the fleet from another checkout of the code (the same
harness), so that one invocation compares two versions side by side:

    git archive <commit> | tar -x -C /tmp/before   # then link .venv, var/models
    .venv/bin/python -m bench.fleet --root /tmp/before --label before
    .venv/bin/python -m bench.fleet --label after
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import ROOT, goal, percentile, read_chunked, report
from tests.support.constants import AUTH
from tests.support.processes import free_port, service_env, stop_process, wait_until
from tests.support.redis_server import start_redis

PLACEMENT_P99_GOAL_MS = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Web:
    url: str
    process: subprocess.Popen[bytes]


def pin(pid: int, cpus: set[int] | None) -> None:
    """Keeps process ``pid``, its threads and those it starts on ``cpus``."""
    if not cpus:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def split_cpus(web_cpus: str) -> tuple[set[int] | None, set[int] | None]:
    """The web processes' CPUs and everyone else's, from ``--web-cpus``."""
    if not web_cpus:
        return None, None
    web = {int(cpu) for cpu in web_cpus.split(",")}
    rest = os.sched_getaffinity(0) - web
    if not rest:
        raise SystemExit(f"--web-cpus {web_cpus} leaves no CPU for the rest")
    return web, rest


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def migrated_database(root: Path, tmp: Path, redis_url: str) -> Path:
    template = tmp / "template.sqlite3"
    env = service_env(redis_url, DATABASE_URL=f"sqlite:///{template}")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=root, env=env, check=True
    )
    return template


def start_webs(
    root: Path,
    tmp: Path,
    redis_url: str,
    template: Path,
    count: int,
    *,
    cpus: set[int] | None = None,
) -> list[Web]:
    webs = []
    for _ in range(count):
        port = free_port()
        database = tmp / f"web-{port}.sqlite3"
        shutil.copyfile(template, database)
        env = service_env(
            redis_url,
            DATABASE_URL=f"sqlite:///{database}",
            PADDLER_LOG_LEVEL="WARNING",
            PADDLER_REQUEST_LOG_SIZE="200000",
            PYTHONPATH=str(root),
        )
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)),
                "paddler_project.asgi:application",
            ],
            cwd=root,
            env=env,
            stdout=(tmp / f"web-{port}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        pin(process.pid, cpus)
        webs.append(Web(f"http://127.0.0.1:{port}", process))
    for web in webs:
        wait_until(
            lambda web=web: httpx.get(f"{web.url}/health", timeout=1).text == "OK",
            60,
            "daphne",
        )
    return webs


def start_agents(
    root: Path,
    tmp: Path,
    redis_url: str,
    *,
    agents: int,
    slots: int,
    per_process: int,
    nice: int = 0,
) -> list[subprocess.Popen[bytes]]:
    processes = []
    for first in range(0, agents, per_process):
        count = min(per_process, agents - first)
        env = service_env(redis_url, PADDLER_LOG_LEVEL="WARNING", PYTHONPATH=str(root))
        processes.append(
            subprocess.Popen(
                [
                    # Set before the program starts: its every thread has it.
                    *(("nice", "-n", str(nice)) if nice else ()),
                    *(sys.executable, str(ROOT / "bench" / "fleet_agents.py")),
                    *("--count", str(count), "--slots", str(slots)),
                    *("--prefix", f"sim{first}"),
                ],
                cwd=root,
                env=env,
                stdout=(tmp / f"agents-{first}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
    return processes


def ready_agents(client: redis.Redis) -> int:
    members: set[bytes] = client.smembers("paddler:agents")  # type: ignore[assignment]
    ids = [member.decode() for member in members]
    raws = client.mget([f"paddler:agent:{i}:status" for i in ids]) if ids else []
    return sum(1 for raw in raws if raw and json.loads(raw)["slots_total"] > 0)


def redis_figures(client: redis.Redis) -> dict[str, float]:
    info = client.info("all")
    claims = info.get("cmdstat_evalsha") or info.get("cmdstat_eval") or {}
    return {
        "cpu": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        "commands": float(info["total_commands_processed"]),
        "eval_calls": float(claims.get("calls", 0)),
        "eval_usec": float(claims.get("usec", 0)),
        "publish_calls": float(info.get("cmdstat_publish", {}).get("calls", 0)),
    }


def load(
    urls: list[str], clients: int, seconds: float, rate: float, result: Any
) -> None:
    """Runs in its own process: short requests from ``clients`` loops.

    Each loop keeps one HTTP/1.1 connection open and posts on it, with a
    bare client on asyncio streams: httpx spent about 9 ms of CPU per
    request here, more than the web tier it was loading, on the same two
    cores.

    With ``rate`` 0, each loop posts again as soon as its answer is in (the
    most the stack sustains: every queue full).  Otherwise the loops
    together post ``rate`` requests/s, each at its own evenly spaced times
    (a loop whose answer comes late posts at once): the latency of a given
    load, below saturation.
    """

    async def one(url: str, stop: float, offset: float) -> tuple[int, int]:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        done = failed = 0
        interval = clients / rate if rate else 0.0
        due = time.monotonic() + offset * interval
        try:
            while time.monotonic() < stop:
                if interval:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    due += interval
                body = json.dumps(
                    {"raw_prompt": f"x{random.random()}", "max_tokens": 2}
                ).encode()
                writer.write(
                    b"POST /api/v1/continue_from_raw_prompt HTTP/1.1\r\n"
                    b"Host: %s:%s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s"
                    % (host.encode(), port.encode(), len(body), body)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                if b"chunked" in head.lower():
                    answer = await read_chunked(reader)
                else:
                    length = int(
                        head.lower().split(b"content-length:")[1].split(b"\r\n")[0]
                    )
                    answer = await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200") and b'"Done"' in answer:
                    done += 1
                else:
                    failed += 1
        finally:
            writer.close()
        return done, failed

    async def main() -> tuple[int, int, float]:
        started = time.monotonic()
        stop = started + seconds
        counts = await asyncio.gather(
            *(one(urls[i % len(urls)], stop, i / clients) for i in range(clients))
        )
        return (
            sum(c[0] for c in counts),
            sum(c[1] for c in counts),
            time.monotonic() - started,
        )

    cpu = time.process_time()
    done, failed, elapsed = asyncio.run(main())
    result.update(
        done=done,
        failed=failed,
        seconds=elapsed,
        client_cpu=(time.process_time() - cpu) / elapsed,
    )


def measure(
    webs: list[Web],
    client: redis.Redis,
    clients: int,
    seconds: float,
    idle_s: float,
    *,
    agents: list[subprocess.Popen[bytes]],
    rate: float = 0.0,
) -> dict[str, Any]:
    pids = [web.process.pid for web in webs]
    agent_pids = [process.pid for process in agents]
    # Idle: heartbeats only.
    before_idle = redis_figures(client)
    web_before_idle = sum(cpu_seconds(pid) for pid in pids)
    time.sleep(idle_s)
    after_idle = redis_figures(client)
    web_after_idle = sum(cpu_seconds(pid) for pid in pids)
    # Loaded.
    manager = multiprocessing.Manager()
    result = manager.dict()
    started_wall = time.time()
    before = redis_figures(client)
    web_before = sum(cpu_seconds(pid) for pid in pids)
    agents_before = sum(cpu_seconds(pid) for pid in agent_pids)
    process = multiprocessing.Process(
        target=load, args=([w.url for w in webs], clients, seconds, rate, result)
    )
    process.start()
    process.join()
    after = redis_figures(client)
    web_after = sum(cpu_seconds(pid) for pid in pids)
    agents_after = sum(cpu_seconds(pid) for pid in agent_pids)
    elapsed = float(result["seconds"])
    records = [json.loads(raw) for raw in client.lrange("paddler:requests", 0, -1)]
    window = [r for r in records if r["finished_at"] >= started_wall]
    waits = [float(r["queue_wait_ms"]) for r in window if r["outcome"] == "done"]
    calls = after["eval_calls"] - before["eval_calls"]
    return {
        "replicas": len(webs),
        "rate": rate,
        "requests": int(result["done"]),
        "failed": int(result["failed"]),
        "placements_per_s": result["done"] / elapsed,
        "placement_p50_ms": percentile(waits, 0.5),
        "placement_p99_ms": percentile(waits, 0.99),
        "placements_timed": len(waits),
        "redis_cpu": (after["cpu"] - before["cpu"]) / elapsed,
        "redis_ops_per_s": (after["commands"] - before["commands"]) / elapsed,
        "claim_us": (after["eval_usec"] - before["eval_usec"]) / calls if calls else 0,
        "web_cpu": (web_after - web_before) / elapsed,
        "web_cpu_ms_per_placement": (web_after - web_before) * 1000 / result["done"]
        if result["done"]
        else 0.0,
        "agents_cpu": (agents_after - agents_before) / elapsed,
        "client_cpu": float(result["client_cpu"]),
        "idle_redis_cpu": (after_idle["cpu"] - before_idle["cpu"]) / idle_s,
        "idle_redis_ops_per_s": (after_idle["commands"] - before_idle["commands"])
        / idle_s,
        "idle_publish_per_s": (
            after_idle["publish_calls"] - before_idle["publish_calls"]
        )
        / idle_s,
        "idle_web_cpu": (web_after_idle - web_before_idle) / idle_s,
    }


def run_fleet(args: argparse.Namespace, agents: int) -> list[dict[str, Any]]:
    rows = []
    web_cpus, rest_cpus = split_cpus(args.web_cpus)
    # This process and all it starts (Redis, the agents, the client) run on
    # the rest; the web processes are moved to theirs as they start.
    pin(os.getpid(), rest_cpus)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = start_redis()
        client = redis.Redis(port=server.port)
        fleet: list[subprocess.Popen[bytes]] = []
        try:
            template = migrated_database(args.root, tmp, server.url)
            first = start_webs(args.root, tmp, server.url, template, 1)
            response = httpx.put(
                f"{first[0].url}/api/v1/balancer_desired_state",
                json={"model": "None"},
                headers=AUTH,
                timeout=30,
            )
            assert response.status_code == 204, response.text
            for web in first:
                stop_process(web.process)
            fleet = start_agents(
                args.root,
                tmp,
                server.url,
                agents=agents,
                slots=args.slots,
                per_process=args.per_process,
                nice=args.agents_nice,
            )
            started = time.monotonic()
            wait_until(lambda: ready_agents(client) >= agents, 300, "agents")
            print(
                f"{agents} agents ready in {time.monotonic() - started:.1f}s",
                flush=True,
            )
            for replicas in (int(r) for r in args.replicas.split(",")):
                webs = start_webs(
                    args.root, tmp, server.url, template, replicas, cpus=web_cpus
                )
                try:
                    # Warm-up: every replica's dispatcher starts and settles.
                    measure(webs, client, args.clients, 2.0, 0.5, agents=fleet)
                    for rate in (float(r) for r in args.rates.split(",")):
                        client.delete("paddler:requests")
                        row = {
                            "label": args.label,
                            "agents": agents,
                            **measure(
                                webs,
                                client,
                                args.clients,
                                args.seconds,
                                args.idle,
                                agents=fleet,
                                rate=rate,
                            ),
                            "web_cpus": args.web_cpus,
                            "agents_nice": args.agents_nice,
                        }
                        print(row, flush=True)
                        rows.append(row)
                finally:
                    for web in webs:
                        stop_process(web.process)
        finally:
            for process in fleet:
                stop_process(process)
            client.close()
            stop_process(server.process)
    return rows


def _figure(row: dict[str, Any], key: str, form: str) -> str:
    """A column that rows of an earlier harness (``--compare``) lack."""
    return form.format(row[key]) if key in row else "-"


def chain(length: int) -> list[str]:
    return [f"{random.getrandbits(64):016x}" for _ in range(length)]


def routing_cost(sizes: list[int], decisions: int = 300) -> list[dict[str, Any]]:
    """Microseconds per routing decision at each fleet size, the old way (the
    registry's records into ``routing.decide``) and from the index."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")
    from balancer.agent_index import AgentIndex
    from balancer.registry import AgentRecord
    from balancer.routing import Candidate, decide

    rows = []
    for size in sizes:
        random.seed(size)
        records = []
        for index in range(size):
            slots = [
                {"busy": slot < index % 4, "prefix": chain(8)} for slot in range(8)
            ]
            report = {
                "name": f"a{index}",
                "channel": "c",
                "slots_total": 8,
                "slots_processing": index % 4,
                "slots": slots,
                "host_cache": {"prefixes": chain(16)},
            }
            records.append(AgentRecord.from_report(f"agent-{index:05}", report))
        index_ = AgentIndex()
        for record in records:
            index_.update(record, seq=1, now=0.0)
        # Half the requests continue a conversation some idle slot holds.
        prefixes = []
        for number in range(decisions):
            if number % 2:
                record = records[number % size]
                prefixes.append(record.report["slots"][7]["prefix"][:5] + chain(1))
            else:
                prefixes.append(chain(6))

        def old_way(prefix: list[str], records: list[AgentRecord] = records) -> Any:
            candidates = [
                Candidate(
                    r.id,
                    r.slots_total,
                    r.slots_busy,
                    [s["prefix"] for s in r.report["slots"] if not s["busy"]],
                    frozenset(r.report["host_cache"]["prefixes"]),
                )
                for r in records
            ]
            return decide(candidates, prefix)

        started = time.perf_counter()
        old = [old_way(prefix) for prefix in prefixes]
        old_us = (time.perf_counter() - started) / decisions * 1e6
        started = time.perf_counter()
        new = [index_.decide("default", prefix) for prefix in prefixes]
        new_us = (time.perf_counter() - started) / decisions * 1e6
        same = sum(
            1
            for a, b in zip(old, new, strict=True)
            if a.order[: len(b.order)] == b.order and a.why == b.why
        )
        rows.append(
            {
                "agents": size,
                "decide_all_us": old_us,
                "index_us": new_us,
                "same_decisions": same / decisions,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--label", default="after")
    parser.add_argument(
        "--name", default="fleet", help="docs/benchmarks/<name>.{json,md}"
    )
    parser.add_argument("--agents", default="100")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--per-process", type=int, default=25)
    parser.add_argument("--replicas", default="2,4")
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument(
        "--rates",
        default="0,100",
        help="requests/s the clients post, comma-separated; 0: as fast as "
        "their answers come (saturation)",
    )
    parser.add_argument(
        "--web-cpus",
        default="",
        help="CPUs the web processes get to themselves (comma-separated); "
        "Redis, the agents and the client run on the others",
    )
    parser.add_argument(
        "--agents-nice",
        type=int,
        default=0,
        help="the nice value of the agents' processes (19: they get the CPU "
        "that the web processes, Redis and the client leave)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--routing-sizes", default="10,100,1000")
    parser.add_argument(
        "--compare",
        type=Path,
        help="a JSON this benchmark wrote before (another --label): its rows "
        "go into the table beside this run's",
    )
    args = parser.parse_args()
    args.root = args.root.resolve()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rows = []
    for agents in (int(a) for a in args.agents.split(",")):
        rows += run_fleet(args, agents)
    routing = routing_cost([int(s) for s in args.routing_sizes.split(",") if s])
    earlier: list[dict[str, Any]] = []
    if args.compare is not None:
        earlier = json.loads(args.compare.read_text())["rows_raw"]
    every = earlier + rows
    notes = [
        f"{args.clients} clients post short requests (2 tokens, synthetic "
        f"agents) for {args.seconds:.0f} s, on loopback; agents run "
        f"{args.per_process} to a process, each with its own Redis connection "
        "and heartbeat.  Client (a bare HTTP/1.1 client, one kept-alive "
        "connection per loop), web processes, Redis and agents "
        + (
            f"share the machine's cores, but for CPU {args.web_cpus}, the web "
            "processes' own."
            if args.web_cpus
            else "share the machine's cores."
        )
        + (
            f"  The agents' processes run at nice {args.agents_nice}."
            if args.agents_nice
            else ""
        ),
        "Placement: from the request's arrival in the web process to its slot "
        "claim (routing and the Lua claim; the request log's queue_wait_ms).  "
        "Idle: the heartbeats alone (no requests) over "
        f"{args.idle:.0f} s.  CPU in cores (1.0 = one core busy).",
        "Routing step alone (in this process, "
        f"{args.slots} slots per agent, half the requests continuing a cached "
        "conversation): "
        + "; ".join(
            f"{r['agents']} agents: decide over all {r['decide_all_us']:.0f} us, "
            f"index {r['index_us']:.0f} us (same decision "
            f"{r['same_decisions']:.0%})"
            for r in routing
        ),
    ]
    # Latency is judged at a given load below saturation; at saturation
    # (rate 0) every queue is full by construction.
    at_100 = [r for r in rows if r["agents"] == 100 and r.get("rate")]
    goals = []
    if at_100:
        worst = max(r["placement_p99_ms"] for r in at_100)
        goals.append(
            goal(
                f"placement p99 under {PLACEMENT_P99_GOAL_MS:.0f} ms at 100 agents "
                f"({args.label})",
                worst < PLACEMENT_P99_GOAL_MS,
                ", ".join(
                    f"{r['placement_p99_ms']:.1f} ms with {r['replicas']} replicas "
                    f"at {r['rate']:.0f} requests/s"
                    for r in at_100
                ),
            )
        )
    if len(routing) >= 2:
        small, large = routing[0], routing[-1]
        growth = large["index_us"] / small["index_us"]
        goals.append(
            goal(
                "routing cost does not grow with the fleet (index, "
                f"{large['agents']} agents against {small['agents']}: within 2x)",
                growth <= 2.0,
                f"{small['index_us']:.0f} us at {small['agents']}, "
                f"{large['index_us']:.0f} us at {large['agents']} ({growth:.2f}x); "
                f"decide over all: {small['decide_all_us']:.0f} us to "
                f"{large['decide_all_us']:.0f} us",
            )
        )
    report(
        args.name,
        title=f"A fleet of synthetic agents ({args.slots} slots each) on one Redis",
        columns=[
            "code",
            "agents",
            "web replicas",
            "load (requests/s)",
            "placements/s",
            "placement p50 (ms)",
            "placement p99 (ms)",
            "Redis CPU",
            "Redis cmds/s",
            "claim in Redis (us)",
            "web CPU",
            "web CPU per placement (ms)",
            "agents CPU",
            "client CPU",
            "idle Redis CPU",
            "idle Redis cmds/s",
            "idle web CPU",
        ],
        rows=[
            [
                r["label"],
                r["agents"],
                r["replicas"],
                f"{r['rate']:.0f}" if r.get("rate") else "as fast as answered",
                f"{r['placements_per_s']:.0f}",
                f"{r['placement_p50_ms']:.1f}",
                f"{r['placement_p99_ms']:.1f}",
                f"{r['redis_cpu']:.2f}",
                f"{r['redis_ops_per_s']:.0f}",
                f"{r['claim_us']:.0f}",
                f"{r['web_cpu']:.2f}",
                _figure(r, "web_cpu_ms_per_placement", "{:.1f}"),
                _figure(r, "agents_cpu", "{:.2f}"),
                _figure(r, "client_cpu", "{:.2f}"),
                f"{r['idle_redis_cpu']:.3f}",
                f"{r['idle_redis_ops_per_s']:.0f}",
                f"{r['idle_web_cpu']:.3f}",
            ]
            for r in every
        ],
        notes=notes,
        goals=goals,
        data={"args": {**vars(args), "root": str(args.root), "compare": None}}
        | {"rows_raw": every, "routing": routing},
    )


if __name__ == "__main__":
    main()
