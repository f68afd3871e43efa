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
