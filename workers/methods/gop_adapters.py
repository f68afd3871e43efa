"""Method ``gop-adapters``: encoder-side adapters trained per GoP (seed 002); nothing is sent, a stock SSF
decoder decodes the stream. Config: schemas/methods/gop_adapters.py; adapters: workers/adapt/adapters.py."""

from __future__ import annotations

from workers.methods._gop_encoder import gop_adapter_encoders
from workers.methods.registry import AdaptContext, Method, MethodOutcome, register_method


@register_method
class GopAdaptersMethod(Method):
    name = "gop-adapters"
    codecs = ("ssf",)

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        counters = {"steps": 0, "resumed": 0, "seconds": 0.0}
        encoders = gop_adapter_encoders(context.codec.loaded.model, config, context, counters)
        encoded = context.codec.encode(context.video, context.intra_period, method=config.method, **encoders)
        return MethodOutcome([context.candidate(encoded, None)], counters["steps"], counters["resumed"],
                             counters["seconds"])
