"""Errors caused by what the user gave us (a file, a flag), as opposed to bugs.

Each carries a one-line message that names the file and the cause; the CLI prints it and exits
non-zero, the runner records it and does not retry it.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: unreadable or empty video, odd sizes, wrong flag values, ..."""

    def __init__(self, path: str | Path | None, cause: str):
        self.path = None if path is None else str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)


class BitstreamError(InputError):
    """A bitstream or payload that is corrupted, truncated, or made for another model."""


class ModelError(InputError):
    """A checkpoint that cannot be found, read or trusted."""
