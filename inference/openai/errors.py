"""OpenAI's error object, raised by every part of the API and answered as is.

Framework-free: the views turn it into a response with its own status.
"""

from __future__ import annotations

from typing import Any


class OpenAIError(Exception):
    """An error in OpenAI's shape, with the HTTP status to answer it with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(param: str, message: str, code: str | None = None) -> OpenAIError:
    """A 400 for one request parameter (or agent output that it caused)."""
    return OpenAIError(400, f"{param}: {message}", param=param, code=code)
