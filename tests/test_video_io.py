"""Every input kind reads the same frames; bad inputs give their own one-line error."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from tests.conftest import crop_planes, write_raw_yuv, write_y4m_planes
from workers.colour import rgb_to_yuv420, yuv420_to_rgb
from workers.errors import InputError
from workers.video_io import png_bytes, read_video, write_reconstruction, y4m_bytes, yuv420_frame


def _planes_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_container_reads_frames_size_fps_and_format(carphone):
    assert (carphone.width, carphone.height, len(carphone)) == (176, 144, 4)
    assert carphone.fps == Fraction(30000, 1001)
    assert carphone.source_format == "yuv420p"
    rgb = carphone.frame_rgb(0)
    assert rgb.shape == (3, 144, 176) and rgb.dtype == torch.float32
    assert 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0


def test_frame_limit(carphone_path):
    assert len(read_video(carphone_path, max_frames=2)) == 2


@pytest.mark.parametrize("size", [(176, 144), (100, 60)])
def test_y4m_and_raw_yuv_give_the_source_planes(tmp_path, carphone, size):
    planes = crop_planes(carphone, *size)
    y4m = read_video(write_y4m_planes(tmp_path / "clip.y4m", planes, fps=(25, 1)))
    raw = read_video(write_raw_yuv(tmp_path / f"clip_{size[0]}x{size[1]}_25fps.yuv", planes))
    for video in (y4m, raw):
        assert (video.width, video.height, len(video)) == (*size, len(planes))
        assert video.fps == 25
        assert all(_planes_equal(video.yuv[i], planes[i]) for i in range(len(planes)))


def test_raw_yuv_fps_after_size_and_default(tmp_path, carphone):
    planes = crop_planes(carphone, 176, 144)[:1]
    assert read_video(write_raw_yuv(tmp_path / "a_176x144_50.yuv", planes)).fps == 50
    assert read_video(write_raw_yuv(tmp_path / "a_176x144_5f.yuv", planes)).fps == 30


def test_png_folder_gives_the_written_rgb(tmp_path, carphone):
    frames = [carphone.frame_rgb(i)[:, :60, :100] for i in range(3)]
    write_reconstruction(tmp_path / "pngs", frames, carphone.fps)
    video = read_video(tmp_path / "pngs")
    assert (video.width, video.height, len(video), video.source_format) == (100, 60, 3, "png")
    for i, frame in enumerate(frames):
        expected = torch.round(frame * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(video.rgb[i], expected)


def test_h264_elementary_stream_and_mkv(tmp_path, carphone):
    """Containers and raw Annex-B streams made with PyAV's own encoders read back with the right size."""
    for name, fmt, codec in (("clip.h264", "h264", "libx264"), ("clip.mkv", "matroska", "ffv1")):
        path = tmp_path / name
        with av.open(str(path), "w", format=fmt) as out:
            stream = out.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt = 176, 144, "yuv420p"
            for y, u, v in carphone.yuv:
                frame = av.VideoFrame.from_ndarray(np.concatenate([y, u.reshape(-1, 176), v.reshape(-1, 176)]),
                                                   format="yuv420p")
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        video = read_video(path)
        assert (video.width, video.height, len(video)) == (176, 144, len(carphone))
        if codec == "ffv1":  # lossless: the exact planes come back
            assert all(_planes_equal(video.yuv[i], carphone.yuv[i]) for i in range(len(carphone)))


def test_container_with_odd_chroma_height(tmp_path, carphone):
    """H/2 odd (e.g. 480x270): chroma planes have ceil(H/2) rows; read plane by plane, not packed."""
    planes = crop_planes(carphone, 176, 134)
    path = tmp_path / "odd_chroma.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 176, 134, "yuv420p"
        for y, u, v in planes:
            out.mux(stream.encode(yuv420_frame(y, u, v)))
        out.mux(stream.encode(None))
    video = read_video(path)
    assert video.yuv[0][1].shape == (67, 88)
    assert all(_planes_equal(video.yuv[i], planes[i]) for i in range(len(planes)))


def test_y4m_writer_is_read_back_exactly(tmp_path, carphone):
    frames = [carphone.frame_rgb(i) for i in range(2)]
    path = tmp_path / "rec.y4m"
    path.write_bytes(y4m_bytes(frames, carphone.fps))
    video = read_video(path)
    assert video.fps == carphone.fps
    for i, frame in enumerate(frames):
        assert _planes_equal(video.yuv[i], rgb_to_yuv420(frame))


def test_colour_conversion_round_trip_is_close(carphone):
    y, u, v = carphone.yuv[0]
    again = rgb_to_yuv420(yuv420_to_rgb(y, u, v))
    assert np.abs(again[0].astype(int) - y.astype(int)).mean() < 1.0


def test_png_bytes_are_deterministic(carphone):
    assert png_bytes(carphone.frame_rgb(0)) == png_bytes(carphone.frame_rgb(0))


# ------------------------------------------------------------------------------------------ bad input

def _error(path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        read_video(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "nope.mp4")


def test_non_video_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    assert "not a video PyAV can open" in _error(path)


def test_zero_frames(tmp_path):
    empty_y4m = tmp_path / "empty.y4m"
    empty_y4m.write_bytes(b"YUV4MPEG2 W176 H144 F25:1 Ip A1:1 C420jpeg\n")
    assert "no frames" in _error(empty_y4m)
    empty_raw = tmp_path / "x_176x144.yuv"
    empty_raw.write_bytes(b"")
    assert "no frames" in _error(empty_raw)


def test_raw_length_mismatch(tmp_path, carphone):
    path = write_raw_yuv(tmp_path / "c_176x144.yuv", crop_planes(carphone, 176, 144)[:2])
    with open(path, "ab") as handle:
        handle.write(b"\0" * 100)
    assert "not a whole number" in _error(path)


def test_raw_without_size(tmp_path):
    path = tmp_path / "clip.yuv"
    path.write_bytes(b"\0" * 1000)
    assert "size in the file name" in _error(path)


def test_odd_and_tiny_sizes(tmp_path, carphone):
    odd = tmp_path / "odd_101x60.yuv"
    odd.write_bytes(b"\0" * (101 * 60 * 3 // 2))
    assert "odd side" in _error(odd)
    tiny = write_y4m_planes(tmp_path / "tiny.y4m", crop_planes(carphone, 8, 8))
    assert "too small" in _error(tiny)


def test_empty_png_folder_and_bad_png(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    assert "no .png frames" in _error(folder)
    (folder / "001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="001.png: not a readable PNG"):
        read_video(folder)


def test_frames_flag_must_be_positive(carphone_path):
    assert "--frames" in _error(carphone_path, max_frames=0)
