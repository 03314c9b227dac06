"""JSON as Paddler's management API writes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.renderers import JSONRenderer


class PaddlerJSONRenderer(JSONRenderer):
    """DRF's JSON, except that ``None`` is the body ``null``.

    Paddler answers ``null`` for "no such thing" (no override, no metadata,
    no applicable state) and its clients parse the body; DRF renders ``None``
    as an empty body.  A 204 keeps its empty body.
    """

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        response = (renderer_context or {}).get("response")
        if data is None:
            if response is not None and response.status_code == 204:
                return b""
            return b"null"
        return super().render(data, accepted_media_type, renderer_context)
