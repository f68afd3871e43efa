"""The encoder's choice of the post-filter's CRF offsets, one per frame type (schemas.side_info
``intra_crf_offset`` / ``inter_crf_offset``), by measuring every candidate on this video.

The filter is conditioned on the stream's CRF, but x264 and x265 code an I frame at a lower QP than the P
frames of the same CRF (ipratio), and how strongly a video's artefacts should be filtered differs from one
video to the next. The encoder has the originals, so it tries each candidate offset d on every frame
(filter conditioned on crf + d), and keeps, separately for the intra frames and for the others, the candidate
with the highest summed PSNR-YUV, or no filtering at all for that frame type when the plain frames score
higher. The summed per-frame PSNR-YUV is the report's metric (per-frame PSNR averaged over the clip), and it
is a sum over frames, so the two frame types are chosen independently: |candidates| filter passes in all,
not |candidates|^2.

The decoder runs exactly one pass, with the offsets the record names; what the encoder keeps are the frames
of the very passes it measured (same model, same thread count), so decode == reconstruction holds bit for bit.
Memory: the decoded clip, the best filtered frames so far and the current candidate's (three clips).

With a ``scale_grid`` the encoder also picks, per frame type and candidate, the residual scale of each plane
(schemas.side_info ``intra_residual_scales``): for every frame, candidate, plane and scale s in the grid it
measures the PSNR of round(x + s (f - x)) (f: that pass's unrounded output), keeps per frame type and plane the
scale with the highest summed PSNR, and scores the candidate with those. The PSNR-YUV of a frame is a weighted
sum of its planes' PSNRs, so the planes are chosen independently: one filter pass per candidate still, plus
one final pass with the chosen offsets and scales (the decoder's own computation, so its frames are the
decoder's). Memory: the decoded clip and the chosen frames (two clips; four with ``with_unscaled``, whose
choice keeps the frames of the passes it measured, as without scales) and one plane at every scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from schemas.methods.postfilter import DEFAULT_CRF_OFFSETS
from schemas.side_info import (FILTER_ID_BYTES, MAX_RESIDUAL_SCALE, RESIDUAL_SCALE_ONE, UNIT_SCALES, ResidualScales,
                               StandardSideInfo)
from workers.metrics import psnr_from_mse, psnr_yuv
from workers.postfilter.network import PostFilter, planes_to_tensors, scale_residuals, tensors_to_planes
from workers.postfilter.stream import Planes, filter_frames, frame_crfs, frame_scales


@dataclass
class OffsetChoice:
    """``offsets``: (intra, inter), None for a frame type left unfiltered; ``frames``: what the decoder will
    show with them; ``scores``: summed PSNR-YUV (dB) per candidate ("off" for unfiltered) and frame type, each
    candidate at its best residual scales; ``residual_scales``: (intra, inter) Y, U, V numerators (over
    RESIDUAL_SCALE_ONE) of the chosen candidates, ``candidate_scales`` those of every candidate; ``unscaled``
    (when asked for): the choice the same measurements give with the residual as trained, its own frames."""

    offsets: tuple[int | None, int | None]
    frames: list[Planes]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    residual_scales: tuple[ResidualScales, ResidualScales] = (UNIT_SCALES, UNIT_SCALES)
    candidate_scales: dict[str, dict[str, ResidualScales]] = field(default_factory=dict)
    unscaled: OffsetChoice | None = None

    @property
    def enabled(self) -> bool:
        return self.offsets != (None, None)


def choose_crf_offsets(model: PostFilter, originals: Sequence[Planes], decoded: Sequence[Planes], intra: Sequence[bool],
                       crf: float, codec: str, threads: int, candidates: Sequence[int] = DEFAULT_CRF_OFFSETS,
                       allow_unfiltered: bool = True, scale_grid: Sequence[int] | None = None,
                       with_unscaled: bool = False) -> OffsetChoice:
    """Try every candidate offset on every frame and keep, per frame type, the best candidate or no filter
    (see the module docstring). Ties keep the earlier option: unfiltered first, then candidates in the order
    given. ``allow_unfiltered`` False: the best candidate even where no filter would score higher (a method
    told to send the filtered stream always). ``scale_grid``: residual scale numerators (over
    RESIDUAL_SCALE_ONE) each plane may take, per frame type and candidate; None: the residual as trained.
    ``with_unscaled`` (with a grid): also the choice without scales, from the same passes (``unscaled``).
    ``decoded`` is not modified."""
    if not (len(originals) == len(decoded) == len(intra)):
        raise ValueError(f"{len(originals)} originals, {len(decoded)} decoded frames, {len(intra)} frame types")
    if not candidates:
        raise ValueError("no candidate CRF offsets")
    kinds = {"intra": [i for i, flag in enumerate(intra) if flag],
             "inter": [i for i, flag in enumerate(intra) if not flag]}
    if scale_grid is not None:
        return _choose_with_scales(model, originals, decoded, intra, kinds, crf, codec, threads, candidates,
                                   allow_unfiltered, scale_grid, with_unscaled)
    plain = [psnr_yuv(o, d) for o, d in zip(originals, decoded)]
    scores = {kind: {"off": float(sum(plain[i] for i in where))} for kind, where in kinds.items()}
    best = {kind: None for kind in kinds}
    frames = list(decoded)
    for offset in dict.fromkeys(candidates):
        filtered = filter_frames(model, decoded, crf + offset, codec, threads)
        psnrs = [psnr_yuv(o, f) for o, f in zip(originals, filtered)]
        for kind, where in kinds.items():
            scores[kind][str(offset)] = float(sum(psnrs[i] for i in where))
            forced = best[kind] is None and not allow_unfiltered
            if where and (forced or scores[kind][str(offset)] > scores[kind][_key(best[kind])]):
                best[kind] = offset
                for i in where:
                    frames[i] = filtered[i]
    return OffsetChoice((best["intra"], best["inter"]), frames, scores)


def _key(offset: int | None) -> str:
    return "off" if offset is None else str(offset)


def _choose_with_scales(model: PostFilter, originals: Sequence[Planes], decoded: Sequence[Planes],
                        intra: Sequence[bool], kinds: dict[str, list[int]], crf: float, codec: str, threads: int,
                        candidates: Sequence[int], allow_unfiltered: bool, scale_grid: Sequence[int],
                        with_unscaled: bool) -> OffsetChoice:
    """:func:`choose_crf_offsets` with residual scales (module docstring). Ties between scales keep
    RESIDUAL_SCALE_ONE, then the grid's order. ``allow_unfiltered`` False also leaves scale 0 out."""
    from workers.video_codec import torch_threads

    # told to filter (allow_unfiltered False), every plane is filtered: scale 0 would show it unfiltered
    grid = [scale for scale in dict.fromkeys([RESIDUAL_SCALE_ONE, *scale_grid]) if scale or allow_unfiltered]
    if any(not 0 <= scale <= MAX_RESIDUAL_SCALE for scale in grid):
        raise ValueError(f"residual scales {grid} must lie in 0..{MAX_RESIDUAL_SCALE} (what a record can carry)")
    plain = [psnr_yuv(o, d) for o, d in zip(originals, decoded)]
    # measured[offset][kind][plane, scale index]: summed PSNR of that plane over the frames of that kind
    measured: dict[int, dict[str, np.ndarray]] = {}
    # with_unscaled: the frames of the best unscaled candidate so far per kind, kept from the passes themselves
    # (as without scales: no extra pass for that choice, one more clip in memory)
    unscaled_frames, unscaled = list(decoded), None
    for offset in dict.fromkeys(candidates):
        measured[offset] = {kind: np.zeros((3, len(grid))) for kind in kinds}
        shown_as_trained = []
        with torch_threads(threads), torch.no_grad():
            for index, (original, planes) in enumerate(zip(originals, decoded)):
                inputs = planes_to_tensors(planes)
                psnrs, as_trained = _scaled_psnrs(original, inputs, model(*inputs, float(crf + offset), codec), grid)
                measured[offset]["intra" if intra[index] else "inter"] += psnrs
                if with_unscaled:
                    shown_as_trained.append(as_trained)
        if with_unscaled:  # the running choice over the candidates so far is the final one's prefix
            unscaled = _pick(measured, kinds, plain, grid, allow_unfiltered, 1)
            for kind, chosen in zip(("intra", "inter"), unscaled.offsets):
                if chosen == offset:
                    for i in kinds[kind]:
                        unscaled_frames[i] = shown_as_trained[i]
    scaled = _pick(measured, kinds, plain, grid, allow_unfiltered, len(grid))
    scaled.frames = list(decoded)
    if scaled.enabled:  # the decoder's own pass with the record of the choice: its frames are the decoder's
        info = StandardSideInfo(crf=crf, threads=threads, filter_id=bytes(FILTER_ID_BYTES), filter_enabled=True,
                                intra_crf_offset=scaled.offsets[0], inter_crf_offset=scaled.offsets[1],
                                intra_residual_scales=scaled.residual_scales[0],
                                inter_residual_scales=scaled.residual_scales[1])
        scaled.frames = filter_frames(model, decoded, frame_crfs(info, intra), codec, threads,
                                      frame_scales(info, intra))
    if unscaled is not None:
        unscaled.frames = unscaled_frames
    scaled.unscaled = unscaled
    return scaled


def _pick(measured: dict[int, dict[str, np.ndarray]], kinds: dict[str, list[int]], plain: list[float],
          grid: list[int], allow_unfiltered: bool, columns: int) -> OffsetChoice:
    """The choice among the measured candidates using the first ``columns`` scales of ``grid`` (1: the
    residual as trained); its frames are filled in by the caller."""
    scores = {kind: {"off": float(sum(plain[i] for i in where))} for kind, where in kinds.items()}
    chosen_scales: dict[str, dict[str, ResidualScales]] = {kind: {} for kind in kinds}
    best: dict[str, int | None] = {kind: None for kind in kinds}
    for offset, sums in measured.items():
        for kind, where in kinds.items():
            if not where:
                continue
            picks = sums[kind][:, :columns].argmax(axis=1)  # the first maximum: RESIDUAL_SCALE_ONE on ties
            per_plane = sums[kind][np.arange(3), picks]
            scores[kind][str(offset)] = float((6 * per_plane[0] + per_plane[1] + per_plane[2]) / 8)
            chosen_scales[kind][str(offset)] = tuple(grid[i] for i in picks)
            forced = best[kind] is None and not allow_unfiltered
            if forced or scores[kind][str(offset)] > scores[kind][_key(best[kind])]:
                best[kind] = offset
    scales = tuple(UNIT_SCALES if best[kind] is None else chosen_scales[kind][str(best[kind])]
                   for kind in ("intra", "inter"))
    return OffsetChoice((best["intra"], best["inter"]), [], scores, scales, chosen_scales)


def _scaled_psnrs(original: Planes, inputs: tuple[torch.Tensor, ...], outputs: tuple[torch.Tensor, ...],
                  grid: Sequence[int]) -> tuple[np.ndarray, Planes]:
    """(3, len(grid)) PSNRs of each plane shown at each residual scale: exactly the planes
    network.filter_planes makes with those scales (same float32 element-wise operations and rounding); and
    the frame shown at the first scale of ``grid`` (RESIDUAL_SCALE_ONE: the filter's output as trained)."""
    psnrs = np.empty((3, len(grid)))
    first = []
    for plane, (source, x, f) in enumerate(zip(original, inputs, outputs)):
        reference = source.astype(np.float64)
        for column, scale in enumerate(grid):
            (shown,) = tensors_to_planes((scale_residuals((x,), (f,), (scale / RESIDUAL_SCALE_ONE,))[0],))
            psnrs[plane, column] = psnr_from_mse(float(np.mean((reference - shown.astype(np.float64)) ** 2)), 255.0)
            if column == 0:
                first.append(shown)
    return psnrs, tuple(first)
