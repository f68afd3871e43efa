"""Method ``postfilter``: the plain x264/x265 stream plus the shipped post-filter, named in the stream's SEI.

The encoder tries the filter at each candidate CRF offset of its conditioning (config ``crf_offsets``) and keeps,
per frame type, the best one or no filter, with the best scale of the filter's residual on each plane (config
``residual_scale_grid``; workers/postfilter/frame_offsets.py); the SEI names them. One
candidate: the stream with that side info and the frames the decoder will show. The unit loop compares it
with the plain stream at the codec's RD trade-off, SEI bytes counted, and sends the plain stream when the
filter does not pay (decision ``base-cheaper``), so the method never costs more than ``none``; when no frame
type gains from the filter there is no candidate at all.
Config: schemas/methods/postfilter.py; the SEI side: workers/postfilter/stream.py.
"""

from __future__ import annotations

import time

from workers.methods.registry import AdaptContext, Method, MethodOutcome, register_method

STANDARD_CODECS = ("x264", "x265")


def generic_filter_choice(context: AdaptContext, config, scale_grid: tuple[int, ...] | None = None,
                          with_unscaled: bool = False):
    """What both post-filter methods start from: (the filter the codec uses, the plain encode, the original
    frames, the CRF offsets per picture type the encoder picks among ``config.crf_offsets``, an OffsetChoice). With
    ``send_update`` "always" the filter stays on for both picture types; ``scale_grid``: the residual scales
    each plane may take (None: the residual as trained); ``with_unscaled``: the choice also holds the one
    without scales (OffsetChoice.unscaled)."""
    from workers.postfilter.frame_offsets import choose_crf_offsets
    from workers.postfilter.stream import encoder_threads

    codec, video = context.codec, context.video
    loaded = codec.postfilter()
    plain = codec.plain_encode(video, context.intra_period)
    originals = [video.frame_yuv420(i) for i in range(len(video))]
    choice = choose_crf_offsets(loaded.model, originals, plain.reconstruction, plain.intra, codec.quality,
                                codec.encoder_name, encoder_threads(), config.crf_offsets,
                                allow_unfiltered=config.send_update != "always", scale_grid=scale_grid,
                                with_unscaled=with_unscaled)
    return loaded, plain, originals, choice


@register_method
class PostFilterMethod(Method):
    name = "postfilter"
    codecs = STANDARD_CODECS

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        from workers.postfilter.stream import FilterSignal

        began = time.perf_counter()
        loaded, _, _, choice = generic_filter_choice(context, config, config.residual_scale_grid or None)
        details = {"filter": loaded.metadata.name, "filter_sha256": loaded.metadata.weights_sha256,
                   "crf_offsets": {"intra": choice.offsets[0], "inter": choice.offsets[1]},
                   "residual_scales": {"intra": list(choice.residual_scales[0]),
                                       "inter": list(choice.residual_scales[1])},
                   "psnr_yuv_sums": choice.scores}
        outcome = MethodOutcome(train_seconds=0.0, details=details)
        if choice.enabled:
            signal = FilterSignal(loaded, filtered=choice.frames, crf_offsets=choice.offsets,
                                  residual_scales=choice.residual_scales)
            encoded = context.codec.encode(context.video, context.intra_period, postfilter=signal)
            outcome.candidates.append(context.candidate(encoded, None, "filter-on"))
        details["filter_seconds"] = time.perf_counter() - began
        return outcome
