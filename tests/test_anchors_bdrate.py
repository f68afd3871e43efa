"""x264/x265 anchors through PyAV and BD-rate."""

from __future__ import annotations

import pytest

from workers.standard.anchors import encode_anchor
from workers.standard.encoder import encoder_options as anchor_options
from adaptjobs.bdrate import bd_rate
from workers.errors import InputError

CURVE = [(0.05, 29.0), (0.1, 31.5), (0.2, 34.0), (0.4, 36.2), (0.8, 38.1)]


def test_bd_rate_of_a_curve_against_itself_is_zero():
    result = bd_rate(CURVE, CURVE)
    assert result.percent == pytest.approx(0.0, abs=1e-9) and result.warning is None


def test_same_quality_at_half_the_rate_is_minus_fifty_percent():
    assert bd_rate(CURVE, [(r / 2, d) for r, d in CURVE]).percent == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(CURVE, [(r * 2, d) for r, d in CURVE]).percent == pytest.approx(100.0, abs=1e-6)


def test_bd_rate_warns_on_few_points_and_small_overlap():
    partial = [(r * 1.5, d + 6.0) for r, d in CURVE[:3]]
    result = bd_rate(CURVE, partial)
    assert result.percent is not None and "fewer than 4 points" in result.warning and "overlap" in result.warning
    disjoint = [(r, d + 50) for r, d in CURVE]
    assert bd_rate(CURVE, disjoint).percent is None


def test_bd_rate_refuses_non_monotone_curves():
    with pytest.raises(ValueError, match="does not increase"):
        bd_rate(CURVE, [(0.1, 30), (0.2, 29), (0.3, 31), (0.4, 32)])


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_anchor_rate_is_the_packet_bytes_and_quality_rises_with_rate(carphone, codec):
    low, _ = encode_anchor(carphone, codec, crf=40, intra_period=2)
    high, decoded = encode_anchor(carphone, codec, crf=20, intra_period=2)
    assert len(decoded) == len(carphone) and decoded[0][0].shape == (144, 176)
    assert high.bytes > low.bytes > 0 and high.psnr_rgb > low.psnr_rgb + 2
    assert high.bpp == pytest.approx(high.bytes * 8 / (176 * 144 * len(carphone)))
    again, _ = encode_anchor(carphone, codec, crf=20, intra_period=2)
    assert again.bytes == high.bytes  # deterministic


def test_anchor_keyint_follows_the_intra_period(carphone):
    intra_only, _ = encode_anchor(carphone, "x264", crf=30, intra_period=1)
    long_gop, _ = encode_anchor(carphone, "x264", crf=30, intra_period=0)
    assert intra_only.bytes > 1.5 * long_gop.bytes


def test_anchor_encoder_refuses_unknown_options(carphone):
    with pytest.raises(InputError, match="libx264 has no option no-such-option"):
        encode_anchor(carphone, "x264", crf=30, intra_period=2, extra_options={"no-such-option": "1"})
    with pytest.raises(InputError, match="x265-params key"):
        anchor_options("x265", 30, 2, "medium", {"x265-params": "keyint=2:bogus=1"})
    with pytest.raises(InputError, match="unknown standard codec"):
        encode_anchor(carphone, "vp9", crf=30, intra_period=2)
