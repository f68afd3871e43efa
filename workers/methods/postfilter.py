"""Method ``postfilter``: the plain x264/x265 stream plus the shipped post-filter, named in the stream's SEI.

One candidate: the stream with the side info (filter on) and the filtered frames. The unit loop compares it
with the plain stream at the codec's RD trade-off, SEI bytes counted, and sends the plain stream when the
filter does not pay (decision ``base-cheaper``), so the method never costs more than ``none``.
Config: schemas/methods/postfilter.py; the SEI side: workers/postfilter/stream.py.
"""

from __future__ import annotations

import time

from workers.methods.registry import AdaptContext, Method, MethodOutcome, register_method

STANDARD_CODECS = ("x264", "x265")


@register_method
class PostFilterMethod(Method):
    name = "postfilter"
    codecs = STANDARD_CODECS

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        from workers.postfilter.stream import FilterSignal

        began = time.perf_counter()
        loaded = context.codec.postfilter()
        encoded = context.codec.encode(context.video, context.intra_period, postfilter=FilterSignal(loaded))
        details = {"filter": loaded.metadata.name, "filter_sha256": loaded.metadata.weights_sha256}
        return MethodOutcome([context.candidate(encoded, None, "filter-on")], train_seconds=0.0,
                             details={**details, "filter_seconds": time.perf_counter() - began})
