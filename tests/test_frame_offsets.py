"""The encoder's per-frame-type CRF offsets of the post-filter (workers/postfilter/frame_offsets.py): the choice
is the argmax of what it measured, per frame type; its frames are what a decoder conditioned on the chosen
offsets shows; a filter that helps no frame type is switched off for both; picture types come from FFmpeg."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from schemas.side_info import StandardSideInfo
from tests.conftest import crop_planes
from workers.metrics import psnr_yuv
from workers.postfilter.frame_offsets import choose_crf_offsets
from workers.postfilter.network import FilterArchitecture, PostFilter
from workers.postfilter.stream import filter_frames, frame_crfs
from workers.standard.encoder import decode_stream, decode_stream_typed, encode_planes

CRF = 37


def tiny_filter(seed: int, tail_std: float) -> PostFilter:
    torch.manual_seed(seed)
    model = PostFilter(FilterArchitecture(layers=3, channels=8))
    with torch.no_grad():
        model.tail.weight.normal_(0, tail_std)
    return model.eval()


def assert_frames_are_the_decoders(choice, model, originals, decoded, crf) -> None:
    """The choice's frames are what a decoder shows for the record it signals (offsets and scales), recomputed
    from scratch, and their summed PSNR-YUV is the sum of the chosen scores."""
    from workers.postfilter.stream import frame_scales

    if choice.enabled:
        info = StandardSideInfo(crf=crf, threads=1, filter_id=bytes(8), filter_enabled=True,
                                intra_crf_offset=choice.offsets[0], inter_crf_offset=choice.offsets[1],
                                intra_residual_scales=choice.residual_scales[0],
                                inter_residual_scales=choice.residual_scales[1])
        expected = filter_frames(model, decoded.frames, frame_crfs(info, decoded.intra), "x264", 1,
                                 frame_scales(info, decoded.intra))
    else:
        expected = decoded.frames
    assert all(np.array_equal(a, b) for fa, fb in zip(choice.frames, expected, strict=True) for a, b in zip(fa, fb))
    total = sum(psnr_yuv(o, f) for o, f in zip(originals, choice.frames))
    chosen = sum(choice.scores[k]["off" if o is None else str(o)] for k, o in zip(("intra", "inter"), choice.offsets))
    assert total == pytest.approx(chosen, abs=1e-9)


@pytest.fixture(scope="module")
def coded(carphone):
    """7 frames of 96x64 carphone in x264 at CRF 37, intra period 3: I P P I P P I."""
    originals = crop_planes(carphone, 96, 64)[:4]
    originals = originals + originals[:3]
    data = encode_planes(originals, 96, 64, Fraction(25), "x264", CRF, 3)
    return originals, decode_stream_typed(data, "x264")


def test_picture_types_follow_the_intra_period(coded):
    _, decoded = coded
    assert decoded.intra == [True, False, False, True, False, False, True]
    assert decoded.rate == 25


@pytest.mark.parametrize("crf,shipped", [(22, True), (47, True), (37, False)])
def test_choice_is_the_measured_argmax_and_its_frames_are_the_decoders(coded, crf, shipped):
    """With the shipped filter, CRF 22 picks -2 for both types and CRF 47 picks +3 (measured); a random filter
    helps neither type. Whatever the pick, it is the argmax of the scores and its frames are the decoder's."""
    from workers.postfilter.checkpoint import shipped_filter

    originals, _ = coded
    decoded = decode_stream_typed(encode_planes(originals, 96, 64, Fraction(25), "x264", crf, 3), "x264")
    model = shipped_filter().model if shipped else tiny_filter(1, 0.02)
    candidates = (-6, -2, 0, 3)
    choice = choose_crf_offsets(model, originals, decoded.frames, decoded.intra, crf, "x264", 1, candidates)
    assert choice.enabled == shipped
    for kind, offset in zip(("intra", "inter"), choice.offsets):
        scores = choice.scores[kind]
        assert set(scores) == {"off", "-6", "-2", "0", "3"}
        assert scores["off" if offset is None else str(offset)] == max(scores.values())
    if choice.enabled:
        assert choice.offsets != (0, 0)
    assert_frames_are_the_decoders(choice, model, originals, decoded, crf)


def test_a_harmful_filter_is_off_for_both_types_unless_forced(coded):
    originals, decoded = coded
    harmful = tiny_filter(3, 0.5)
    choice = choose_crf_offsets(harmful, originals, decoded.frames, decoded.intra, CRF, "x264", 1, (-2, 0, 2))
    assert choice.offsets == (None, None) and not choice.enabled
    assert all(a is b for fa, fb in zip(choice.frames, decoded.frames) for a, b in zip(fa, fb))  # untouched
    forced = choose_crf_offsets(harmful, originals, decoded.frames, decoded.intra, CRF, "x264", 1, (-2, 0, 2),
                                allow_unfiltered=False)
    assert None not in forced.offsets
    for kind, offset in zip(("intra", "inter"), forced.offsets):
        measured = {k: v for k, v in forced.scores[kind].items() if k != "off"}
        assert measured[str(offset)] == max(measured.values())


def test_decoded_frames_are_not_modified_and_inputs_are_checked(coded):
    originals, decoded = coded
    before = [tuple(p.copy() for p in f) for f in decoded.frames]
    choose_crf_offsets(tiny_filter(0, 0.02), originals, decoded.frames, decoded.intra, CRF, "x264", 1, (0,))
    assert all(np.array_equal(a, b) for fa, fb in zip(before, decoded.frames) for a, b in zip(fa, fb))
    with pytest.raises(ValueError, match="7 originals, 7 decoded frames, 6 frame types"):
        choose_crf_offsets(tiny_filter(0, 0.02), originals, decoded.frames, decoded.intra[:-1], CRF, "x264", 1)
    with pytest.raises(ValueError, match="no candidate"):
        choose_crf_offsets(tiny_filter(0, 0.02), originals, decoded.frames, decoded.intra, CRF, "x264", 1, ())
    with pytest.raises(ValueError, match="must lie in 0..64"):
        choose_crf_offsets(tiny_filter(0, 0.02), originals, decoded.frames, decoded.intra, CRF, "x264", 1, (0,),
                           scale_grid=(8, 65))


def test_typed_decode_gives_the_same_frames(coded):
    originals, decoded = coded
    data = encode_planes(originals, 96, 64, Fraction(25), "x264", CRF, 3)
    plain = decode_stream(data, "x264")
    assert all(np.array_equal(a, b) for fa, fb in zip(plain, decoded.frames, strict=True) for a, b in zip(fa, fb))


# --- residual scales -------------------------------------------------------------------------------------

GRID = tuple(range(0, 33, 4))  # 0, 1/4, ..., 2


@pytest.mark.parametrize("crf", [22, 47])
def test_scales_are_the_measured_argmax_per_plane_and_their_frames_are_the_decoders(coded, crf):
    """With a scale grid: each chosen candidate's Y, U, V scales are the per-plane argmax of what was measured
    (checked against PSNRs recomputed here), the frames are what a decoder shows for the signalled record,
    the summed PSNR-YUV of those frames is the chosen scores' sum, and no frame type scores below the choice
    without scales (the grid holds the trained residual)."""
    from workers.postfilter.checkpoint import shipped_filter
    from workers.postfilter.network import filter_planes

    originals, _ = coded
    decoded = decode_stream_typed(encode_planes(originals, 96, 64, Fraction(25), "x264", crf, 3), "x264")
    model = shipped_filter().model
    candidates = (-2, 0, 3)
    plain = choose_crf_offsets(model, originals, decoded.frames, decoded.intra, crf, "x264", 1, candidates)
    scaled = choose_crf_offsets(model, originals, decoded.frames, decoded.intra, crf, "x264", 1, candidates,
                                scale_grid=GRID, with_unscaled=True)
    assert scaled.enabled
    # the choice without scales from the same passes is the plain choice, frames and all
    unscaled = scaled.unscaled
    assert (unscaled.offsets, unscaled.residual_scales) == (plain.offsets, ((16,) * 3, (16,) * 3))
    for kind in ("intra", "inter"):  # the same PSNRs, summed in another order
        assert unscaled.scores[kind] == pytest.approx(plain.scores[kind], abs=1e-9)
    assert all(np.array_equal(a, b) for fa, fb in zip(unscaled.frames, plain.frames, strict=True)
               for a, b in zip(fa, fb))
    for kind, offset in zip(("intra", "inter"), scaled.offsets):
        assert scaled.scores[kind]["off" if offset is None else str(offset)] == max(scaled.scores[kind].values())
        assert max(scaled.scores[kind].values()) >= max(plain.scores[kind].values()) - 1e-9
        for candidate in map(str, candidates):  # the grid includes 16: never below the trained residual's score
            assert scaled.scores[kind][candidate] >= plain.scores[kind][candidate] - 1e-9
    # per plane argmax, recomputed from scratch for the intra frames' chosen candidate
    intra_frames = [i for i, flag in enumerate(decoded.intra) if flag]
    offset, scales = scaled.offsets[0], scaled.residual_scales[0]
    if offset is not None:
        for plane in range(3):
            def summed(scale):
                return sum(psnr_yuv((originals[i][plane],) * 3, (filter_planes(model, decoded.frames[i], crf + offset,
                       "x264", (scale / 16,) * 3)[plane],) * 3) for i in intra_frames)
            measured = {scale: summed(scale) for scale in (16, *GRID)}
            assert measured[scales[plane]] == pytest.approx(max(measured.values()), abs=1e-9)
    assert_frames_are_the_decoders(scaled, model, originals, decoded, crf)


def test_scale_zero_is_the_decoded_plane_and_one_is_the_filter(coded):
    """x + 0 (f - x) rounds back to the decoded plane exactly; scale one is filter_planes' output bit for bit."""
    from workers.postfilter.network import filter_planes

    _, decoded = coded
    model = tiny_filter(2, 0.05)
    planes = decoded.frames[1]
    zero = filter_planes(model, planes, CRF, "x264", (0.0, 0.0, 0.0))
    assert all(np.array_equal(a, b) for a, b in zip(zero, planes))
    mixed = filter_planes(model, planes, CRF, "x264", (1.0, 0.0, 1.5))
    full = filter_planes(model, planes, CRF, "x264")
    assert np.array_equal(mixed[0], full[0]) and np.array_equal(mixed[1], planes[1])
    assert not np.array_equal(mixed[2], full[2])


def test_a_harmful_filter_stays_off_with_scales(coded):
    """Scale 0 on every plane scores as the plain frames: ties keep 'off', so nothing is signalled."""
    originals, decoded = coded
    choice = choose_crf_offsets(tiny_filter(3, 0.5), originals, decoded.frames, decoded.intra, CRF, "x264", 1,
                                (-2, 0), scale_grid=GRID)
    assert choice.offsets == (None, None) and choice.residual_scales == ((16,) * 3, (16,) * 3)
    assert all(a is b for fa, fb in zip(choice.frames, decoded.frames) for a, b in zip(fa, fb))
    forced = choose_crf_offsets(tiny_filter(3, 0.5), originals, decoded.frames, decoded.intra, CRF, "x264", 1,
                                (-2, 0), allow_unfiltered=False, scale_grid=GRID)
    assert None not in forced.offsets and all(scale > 0 for kind in forced.residual_scales for scale in kind)
