"""Optional dependencies (pyproject.toml extras): a command that needs one that is missing fails with one
line naming the extra to install, instead of a traceback (datatrove's _import_utils pattern).

    adaptjobs[ray]     ray[default]: submit/resume (embedded or cluster Ray), `ray job submit`, state API, ray://
    adaptjobs[report]  matplotlib, bjontegaard (scipy): report, and the BD-rate line of status
    adaptjobs[all]     both
"""

from __future__ import annotations

import importlib
from types import ModuleType

from workers.errors import InputError

EXTRAS = {"ray": "ray", "matplotlib": "report", "bjontegaard": "report", "scipy": "report"}


class MissingExtra(InputError):
    """A command needs an optional dependency that is not installed."""


def require(module: str, needed_for: str) -> ModuleType:
    """Import ``module`` or raise MissingExtra: "<needed_for> needs <module>: pip install 'adaptjobs[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise MissingExtra(None, f"{needed_for} needs {top}, which is not installed: "
                                 f"pip install 'adaptjobs[{extra}]'") from None
