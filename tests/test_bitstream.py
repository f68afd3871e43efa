"""decode(encode(video)) == the encoder's reconstruction; the container refuses every kind of damage."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from tests.conftest import crop_planes, write_raw_yuv, write_y4m_planes
from workers.bitstream import MAGIC, unpack
from workers.encode_job import decode_file, encode_video
from workers.errors import BitstreamError, ModelError
from workers.video_io import read_video, write_reconstruction


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, carphone, tiny_model):
    out = tmp_path_factory.mktemp("enc") / "carphone.bits"
    result = encode_video(carphone, tiny_model, out, intra_period=2, recon=out.with_suffix(".y4m"))
    return out, result


def test_result_reports_the_file_size_and_verified_rate(encoded, carphone):
    path, result = encoded
    assert result.bytes_written == path.stat().st_size
    assert result.bpp == pytest.approx(path.stat().st_size * 8 / (176 * 144 * len(carphone)))
    assert result.bits.intra + result.bits.motion + result.bits.residual + result.bits.container == 8 * result.bytes_written
    assert result.bits.intra > 0 and result.bits.motion > 0 and result.bits.residual > 0
    assert result.verified


def test_frame_types_follow_the_intra_period(encoded):
    header, frames = unpack(encoded[0].read_bytes())
    assert [f.frame_type for f in frames] == [0, 1, 0, 1]
    assert header.intra_period == 2


def test_decoder_writes_the_encoders_reconstruction_byte_for_byte(encoded, tiny_checkpoint, tmp_path):
    path, _ = encoded
    decode_file(path, tmp_path / "dec.y4m", model=str(tiny_checkpoint))
    assert (tmp_path / "dec.y4m").read_bytes() == path.with_suffix(".y4m").read_bytes()


def test_same_input_and_model_give_identical_bytes(encoded, carphone, tiny_model, tmp_path):
    again = tmp_path / "again.bits"
    encode_video(carphone, tiny_model, again, intra_period=2)
    assert again.read_bytes() == encoded[0].read_bytes()


@pytest.mark.parametrize("kind", ["y4m", "yuv", "png"])
def test_every_input_kind_round_trips_at_odd_sizes(tmp_path, carphone, tiny_model, tiny_checkpoint, kind):
    planes = crop_planes(carphone, 100, 60)[:3]
    if kind == "y4m":
        source = write_y4m_planes(tmp_path / "c.y4m", planes)
    elif kind == "yuv":
        source = write_raw_yuv(tmp_path / "c_100x60.yuv", planes)
    else:
        source = tmp_path / "frames"
        write_reconstruction(source, [read_video(write_y4m_planes(tmp_path / "p.y4m", planes)).frame_rgb(i)
                                      for i in range(3)], 30)
    video = read_video(source)
    recon = tmp_path / ("rec" if kind == "png" else "rec.y4m")
    result = encode_video(video, tiny_model, tmp_path / "c.bits", intra_period=0, recon=recon)
    assert (result.width, result.height, result.frames) == (100, 60, 3)
    decoded = tmp_path / ("dec" if kind == "png" else "dec.y4m")
    decode_file(tmp_path / "c.bits", decoded, model=str(tiny_checkpoint))
    if kind == "png":
        names = sorted(p.name for p in recon.iterdir())
        assert names == sorted(p.name for p in decoded.iterdir()) and len(names) == 3
        assert all((recon / n).read_bytes() == (decoded / n).read_bytes() for n in names)
    else:
        assert decoded.read_bytes() == recon.read_bytes()


# ------------------------------------------------------------------------------------------- damage

def _decode_error(data: bytes, tmp_path: Path, model: Path) -> str:
    path = tmp_path / "damaged.bits"
    path.write_bytes(data)
    with pytest.raises(BitstreamError) as info:
        decode_file(path, tmp_path / "out.y4m", model=str(model))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert not (tmp_path / "out.y4m").exists()
    return message


def test_flipped_byte_in_a_frame_is_a_crc_error(encoded, tiny_checkpoint, tmp_path):
    data = bytearray(encoded[0].read_bytes())
    data[-6] ^= 0x10
    assert "corrupted (CRC32 mismatch)" in _decode_error(bytes(data), tmp_path, tiny_checkpoint)


def test_flipped_byte_in_the_header_is_a_crc_error(encoded, tiny_checkpoint, tmp_path):
    data = bytearray(encoded[0].read_bytes())
    data[20] ^= 0x01
    assert "header is corrupted" in _decode_error(bytes(data), tmp_path, tiny_checkpoint)


@pytest.mark.parametrize("keep", [6, 40, -1, -9])
def test_truncated_file(encoded, tiny_checkpoint, tmp_path, keep):
    data = encoded[0].read_bytes()
    assert "truncated" in _decode_error(data[:keep], tmp_path, tiny_checkpoint)


def test_shorter_than_the_magic(encoded, tiny_checkpoint, tmp_path):
    assert "not an adaptjobs bitstream" in _decode_error(encoded[0].read_bytes()[:3], tmp_path, tiny_checkpoint)


def test_wrong_magic_and_unknown_version(encoded, tiny_checkpoint, tmp_path):
    data = encoded[0].read_bytes()
    assert "not an adaptjobs bitstream" in _decode_error(b"RIFF" + data[4:], tmp_path, tiny_checkpoint)
    assert "version 9 is not supported" in _decode_error(MAGIC + struct.pack("<B", 9) + data[5:], tmp_path, tiny_checkpoint)


def test_trailing_bytes(encoded, tiny_checkpoint, tmp_path):
    assert "unexpected bytes" in _decode_error(encoded[0].read_bytes() + b"\0\0", tmp_path, tiny_checkpoint)


def test_bitstream_from_a_different_model(encoded, other_checkpoint, tmp_path):
    message = _decode_error(encoded[0].read_bytes(), tmp_path, other_checkpoint)
    assert "was encoded with model tiny-test" in message and "sha256" in message


def test_missing_model_for_decode(encoded, tmp_path):
    with pytest.raises(ModelError, match="tiny-test"):
        decode_file(encoded[0], tmp_path / "x.y4m")


def test_decoder_is_independent_of_encoder_state(encoded, tiny_checkpoint, tmp_path):
    """Decoding twice from a fresh model load gives the same frames."""
    from workers.checkpoints import load_checkpoint
    from workers.encode_job import checked_model
    from workers.video_codec import decode_sequence

    data = encoded[0].read_bytes()
    runs = [decode_sequence(data, lambda h: checked_model(load_checkpoint(tiny_checkpoint), h, None))[1] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
