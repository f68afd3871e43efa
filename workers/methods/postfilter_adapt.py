"""Method ``postfilter-adapt``: the shipped post-filter updated for this (video, codec, CRF), the coded update
carried in the stream's SEI (one file, no sidecar payload).

    plain stream, decoded frames (the unit's base candidate, shared through the codec)
      -> workers.postfilter.adapt.adapt_filter (trains or solves the update, checkpointed in the unit's
         checkpoint/ folder, so a resumed unit ends with the same bytes)
      -> candidates: adapted (SEI + update; the primary) and generic (SEI, no update); the unit loop adds the
         plain stream and sends the cheapest by lambda * 255^2 * D + every byte of the file / pixels.

lambda is the codec's own (``codec.lmbda``, the QP-lambda relation with QP ~ CRF; workers/codecs/standard.py),
the same the unit loop chooses with, so the adaptation's own decision and the unit's agree. Config:
schemas/methods/postfilter_adapt.py (its fields are workers.postfilter.adapt.FilterAdaptConfig's).
"""

from __future__ import annotations

import time

from workers.methods.postfilter import STANDARD_CODECS
from workers.methods.registry import AdaptContext, Method, MethodOutcome, register_method


def filter_adapt_config(config):
    """The worker-side FilterAdaptConfig of a ``postfilter-adapt`` method config, asking for the coded update
    whenever it is not zero: the unit loop, not adapt_filter, decides whether it is sent (it counts the SEI's
    bytes too), and ``send_update`` there is the method config's."""
    from workers.postfilter.adapt import FilterAdaptConfig

    return FilterAdaptConfig.model_validate({**config.model_dump(exclude={"method"}), "send_update": "always"})


@register_method
class PostFilterAdaptMethod(Method):
    name = "postfilter-adapt"
    codecs = STANDARD_CODECS

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        from workers.postfilter.adapt import adapt_filter
        from workers.postfilter.stream import FilterSignal, encoder_threads, filter_frames

        codec, video = context.codec, context.video
        loaded = codec.postfilter()
        plain = codec.plain_encode(video, context.intra_period)
        generic = filter_frames(loaded.model, plain.reconstruction, codec.quality, codec.encoder_name,
                                encoder_threads())
        originals = [video.frame_yuv420(i) for i in range(len(video))]
        began = time.perf_counter()
        adaptation = adapt_filter(loaded, loaded.metadata.weights_sha256, originals, plain.reconstruction,
                                  codec.quality, codec.encoder_name, filter_adapt_config(config),
                                  context.checkpoint_dir,
                                  lambda record: context.log({"phase": "postfilter-adapt", **record}),
                                  lmbda=context.lmbda, generic_planes=generic)
        seconds = time.perf_counter() - began
        stats = adaptation.stats
        details = {"filter": loaded.metadata.name, "filter_sha256": loaded.metadata.weights_sha256,
                   "adaptation": adaptation.decision.to_dict(), **stats}
        outcome = MethodOutcome(steps=stats["steps"], resumed=stats["resumed_from"], train_seconds=seconds,
                                details=details)
        if adaptation.blob is not None:
            signal = FilterSignal(loaded, True, adaptation.blob, config.parameterisation, adaptation.planes)
            encoded = codec.encode(video, context.intra_period, postfilter=signal)
            outcome.candidates.append(context.candidate(encoded, None, "sent", len(adaptation.blob)))
        generic_encoded = codec.encode(video, context.intra_period, postfilter=FilterSignal(loaded, filtered=generic))
        outcome.candidates.append(context.candidate(generic_encoded, None, "filter-on"))
        return outcome
