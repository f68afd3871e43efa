"""Method configs, one module per method (see registry.py). Importing this package imports every module
in it, so ``METHOD_CONFIGS``, ``MethodConfig`` (the discriminated union) and ``MethodName`` hold every
registered method."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Literal, Union

from pydantic import Field

from schemas.methods.registry import METHOD_CONFIGS, method_names, register_method_config

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

MethodName = Literal[tuple(method_names())]  # type: ignore[valid-type]
MethodConfig = Annotated[Union[tuple(METHOD_CONFIGS[name] for name in method_names())],  # type: ignore[valid-type]
                         Field(discriminator="method")]

__all__ = ["METHOD_CONFIGS", "MethodConfig", "MethodName", "method_names", "register_method_config"]
