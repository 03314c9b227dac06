"""Images on a real agent: the demo model, the generated projection, Redis.

Real agent processes (``manage.py run_agent``) are driven as the web tier
drives them: requests and cancellations on their channel of the Channels
layer, output read from a web inbox in Redis (``tests/support/agent_link``).
The projection is the tiny random ``gemma3`` encoder of
``tests/support/mmproj.py``: its answers are nonsense, so outputs are
compared with each other, never with text.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from balancer.images import data_url
from balancer.routing import conversation_prefix
from tests.support.agent_link import AgentLink, Answer
from tests.support.fleet import Agent, start_agent
from tests.support.mmproj import EncoderShape, model_width, write_test_mmproj
from tests.support.model_server import ModelServer
from tests.support.processes import wait_until
from tests.support.redis_server import start_redis

IMAGE_TOKENS = EncoderShape().image_tokens  # 16
MISSING_PROJECTION = "/nowhere/test-mmproj.gguf"
# How long an agent may take to say a cancelled request's slot is free: it
# reports at least once a second, and a decode step takes up to seconds on
# an overloaded machine.
REPORT_LAG_S = 15


def noise_png(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    rng = random.Random(seed)
    pixels = bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(buffer, "PNG")
    return buffer.getvalue()


def solid_png(colour: tuple[int, int, int]) -> bytes:
    """A PNG of one colour.  The random test encoder averages noise images
    into much the same embeddings, and the demo model's answer hardly moves;
    red and black come out far enough apart to change it."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def image_part(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url("image/png", data)}}


def ask(question: str, *images: bytes) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": question}]
    parts += [image_part(image) for image in images]
    return {"role": "user", "content": parts}


@dataclass
class Agents:
    link: AgentLink
    # Each agent's channel, by name.
    channels: dict[str, str]
    reports: dict[str, dict[str, Any]]
    redis_url: str
    # The desired state of the agent without projection, and the projection.
    state: dict[str, Any]
    projection: Path

    def run(self, agent: str, messages: list[dict[str, Any]], **options: Any) -> Answer:
        request_id = self.link.converse(self.channels[agent], messages, **options)
        return self.link.answer(request_id)

    def wait_idle(self, agent: str) -> dict[str, Any]:
        """The agent's report once none of its slots is busy."""

        def idle() -> dict[str, Any] | None:
            report = self.link.report(agent)
            if report and report["slots_processing"] == 0:
                return report
            return None

        result: dict[str, Any] = wait_until(idle, REPORT_LAG_S, f"{agent} idle")
        return result


@pytest.fixture(scope="module")
def agents(
    model_path: Path,
    greedy_state: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Agents]:
    """Three agents on one Redis: ``vision`` (model and projection),
    ``plain`` (the model alone) and ``broken`` (a projection that is not
    there), each in a pool of its own to get its own desired state."""
    tmp_path = tmp_path_factory.mktemp("images-agent")
    projection = write_test_mmproj(
        tmp_path / "test-mmproj.gguf", text_width=model_width(model_path)
    )
    redis_server = start_redis()
    link = AgentLink(redis_server.url)
    parameters = {**greedy_state["inference_parameters"], "context_size": 1024}
    state = {**greedy_state, "inference_parameters": parameters}
    link.put_desired_state(
        {**state, "multimodal_projection": {"LocalToAgent": str(projection)}},
        pool="vision",
    )
    link.put_desired_state(state, pool="plain")
    link.put_desired_state(
        {**state, "multimodal_projection": {"LocalToAgent": MISSING_PROJECTION}},
        pool="broken",
    )
    started: list[Agent] = []
    try:
        for name in ("vision", "plain", "broken"):
            # One llama.cpp thread: threads spin on a shared 2-core machine.
            started.append(
                start_agent(
                    redis_server.url,
                    tmp_path,
                    name,
                    2,
                    "--threads",
                    "1",
                    "--pool",
                    name,
                )
            )
        reports = {
            "vision": link.wait_for("vision", "Applied"),
            "plain": link.wait_for("plain", "Applied"),
            "broken": link.wait_for("broken", "AttemptedAndNotAppliable"),
        }
        channels = {name: report["channel"] for name, report in reports.items()}
        yield Agents(link, channels, reports, redis_server.url, state, projection)
    finally:
        for agent in started:
            agent.stop()
        link.close()
        redis_server.process.terminate()
        redis_server.process.wait(10)


def test_the_agent_with_a_projection_says_it_serves_images(agents: Agents) -> None:
    assert agents.reports["vision"]["serves_images"] is True
    assert agents.reports["plain"]["serves_images"] is False
    assert agents.reports["vision"]["issues"] == []


def test_a_projection_that_does_not_exist_is_an_agent_issue(agents: Agents) -> None:
    report = agents.reports["broken"]
    assert report["issues"] == [
        {"MultimodalProjectionCannotBeLoaded": {"model_path": MISSING_PROJECTION}}
    ]
    assert report["slots_total"] == 0
    assert report["serves_images"] is False


def test_an_image_counts_its_image_tokens_and_generates(agents: Agents) -> None:
    answer = agents.run("vision", [ask("Describe this picture: ", noise_png(1))])
    assert answer.failure is None and answer.final["error"] is None, answer.final
    usage = answer.usage
    assert usage["input_image_tokens"] == IMAGE_TOKENS
    assert usage["content_tokens"] > 0
    two = agents.run("vision", [ask("Compare ", noise_png(2), noise_png(3))])
    assert two.usage["input_image_tokens"] == 2 * IMAGE_TOKENS
    # Text tokens only: the image's delimiters are text, its 16 positions not.
    text_only = agents.run("vision", [ask("Describe this picture: ")])
    assert text_only.usage["input_image_tokens"] == 0
    assert 0 < usage["prompt_tokens"] - text_only.usage["prompt_tokens"] < IMAGE_TOKENS


def test_the_same_image_gives_the_same_answer_and_another_image_another(
    agents: Agents,
) -> None:
    def answer(image: bytes) -> str:
        messages = [
            {
                "role": "user",
                "content": [
                    image_part(image),
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ]
        result = agents.run("vision", messages, max_tokens=8)
        assert result.failure is None, result.final
        return result.text

    red, black = solid_png((255, 0, 0)), solid_png((0, 0, 0))
    first = answer(red)
    assert answer(red) == first
    assert answer(black) != first


def test_the_next_turn_reuses_its_image_and_another_image_does_not(
    agents: Agents,
) -> None:
    image, other = noise_png(20), noise_png(21)
    question = "Look closely at this image, then say what it shows. "
    first = agents.run("vision", [ask(question, image)], max_tokens=4)
    text = first.usage["prompt_tokens"]

    def next_turn(picture: bytes) -> Answer:
        return agents.run(
            "vision",
            [
                ask(question, picture),
                {"role": "assistant", "content": first.text},
                {"role": "user", "content": "And what else?"},
            ],
            max_tokens=2,
        )

    # Cached prompt tokens count text, as prompt_tokens do: the first turn's
    # text after its image came from the cache, so the image did too.
    same = next_turn(image)
    assert same.usage["cached_prompt_tokens"] >= text
    assert same.usage["cached_prompt_tokens"] <= same.usage["prompt_tokens"]
    # Another image: at most the text before it is kept.
    changed = next_turn(other)
    assert changed.usage["cached_prompt_tokens"] < text
    assert changed.usage["input_image_tokens"] == IMAGE_TOKENS


def test_a_slot_reports_the_routing_chain_of_its_conversation(
    agents: Agents,
) -> None:
    messages = [ask("Name the colours: ", noise_png(30))]
    agents.run("vision", messages, max_tokens=2)
    chain = conversation_prefix(messages)

    def holding() -> bool:
        report = agents.link.report("vision")
        slots = report["slots"] if report else []
        return any(slot["prefix"][:1] == chain for slot in slots)

    # Reports lag a little behind the request's end.
    wait_until(holding, REPORT_LAG_S, "a slot reporting the conversation")


def test_an_image_to_an_agent_without_projection_is_not_supported(
    agents: Agents,
) -> None:
    refused = agents.run("plain", [ask("Describe: ", noise_png(40))])
    assert refused.failure is not None
    variant, message = refused.failure
    assert variant == "MultimodalNotSupported"
    assert "projection" in message
    agents.wait_idle("plain")
    after = agents.run("plain", [{"role": "user", "content": "Hello"}], max_tokens=2)
    assert after.failure is None and after.usage["content_tokens"] > 0


def test_bytes_that_are_no_image_fail_with_image_decoding_failed(
    agents: Agents,
) -> None:
    bogus = "data:image/png;base64," + base64.b64encode(b"not a picture").decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this? "},
                {"type": "image_url", "image_url": {"url": bogus}},
            ],
        }
    ]
    refused = agents.run("vision", messages)
    assert refused.failure is not None
    variant, message = refused.failure
    assert variant == "ImageDecodingFailed"
    assert "image 1 of 1" in message
    agents.wait_idle("vision")
    after = agents.run("vision", [ask("Describe: ", noise_png(41))], max_tokens=2)
    assert after.failure is None and after.usage["input_image_tokens"] == IMAGE_TOKENS


def test_client_text_holding_the_marker_claims_no_image(agents: Agents) -> None:
    messages = [ask("Here <__media__> is no image, only text. ")]
    answer = agents.run("vision", messages, max_tokens=2)
    assert answer.failure is None and answer.final["error"] is None, answer.final
    assert answer.usage["input_image_tokens"] == 0
    with_image = agents.run(
        "vision", [ask("One <__media__> marker and one image: ", noise_png(42))]
    )
    assert with_image.final["error"] is None, with_image.final
    assert with_image.usage["input_image_tokens"] == IMAGE_TOKENS


def test_cancelling_a_request_with_images_frees_its_slot(agents: Agents) -> None:
    images = [noise_png(50 + index) for index in range(6)]
    messages = [ask("Tell a long story about these: ", *images)]
    channel = agents.channels["vision"]
    # Images are evaluated one per decode step: the first progress item
    # comes while the prompt is still being read; cancel there.
    reading = agents.link.converse(channel, messages, max_tokens=2000)
    first = agents.link.next_item(reading)
    assert first["meta"] and "evaluated_prompt_tokens" in first["meta"], first
    agents.link.cancel(channel, reading)
    # And one cancelled while it generates, once the agent says it is busy
    # (an idle report from before the requests would prove nothing).
    generating = agents.link.converse(channel, messages, max_tokens=2000)
    agents.link.next_item(generating)

    def busy() -> bool:
        report = agents.link.report("vision")
        return bool(report and report["slots_processing"] > 0)

    wait_until(busy, REPORT_LAG_S, "the request's slot busy")
    agents.link.cancel(channel, generating)
    report = agents.wait_idle("vision")
    assert not any(slot["busy"] for slot in report["slots"])
    # The slots' caches are consistent: the same request answers alike
    # evaluated afresh and from the cache its first answer left.
    fresh = agents.run("vision", messages, max_tokens=4)
    again = agents.run("vision", messages, max_tokens=4)
    assert fresh.failure is None and fresh.usage["input_image_tokens"] == 6 * 16
    assert again.text == fresh.text


def test_a_projection_from_hugging_face_is_downloaded_or_its_issue_named(
    agents: Agents, tmp_path: Path
) -> None:
    with ModelServer(agents.projection, repo_id="paddler/test-mmproj") as hub:

        def projection_at(filename: str) -> dict[str, Any]:
            source = {"repo_id": hub.repo_id, "filename": filename, "revision": "main"}
            return {**agents.state, "multimodal_projection": {"HuggingFace": source}}

        agents.link.put_desired_state(projection_at(hub.filename), pool="hub")
        agents.link.put_desired_state(projection_at("absent.gguf"), pool="hub-missing")
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf-home"),
            "PADDLER_MODEL_SOURCE_ALLOWED_HOSTS": hub.url.removeprefix("http://"),
        }
        started = [
            start_agent(
                agents.redis_url,
                tmp_path,
                name,
                1,
                "--threads",
                "1",
                "--pool",
                name,
                env=env,
            )
            for name in ("hub", "hub-missing")
        ]
        try:
            missing = agents.link.wait_for("hub-missing", "AttemptedAndNotAppliable")
            assert missing["issues"] == [
                {
                    "HuggingFaceModelDoesNotExist": {
                        "model_path": f"{hub.repo_id}/main/absent.gguf"
                    }
                }
            ]
            report = agents.link.wait_for("hub", "Applied")
            assert report["serves_images"] is True
            downloaded = list((tmp_path / "hf-home").rglob(f"*-{hub.filename}"))
            assert len(downloaded) == 1
            assert downloaded[0].read_bytes() == agents.projection.read_bytes()
            request_id = agents.link.converse(
                report["channel"], [ask("Describe: ", noise_png(60))], max_tokens=2
            )
            answer = agents.link.answer(request_id)
            assert answer.usage["input_image_tokens"] == IMAGE_TOKENS
        finally:
            for agent in started:
                agent.stop()


def test_a_slot_state_holding_an_image_stays_out_of_the_host_tier(
    agents: Agents,
) -> None:
    """The host tier is keyed by token ids: a state with an image is not
    stored when another conversation takes its slot; a text one is."""

    def talk(messages: list[dict[str, Any]]) -> list[str]:
        answer = agents.run("vision", messages, max_tokens=2)
        assert answer.failure is None and answer.final["error"] is None
        return conversation_prefix(messages)

    def say(text: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": text}]

    # Two slots, and conversations that share no more than the template's
    # first tokens: each takes the slot used longest ago, so the image's is
    # taken by the third, the text one's (the fourth) by the sixth.
    with_image = talk([ask("Describe every detail you can see here: ", noise_png(70))])
    talk(say("Tell me a long story about a lighthouse keeper and his dog."))
    talk(say("Write a poem on the harbour at dawn, with gulls and boats."))
    text_only = talk(say("Explain how mountains form, step by step, for a child."))
    talk(say("List ten rivers of Europe and the seas that they reach."))
    talk(say("Describe a forest in autumn in many careful words, please."))

    def stored() -> frozenset[str] | None:
        report = agents.link.report("vision")
        prefixes = frozenset(report["host_cache"]["prefixes"]) if report else None
        return prefixes if prefixes and text_only[0] in prefixes else None

    held = wait_until(stored, REPORT_LAG_S, "the text conversation in the tier")
    assert with_image[0] not in held
