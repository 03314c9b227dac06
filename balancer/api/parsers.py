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
    """The parsed body of a DRF ``request``: JSON, whatever its headers say.

    DRF sees no body at all in an empty one, or one sent without a
    ``Content-Type`` (curl -d sends a form type, scripts often none): an
    empty PUT would then pass as an empty desired state, replacing the
    current one with the defaults.  A body of another declared type gets
    DRF's 415.
    """
    declared = request.content_type.split(";")[0].strip()
    if declared and declared != StrictJSONParser.media_type:
        return request.data
    return StrictJSONParser().parse(io.BytesIO(request.body))
