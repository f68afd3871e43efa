"""JSON for headers that arrive from untrusted bytes (bitstream and payload headers, checkpoint metadata).

Python's ``json.loads`` accepts duplicate keys (the last one wins, so two readers of the same bytes can
disagree about what a header says), the non-standard constants ``NaN``, ``Infinity`` and ``-Infinity``,
numbers that overflow to infinity (``1e400``) and nesting deep enough to raise RecursionError. :func:`loads_strict` refuses all three with a
ValueError whose message is one line.
"""

from __future__ import annotations

import json

MAX_HEADER_DEPTH = 16  # our headers nest 3 levels deep (payload header -> structure -> ranks)


class StrictJsonError(ValueError):
    """The text is not strict JSON (duplicate key, non-finite number, too deep, or malformed)."""


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise StrictJsonError(f"duplicate key {key!r}"[:80])
        result[key] = value
    return result


def _no_constant(name: str) -> float:
    raise StrictJsonError(f"non-finite number {name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400 parses to inf without a word
        raise StrictJsonError(f"number {text[:20]} overflows a float")
    return value


def _depth_within(text: str, limit: int) -> bool:
    """True when brackets nest at most ``limit`` deep (counted outside strings; a cheap pre-check that keeps
    the recursive parser away from RecursionError)."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def loads_strict(data: bytes | str, max_depth: int = MAX_HEADER_DEPTH) -> object:
    """Parse ``data`` (UTF-8 bytes or text) as strict JSON; raise :class:`StrictJsonError` (one line) if it is not."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
    except UnicodeDecodeError as exc:
        raise StrictJsonError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not _depth_within(text, max_depth):
        raise StrictJsonError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except StrictJsonError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, ints over 4300 digits
        raise StrictJsonError(f"not JSON ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
