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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.methods.postfilter import DEFAULT_CRF_OFFSETS
from workers.metrics import psnr_yuv
from workers.postfilter.network import PostFilter
from workers.postfilter.stream import Planes, filter_frames


@dataclass
class OffsetChoice:
    """``offsets``: (intra, inter), None for a frame type left unfiltered; ``frames``: what the decoder will
    show with them; ``scores``: summed PSNR-YUV (dB) per candidate ("off" for unfiltered) and frame type."""

    offsets: tuple[int | None, int | None]
    frames: list[Planes]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.offsets != (None, None)


def choose_crf_offsets(model: PostFilter, originals: Sequence[Planes], decoded: Sequence[Planes], intra: Sequence[bool],
                       crf: float, codec: str, threads: int, candidates: Sequence[int] = DEFAULT_CRF_OFFSETS,
                       allow_unfiltered: bool = True) -> OffsetChoice:
    """Try every candidate offset on every frame and keep, per frame type, the best candidate or no filter
    (see the module docstring). Ties keep the earlier option: unfiltered first, then candidates in the order
    given. ``allow_unfiltered`` False: the best candidate even where no filter would score higher (a method
    told to send the filtered stream always). ``decoded`` is not modified."""
    if not (len(originals) == len(decoded) == len(intra)):
        raise ValueError(f"{len(originals)} originals, {len(decoded)} decoded frames, {len(intra)} frame types")
    if not candidates:
        raise ValueError("no candidate CRF offsets")
    kinds = {"intra": [i for i, flag in enumerate(intra) if flag],
             "inter": [i for i, flag in enumerate(intra) if not flag]}
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
