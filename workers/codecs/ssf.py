"""The scale-space-flow (SSF) neural codec as a base codec (workers/codec/ holds the network and its coding).

Quality is the model family's quality index (one checkpoint per index); the stream is an adaptjobs
bitstream (``.bits``, workers/bitstream.py) bound to the exact weights by their sha256, and a decoder-side
method's weight payload travels beside it (``.payload``, bound by its sha256 in the stream header).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import torch

from schemas.bitstream import BitstreamHeader
from schemas.codec import PADDING_MODES
from schemas.job import CodecPoint, CodecRun, ModelRef, quality_key
from workers.checkpoints import LoadedModel
from workers.codecs.base import BaseCodec, Encoded, register_codec
from workers.errors import InputError, ModelError


@register_codec
class SSFCodec(BaseCodec):
    name: ClassVar[str] = "ssf"
    suffix: ClassVar[str] = ".bits"
    quality_name: ClassVar[str] = "quality index"
    primary_metric: ClassVar[str] = "psnr-rgb"
    takes_model: ClassVar[bool] = True

    def __init__(self, loaded: LoadedModel, padding: str = "adaptjobs"):
        if padding not in PADDING_MODES:
            raise InputError(None, f"codec ssf: padding must be one of {', '.join(PADDING_MODES)}, got {padding!r}")
        self.loaded = loaded
        self.padding = padding
        self.quality = loaded.metadata.quality
        self.model_id = loaded.metadata.model_id
        self.weights_sha256 = loaded.metadata.weights_sha256

    def place(self, device) -> "SSFCodec":
        """Move the model's transforms (and training) to ``device``; parsing stays on the CPU whatever the
        device (workers/device.py), so streams coded here parse anywhere."""
        from workers.device import place_model

        place_model(self.loaded.model, device)
        return self

    # ---------------------------------------------------------------- opening
    @classmethod
    def resolve(cls, model: str | None, qualities: Sequence[int | float] | None, settings: dict[str, str]) -> CodecRun:
        """Every quality of a family (or the asked ones), or one checkpoint; records each one's weights hash."""
        settings = checked_settings(settings)
        bad = [q for q in qualities or () if q != int(q)]
        if bad:
            raise InputError(None, f"SSF quality indices are integers, got {bad}")
        ref, chosen = model_reference(model, None if qualities is None else [int(q) for q in qualities])
        return CodecRun(codec=cls.name, qualities=chosen, model=ref, methods=("none",), settings=settings,
                        primary_metric=cls.primary_metric)

    @classmethod
    def single_point(cls, model: str | None, quality: int | float | None, settings: dict[str, str]) -> CodecPoint:
        from workers.model_store import default_model_name, resolve_model

        settings = checked_settings(settings)
        spec = model or default_model_name()
        base = resolve_model(spec, None if quality is None else int(quality))
        return CodecPoint(codec=cls.name, quality=base.metadata.quality, model_spec=str(spec),
                          weights_sha256=base.metadata.weights_sha256, settings=settings)

    @classmethod
    def load(cls, point: CodecPoint) -> "SSFCodec":
        from workers.model_store import resolve_model

        base = resolve_model(point.model_spec, int(point.quality))
        if point.weights_sha256 is not None and base.metadata.weights_sha256 != point.weights_sha256:
            raise ModelError(point.model_spec, f"quality {point.quality:g} now has weights sha256 "
                                               f"{base.metadata.weights_sha256[:12]}, but the run was submitted with "
                                               f"{point.weights_sha256[:12]}")
        return cls(base, checked_settings(point.settings).get("padding", "adaptjobs"))

    @classmethod
    def for_stream(cls, data: bytes, source: str | Path | None, model: str | None) -> "SSFCodec":
        """``model`` (the user's --model) at the header's quality, else the installed checkpoint whose weights
        hash the header names (model_store.resolve_for_stream): a header never names a path that gets opened."""
        from workers.bitstream import unpack_header
        from workers.model_store import resolve_for_stream

        header, _ = unpack_header(data, source)
        return cls(resolve_for_stream(model, header, source), header.padding or "adaptjobs")

    # ---------------------------------------------------------------- coding
    @property
    def lmbda(self) -> float:
        from workers.rd_loss import lambda_for_quality

        metadata = self.loaded.metadata
        return metadata.lmbda if metadata.lmbda is not None else lambda_for_quality(metadata.quality)

    def header(self, video, intra_period: int, method: str = "none", payload: bytes | None = None) -> BitstreamHeader:
        import hashlib

        metadata = self.loaded.metadata
        return BitstreamHeader(model_id=metadata.model_id, weights_sha256=metadata.weights_sha256,
                               quality=metadata.quality, width=video.width, height=video.height,
                               frame_count=len(video), fps_num=video.fps.numerator, fps_den=video.fps.denominator,
                               intra_period=intra_period, method=method,
                               payload_sha256=None if payload is None else hashlib.sha256(payload).hexdigest(),
                               padding=None if self.padding == "adaptjobs" else self.padding)

    def encode(self, video, intra_period: int, **options: Any) -> Encoded:
        """Options: ``method`` and ``payload`` (recorded in the header: the stream needs that payload),
        ``model`` (the adapted model whose decoder the payload rebuilds; default the base model) and
        ``intra_encoder`` / ``inter_encoder`` (encoder-side adaptation, see workers.video_codec.encode_sequence)."""
        from workers.video_codec import encode_sequence

        unknown = set(options) - {"method", "payload", "model", "intra_encoder", "inter_encoder"}
        if unknown:
            raise TypeError(f"SSFCodec.encode: unknown options {sorted(unknown)}")
        adapted = options.get("intra_encoder") is not None or options.get("inter_encoder") is not None
        if self.padding != "adaptjobs" and adapted:
            raise InputError(video.path, f"padding {self.padding} is not supported with encoder-side adaptation "
                                         "(its training pads frames the adaptjobs way); use the default padding")
        model = options.get("model") or self.loaded.model
        header = self.header(video, intra_period, options.get("method", "none"), options.get("payload"))
        encoded = encode_sequence(model, model.entropy_tables(), video.frames_rgb(), header,
                                  intra_encoder=options.get("intra_encoder"),
                                  inter_encoder=options.get("inter_encoder"))
        return Encoded(encoded.data, encoded.reconstruction, encoded.bits)

    def decode(self, data: bytes, source: str | Path | None = None, payload: bytes | None = None,
               payload_source: str | Path | None = None) -> list[torch.Tensor]:
        from workers.decoder import decode_ssf

        return decode_ssf(data, self.loaded, payload, source, payload_source)[1]

    def stream_info(self, data: bytes, source: str | Path | None = None) -> dict:
        from workers.bitstream import unpack_header

        header, _ = unpack_header(data, source)
        return {"codec": self.name, "frames": header.frame_count, **header.model_dump(mode="json")}

    # ---------------------------------------------------------------- frames and measures
    def rgb(self, frames: list) -> Sequence:
        return frames

    def yuv(self, frames: list) -> Sequence:
        return _Converted(frames)

    def distortion(self, video, frames: list) -> float:
        from workers.metrics import mean_mse_rgb
        from workers.video_io import SourceFrames

        return mean_mse_rgb(SourceFrames(video), frames)

    def same(self, a: list, b: list) -> bool:
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))

    def write_reconstruction(self, path: str | Path, frames: list, fps: Fraction) -> None:
        from workers.video_io import write_reconstruction

        write_reconstruction(path, frames, fps)


SETTINGS = {"padding": "how frames are padded: adaptjobs (default; replicate to x16, latents to x8) or compressai "
                       "(zeros, centred, to x128: what CompressAI's video eval runs)"}


def checked_settings(settings: dict[str, str]) -> dict[str, str]:
    """The SSF codec settings, checked: only ``padding``, with a known mode; the default mode is dropped so
    that a run spec (and its units) look as they did before the setting existed."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise InputError(None, f"codec ssf takes the setting padding only (got {', '.join(unknown)}); use --model for "
                               "the weights")
    padding = settings.get("padding", "adaptjobs")
    if padding not in PADDING_MODES:
        raise InputError(None, f"codec ssf: padding must be one of {', '.join(PADDING_MODES)}, got {padding!r}")
    return {} if padding == "adaptjobs" else {"padding": padding}


class _Converted(Sequence):
    """RGB frames seen as 8-bit 4:2:0 planes (BT.709, converted on access)."""

    def __init__(self, frames: list[torch.Tensor]):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index):
        from workers.colour import rgb_to_yuv420

        return rgb_to_yuv420(self.frames[index])


def model_reference(model: str | None, qualities: list[int] | None) -> tuple[ModelRef, tuple[int, ...]]:
    """Resolve the SSF model: every quality of a family (or the asked ones), or one checkpoint."""
    from workers.model_store import SHIPPED_MODELS_DIR, default_model_name, family_qualities, resolve_model

    spec = model or default_model_name()
    if spec is None:
        raise InputError(None, "no base model given and none ships with this installation; pass --model")
    path = Path(spec)
    if not path.exists() and (SHIPPED_MODELS_DIR / spec).is_dir():
        path = SHIPPED_MODELS_DIR / spec
    if path.is_dir():
        available = family_qualities(path)
        chosen = sorted(qualities) if qualities else sorted(available)
        missing = [q for q in chosen if q not in available]
        if missing:
            raise InputError(path, f"has no quality {missing} (available: {sorted(available)})")
        loaded = {q: resolve_model(str(path), q) for q in chosen}
        stored = spec if not Path(spec).exists() else str(path.resolve())
    else:
        single = resolve_model(spec, None)
        chosen = sorted(qualities) if qualities else [single.metadata.quality]
        if chosen != [single.metadata.quality]:
            raise InputError(spec, f"is a single quality-{single.metadata.quality} checkpoint; --qualities {chosen} "
                                   "needs a model family folder")
        loaded = {single.metadata.quality: single}
        stored = str(Path(spec).resolve())
    ids = {m.metadata.model_id for m in loaded.values()}
    ref = ModelRef(spec=stored, model_id=sorted(ids)[0],
                   weights_sha256={quality_key(q): m.metadata.weights_sha256 for q, m in loaded.items()})
    return ref, tuple(chosen)
