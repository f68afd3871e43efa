"""The post-filter network on uint8 planes, and the evaluation (postfilter rule, BD-rate) on a tiny clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptjobs.postfilter_eval import evaluate, format_summary, summarize
from workers.postfilter.network import FilterArchitecture, PostFilter, filter_planes

CRFS = (32.0, 37.0, 42.0, 47.0)


def _planes(seed: int = 0, h: int = 32, w: int = 48):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (h, w), dtype=np.uint8), rng.integers(0, 256, (h // 2, w // 2), dtype=np.uint8),
            rng.integers(0, 256, (h // 2, w // 2), dtype=np.uint8))


def _trained_looking(seed: int = 0) -> PostFilter:
    torch.manual_seed(seed)
    model = PostFilter(FilterArchitecture(layers=3, channels=8))
    with torch.no_grad():
        model.tail.weight.normal_(0, 0.01)
    return model.eval()


def test_filter_is_identity_at_init():
    planes = _planes()
    for a, b in zip(planes, filter_planes(PostFilter(FilterArchitecture(layers=3, channels=8)), planes, 30, "x264")):
        assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b)


def test_filter_is_deterministic_and_conditioned():
    model, planes = _trained_looking(), _planes(1)
    first = filter_planes(model, planes, 37, "x265")
    assert all(np.array_equal(a, b) for a, b in zip(first, filter_planes(model, planes, 37, "x265")))
    assert not all(np.array_equal(a, b) for a, b in zip(first, planes)), "a non-zero tail must change the frame"
    other = filter_planes(model, planes, 22, "x265"), filter_planes(model, planes, 37, "x264")
    for changed in other:
        assert not all(np.array_equal(a, b) for a, b in zip(first, changed)), "CRF and codec must be inputs"


def test_evaluation_of_identity_filter_costs_only_the_sei(carphone_path, tmp_path):
    points = evaluate(PostFilter(FilterArchitecture(layers=3, channels=4)), [carphone_path], ("x264",), CRFS,
                      max_frames=4, cache=tmp_path)
    assert len(points) == 4 and len(list(tmp_path.iterdir())) == 4
    for p in points:
        assert p.filtered == p.none and not p.filter_on
        # the record measured by attaching it: 46 bytes in H.264 (workers/standard/side_info.py), plus any
        # emulation-prevention bytes its fields need
        assert 46 <= p.sei_bytes <= 52
        assert p.bpp("postfilter") - p.bpp("none") == pytest.approx(p.sei_bytes * 8 / (176 * 144 * 4))
        assert p.bpp("postfilter", 0) == p.bpp("none")
    sequence = summarize(points)["codecs"]["x264"]["sequences"]["carphone_pristine"]
    assert sequence["bd_rate"]["yuv"] > 0  # same quality, a few more bytes
    assert abs(sequence["bd_rate_without_sei"]) < 1e-9


def test_evaluation_rule_takes_the_better_of_on_and_off(carphone_path, tmp_path):
    points = evaluate(_trained_looking(2), [carphone_path], ("x264", "x265"), CRFS, max_frames=3, cache=tmp_path)
    again = evaluate(_trained_looking(2), [carphone_path], ("x264", "x265"), CRFS, max_frames=3, cache=tmp_path)
    assert [p.filtered for p in points] == [p.filtered for p in again]
    for p in points:
        assert p.quality("postfilter", "yuv") == max(p.none["yuv"], p.filtered["yuv"]) or not p.filter_on
        assert p.quality("postfilter", "yuv") >= p.none["yuv"]
    text = format_summary(summarize(points))
    assert "x264" in text and "x265" in text and "mean" in text


def test_evaluate_cli_and_model_card(carphone_path, tmp_path):
    """The CLI writes its JSON; the card script ships the evaluated weights and a card naming them."""
    import importlib.util
    import json
    from pathlib import Path

    from workers.postfilter.checkpoint import FilterTraining, load_filter, save_filter
    from adaptjobs.postfilter_eval import main

    save_filter(tmp_path / "f.safetensors", _trained_looking(3), "pf-tiny", FilterTraining(source="test", steps=1))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "carphone.mp4").symlink_to(carphone_path)
    assert main([str(tmp_path / "f.safetensors"), "--data", str(tmp_path / "data"), "--codecs", "x264", "--crfs",
                 *map(str, CRFS), "--frames", "2", "--json", str(tmp_path / "eval.json"), "--threads", "1"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert len(report["points"]) == 4 and "x264" in report["summary"]["codecs"]
    spec = importlib.util.spec_from_file_location("postfilter_card", Path(__file__).parents[1] / "scripts" / "postfilter_card.py")
    card_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card_script)
    out = tmp_path / "shipped"
    assert card_script.main(["--filter", str(tmp_path / "f.safetensors"), "--eval", str(tmp_path / "eval.json"),
                             "--out-dir", str(out)]) == 0
    shipped = load_filter(out / "pf-tiny.safetensors")
    card = json.loads((out / "card.json").read_text())
    assert card["weights_sha256"] == shipped.metadata.weights_sha256 == report["weights_sha256"]
    assert "carphone" in (out / "MODEL_CARD.md").read_text()
