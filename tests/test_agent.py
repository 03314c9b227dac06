"""Agents end to end: model sources, issues, state changes, life cycle, limits."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.model_source import cached_path_for_url
from balancer import keys
from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from tests.support.constants import ENDLESS_PROMPT
from tests.support.fleet import Fleet
from tests.support.model_server import ModelServer
from tests.support.processes import stop_process, wait_until
from tests.support.redis_server import start_redis
from tests.support.streams import raw_prompt_stream, read_ndjson, stream_text
from tests.support.web import WebServer


def agent_report(web: WebServer, name: str) -> dict[str, Any] | None:
    for agent in web.agents():
        if agent["name"] == name:
            return agent
    return None


def wait_for_status(
    web: WebServer, name: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        report = agent_report(web, name)
        if report and report["state_application_status"] == status:
            return report
        return None

    result: dict[str, Any] = wait_until(reached, timeout, f"{name} {status}")
    return result


def with_model(state: dict[str, Any], model: Any, **parameters: Any) -> dict[str, Any]:
    return {
        **state,
        "model": model,
        "inference_parameters": {**state["inference_parameters"], **parameters},
    }


def generate(web: WebServer, prompt: str, max_tokens: int) -> list[dict[str, Any]]:
    with raw_prompt_stream(web, prompt, max_tokens) as response:
        return read_ndjson(response)


def generate_in_background(
    web: WebServer, prompt: str, max_tokens: int
) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a generation on a thread; return once its first line arrived.

    ``results["lines"]`` holds every line once the thread is done.  Waiting
    for the first line, not for the agent's report of a busy slot, keeps the
    test right however fast the machine generates.
    """
    results: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        lines: list[dict[str, Any]] = []
        try:
            with raw_prompt_stream(web, prompt, max_tokens) as response:
                for line in response.iter_lines():
                    if line.strip():
                        lines.append(json.loads(line))
                        started.set()
        finally:
            results["lines"] = lines
            started.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(30), "no first line"
    return thread, results


def allowed_host(server: ModelServer) -> str:
    """The local model server, for PADDLER_MODEL_SOURCE_ALLOWED_HOSTS."""
    return server.url.removeprefix("http://")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_model_from_hugging_face_is_downloaded_and_served(
    fleet: Fleet, model_path: Path, tmp_path: Path
) -> None:
    with ModelServer(model_path) as hub:
        web = fleet.web()
        web.put_desired_state(
            with_model(
                fleet.state,
                {
                    "HuggingFace": {
                        "repo_id": hub.repo_id,
                        "filename": hub.filename,
                        "revision": "main",
                    }
                },
            )
        )
        fleet.agent(
            "hf",
            env={
                "HF_ENDPOINT": hub.url,
                "HF_HOME": str(tmp_path / "hf-home"),
                "PADDLER_MODEL_SOURCE_ALLOWED_HOSTS": allowed_host(hub),
            },
        )
        report = wait_for_status(web, "hf", "Applied")
        downloaded = Path(report["model_path"])
        assert str(tmp_path / "hf-home") in str(downloaded)
        assert sha256(downloaded) == sha256(model_path)
        assert stream_text(generate(web, "Hello", 4))


def test_unknown_hugging_face_repo_is_an_issue_and_the_agent_keeps_running(
    fleet: Fleet, model_path: Path, tmp_path: Path
) -> None:
    with ModelServer(model_path) as hub:
        web = fleet.web()
        missing = {
            "repo_id": "nobody/nothing",
            "filename": "x.gguf",
            "revision": "main",
        }
        web.put_desired_state(with_model(fleet.state, {"HuggingFace": missing}))
        fleet.agent(
            "hf-missing",
            env={
                "HF_ENDPOINT": hub.url,
                "HF_HOME": str(tmp_path / "hf-home"),
                "PADDLER_MODEL_SOURCE_ALLOWED_HOSTS": allowed_host(hub),
            },
        )
        report = wait_for_status(web, "hf-missing", "AttemptedAndNotAppliable")
        # Paddler's payload: the model named repo/revision/filename.
        named = {"model_path": "nobody/nothing/main/x.gguf"}
        assert report["issues"] == [{"HuggingFaceModelDoesNotExist": named}]
        assert report["slots_total"] == 0
        # A corrected state is applied by the same, still running, agent.
        web.put_desired_state(
            with_model(fleet.state, {"LocalToAgent": str(model_path)})
        )
        report = wait_for_status(web, "hf-missing", "Applied")
        assert report["issues"] == []
        assert report["slots_total"] == 2


def test_model_from_a_url_resumes_reports_progress_and_lands_atomically(
    fleet: Fleet, model_path: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with ModelServer(model_path) as server:
        url = f"{server.url}/files/{server.filename}"
        with override_cache(cache):
            target = cached_path_for_url(url)
        # An interrupted earlier download left the first 100 MB behind.
        target.parent.mkdir(parents=True)
        partial = target.with_name(target.name + ".part")
        with model_path.open("rb") as source:
            partial.write_bytes(source.read(100_000_000))
        server.throttle = 60_000_000  # bytes/s: about 2.5 s for the rest
        web = fleet.web()
        web.put_desired_state(with_model(fleet.state, {"Url": {"url": url}}))
        fleet.agent(
            "url",
            env={
                "PADDLER_CACHE_DIR": str(cache),
                "PADDLER_MODEL_SOURCE_ALLOWED_HOSTS": allowed_host(server),
            },
        )
        seen: list[tuple[int, int, str | None]] = []

        def downloading() -> bool:
            report = agent_report(web, "url")
            if report and report["download_total"]:
                seen.append(
                    (
                        report["download_current"],
                        report["download_total"],
                        report["download_filename"],
                    )
                )
            return bool(report and report["state_application_status"] == "Applied")

        wait_until(downloading, 60, "the download")
        assert server.ranges == ["bytes=100000000-"]
        assert seen, "no download progress was reported"
        current, total, filename = seen[0]
        assert total == model_path.stat().st_size
        assert 100_000_000 <= current < total
        assert filename == target.name
        assert not partial.exists()
        assert sha256(target) == sha256(model_path)
        report = agent_report(web, "url")
        assert report is not None
        assert report["model_path"] == str(target)
        assert report["download_total"] == 0


class override_cache:
    """PADDLER_CACHE_DIR for code run in this test process."""

    def __init__(self, path: Path) -> None:
        from django.test import override_settings

        self._override = override_settings(PADDLER_CACHE_DIR=str(path))

    def __enter__(self) -> None:
        self._override.enable()

    def __exit__(self, *args: object) -> None:
        self._override.disable()


@pytest.mark.parametrize(
    ("model", "issue_kind"),
    [
        ({"LocalToAgent": "/nonexistent/model.gguf"}, "ModelFileDoesNotExist"),
        (
            {"Url": {"url": "http://127.0.0.1:9/missing.gguf"}},
            "DownloadServerIsUnreachable",
        ),
    ],
)
def test_unusable_model_source_is_reported_as_an_issue(
    fleet: Fleet, model: Any, issue_kind: str
) -> None:
    web = fleet.web()
    web.put_desired_state(with_model(fleet.state, model))
    fleet.agent("troubled")
    report = wait_for_status(web, "troubled", "AttemptedAndNotAppliable")
    (issue,) = report["issues"]
    assert issue_kind in issue


def test_chat_template_that_does_not_compile_is_an_issue(fleet: Fleet) -> None:
    web = fleet.web()
    web.put_desired_state(
        {
            **fleet.state,
            "chat_template_override": {"content": "{% for %}"},
            "use_chat_template_override": True,
        }
    )
    fleet.agent("templated")
    report = wait_for_status(web, "templated", "AttemptedAndNotAppliable")
    (issue,) = report["issues"]
    assert "ChatTemplateDoesNotCompile" in issue


def test_new_state_drains_in_flight_requests_then_swaps(fleet: Fleet) -> None:
    web = fleet.web()
    fleet.agent("swapper")
    wait_for_status(web, "swapper", "Applied")
    thread, results = generate_in_background(web, ENDLESS_PROMPT, 300)
    new_state = with_model(fleet.state, fleet.state["model"], context_size=1024)
    web.put_desired_state(new_state)
    # While it drains, the agent takes no new work.
    wait_until(lambda: web.agents()[0]["slots_total"] == 0, 5, "draining")
    thread.join()
    done = results["lines"][-1]["Response"]["response"]["GeneratedToken"]
    assert done["Done"]["usage"]["content_tokens"] == 300  # finished, not cut off
    wait_for_status(web, "swapper", "Applied")
    assert web.agents()[0]["slots_total"] == 2


def test_sigterm_finishes_in_flight_work_then_deregisters(fleet: Fleet) -> None:
    web = fleet.web()
    # A grace period no machine needs in full: the drain ends when the
    # request does, however slowly this machine generates.
    agent = fleet.agent("graceful", 2, "--shutdown-grace", "240")
    wait_for_status(web, "graceful", "Applied")
    thread, results = generate_in_background(web, ENDLESS_PROMPT, 100)
    agent.process.send_signal(signal.SIGTERM)
    thread.join()
    done = results["lines"][-1]["Response"]["response"]["GeneratedToken"]
    assert done["Done"]["usage"]["content_tokens"] == 100  # finished, not cut off
    assert agent.process.wait(timeout=30) == 0
    assert web.agents() == []


def test_sigterm_past_the_grace_period_fails_what_is_left_with_an_error(
    fleet: Fleet,
) -> None:
    web = fleet.web()
    agent = fleet.agent("hasty", 2, "--shutdown-grace", "0.5")
    wait_for_status(web, "hasty", "Applied")
    thread, results = generate_in_background(web, ENDLESS_PROMPT, 1000)
    agent.process.send_signal(signal.SIGTERM)
    thread.join()
    error = results["lines"][-1]["Error"]["error"]
    assert error["code"] == 503
    assert "shutting down" in error["description"]
    assert agent.process.wait(timeout=30) == 0


def test_agent_reregisters_after_redis_restarts(fleet: Fleet) -> None:
    web = fleet.web()
    fleet.agent("phoenix")
    wait_for_status(web, "phoenix", "Applied")
    port = fleet.redis.port
    stop_process(fleet.redis.process)
    time.sleep(1)
    fleet.redis = start_redis(port)
    # The desired state lived in Redis too; the web tier puts it back, and the
    # agent registers again with the state it has.
    report = wait_for_status(web, "phoenix", "Applied", timeout=30)
    assert report["slots_total"] == 2
    assert stream_text(generate(web, "Hello again", 4))


def test_prompt_longer_than_the_context_gets_a_clear_error(platform: WebServer) -> None:
    lines = generate(platform, "word " * 2100, 4)
    error = lines[-1]["Error"]["error"]
    assert error["code"] == 400
    assert "slot's context holds 2048" in error["description"]
    # The agent is unharmed.
    assert stream_text(generate(platform, "Still there?", 3))


def test_generation_ends_cleanly_at_the_end_of_the_context(platform: WebServer) -> None:
    lines = generate(platform, "a " * 1990, 500)
    usage = lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]
    assert usage["prompt_tokens"] + usage["content_tokens"] <= 2048
    assert usage["content_tokens"] < 500


def test_same_slot_reuses_the_cached_prefix_exactly(platform: WebServer) -> None:
    prompt = "The history of the printing press begins"
    first = generate(platform, prompt, 5)[-1]["Response"]["response"]
    again = generate(platform, prompt, 5)[-1]["Response"]["response"]
    first_usage = first["GeneratedToken"]["Done"]["usage"]
    usage = again["GeneratedToken"]["Done"]["usage"]
    # Everything but the last prompt token (evaluated to get logits) is reused.
    assert usage["cached_prompt_tokens"] == usage["prompt_tokens"] - 1
    assert usage["prompt_tokens"] == first_usage["prompt_tokens"]


def test_slots_generate_side_by_side(platform: WebServer) -> None:
    """A second request starts while the first is still generating."""
    arrivals: dict[str, list[float]] = {"a": [], "b": []}

    def run(name: str, max_tokens: int) -> None:
        with httpx.stream(
            "POST",
            f"{platform.url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": f"Story {name}:", "max_tokens": max_tokens},
            timeout=60,
        ) as response:
            for line in response.iter_lines():
                if line:
                    json.loads(line)
                    arrivals[name].append(time.monotonic())

    first = threading.Thread(target=run, args=("a", 60))
    first.start()
    wait_until(lambda: len(arrivals["a"]) >= 3, 10, "the first stream")
    second = threading.Thread(target=run, args=("b", 10))
    second.start()
    second.join()
    first.join()
    # b ran entirely while a was still producing tokens.
    assert arrivals["a"][0] < arrivals["b"][0] < arrivals["b"][-1] < arrivals["a"][-1]


def test_a_new_template_or_system_prompt_applies_without_a_reload(
    fleet: Fleet,
) -> None:
    web = fleet.web()
    fleet.agent("steady", 1)
    (agent_id,) = [wait_for_status(web, "steady", "Applied")["id"]]
    question = [{"role": "user", "content": "What is a press?"}]
    before = conversation_usage(web, question)
    prompt = "The history of the printing press begins"
    generate(web, prompt, 3)  # the only slot now caches this prompt

    lowest_slots = [2]
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        while watching.is_set():
            report = agent_report(web, "steady")
            if report is not None:
                lowest_slots[0] = min(lowest_slots[0], report["slots_total"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    template = GEMMA_CHAT_TEMPLATE + "{# revised #}"
    web.put_desired_state(
        {
            **fleet.state,
            "chat_template_override": {"content": template},
            "default_system_prompt": "Answer like a printer's apprentice.",
        }
    )
    client = fleet.client()

    def applied_template() -> Any:
        raw = client.get(keys.agent_metadata(agent_id))
        assert isinstance(raw, bytes)
        return json.loads(raw)

    wait_until(
        lambda: applied_template()["chat_template"] == template,
        10,
        "the agent to use the new template",
    )
    client.close()
    watching.clear()
    watcher.join()
    assert lowest_slots[0] == 1, "the agent drained its slot for a template change"
    # The slot's cache survived: no model reload.
    again = generate(web, prompt, 3)[-1]["Response"]["response"]
    usage = again["GeneratedToken"]["Done"]["usage"]
    assert usage["cached_prompt_tokens"] == usage["prompt_tokens"] - 1
    # And the new system prompt is in the conversation's prompt.
    assert conversation_usage(web, question)["prompt_tokens"] > before["prompt_tokens"]


def conversation_usage(web: WebServer, history: list[dict[str, str]]) -> Any:
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_conversation_history",
        json={"conversation_history": history, "max_tokens": 1},
        timeout=60,
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    return lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]
