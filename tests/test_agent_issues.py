"""Agent issues carry Paddler's payloads, and a promised retry happens.

Paddler 4.1's ``AgentIssue`` variants take a ``ModelPath`` (``{"model_path":
...}``), with ``deny_unknown_fields``; a model on Hugging Face is named
``repo_id/revision/filename``.  Sources are real: files, and a local HTTP
server standing in for a model host and the Hub.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from paddler_client.agent_issue import AgentIssue
from pytest_django.fixtures import Settings

from agents import worker as worker_module
from agents.model_source import ModelSourceError, resolve_model_path
from agents.worker import AgentWorker
from balancer.desired_state import ModelSource
from tests.support.constants import GREEDY_PARAMETERS
from tests.support.model_server import ModelServer


class Progress:
    current = 0
    total = 0
    filename: str | None = None
    indeterminate = False


@pytest.fixture
def server(
    model_path: Path, settings: Settings, tmp_path: Path
) -> Iterator[ModelServer]:
    settings.PADDLER_CACHE_DIR = str(tmp_path / "cache")
    with ModelServer(model_path) as running:
        port = int(running.url.rpartition(":")[2])
        settings.PADDLER_MODEL_SOURCE_ALLOWED_HOSTS = [("127.0.0.1", port)]
        yield running


async def issue_of(source: Any) -> Any:
    with pytest.raises(ModelSourceError) as raised:
        await resolve_model_path(
            ModelSource.from_json(source, "model"), Progress(), lambda: None
        )
    issue = raised.value.issue
    # Paddler's Python client reads it as a variant with its params.
    parsed = AgentIssue.model_validate(issue)
    assert parsed.to_serde() == issue
    return issue


async def test_a_missing_local_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.gguf")
    issue = await issue_of({"LocalToAgent": path})
    assert issue == {"ModelFileDoesNotExist": {"model_path": path}}


async def test_a_url_with_no_model(server: ModelServer) -> None:
    url = f"{server.url}/files/absent.gguf"
    assert await issue_of({"Url": {"url": url}}) == {
        "ModelDoesNotExistAtUrl": {"model_path": url}
    }


async def test_a_url_the_agent_may_not_reach(settings: Settings) -> None:
    settings.PADDLER_MODEL_SOURCE_ALLOWED_HOSTS = []
    url = "http://127.0.0.1:9/model.gguf"
    assert await issue_of({"Url": {"url": url}}) == {
        "DownloadServerIsUnreachable": {"model_path": url}
    }


async def test_a_model_the_hub_does_not_have(
    server: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    reference = {"repo_id": "nobody/nothing", "filename": "x.gguf", "revision": "v1"}
    assert await issue_of({"HuggingFace": reference}) == {
        "HuggingFaceModelDoesNotExist": {"model_path": "nobody/nothing/v1/x.gguf"}
    }


async def test_a_file_that_is_no_model_is_our_extension_with_the_reason(
    server: ModelServer,
) -> None:
    # Paddler has no issue for this: ours says why.
    url = f"{server.url}/page"
    assert await issue_of({"Url": {"url": url}}) == {
        "ModelDownloadFailed": {
            "model_path": url,
            "error": "the file is not a GGUF model",
        }
    }


@pytest.fixture
async def worker(isolated_redis: redis.Redis) -> AsyncIterator[AgentWorker]:
    built = AgentWorker(name="issues", slots=1, backend="synthetic")
    await built.connect()
    yield built
    await built.shutdown()
    await built.disconnect()


async def test_a_template_that_does_not_compile_names_the_model(
    worker: AgentWorker,
) -> None:
    await worker.apply_state(
        {
            "model": {"LocalToAgent": "/models/m.gguf"},
            "chat_template_override": {"content": "{% for %}"},
            "use_chat_template_override": True,
        }
    )
    (issue,) = worker.status.issues
    payload = issue["ChatTemplateDoesNotCompile"]
    assert set(payload) == {"error", "model_path", "template_content"}
    assert payload["model_path"] == {"model_path": "/models/m.gguf"}


async def test_an_attempt_that_failed_is_retried_as_the_status_promises(
    worker: AgentWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unexpected failure (Redis gone mid-apply, a bug): the first attempt
    # raises, as nothing real can be made to at will.
    monkeypatch.setattr(worker_module, "APPLY_RETRY_S", 0.2)
    real_apply = worker.apply_state
    attempts: list[dict[str, Any]] = []

    async def apply_failing_once(state_json: dict[str, Any]) -> None:
        attempts.append(state_json)
        if len(attempts) == 1:
            raise RuntimeError("the first attempt fails")
        await real_apply(state_json)

    monkeypatch.setattr(worker, "apply_state", apply_failing_once)
    state = {
        "model": {"LocalToAgent": "/nowhere/synthetic.gguf"},
        "inference_parameters": dict(GREEDY_PARAMETERS),
    }
    worker._schedule_apply(state)
    await asyncio.sleep(0.1)
    assert worker.status.state_application_status == "AttemptedAndRetrying"
    for _ in range(100):
        if worker.status.state_application_status == "Applied":
            break
        await asyncio.sleep(0.05)
    assert worker.status.state_application_status == "Applied"
    assert len(attempts) == 2
