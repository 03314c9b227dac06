"""Bodies read as the inference endpoints read them (``balancer.request_json``).

DRF's own JSON parser lets ``1e999`` through as infinity, which passes range
checks written as comparisons, and lone surrogates, which cannot be stored.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from balancer import request_json


class BodyParseError(ParseError):
    """A body that is not JSON we accept; its field is the body."""


class StrictJSONParser(BaseParser):
    media_type = "application/json"

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            return request_json.loads(raw)
        except request_json.InvalidJson as error:
            raise BodyParseError(f"body {error}") from None
        except UnicodeDecodeError as error:
            raise BodyParseError(f"body is not valid JSON: {error}") from None
        except RecursionError:
            raise BodyParseError("body is nested too deeply") from None


def request_body(request: Any) -> Any:
    """The parsed body of a DRF ``request``.

    A body sent without a ``Content-Type`` is read as JSON too, as the
    endpoints always have (curl -d sends a form type, scripts often none);
    DRF alone would see no body at all, and an empty PUT would then pass as
    an empty desired state.
    """
    if request.content_type:
        return request.data
    return StrictJSONParser().parse(io.BytesIO(request.body))
