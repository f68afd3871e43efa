"""The schema side of the method registry: method name -> its pydantic config class.

Configs live in schemas (they are part of JobSpec and VideoTask, which the driver validates without
importing workers); behaviour registers in workers/methods/. A config module under schemas/methods/
registers its class with :func:`register_method_config`; schemas/methods/__init__.py imports every such
module and builds the discriminated union :data:`MethodConfig` and the ``MethodName`` literal from what
registered, so a new method adds one module here and one in workers/methods/, nothing else.
"""

from __future__ import annotations

from pydantic import BaseModel

METHOD_CONFIGS: dict[str, type[BaseModel]] = {}


def register_method_config(cls: type[BaseModel]) -> type[BaseModel]:
    """Class decorator: register a method config under the default of its ``method`` field."""
    name = cls.model_fields["method"].default
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}.method needs a string default: the method's name")
    if name in METHOD_CONFIGS and METHOD_CONFIGS[name] is not cls:
        raise ValueError(f"method {name!r} is registered twice ({METHOD_CONFIGS[name].__name__}, {cls.__name__})")
    METHOD_CONFIGS[name] = cls
    return cls


def method_names() -> list[str]:
    """Registered method names: ``none`` first, then alphabetical (a stable order for CLI help and lists)."""
    return sorted(METHOD_CONFIGS, key=lambda name: (name != "none", name))
