"""The seam: base codecs behind one protocol (x264/x265 next to SSF), methods from the registry, and the
spec of a run with several codecs. Real carphone frames, CPU only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adaptjobs.cli import EXIT_INPUT_ERROR, main
from adaptjobs.spec import build_spec, parse_codec_choices
from schemas.adapt import AdaptResult
from schemas.methods import METHOD_CONFIGS
from workers.errors import InputError
from workers.methods import METHODS
from workers.video_io import read_video


@pytest.mark.parametrize("codec,suffix", [("x264", ".h264"), ("x265", ".hevc")])
def test_adapt_none_on_a_standard_codec_writes_its_stream_and_decode_reproduces_it(tmp_path, carphone_path, codec,
                                                                                  suffix, capsys):
    out, recon = tmp_path / "out", tmp_path / "rec.y4m"
    assert main(["adapt", str(carphone_path), "-o", str(out), "--codec", codec, "--quality", "32", "--method", "none",
                 "--frames", "3", "--intra-period", "2", "--recon", str(recon), "--json"]) == 0
    result = AdaptResult.model_validate_json(capsys.readouterr().out)
    stream = out / f"carphone_pristine{suffix}"
    assert result.codec == codec and result.quality == 32 and result.bytes_written == stream.stat().st_size
    assert result.weights_sha256 is None and result.bits is None and result.decision == "base-method"
    assert result.psnr_yuv == pytest.approx((6 * result.psnr_y + result.psnr_u + result.psnr_v) / 8, abs=1e-12)

    # the same bytes as the anchor encoder with the same settings (method none IS the anchor point)
    from workers.standard.anchors import encode_anchor

    point, _ = encode_anchor(read_video(carphone_path, 3), codec, 32, 2)
    assert point.bytes == result.bytes_written and point.psnr_yuv == pytest.approx(result.psnr_yuv, abs=1e-9)

    capsys.readouterr()
    assert main(["info", str(stream)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["codec"], info["frames"], info["width"], info["height"]) == (codec, 3, 176, 144)
    for source in (stream, out):  # the stream, or the unit folder holding it
        decoded = tmp_path / "dec.y4m"
        assert main(["decode", str(source), "-o", str(decoded)]) == 0
        ours, theirs = read_video(decoded), read_video(recon)
        assert len(ours) == len(theirs) == 3
        assert all(np.array_equal(a, b) for i in range(3) for a, b in zip(ours.frame_yuv420(i), theirs.frame_yuv420(i)))


def test_a_method_is_refused_on_a_codec_it_does_not_apply_to(tmp_path, carphone_path, capsys):
    code = main(["adapt", str(carphone_path), "-o", str(tmp_path / "o"), "--codec", "x264", "--method", "decoder-lora"])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT_ERROR and err.count("\n") == 1 and "does not apply to codec x264" in err


def test_the_registries_agree_and_methods_lists_the_codecs(capsys):
    assert set(METHODS) == set(METHOD_CONFIGS)
    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert list(listed)[0] == "none" and set(listed) == set(METHOD_CONFIGS)
    assert listed["decoder-lora"]["codecs"] == ["ssf"] and listed["none"]["codecs"] == ["*"]
    assert listed["decoder-lora"]["defaults"]["variant"] == "extended"


def test_a_run_with_several_codecs(tmp_path, carphone_path, tiny_checkpoint):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(carphone_path, videos / "carphone.mp4")
    choices = parse_codec_choices(["ssf", "x264:27,22.5"], None, ["x264:preset=fast"], "x265")
    spec = build_spec(videos, ["none", "decoder-lora"], [], choices, str(tiny_checkpoint), 2, 12)
    runs = {run.codec: run for run in spec.codecs}
    assert list(runs) == ["ssf", "x264", "x265"]
    assert runs["ssf"].methods == ("none", "decoder-lora") and runs["ssf"].qualities == (2,)
    assert runs["x264"].methods == ("none",) and runs["x264"].qualities == (22.5, 27)
    from workers.postfilter.checkpoint import shipped_filter

    # the shipped post-filter is recorded, so a later release's filter makes another spec
    shipped = shipped_filter().metadata.weights_sha256
    assert runs["x264"].settings == {"preset": "fast", "filter_sha256": shipped}
    assert runs["x264"].primary_metric == "psnr-yuv"
    assert runs["x265"].qualities == (22, 27, 32, 37, 42, 47, 51)  # the anchor's default CRF sweep
    point = runs["x264"].point(22.5)
    assert (point.codec, point.quality, point.settings, point.model_spec) == ("x264", 22.5, runs["x264"].settings, None)

    from adaptjobs.run_store import RunStore

    rels = [unit.rel for unit in RunStore(tmp_path / "run").units(spec)]
    assert rels[:3] == ["units/carphone/ssf/none/q2", "units/carphone/ssf/decoder-lora/q2",
                        "units/carphone/x264/none/q22.5"]
    with pytest.raises(InputError, match="apply to none of the chosen codecs"):
        build_spec(videos, ["decoder-lora"], [], parse_codec_choices(["x264"], None, [], "none"), None, 2, 12)
    with pytest.raises(InputError, match="CRFs lie within 0..51"):
        build_spec(videos, ["none"], [], parse_codec_choices(["x264:60"], None, [], "none"), None, 2, 12)
    with pytest.raises(InputError, match="exactly one --codec"):
        parse_codec_choices(["ssf", "x264"], "1,2", [], None)


def test_worker_logging_reaches_the_unit_log_only_while_the_unit_runs(tmp_path):
    import logging

    from workers.run_layout import read_log, unit_logging

    path = tmp_path / "adapt.log"
    logger = logging.getLogger("workers.adapt.training")
    before = logging.getLogger("workers").level
    with unit_logging(path):
        logger.info("resumed from checkpoint %s at step %d", "state", 7)
        logger.debug("not at INFO")
    logger.info("after the unit")
    records = read_log(path)
    assert [(r["event"], r["level"], r["logger"], r["message"]) for r in records] == [
        ("log", "info", "workers.adapt.training", "resumed from checkpoint state at step 7")]
    assert logging.getLogger("workers").level == before and not logging.getLogger("workers").handlers
