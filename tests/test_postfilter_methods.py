"""Methods postfilter and postfilter-adapt end to end: `adaptjobs adapt` -> one Annex B file whose SEI names the
filter (and carries the update) -> `adaptjobs decode` == the unit's --recon byte for byte; standard decoders
unaffected; damaged, switched-off and foreign side info; resume; `adaptjobs info`.

Small on purpose: 3 frames of 96x64 cropped from carphone, a seeded 3-layer, 8-channel filter, 4 training steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adaptjobs.cli import main as cli
from schemas.adapt import AdaptResult
from schemas.side_info import StandardSideInfo, filter_id
from tests.conftest import crop_planes, write_y4m_planes
from workers.postfilter.checkpoint import load_filter, save_filter
from workers.postfilter.network import FilterArchitecture, PostFilter
from workers.standard.encoder import decode_stream
from workers.standard.side_info import SIDE_INFO_UUID, attach_side_info, read_side_info, strip_side_info

SUFFIX = {"x264": ".h264", "x265": ".hevc"}
FAST = ["--set", "training.steps=4", "--set", "training.eval_every=2", "--set", "training.checkpoint_every=2",
        "--set", "training.learning_rate=0.01", "--set", "training.crop=32"]


def seeded_filter(path, seed: int, tail_std: float = 0.05):
    """A tiny filter whose tail is not zero: the generic filter changes (and harms) the frames, so 4 steps of
    adaptation find an update worth coding (with a std of 0.01 the zero update stays the best state)."""
    torch.manual_seed(seed)
    model = PostFilter(FilterArchitecture(layers=3, channels=8))
    with torch.no_grad():
        model.tail.weight.normal_(0, tail_std)
    save_filter(path, model, f"tiny-{seed}")
    return path


@pytest.fixture(scope="module")
def filters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("filters")
    return seeded_filter(folder / "a.safetensors", 0), seeded_filter(folder / "b.safetensors", 1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, carphone):
    return write_y4m_planes(tmp_path_factory.mktemp("clip") / "clip.y4m", crop_planes(carphone, 96, 64)[:3])


def adapt(clip, out, codec, method, filter_path, *extra) -> AdaptResult:
    args = ["adapt", str(clip), "-o", str(out), "--codec", codec, "--quality", "32", "--method", method,
            "--recon", str(out / "recon.y4m"), "--codec-set", f"filter={filter_path}", "--json", *extra]
    assert cli(args) == 0
    return AdaptResult.model_validate_json((out / "result.json").read_text())


@pytest.fixture(scope="module")
def units(tmp_path_factory, clip, filters):
    """(codec, method) -> (result, unit folder), every filter sent (send_update=always)."""
    made = {}
    for codec in SUFFIX:
        for method in ("postfilter", "postfilter-adapt"):
            out = tmp_path_factory.mktemp(f"{codec}-{method}")
            extra = ["--set", 'send_update="always"', *(FAST if method == "postfilter-adapt" else [])]
            made[codec, method] = adapt(clip, out, codec, method, filters[0], *extra), out
    return made


@pytest.mark.parametrize("codec", SUFFIX)
@pytest.mark.parametrize("method", ("postfilter", "postfilter-adapt"))
def test_decode_equals_recon_byte_for_byte(units, filters, tmp_path, codec, method):
    result, out = units[codec, method]
    stream = out / f"clip{SUFFIX[codec]}"
    assert result.bytes_written == stream.stat().st_size and result.payload is None
    assert not list(out.glob("*.payload"))  # one file: the update rides in the SEI
    decoded = tmp_path / "d.y4m"
    assert cli(["decode", str(stream), "-o", str(decoded), "--model", str(filters[0])]) == 0
    assert decoded.read_bytes() == (out / "recon.y4m").read_bytes()
    info, blob = read_side_info(stream.read_bytes(), codec)
    assert info.filter_enabled and info.filter_id == filter_id(load_filter(filters[0]).metadata.weights_sha256)
    if method == "postfilter-adapt":  # an update was actually sent, and result.json counts it
        assert info.update is not None and len(blob) == info.update.bytes == result.update_bytes_in_stream > 0
        assert result.decision == "sent" and result.method_details["adaptation"]["blob_bytes"] == len(blob)
        assert 0 < result.payload_share == pytest.approx(len(blob) / result.bytes_written)
    else:
        assert info.update is None and result.decision == "filter-on"


@pytest.mark.parametrize("codec", SUFFIX)
@pytest.mark.parametrize("parameterisation, extra", [
    ("cross-linear-tied", []),
    ("classified-linear", ["--set", "classified.groups=[1,3]", "--set", "classified.ridge=[0.0001]"]),
    ("classified-linear-on-base", ["--set", "classified.groups=[1,3]", "--set", "classified.ridge=[0.0001]"]),
])
def test_linear_updates_decode_to_the_recon(clip, filters, tmp_path, codec, parameterisation, extra):
    """The tied and the classified structures travel under their own wire ids and decode byte for byte like
    the others (classified: the decoder rebuilds the class map from the decoded luma)."""
    out = tmp_path / "unit"
    result = adapt(clip, out, codec, "postfilter-adapt", filters[0], "--set", 'send_update="always"',
                   "--set", f'parameterisation="{parameterisation}"', *extra)
    stream = out / f"clip{SUFFIX[codec]}"
    info, blob = read_side_info(stream.read_bytes(), codec)
    assert info.update is not None and info.update.method.name == parameterisation.upper().replace("-", "_")
    assert len(blob) == info.update.bytes
    assert result.method_details["structure"] == parameterisation and result.decision == "sent"
    assert cli(["decode", str(stream), "-o", str(tmp_path / "d.y4m"), "--model", str(filters[0])]) == 0
    assert (tmp_path / "d.y4m").read_bytes() == (out / "recon.y4m").read_bytes()


@pytest.mark.parametrize("codec", SUFFIX)
def test_postfilter_adapt_offers_the_generic_filter_as_postfilter_sends_it(units, codec):
    """postfilter-adapt's generic candidate is method postfilter's choice (offsets and residual scales); its
    update is adapted on the residual as trained (scales never travel with an update)."""
    chosen = units[codec, "postfilter"][0].method_details
    adapted, out = units[codec, "postfilter-adapt"]
    generic = adapted.method_details["generic"]
    assert generic == {"crf_offsets": chosen["crf_offsets"], "residual_scales": chosen["residual_scales"]}
    info, _ = read_side_info((out / f"clip{SUFFIX[codec]}").read_bytes(), codec)
    assert info.update is not None and not info.has_residual_scales


@pytest.mark.parametrize("codec", SUFFIX)
def test_standard_decoders_ignore_the_sei(units, codec):
    data = (units[codec, "postfilter-adapt"][1] / f"clip{SUFFIX[codec]}").read_bytes()
    plain = strip_side_info(data, codec)
    assert SIDE_INFO_UUID in data and SIDE_INFO_UUID not in plain and len(plain) < len(data)
    ours, theirs = decode_stream(data, codec), decode_stream(plain, codec)
    assert len(ours) == len(theirs) == 3
    assert all(np.array_equal(a, b) for fa, fb in zip(ours, theirs) for a, b in zip(fa, fb))


def test_info_shows_the_side_info(units, clip, tmp_path, capsys):
    stream = units["x264", "postfilter-adapt"][1] / "clip.h264"
    capsys.readouterr()
    assert cli(["info", str(stream)]) == 0
    shown = json.loads(capsys.readouterr().out)["side_info"]
    info, _ = read_side_info(stream.read_bytes(), "x264")
    assert shown["filter_id"] == info.filter_id.hex() and shown["crf"] == 32.0 and shown["threads"] == info.threads
    assert shown["update"] == {"method": "classified-linear-on-base", "bytes": info.update.bytes}  # the default
    chosen = units["x264", "postfilter-adapt"][0].method_details["crf_offsets"]  # the update travels with them
    assert (shown["intra_crf_offset"], shown["inter_crf_offset"]) == (chosen["intra"], chosen["inter"]) != (0, 0)
    from workers.postfilter.stream import describe_side_info
    some = describe_side_info((info.model_copy(update={"intra_crf_offset": None, "inter_crf_offset": -3,
                                                       "inter_residual_scales": (8, 16, 20)}), b""))
    assert some["intra_crf_offset"] == "unfiltered" and some["inter_crf_offset"] == -3
    assert some["inter_residual_scales"] == {"Y": 0.5, "U": 1.0, "V": 1.25}
    assert some["intra_residual_scales"] == {"Y": 1.0, "U": 1.0, "V": 1.0}
    plain = tmp_path / "plain.h264"
    assert cli(["encode", str(clip), "-o", str(plain), "--codec", "x264"]) == 0
    assert cli(["info", str(plain)]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["side_info"].startswith("none")


def _refused(path, capsys, *extra) -> str:
    capsys.readouterr()
    assert cli(["decode", str(path), "-o", str(path.with_suffix(".y4m")), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err
    return err


def test_corrupted_or_truncated_side_info_is_refused_with_one_line(units, filters, tmp_path, capsys):
    data = (units["x264", "postfilter-adapt"][1] / "clip.h264").read_bytes()
    info, blob = read_side_info(data, "x264")
    at = data.index(SIDE_INFO_UUID) + len(SIDE_INFO_UUID) + 2 + 3  # inside the record (after the chunk header)
    at = next(i for i in range(at, at + 64) if data[i] > 3 and data[i] ^ 0x40 > 3)  # no emulation-prevention byte
    corrupted = tmp_path / "corrupted.h264"
    corrupted.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:])
    assert "CRC32 mismatch" in _refused(corrupted, capsys, "--model", str(filters[0]))
    # a record that is whole but carries a truncated update: the update's own framing refuses it
    short = blob[:-5]
    record = info.model_copy(update={"update": info.update.model_copy(update={"bytes": len(short)})})
    truncated = tmp_path / "truncated.h264"
    truncated.write_bytes(attach_side_info(strip_side_info(data, "x264"), "x264", record, short))
    assert "post-filter update" in _refused(truncated, capsys, "--model", str(filters[0]))


def test_an_update_for_another_base_filter_is_refused(units, filters, tmp_path, capsys):
    data = (units["x264", "postfilter-adapt"][1] / "clip.h264").read_bytes()
    info, blob = read_side_info(data, "x264")
    other = load_filter(filters[1]).metadata.weights_sha256
    record = info.model_copy(update={"filter_id": filter_id(other)})  # names filter b, the update is for a
    foreign = tmp_path / "foreign.h264"
    foreign.write_bytes(attach_side_info(strip_side_info(data, "x264"), "x264", record, blob))
    assert "another base filter" in _refused(foreign, capsys, "--model", str(filters[1]))
    assert "pass its file with --model" in _refused(foreign, capsys)  # no filter with that id is known


def test_filter_switched_off_decodes_plainly(units, filters, tmp_path):
    data = (units["x265", "postfilter"][1] / "clip.hevc").read_bytes()
    plain = strip_side_info(data, "x265")
    info, _ = read_side_info(data, "x265")
    off = tmp_path / "off.hevc"
    switched_off = {**info.model_dump(), "filter_enabled": False, "intra_crf_offset": 0, "inter_crf_offset": 0,
                    "intra_residual_scales": (16, 16, 16), "inter_residual_scales": (16, 16, 16)}
    off.write_bytes(attach_side_info(plain, "x265", StandardSideInfo(**switched_off)))
    (tmp_path / "plain.hevc").write_bytes(plain)
    assert cli(["decode", str(off), "-o", str(tmp_path / "off.y4m")]) == 0  # the filter is not even looked up
    assert cli(["decode", str(tmp_path / "plain.hevc"), "-o", str(tmp_path / "plain.y4m")]) == 0
    assert (tmp_path / "off.y4m").read_bytes() == (tmp_path / "plain.y4m").read_bytes()
    assert (tmp_path / "off.y4m").read_bytes() != (units["x265", "postfilter"][1] / "recon.y4m").read_bytes()


@pytest.mark.parametrize("codec", SUFFIX)
def test_each_frame_type_is_filtered_at_its_own_crf_offset(units, filters, tmp_path, codec):
    """`decode` conditions the filter per picture type: intra frames on crf + the intra offset (unfiltered when
    the record says so), the others on crf + the inter offset, each plane's residual scaled by its type's
    scale; and the unit's own record names the offsets and scales the method chose."""
    from workers.limits import capped_threads
    from workers.postfilter.stream import filter_frames
    from workers.standard.encoder import decode_stream_typed
    from workers.video_io import read_video

    result, out = units[codec, "postfilter"]
    data = (out / f"clip{SUFFIX[codec]}").read_bytes()
    info, _ = read_side_info(data, codec)
    chosen, scales = result.method_details["crf_offsets"], result.method_details["residual_scales"]
    assert (info.intra_crf_offset, info.inter_crf_offset) == (chosen["intra"], chosen["inter"])
    assert (info.intra_residual_scales, info.inter_residual_scales) == (tuple(scales["intra"]), tuple(scales["inter"]))
    plain = strip_side_info(data, codec)
    decoded = decode_stream_typed(plain, codec)
    assert decoded.intra == [True, False, False]
    model, threads = load_filter(filters[0]).model, capped_threads(info.threads, torch.get_num_threads())
    unit = (16, 16, 16)
    for intra_offset, inter_offset, intra_scales, inter_scales in [(None, 3, unit, (8, 0, 24)), (-5, 0, unit, unit),
                                                                   (2, None, (32, 16, 5), unit)]:
        record = StandardSideInfo(**{**info.model_dump(), "intra_crf_offset": intra_offset,
                                     "inter_crf_offset": inter_offset, "intra_residual_scales": intra_scales,
                                     "inter_residual_scales": inter_scales})
        stream = tmp_path / f"s{SUFFIX[codec]}"
        stream.write_bytes(attach_side_info(plain, codec, record))
        assert cli(["decode", str(stream), "-o", str(tmp_path / "d.y4m"), "--model", str(filters[0])]) == 0
        shown = read_video(tmp_path / "d.y4m")
        for index, (planes, intra) in enumerate(zip(decoded.frames, decoded.intra)):
            offset, frame_scales = (intra_offset, intra_scales) if intra else (inter_offset, inter_scales)
            expected = planes if offset is None else filter_frames(model, [planes], 32 + offset, codec, threads,
                                                                   [frame_scales])[0]
            assert all(np.array_equal(a, b) for a, b in zip(shown.frame_yuv420(index), expected)), (index, offset)
        if (intra_scales, inter_scales) != (unit, unit):  # the scales changed what was shown
            unscaled = filter_frames(model, [decoded.frames[1]], 32 + inter_offset, codec, threads)[0] \
                if inter_offset is not None else None
            if unscaled is not None:
                assert not np.array_equal(shown.frame_yuv420(1)[0], unscaled[0])


def test_a_filter_that_does_not_pay_is_not_sent(clip, tmp_path):
    harmful = seeded_filter(tmp_path / "harmful.safetensors", 2, tail_std=0.5)
    result = adapt(clip, tmp_path / "u", "x264", "postfilter", harmful)
    # no candidate offset helps either frame type: nothing to try, the plain stream goes out
    assert result.method_details["crf_offsets"] == {"intra": None, "inter": None}
    assert result.decision == "zero-update" and result.rd_cost == result.rd_cost_base and result.rd_cost_adapted is None
    assert read_side_info((tmp_path / "u" / "clip.h264").read_bytes(), "x264") is None  # the plain stream
    forced = adapt(clip, tmp_path / "f", "x264", "postfilter", harmful, "--set", 'send_update="always"')
    info, _ = read_side_info((tmp_path / "f" / "clip.h264").read_bytes(), "x264")
    assert forced.decision == "filter-on" and forced.rd_cost > forced.rd_cost_base
    assert None not in (info.intra_crf_offset, info.inter_crf_offset)


class _Interrupt(Exception):
    pass


def test_resumed_adaptation_equals_uninterrupted(units, clip, filters, tmp_path, monkeypatch):
    import workers.encoder

    logged = workers.encoder.append_log

    def interrupt(path, record):
        if record.get("phase") == "postfilter-adapt" and record.get("step") == 2:
            raise _Interrupt
        logged(path, record)

    from workers.codecs.base import load_codec
    from workers.encoder import adapt_video
    from workers.methods import parse_method_config
    from workers.video_io import read_video
    from schemas.job import CodecPoint

    config = parse_method_config("postfilter-adapt", {"send_update": "always", "parameterisation": "scale-bias", "training": {
        "steps": 4, "eval_every": 2, "checkpoint_every": 2, "learning_rate": 0.01, "crop": 32}})
    point = CodecPoint(codec="x264", quality=32, settings={"filter": str(filters[0])})
    uninterrupted = adapt_video(read_video(clip), load_codec(point), tmp_path / "reference", config)
    assert uninterrupted.resumed_from_step == 0
    monkeypatch.setattr(workers.encoder, "append_log", interrupt)
    with pytest.raises(_Interrupt):
        adapt_video(read_video(clip), load_codec(point), tmp_path / "resumed", config)
    monkeypatch.setattr(workers.encoder, "append_log", logged)
    result = adapt_video(read_video(clip), load_codec(point), tmp_path / "resumed", config)
    assert result.resumed_from_step == 2
    assert (tmp_path / "resumed" / "clip.h264").read_bytes() == (tmp_path / "reference" / "clip.h264").read_bytes()


def test_method_config_mirrors_the_workers_config():
    from schemas.methods.postfilter_adapt import PostFilterAdaptConfig
    from workers.postfilter.adapt import FilterAdaptConfig

    ours = PostFilterAdaptConfig().model_dump(exclude={"method", "crf_offsets", "residual_scale_grid"})  # chosen before
    assert ours == FilterAdaptConfig().model_dump()


def test_pretrain_filter_is_a_cli_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["pretrain-filter", "--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out


def test_report_counts_the_update_in_the_weight_overhead(units):
    from adaptjobs.report_data import result_row

    result, _ = units["x264", "postfilter-adapt"]
    row = result_row({"unit": "u", "video": "clip", "codec": "x264", "method": "postfilter-adapt", "quality": 32},
                     result)
    assert row.payload_bytes == result.update_bytes_in_stream > 0
    assert row.total_bytes == row.bits_file_bytes == result.bytes_written  # the update is in the file: not twice
    assert row.bpp_with_payload == pytest.approx(8 * result.bytes_written / (96 * 64 * 3))


def test_shipped_filter_is_the_default_on_both_sides(units, clip, filters, tmp_path, monkeypatch):
    import shutil

    from workers.postfilter import checkpoint

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    shutil.copy(filters[0], shipped / "a.safetensors")
    monkeypatch.setattr(checkpoint, "SHIPPED_FILTERS_DIR", shipped)
    out = tmp_path / "u"
    assert cli(["adapt", str(clip), "-o", str(out), "--codec", "x264", "--quality", "32", "--method", "postfilter",
                "--recon", str(out / "recon.y4m"), "--set", 'send_update="always"']) == 0
    assert (out / "clip.h264").read_bytes() == (units["x264", "postfilter"][1] / "clip.h264").read_bytes()
    assert cli(["decode", str(out / "clip.h264"), "-o", str(tmp_path / "d.y4m")]) == 0  # no --model needed
    assert (tmp_path / "d.y4m").read_bytes() == (out / "recon.y4m").read_bytes()
