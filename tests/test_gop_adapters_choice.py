"""gop-adapters' per-GoP choice (issue 14): every GoP's P-frames are coded by the cheapest of the base encoder
and the adapters at their evaluated passes, by the coded RD cost, and that cost is the one the written
stream really has. Tiny seeded model, the first 4 frames of carphone, CPU only."""

from __future__ import annotations

import json
import math

import pytest
import torch

from workers.bitstream import unpack
from workers.encoder import adapt_video
from workers.methods import parse_method_config
from workers.video_codec import decode_sequence
from workers.video_io import SourceFrames

INTRA_PERIOD = 2  # 4 frames: GoPs [0, 1] and [2, 3]


def _records(out, phase: str) -> list[dict]:
    lines = (out / "adapt.log").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("phase") == phase]


def _stream_gop_costs(out, model, video, lmbda: float) -> dict[int, float]:
    """Per GoP, from the written stream alone: sum over its P-frames of lambda*255^2*MSE(decoded, source) +
    latent stream bits / pixels (what coded_gop_cost measures while encoding)."""
    data = (out / "carphone_pristine.bits").read_bytes()
    header, chunks = unpack(data)
    _, decoded = decode_sequence(data, lambda h: (model.model, model.model.entropy_tables()))
    source, pixels, costs = SourceFrames(video), video.width * video.height, {}
    for index in range(header.frame_count):
        if header.is_intra(index):
            continue
        mse = float(torch.mean((source[index] - decoded[index]) ** 2))
        bits = 8 * sum(map(len, chunks[index].streams))
        gop = index // INTRA_PERIOD
        costs[gop] = costs.get(gop, 0.0) + lmbda * 255.0**2 * mse + bits / pixels
    return costs


@pytest.mark.parametrize("learning_rate", [1e-2, 1e-4])
def test_each_gop_is_coded_by_its_cheapest_measured_encoder(tmp_path, carphone, tiny_model, learning_rate):
    config = parse_method_config("gop-adapters", {"send_update": "always", "steps": 3,
                                                  "learning_rate": learning_rate})
    result = adapt_video(carphone, tiny_model, tmp_path, config, intra_period=INTRA_PERIOD)
    evaluations, choices = _records(tmp_path, "gop-adapters-eval"), _records(tmp_path, "gop-adapters-choice")
    assert [c["gop"] for c in choices] == [0, 1]
    stream_costs = _stream_gop_costs(tmp_path, tiny_model, carphone, result.lmbda)
    for choice in choices:
        measured = [e for e in evaluations if e["gop"] == choice["gop"]]
        assert [e["passes"] for e in measured] == [0, 1, 2, 3]  # the base encoder, then every pass
        cheapest = min(measured, key=lambda e: (e["cost"], e["passes"]))
        assert choice["kept_pass"] == cheapest["passes"] and choice["cost"] == cheapest["cost"]
        assert choice["cost"] <= choice["base_cost"] == measured[0]["cost"]
        # the stream written holds exactly what was measured for the kept encoder
        assert stream_costs[choice["gop"]] == pytest.approx(choice["cost"], rel=1e-9, abs=1e-12)


def test_without_keep_best_the_last_pass_codes_the_gop(tmp_path, carphone, tiny_model):
    config = parse_method_config("gop-adapters", {"send_update": "always", "steps": 2, "keep_best": False,
                                                  "learning_rate": 1e-2})
    adapt_video(carphone, tiny_model, tmp_path, config, intra_period=INTRA_PERIOD)
    assert not _records(tmp_path, "gop-adapters-eval") and not _records(tmp_path, "gop-adapters-choice")
    assert len(_records(tmp_path, "gop-adapters")) == 2 * 2  # GoPs x passes x tiles (176x144: one tile)


def test_if_better_never_sends_a_unit_above_none(tmp_path, carphone, tiny_model):
    """With per-GoP choice and send_update=if-better the unit's RD cost is at most the base stream's."""
    config = parse_method_config("gop-adapters", {"steps": 2, "learning_rate": 1e-2})
    result = adapt_video(carphone, tiny_model, tmp_path, config, intra_period=INTRA_PERIOD)
    assert result.rd_cost <= result.rd_cost_base and math.isfinite(result.rd_cost)


def _stream_intra_costs(out, model, video, lmbda: float) -> dict[int, float]:
    """Per GoP, from the written stream alone: lambda*255^2*MSE + bits / pixels of its I-frame."""
    data = (out / "carphone_pristine.bits").read_bytes()
    header, chunks = unpack(data)
    _, decoded = decode_sequence(data, lambda h: (model.model, model.model.entropy_tables()))
    source, pixels = SourceFrames(video), video.width * video.height
    return {index // INTRA_PERIOD: lmbda * 255.0**2 * float(torch.mean((source[index] - decoded[index]) ** 2))
            + 8 * sum(map(len, chunks[index].streams)) / pixels
            for index in range(header.frame_count) if header.is_intra(index)}


def test_each_i_frame_is_coded_by_its_cheapest_measured_encoder(tmp_path, carphone, tiny_model):
    """The I-frame adapters: per GoP the base encoder and every step are coded, the cheapest is kept, and the
    written I-frame costs exactly what was measured for it."""
    config = parse_method_config("gop-adapters", {"send_update": "always", "steps": 0, "intra_steps": 3,
                                                  "intra_learning_rate": 1e-2})
    result = adapt_video(carphone, tiny_model, tmp_path, config, intra_period=INTRA_PERIOD)
    steps, choices = _records(tmp_path, "gop-adapters-intra"), _records(tmp_path, "gop-adapters-intra-choice")
    assert [c["gop"] for c in choices] == [0, 1]
    stream_costs = _stream_intra_costs(tmp_path, tiny_model, carphone, result.lmbda)
    for choice in choices:
        measured = [(choice["base_cost"], 0)] + [(s["cost"], s["step"]) for s in steps if s["gop"] == choice["gop"]]
        assert [step for _, step in measured] == [0, 1, 2, 3]
        assert (choice["cost"], choice["kept_step"]) == min(measured)
        assert stream_costs[choice["gop"]] == pytest.approx(choice["cost"], rel=1e-9, abs=1e-12)
    # the base encoder's cost is what a stock encode of the I-frame costs (zero-output adapters at the start)
    from workers.codec.ssf import pad_frame
    from workers.methods._gop_encoder import coded_intra_cost

    model = tiny_model.model
    x = pad_frame(carphone.frame_rgb(0).unsqueeze(0))
    base = coded_intra_cost(model, model.entropy_tables(), x, (carphone.height, carphone.width), result.lmbda)
    assert choices[0]["base_cost"] == base["cost"]


def test_fresh_i_frame_adapters_code_the_base_encoders_bytes(carphone, tiny_model):
    from workers.adapt.adapters import with_intra_adapters
    from workers.codec.ssf import pad_frame

    model = tiny_model.model
    adapted, parameters = with_intra_adapters(model, parse_method_config("gop-adapters", {}))
    assert parameters and all(p.requires_grad for p in parameters)
    tables = model.entropy_tables()
    x = pad_frame(carphone.frame_rgb(0).unsqueeze(0))
    with torch.no_grad():
        (base_hat, base), (hat, coded) = model.encode_intra(x, tables), adapted.encode_intra(x, tables)
    assert (coded.y_stream, coded.z_stream) == (base.y_stream, base.z_stream) and torch.equal(hat, base_hat)
    assert adapted.img_decoder is not model.img_decoder  # a copy: training it leaves the base model alone
