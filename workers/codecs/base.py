"""What a base codec offers the rest of the system, and the registry of base codecs by name.

A base codec is bound to one quality point (its own kind of quality: the SSF quality index, the x264/x265
CRF) and codes a whole video into stream bytes plus the exact reconstruction a decoder will produce.
Methods (workers/methods/) adapt around it; the unit loop (workers/encoder.py), the decoder
(workers/decoder.py), `adaptjobs encode/decode` and the run driver only talk to this interface.

    driver (submit):  cls.resolve(model, qualities, settings) -> CodecRun     what JobSpec records
    worker:           cls.load(CodecPoint) -> codec                           one quality point, checked
                      codec.encode(video, intra_period, **options) -> Encoded  bytes + reconstruction
                      codec.distortion / codec.metrics / codec.lmbda           RD cost and results
    decoder:          cls.for_stream(data, source, model) -> codec             the codec a stream needs
                      codec.decode(data, source, payload, payload_source) -> frames

Frames are in the codec's own representation (SSF: RGB float tensors (3, H, W) in [0, 1]; standard
codecs: 8-bit 4:2:0 planes); ``rgb()`` and ``yuv()`` give both views, so metrics never convert twice and a
standard codec's planes never go through RGB on their way to a .y4m.

Codec names are assigned by hand (the ``name`` class attribute) and are what run folders and results
record: never derived from registration order.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

from schemas.job import CodecPoint, CodecRun
from schemas.results import FrameTypeBits
from workers.errors import InputError


@dataclass
class Encoded:
    """A coded video: the stream bytes, the decoder's reconstruction (codec frames), bits per kind of data
    (None where the codec does not break them down), and per frame whether it is an intra picture (None where
    the codec does not say: the standard codecs do, for the post-filter's per-frame-type conditioning)."""

    data: bytes
    reconstruction: list
    bits: FrameTypeBits | None = None
    intra: list[bool] | None = None


class BaseCodec(ABC):
    """One quality point of a base codec (see the module docstring)."""

    name: ClassVar[str]                 # hand-assigned, recorded in runs and results: "ssf", "x264", ...
    suffix: ClassVar[str]               # file suffix of its streams: ".bits", ".h264", ".hevc"
    quality_name: ClassVar[str]         # what its quality is, for help texts: "quality index", "CRF"
    primary_metric: ClassVar[str]       # the report's default metric for its units: "psnr-rgb" or "psnr-yuv"
    takes_model: ClassVar[bool] = False  # whether `--model` names its model (SSF); others use --codec-set

    quality: int | float
    model_id: str
    weights_sha256: str | None

    # ---------------------------------------------------------------- opening
    @classmethod
    @abstractmethod
    def resolve(cls, model: str | None, qualities: Sequence[int | float] | None, settings: dict[str, str]) -> CodecRun:
        """Driver side: check the asked quality points (default: the codec's) and record what fixes the results
        (weights hashes, settings) for JobSpec. Raises InputError."""

    @classmethod
    @abstractmethod
    def single_point(cls, model: str | None, quality: int | float | None, settings: dict[str, str]) -> CodecPoint:
        """One quality point for `adaptjobs encode/adapt` (``quality`` None: the codec's default one)."""

    @classmethod
    @abstractmethod
    def load(cls, point: CodecPoint) -> "BaseCodec":
        """Worker side: open one quality point; refuse weights that are not the ones the run recorded."""

    @classmethod
    @abstractmethod
    def for_stream(cls, data: bytes, source: str | Path | None, model: str | None) -> "BaseCodec":
        """Decoder side: the codec (and model) that decodes ``data`` (``model``: the user's override)."""

    # ---------------------------------------------------------------- coding
    @property
    @abstractmethod
    def lmbda(self) -> float:
        """The Lagrange multiplier of this quality point: RD cost = lmbda * 255^2 * distortion() + bpp."""

    @abstractmethod
    def encode(self, video, intra_period: int, **options: Any) -> Encoded:
        """Code ``video``'s frames; ``options`` are codec-specific (SSF: method, payload, model, inter_encoder)."""

    @abstractmethod
    def decode(self, data: bytes, source: str | Path | None = None, payload: bytes | None = None,
               payload_source: str | Path | None = None) -> list:
        """The frames a decoder reconstructs from ``data`` (and the weight payload, for codecs that take one)."""

    @abstractmethod
    def stream_info(self, data: bytes, source: str | Path | None = None) -> dict:
        """What the stream says about itself (JSON-ready; at least frames, width, height)."""

    # ---------------------------------------------------------------- frames and measures
    @abstractmethod
    def rgb(self, frames: list) -> Sequence:
        """The frames as RGB float tensors (3, H, W) in [0, 1] (converted on access where needed)."""

    @abstractmethod
    def yuv(self, frames: list) -> Sequence:
        """The frames as 8-bit 4:2:0 planes (Y, U, V) (converted on access where needed)."""

    @abstractmethod
    def distortion(self, video, frames: list) -> float:
        """The D of the RD cost, in [0, 1]^2 units (SSF: RGB MSE; standard codecs: (6 Y + U + V) / 8 MSE)."""

    @abstractmethod
    def same(self, a: list, b: list) -> bool:
        """Bit-exact equality of two reconstructions."""

    def metrics(self, video, frames: list) -> dict[str, float]:
        """Every reported metric of ``frames`` against the first len(frames) frames of ``video``."""
        from workers.metrics import sequence_metrics
        from workers.video_io import SourceFrames

        return sequence_metrics(SourceFrames(video), _VideoPlanes(video), self.rgb(frames), self.yuv(frames))

    @abstractmethod
    def write_reconstruction(self, path: str | Path, frames: list, fps: Fraction) -> None:
        """Write frames as .y4m (or a folder of PNGs), atomically."""

    def place(self, device) -> "BaseCodec":
        """Run the codec's tensors on ``device`` (a torch.device, workers/device.py); returns self. Default:
        nothing moves (x264/x265 and their post-filter code on the CPU); SSF moves its model."""
        return self

    def describe(self) -> str:
        """'ssf-compact q3', 'x264 medium crf32': for messages."""
        return f"{self.model_id} {'q' if self.quality_name == 'quality index' else 'crf'}{self.quality:g}"


class _VideoPlanes(Sequence):
    """A video's 8-bit planes by frame index (no copy)."""

    def __init__(self, video):
        self.video = video

    def __len__(self) -> int:
        return len(self.video)

    def __getitem__(self, index):
        return self.video.frame_yuv420(index)


CODECS: dict[str, type[BaseCodec]] = {}


def register_codec(cls: type[BaseCodec]) -> type[BaseCodec]:
    """Class decorator: register a base codec under its hand-assigned ``name``; suffixes must be unique."""
    if cls.name in CODECS and CODECS[cls.name] is not cls:
        raise ValueError(f"codec {cls.name!r} is registered twice")
    clash = [other.name for other in CODECS.values() if other.suffix == cls.suffix and other is not cls]
    if clash:
        raise ValueError(f"codec {cls.name!r} uses suffix {cls.suffix}, already used by {clash[0]}")
    CODECS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every codec module of this package (each registers itself)."""
    package = importlib.import_module("workers.codecs")
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"workers.codecs.{module.name}")


def codec_names() -> list[str]:
    _discover()
    return sorted(CODECS, key=lambda name: (name != "ssf", name))


def codec_class(name: str) -> type[BaseCodec]:
    _discover()
    if name not in CODECS:
        raise InputError(None, f"unknown codec {name!r} (known: {', '.join(codec_names())})")
    return CODECS[name]


def codec_for_path(path: Path) -> type[BaseCodec]:
    """The codec whose streams end in ``path``'s suffix."""
    _discover()
    for cls in CODECS.values():
        if path.suffix == cls.suffix:
            return cls
    known = ", ".join(f"{c.suffix} ({c.name})" for c in CODECS.values())
    raise InputError(path, f"is not a stream of a known codec (suffixes: {known})")


def stream_suffixes() -> tuple[str, ...]:
    _discover()
    return tuple(cls.suffix for cls in CODECS.values())


def load_codec(point: CodecPoint) -> BaseCodec:
    return codec_class(point.codec).load(point)
