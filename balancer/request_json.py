"""JSON as the inference endpoints read it: only what every later step can use.

Framework-free.  Python's parser accepts more than the rest of the platform
can carry, and each of these used to surface as a 500 further on:

- integers of thousands of digits (``int()`` refuses past 4,300 digits with a
  ``ValueError``; below that, ``float()`` of one overflows);
- ``NaN``, ``Infinity`` and ``1e999`` (not standard JSON, and they pass range
  checks written as comparisons);
- lone UTF-16 surrogates (``"\\ud800"``): a ``str`` holds one, but it is no
  Unicode character, so encoding the text as UTF-8 (for Redis, the agent,
  the tokenizer) raises.

Each is refused here with a message that says what and where.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# No field of any of our APIs needs a longer integer; a float of one this long
# is finite (1e100 < 1.8e308), so later ``float()`` calls cannot overflow.
MAX_INTEGER_DIGITS = 100

# A surrogate can only come from a \uXXXX escape: a raw one is not valid UTF-8
# and never gets past decoding.  Texts without such an escape skip the walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class InvalidJson(ValueError):
    """The body (or socket message) is not JSON we accept; says why."""


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise InvalidJson(
            f"has an integer of {digits} digits (at most {MAX_INTEGER_DIGITS})"
        )
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(f"has a number too large to represent: {text[:40]}")
    return value


def _constant(name: str) -> Any:
    raise InvalidJson(f"has {name}, which is not a JSON number")


def _shown(key: str) -> str:
    """A key as the path names it: its own lone surrogates escaped, or the
    message that reports them could not itself be written as UTF-8."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _lone_surrogate(value: Any, where: str) -> str | None:
    """Where in ``value`` a string (or key) holds a lone surrogate, if anywhere."""
    pending: list[tuple[Any, str]] = [(value, where)]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                pending.append((key, f"{path} (a key)"))
                shown = _shown(str(key))
                pending.append((child, f"{path}.{shown}" if path else shown))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


def loads(text: str | bytes) -> Any:
    """Parsed JSON, or ``InvalidJson`` whose message completes "The body ...".

    ``UnicodeDecodeError`` (bytes that are not UTF-8) and ``RecursionError``
    (nesting deeper than Python's stack) are raised as they are, for callers
    to word.
    """
    if isinstance(text, bytes):
        # Strictly UTF-8, as JSON on the wire is (RFC 8259): json.loads would
        # also take UTF-16 and UTF-32, which the escape search below misses.
        text = text.decode("utf-8")
    try:
        value = json.loads(
            text,
            parse_int=_integer,
            parse_float=_finite_float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as error:
        raise InvalidJson(f"is not valid JSON: {error}") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        where = _lone_surrogate(value, "")
        if where is not None:
            raise InvalidJson(
                f"has a lone UTF-16 surrogate (such as \\ud800) in "
                f"{where or 'the top-level string'}, which is not a Unicode character"
            )
    return value
