"""Method ``postfilter-adapt``: the shipped post-filter updated for this (video, codec, CRF), the coded update
carried in the stream's SEI (one file, no sidecar payload).

    plain stream, decoded frames (the unit's base candidate, shared through the codec)
      -> the generic filter at the CRF offsets per picture type that method postfilter would pick
         (workers.postfilter.frame_offsets; config crf_offsets)
      -> workers.postfilter.adapt.adapt_filter on that generic output (trains or solves the update, checkpointed
         in the unit's checkpoint/ folder, so a resumed unit ends with the same bytes); the decoder conditions
         the adapted filter on the same per-frame CRFs, so the record carries the offsets with the update
      -> candidates: adapted (SEI + update; the primary) and generic (SEI, no update: the filter at the offsets
         and per-plane residual scales method postfilter picks, config residual_scale_grid); the unit loop adds
         the plain stream and sends the cheapest by lambda * 255^2 * D + every byte of the file / pixels.
         (The update is adapted on the residual as trained: scales never travel with an update.)

lambda (config ``rd_measure``): psnr-yuv (default) solves and decides in PSNR-YUV at log_rate_per_db x the
plain stream's bpp per dB (workers.postfilter.adapt.psnr_rd_weights: BD-rate's own trade-off, no extra encode),
and offers the adapted candidate only when it pays there; the unit loop then takes the cheapest candidate at the
codec's own lambda (``codec.lmbda``, the QP-lambda relation), so nothing is sent that costs more than the generic
filter or the plain stream at either. wmse: the codec's lambda on wMSE for both, the unit loop deciding alone.
Why not the QP relation alone: it weighs wMSE, where a chroma gain counts MSE_Y / MSE_C times less than in
PSNR-YUV, and its lambda is 2-6x the none curve's own slope (benchmarks/RESULTS.md). Config:
schemas/methods/postfilter_adapt.py (its fields are workers.postfilter.adapt.FilterAdaptConfig's).
"""

from __future__ import annotations

import time

from workers.methods.postfilter import STANDARD_CODECS, generic_filter_choice
from workers.methods.registry import AdaptContext, Method, MethodOutcome, register_method


def filter_adapt_config(config):
    """The worker-side FilterAdaptConfig of a ``postfilter-adapt`` method config. With rd_measure wmse it asks for
    the coded update whenever it is not zero: the unit loop, not adapt_filter, decides whether it is sent (it
    counts the SEI's bytes too); with psnr-yuv adapt_filter's decision gates the update (module docstring)."""
    from workers.postfilter.adapt import FilterAdaptConfig

    # the offsets and scales are chosen before adapt_filter
    fields = config.model_dump(exclude={"method", "crf_offsets", "residual_scale_grid"})
    if config.rd_measure == "wmse":
        fields["send_update"] = "always"
    return FilterAdaptConfig.model_validate(fields)


@register_method
class PostFilterAdaptMethod(Method):
    name = "postfilter-adapt"
    codecs = STANDARD_CODECS

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        from workers.postfilter.adapt import adapt_filter
        from workers.postfilter.frame_offsets import choose_crf_offsets
        from workers.postfilter.stream import FilterSignal, encoder_threads, frame_crfs

        codec, video = context.codec, context.video
        # the generic filter as method postfilter sends it; a filter that helps neither picture type is adapted
        # from the plain conditioning instead (offsets 0 and 0: the adaptation may still make it pay)
        grid = config.residual_scale_grid or None
        loaded, plain, originals, scaled = generic_filter_choice(context, config, grid, with_unscaled=True)
        # the update is adapted on the residual as trained, at the offsets chosen without scales; the generic
        # candidate is the filter at the offsets and scales chosen with them (as method postfilter sends it)
        choice = scaled.unscaled or scaled
        if not choice.enabled:
            choice = choose_crf_offsets(loaded.model, originals, plain.reconstruction, plain.intra, codec.quality,
                                        codec.encoder_name, encoder_threads(), (0,), allow_unfiltered=False)
        base = FilterSignal(loaded, filtered=choice.frames, crf_offsets=choice.offsets)
        generic = base if not scaled.enabled else FilterSignal(
            loaded, filtered=scaled.frames, crf_offsets=scaled.offsets, residual_scales=scaled.residual_scales)
        shown_crfs = frame_crfs(base.side_info(codec.quality, encoder_threads()), plain.intra)  # the decoder's
        began = time.perf_counter()
        adaptation = adapt_filter(loaded, loaded.metadata.weights_sha256, originals, plain.reconstruction,
                                  codec.quality, codec.encoder_name, filter_adapt_config(config),
                                  context.checkpoint_dir,
                                  lambda record: context.log({"phase": "postfilter-adapt", **record}),
                                  lmbda=context.lmbda if config.rd_measure == "wmse" else None,
                                  generic_planes=choice.frames, stream_bytes=len(plain.data),
                                  frame_crfs=shown_crfs)
        seconds = time.perf_counter() - began
        stats = adaptation.stats
        details = {"filter": loaded.metadata.name, "filter_sha256": loaded.metadata.weights_sha256,
                   "crf_offsets": {"intra": choice.offsets[0], "inter": choice.offsets[1]},
                   "generic": {"crf_offsets": {"intra": generic.crf_offsets[0], "inter": generic.crf_offsets[1]},
                               "residual_scales": {"intra": list(generic.residual_scales[0]),
                                                   "inter": list(generic.residual_scales[1])}},
                   "adaptation": adaptation.decision.to_dict(), **stats}
        outcome = MethodOutcome(steps=stats["steps"], resumed=stats["resumed_from"], train_seconds=seconds,
                                details=details)
        if adaptation.blob is not None:
            signal = FilterSignal(loaded, True, adaptation.blob, stats["structure"], adaptation.planes,
                                  crf_offsets=choice.offsets)
            encoded = codec.encode(video, context.intra_period, postfilter=signal)
            outcome.candidates.append(context.candidate(encoded, None, "sent", len(adaptation.blob)))
        outcome.candidates.append(context.candidate(codec.encode(video, context.intra_period, postfilter=generic),
                                                    None, "filter-on"))
        return outcome
