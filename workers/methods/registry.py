"""The behaviour side of the method registry (CompressAI's ``@register_model`` pattern).

A method is one module in this package defining a :class:`Method` subclass decorated with
:func:`register_method`. Its config is the pydantic class registered under the same name in
schemas/methods/ (the schema side; JobSpec and the CLI take their unions and choices from there). A
method says which base codecs it applies to, what it tries on the encoder side (:meth:`Method.adapt`:
candidates, each with its stream, payload and distortion) and how a decoder rebuilds the adapted codec
from the base and the payload (:meth:`Method.rebuild`). The unit loop (workers/encoder.py) encodes the
base candidate, asks the method for its candidates, keeps the lowest RD cost, writes and verifies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from schemas.methods import METHOD_CONFIGS
from workers.errors import BitstreamError, InputError

METHODS: dict[str, "Method"] = {}


@dataclass
class Candidate:
    """One way to send the unit: the coded stream, the payload a decoder needs (or None), the distortion
    of its reconstruction (the codec's D) and the decision label it is reported under if chosen."""

    encoded: Any                      # workers.codecs.base.Encoded
    payload: bytes | None
    distortion: float
    label: str = "sent"
    update_bytes_in_stream: int = 0   # of encoded.data: a weight update carried inside the stream (post-filter SEI)

    @property
    def total_bytes(self) -> int:
        return len(self.encoded.data) + len(self.payload or b"")

    def cost(self, lmbda: float, pixels: int) -> float:
        """lambda * 255^2 * D + (stream + payload bits) / pixels."""
        return lmbda * 255.0**2 * self.distortion + 8 * self.total_bytes / pixels


@dataclass
class AdaptContext:
    """What a method gets for one unit: the video, the base codec at its quality point, where to keep its
    resumable state, and the unit log."""

    video: Any                        # workers.video_io.Video
    codec: Any                        # workers.codecs.base.BaseCodec
    intra_period: int
    checkpoint_dir: Path
    config_json: str                  # canonical JSON of what the unit's state depends on (checkpoints check it)
    log: Callable[[dict], None]
    # method name -> (RD cost, payload, Encoded) of the cheapest stream its coded evaluations wrote (coding is
    # deterministic): the final candidate of decoder-lora / full-decoder reuses it (workers/methods/_decoder_update.py)
    streams: dict = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        return self.video.width * self.video.height * len(self.video)

    @property
    def lmbda(self) -> float:
        return self.codec.lmbda

    def candidate(self, encoded, payload: bytes | None, label: str = "sent", update_bytes_in_stream: int = 0) -> Candidate:
        return Candidate(encoded, payload, self.codec.distortion(self.video, encoded.reconstruction), label,
                         update_bytes_in_stream)


@dataclass
class MethodOutcome:
    """A method's candidates, the first being its primary result (reported as the 'adapted' point whether
    or not it is sent), and its training counters."""

    candidates: list[Candidate] = field(default_factory=list)
    steps: int = 0
    resumed: int = 0
    train_seconds: float = 0.0
    details: dict | None = None       # method-specific record for result.json (JSON-ready)


class Method:
    """Base class of a registered method (see the module docstring)."""

    name: ClassVar[str]
    codecs: ClassVar[tuple[str, ...]]   # base codecs it applies to ("*": every codec)

    def applies_to(self, codec: str) -> bool:
        return "*" in self.codecs or codec in self.codecs

    def adapt(self, context: AdaptContext, config) -> MethodOutcome:
        """Encoder side: train what the method trains and return candidates (none: nothing to try)."""
        raise NotImplementedError

    def rebuild(self, base, payload: bytes, source: str | Path | None = None):
        """Decoder side: the adapted model from the base model and this method's payload."""
        raise BitstreamError(source, f"payload method {self.name!r} has no decoder weight update")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method; its config must be registered in schemas/methods/ by the same name."""
    if cls.name not in METHOD_CONFIGS:
        raise ValueError(f"method {cls.name!r} has no config registered in schemas/methods/")
    if cls.name in METHODS and type(METHODS[cls.name]) is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice")
    METHODS[cls.name] = cls()
    return cls


def method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(None, f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]


def parse_method_config(name: str, options: dict | None = None):
    """The validated config of method ``name`` with ``options`` (nested dict); InputError on bad options."""
    from pydantic import ValidationError

    if name not in METHOD_CONFIGS:
        raise InputError(None, f"unknown method {name!r}; choose from {', '.join(METHOD_CONFIGS)}")
    try:
        return METHOD_CONFIGS[name].model_validate({"method": name, **(options or {})})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(None, f"invalid options for method {name}: {where}: {first['msg']}") from None


def check_applies(name: str, codec: str) -> None:
    if not method(name).applies_to(codec):
        raise InputError(None, f"method {name} does not apply to codec {codec} (it applies to "
                               f"{', '.join(method(name).codecs)})")
