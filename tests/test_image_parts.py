"""Image parts in every API's request, checked before anything is dispatched.

The shape of a part (validation and the OpenAI parsers), then its image
(``image_parts.prepare_images``: data URLs decoded, sizes held to the limits,
fingerprints noted for routing).  Fetching http(s) URLs has its own file
(``test_image_fetch``).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from balancer.images import data_url, image_digest, url_digest
from inference.image_fetch import FetchRules
from inference.image_parts import ImageLimits, prepare_images
from inference.openai.errors import OpenAIError
from inference.openai.requests import parse_chat_request
from inference.openai.responses_api import parse_responses_request
from inference.validation import ImageTooLarge, InvalidRequest, validate_conversation

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56  # 64 bytes; the web tier never decodes
OTHER_PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 56
IMAGE = data_url("image/png", PNG)


def image_part(url: str = IMAGE, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def conversation(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "conversation_history": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is it?"}, *parts],
            },
        ],
        "max_tokens": 4,
    }


def chat(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What?"}, *parts]}
        ],
    }


# ------------------------------------------------------------ shapes


def test_paddler_conversation_keeps_its_image_parts_in_order() -> None:
    params = validate_conversation(
        conversation(image_part(), image_part("https://x/y.png"))
    )
    content = params["conversation_history"][1]["content"]
    assert content == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": IMAGE}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
    ]


def test_openai_chat_accepts_image_url_parts_and_their_detail() -> None:
    request = parse_chat_request(chat(image_part(detail="low")))
    (message,) = request.params["conversation_history"]
    # ``detail`` is accepted and ignored: the agent scales every image to
    # the desired state's image_resize_to_fit.
    assert message["content"][1] == {"type": "image_url", "image_url": {"url": IMAGE}}


def test_responses_input_image_becomes_an_image_url_part() -> None:
    parsed = parse_responses_request(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What?"},
                        {"type": "input_image", "image_url": IMAGE, "detail": "auto"},
                    ],
                }
            ],
        }
    )
    (message,) = parsed.generation.params["conversation_history"]
    assert message["content"] == [
        {"type": "text", "text": "What?"},
        {"type": "image_url", "image_url": {"url": IMAGE}},
    ]


def test_responses_text_only_input_stays_a_string() -> None:
    parsed = parse_responses_request(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}
            ],
        }
    )
    assert parsed.generation.params["conversation_history"][0]["content"] == "hi"


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ({"type": "image_url"}, "conversation_history[1].content[1].image_url"),
        (
            {"type": "image_url", "image_url": "x"},
            "conversation_history[1].content[1].image_url",
        ),
        (image_part(""), "conversation_history[1].content[1].image_url.url"),
        (
            image_part(detail="huge"),
            "conversation_history[1].content[1].image_url.detail",
        ),
        (
            {"type": "image_url", "image_url": {"url": IMAGE, "x": 1}},
            "conversation_history[1].content[1].image_url.x",
        ),
        # A part we could not pass on is refused, never dropped.
        (
            {"type": "input_audio", "input_audio": {}},
            "conversation_history[1].content[1].type",
        ),
        ({"type": "text"}, "conversation_history[1].content[1].text"),
    ],
)
def test_a_malformed_part_names_its_path(part: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_conversation(conversation(part))
    assert error.value.field == field
    assert error.value.status == 400


def test_openai_names_the_malformed_part_in_messages() -> None:
    with pytest.raises(OpenAIError) as error:
        parse_chat_request(chat({"type": "image_url", "image_url": {}}))
    assert error.value.status == 400
    assert error.value.param == "messages[0].content[1].image_url.url"


def test_responses_refuses_an_input_image_without_a_url() -> None:
    with pytest.raises(OpenAIError) as error:
        parse_responses_request(
            {
                "model": "m",
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "file_id": "f"}],
                    }
                ],
            }
        )
    assert error.value.param == "input[0].content[0].image_url"
    assert "file_id is not supported" in error.value.message


# ------------------------------------------------------------ images

LIMITS = ImageLimits(max_image_bytes=100, max_request_bytes=150, fetch=FetchRules())


def history(*urls: str) -> list[dict[str, Any]]:
    params = validate_conversation(conversation(*(image_part(url) for url in urls)))
    return list(params["conversation_history"])


async def test_a_data_url_image_passes_unchanged_and_its_fingerprint_is_noted() -> None:
    messages = history(IMAGE)
    assert (
        await prepare_images(messages, field="conversation_history", limits=LIMITS) == 1
    )
    assert messages[1]["content"][1]["image_url"]["url"] == IMAGE
    assert url_digest(IMAGE) == image_digest(PNG)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:text/plain;base64,aGk=", "declares media type 'text/plain'"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:image/png;base64,***", "not valid base64"),
        ("data:image/png;base64,", "empty payload"),
        ("ftp://example.com/a.png", "must be a data: URL"),
        ("file:///etc/passwd", "must be a data: URL"),
    ],
)
async def test_a_bad_image_url_is_a_400_naming_the_part(url: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        await prepare_images(
            history(IMAGE, url), field="conversation_history", limits=LIMITS
        )
    assert error.value.status == 400
    assert error.value.field == "conversation_history[1].content[2].image_url.url"
    assert message in error.value.message


async def test_an_image_over_the_limit_is_a_413_naming_the_part_and_the_limit() -> None:
    big = data_url("image/png", PNG * 2)  # 128 bytes, over 100
    with pytest.raises(ImageTooLarge) as error:
        await prepare_images(history(big), field="messages", limits=LIMITS)
    assert error.value.status == 413
    assert error.value.field == "messages[1].content[1].image_url.url"
    assert "128 bytes" in error.value.message
    assert "PADDLER_MAX_IMAGE_BYTES (100 bytes)" in error.value.message


async def test_images_over_the_request_total_are_a_413() -> None:
    # 64 + 64 + 64 bytes: each within 100, together over 150.
    with pytest.raises(ImageTooLarge) as error:
        await prepare_images(
            history(IMAGE, IMAGE, data_url("image/png", OTHER_PNG)),
            field="conversation_history",
            limits=LIMITS,
        )
    assert error.value.field == "conversation_history"
    assert "PADDLER_MAX_REQUEST_IMAGE_BYTES (150 bytes)" in error.value.message


async def test_a_large_data_url_is_decoded_off_the_event_loop_the_same() -> None:
    data = b"\xff\xd8\xff" + bytes(range(256)) * 2048  # about 0.5 MB
    url = data_url("image/jpeg", data)
    messages = history(url)
    limits = ImageLimits(max_image_bytes=1 << 20, max_request_bytes=1 << 20)
    assert (
        await prepare_images(messages, field="conversation_history", limits=limits) == 1
    )
    assert url_digest(url) == image_digest(data)


async def test_a_text_only_conversation_has_nothing_to_prepare() -> None:
    params = validate_conversation(
        {"conversation_history": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    )
    assert (
        await prepare_images(params["conversation_history"], field="c", limits=LIMITS)
        == 0
    )


def test_the_same_bytes_under_another_header_are_the_same_image() -> None:
    # The fingerprint is of the bytes, not of the URL's text.
    shouted = "data:IMAGE/PNG;BASE64," + base64.b64encode(PNG).decode()
    assert shouted != IMAGE
    assert url_digest(shouted) == url_digest(IMAGE) == image_digest(PNG)
