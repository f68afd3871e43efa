"""Adaptation methods, one module per method (registry.py says what a method is). Importing this
package imports every method module, so ``METHODS`` holds every registered method."""

from __future__ import annotations

import importlib
import pkgutil

from workers.methods.registry import (METHODS, AdaptContext, Candidate, Method, MethodOutcome, check_applies, method,
                                      parse_method_config, register_method)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "AdaptContext", "Candidate", "Method", "MethodOutcome", "check_applies", "method",
           "parse_method_config", "register_method"]
