"""Output folders named on the command line (--run, -o): created up front, or refused with one line.

Creating them is the first write a command does, so an -o that names a file, a folder under a file or a
place we may not write becomes an InputError before any work starts (issue 11: FileExistsError,
NotADirectoryError and PermissionError tracebacks after the input had been read).
"""

from __future__ import annotations

import os
from pathlib import Path

from workers.errors import InputError


def make_output_folder(path: str | Path, what: str) -> Path:
    """Create folder ``path`` (and its parents) if needed and check that we may write into it; returns it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(path, f"cannot create the {what}: a file of that name exists") from None
    except OSError as exc:
        raise InputError(path, f"cannot create the {what} ({exc.strerror or type(exc).__name__})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(path, f"the {what} is not writable")
    return path


def make_output_parent(path: str | Path, what: str) -> Path:
    """For an output file (or PNG folder) ``path``: create its parent folder, or InputError; returns ``path``."""
    make_output_folder(Path(path).parent, f"folder of the {what}")
    return Path(path)
