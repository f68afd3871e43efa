"""A post-filter riding in a standard stream: what the encoder signals in the SEI and what the decoder does with it.

    encoder:  FilterSignal(filter, enabled, update blob) --side_info_for--> StandardSideInfo + blob
              (workers.standard.side_info.attach_side_info puts them in the first access unit)
    decoder:  read_side_info(stream) -> None: plain frames
                                     -> (info, blob): resolve_filter(info.filter_id among the user's filter and
                                        the shipped ones) -> decoder_filter (base + update, if any) ->
                                        filter_frames under info.threads torch threads (if filter_enabled),
                                        each frame conditioned on crf + its picture type's offset, its
                                        residual scaled by its picture type's Y, U, V scales

The record's thread count is adopted by the decoder (capped to the cores available: workers.limits.capped_threads)
because the last bit of a filtered pixel depends on how CPU kernels split their sums (same rule as the neural
codec's BitstreamHeader.threads). The update's method
id on the wire (schemas.side_info.UpdateMethod) must agree with the parameterisation the update blob names:
a record that says "lora" around a scale-bias blob is refused, not guessed at.

Nothing here imports the encoder side or the codec registry (workers/codecs/standard.py imports this).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schemas.side_info import (RESIDUAL_SCALE_ONE, UNIT_SCALES, ResidualScales, StandardSideInfo, UpdateMethod,
                               UpdateRef, filter_id)
from workers.errors import BitstreamError
from workers.postfilter import checkpoint
from workers.postfilter.checkpoint import LoadedFilter, load_filter, shipped_filter_names
from workers.postfilter.network import PostFilter, filter_planes
from workers.postfilter.update import PARAMETERISATION_IDS, adapted_filter, coded_shapes, make_filter_update
from workers.postfilter.update_payload import decode_update

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]
# the wire id of each parameterisation's update: by hand, both registries assign the same numbers
UPDATE_METHODS: dict[str, UpdateMethod] = {"scale-bias": UpdateMethod.SCALE_BIAS, "lora": UpdateMethod.LORA,
                                           "last-layer": UpdateMethod.LAST_LAYER, "cross-linear": UpdateMethod.CROSS_LINEAR,
                                           "cross-linear-tied": UpdateMethod.CROSS_LINEAR_TIED,
                                           "classified-linear": UpdateMethod.CLASSIFIED_LINEAR,
                                           "classified-linear-on-base": UpdateMethod.CLASSIFIED_LINEAR_ON_BASE}
assert all(PARAMETERISATION_IDS[name] == int(method) for name, method in UPDATE_METHODS.items())


@dataclass
class FilterSignal:
    """What a standard-codec encode signals besides the plain stream: the filter (by its weights hash), whether
    the decoder applies it, the coded update (empty: none) and its parameterisation. ``filtered``: the frames
    the decoder will show, when the caller computed them already under the current thread count (skips a pass;
    the unit loop's decode check still compares them with the decoder's). ``crf_offsets``: (intra, inter) CRF
    offsets of the filter's conditioning, None for a frame type shown unfiltered (schemas.side_info);
    ``residual_scales``: (intra, inter) Y, U, V numerators over RESIDUAL_SCALE_ONE."""

    loaded: LoadedFilter
    enabled: bool = True
    blob: bytes = b""
    parameterisation: str | None = None
    filtered: list[Planes] | None = None
    crf_offsets: tuple[int | None, int | None] = (0, 0)
    residual_scales: tuple[ResidualScales, ResidualScales] = (UNIT_SCALES, UNIT_SCALES)

    def side_info(self, crf: float, threads: int) -> StandardSideInfo:
        update = None
        if self.blob:
            if self.parameterisation not in UPDATE_METHODS:
                raise ValueError(f"an update needs its parameterisation, got {self.parameterisation!r}")
            update = UpdateRef(method=UPDATE_METHODS[self.parameterisation], bytes=len(self.blob))
        return StandardSideInfo(crf=crf, threads=threads, filter_id=filter_id(self.loaded.metadata.weights_sha256),
                                filter_enabled=self.enabled, update=update, intra_crf_offset=self.crf_offsets[0],
                                inter_crf_offset=self.crf_offsets[1], intra_residual_scales=self.residual_scales[0],
                                inter_residual_scales=self.residual_scales[1])


def known_filters(user: LoadedFilter | None) -> list[LoadedFilter]:
    """The user's filter first, then every shipped one (loaded, hash-checked)."""
    found = [] if user is None else [user]
    shipped = checkpoint.SHIPPED_FILTERS_DIR
    return found + [load_filter(shipped / f"{name}.safetensors") for name in shipped_filter_names()]


def resolve_filter(info: StandardSideInfo, user: LoadedFilter | None, source: str | Path | None) -> LoadedFilter:
    """The filter whose weights hash starts with the record's 8-byte id; BitstreamError when none is known."""
    for loaded in known_filters(user):
        if filter_id(loaded.metadata.weights_sha256) == info.filter_id:
            return loaded
    given = "" if user is None else f" nor the one given ({user.metadata.name}, {user.metadata.weights_sha256[:16]})"
    shipped = ", ".join(shipped_filter_names()) or "none"
    raise BitstreamError(source, f"names post-filter {info.filter_id.hex()}, which is neither shipped (shipped: "
                                 f"{shipped}){given}; pass its file with --model")


def rebuild_update(base: LoadedFilter, info: StandardSideInfo, blob: bytes, source: str | Path | None) -> PostFilter:
    """The filter the record asks for: the base filter, plus the coded update when the record carries one
    (its method id must name the blob's parameterisation; the blob must be bound to this base filter)."""
    if info.update is None:
        return base.model
    sha = base.metadata.weights_sha256
    built = {}

    def shapes_for(structure):
        if UPDATE_METHODS[structure.parameterisation] != info.update.method:
            raise BitstreamError(source, f"side info says a {info.update.method.name.lower()} update, the update "
                                         f"is {structure.parameterisation}")
        built["update"] = make_filter_update(base.model, structure)
        return coded_shapes(built["update"])

    coded = decode_update(blob, sha, shapes_for, source)
    return adapted_filter(base.model, built["update"], coded.values())


def filter_frames(model: PostFilter, frames: Sequence[Planes], crf: float | Sequence[float | None], codec: str,
                  threads: int, scales: Sequence[ResidualScales] | None = None) -> list[Planes]:
    """Every frame through the filter with ``threads`` torch threads (the record's count). ``crf``: one
    conditioning CRF for all frames, or one per frame (None: that frame is passed through unfiltered);
    ``scales``: each frame's Y, U, V residual scale numerators (None: the residual as trained)."""
    return filter_frames_in_place(model, list(frames), crf, codec, threads, scales)


def filter_frames_in_place(model: PostFilter, frames: list[Planes], crf: float | Sequence[float | None], codec: str,
                           threads: int, scales: Sequence[ResidualScales] | None = None) -> list[Planes]:
    """:func:`filter_frames`, each filtered frame replacing its decoded one in ``frames`` (returned): the
    decoder holds one copy of the clip, not two (workers.limits.MAX_DECODED_FRAME_BYTES counts one)."""
    from workers.video_codec import torch_threads

    crfs = [crf] * len(frames) if isinstance(crf, (int, float)) else list(crf)
    scales = [UNIT_SCALES] * len(frames) if scales is None else list(scales)
    if not (len(crfs) == len(scales) == len(frames)):
        raise ValueError(f"{len(crfs)} conditioning CRFs and {len(scales)} residual scales for {len(frames)} frames")
    with torch_threads(threads):
        for index, (planes, frame_crf, frame_scales) in enumerate(zip(frames, crfs, scales)):
            if frame_crf is not None:
                frames[index] = filter_planes(model, planes, frame_crf, codec,
                                              tuple(s / RESIDUAL_SCALE_ONE for s in frame_scales))
    return frames


def frame_crfs(info: StandardSideInfo, intra: Sequence[bool]) -> list[float | None]:
    """The CRF the filter is conditioned on for each frame (by its picture type; None: shown unfiltered)."""
    return [info.filter_crf(is_intra) for is_intra in intra]


def frame_scales(info: StandardSideInfo, intra: Sequence[bool]) -> list[ResidualScales]:
    """The Y, U, V residual scale numerators of each frame (by its picture type)."""
    return [info.residual_scales(is_intra) for is_intra in intra]


def encoder_threads() -> int:
    """The torch thread count the encoder filters with and records."""
    return torch.get_num_threads()


def decode_filtered(frames: list[Planes], intra: Sequence[bool], side: tuple[StandardSideInfo, bytes] | None,
                    codec: str, user: LoadedFilter | None, source: str | Path | None) -> list[Planes]:
    """What a decoder shows for decoded ``frames`` (``intra``: each one's picture type is I) and the stream's
    side info (None: a plain stream). ``frames`` is the caller's to give away: filtered frames replace the
    decoded ones in it."""
    if side is None or not side[0].filter_enabled:
        return frames
    from workers.limits import capped_threads

    info, blob = side
    model = rebuild_update(resolve_filter(info, user, source), info, blob, source)
    # the record's count, capped to the cores (as BitstreamHeader.threads: a record saying 4096 started 4096
    # OpenMP threads, 5.3 s instead of 0.05 s for 2 frames of 64x48; workers.limits.capped_threads has the
    # bit-exactness caveat)
    return filter_frames_in_place(model, frames, frame_crfs(info, intra), codec,
                                  capped_threads(info.threads, torch.get_num_threads()), frame_scales(info, intra))


def describe_side_info(side: tuple[StandardSideInfo, bytes] | None) -> dict | str:
    """JSON-ready description for `adaptjobs info`."""
    if side is None:
        return "none (a plain stream: decoded without a post-filter)"
    info, _ = side
    described = info.model_dump(mode="json")
    described["filter_id"] = info.filter_id.hex()
    if info.update is not None:
        described["update"] = {"method": info.update.method.name.lower().replace("_", "-"), "bytes": info.update.bytes}
    for kind in ("intra", "inter"):  # "unfiltered" reads better than null
        if described[f"{kind}_crf_offset"] is None:
            described[f"{kind}_crf_offset"] = "unfiltered"
        # the factors themselves (the numerators over RESIDUAL_SCALE_ONE are the wire's business)
        described[f"{kind}_residual_scales"] = {plane: scale / RESIDUAL_SCALE_ONE for plane, scale
                                                in zip("YUV", described[f"{kind}_residual_scales"])}
    return described
