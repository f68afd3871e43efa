"""Method ``none``: the base codec unchanged (the reference every method is compared with)."""

from __future__ import annotations

from workers.methods.registry import AdaptContext, Method, MethodOutcome, register_method


@register_method
class NoneMethod(Method):
    name = "none"
    codecs = ("*",)

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        return MethodOutcome()
