"""Errors caused by what the user gave us (a file, a flag), as opposed to bugs.

Each carries a one-line message that names the file and the cause; the CLI prints it and exits
non-zero, the runner records it and does not retry it. The message is made one line here, once, for every
raiser: control characters in a path or a cause (a crafted model id, a file name with a newline, a
library's multi-line message) are escaped, never echoed raw.
"""

from __future__ import annotations

import re
from pathlib import Path

MAX_CAUSE_CHARS = 400
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character (newlines included) written as a \\x/\\u escape."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def one_line(text: str, limit: int = MAX_CAUSE_CHARS) -> str:
    """A library message as one line: its non-blank lines joined with ' / ', controls escaped, clipped."""
    joined = " / ".join(line.strip() for line in str(text).splitlines() if line.strip())
    joined = escape_controls(joined)
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def exception_line(exc: BaseException, limit: int = MAX_CAUSE_CHARS) -> str:
    """One line describing ``exc`` (its message, or its type name when it has none), e.g. for a
    constriction PanicException, whose text spans several lines."""
    return one_line(str(exc), limit) or type(exc).__name__


class InputError(Exception):
    """Bad input: unreadable or empty video, odd sizes, wrong flag values, ..."""

    def __init__(self, path: str | Path | None, cause: str):
        self.path = None if path is None else str(path)
        self.cause = one_line(cause)
        shown = None if self.path is None else escape_controls(self.path)
        super().__init__(f"{shown}: {self.cause}" if shown else self.cause)


class BitstreamError(InputError):
    """A bitstream or payload that is corrupted, truncated, or made for another model."""


class ModelError(InputError):
    """A checkpoint that cannot be found, read or trusted."""


def validation_line(exc) -> str:
    """The first problem of a pydantic ValidationError as 'field: message', without the offending value
    (a crafted value could be huge or hold control characters)."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "value"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return one_line(f"{where}: {first.get('msg', 'invalid')}{more}")
