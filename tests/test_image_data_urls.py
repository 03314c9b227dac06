"""Image parts on the wire: data URLs parsed the same way on both tiers."""

from __future__ import annotations

import base64

import pytest

from balancer.images import (
    DataUrlError,
    data_url,
    image_digest,
    image_urls,
    parse_data_url,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_data_url_round_trips() -> None:
    url = data_url("image/png", PNG_SIGNATURE)
    assert url == "data:image/png;base64," + base64.b64encode(PNG_SIGNATURE).decode()
    assert parse_data_url(url) == ("image/png", PNG_SIGNATURE)


def test_media_type_and_base64_marker_are_case_insensitive() -> None:
    payload = base64.b64encode(b"abc").decode()
    assert parse_data_url(f"data:IMAGE/JPEG;BASE64,{payload}") == (
        "image/jpeg",
        b"abc",
    )


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("https://example.com/a.png", "not a data: URL"),
        ("data:image/png;base64", "no ','"),
        ("data:text/plain;base64,YWJj", "'text/plain'"),
        ("data:;base64,YWJj", "'none'"),
        ("data:image/png,abc", "base64-encoded"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ("data:image/png;base64,", "empty payload"),
    ],
)
def test_a_bad_data_url_says_what_is_wrong(url: str, names: str) -> None:
    with pytest.raises(DataUrlError) as raised:
        parse_data_url(url)
    assert names in str(raised.value)


def test_image_urls_reads_image_parts_in_order() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
    ]
    assert image_urls(content) == [
        "data:image/png;base64,AA==",
        "https://example.com/b.png",
    ]
    assert image_urls("plain text") == []


def test_the_digest_names_bytes_not_their_transport() -> None:
    url = data_url("image/png", PNG_SIGNATURE)
    _, data = parse_data_url(url)
    assert image_digest(data) == image_digest(PNG_SIGNATURE)
    assert len(image_digest(data)) == 32
