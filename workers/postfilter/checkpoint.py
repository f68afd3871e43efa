"""Post-filter checkpoints: safetensors weights plus JSON metadata in the header, hash-checked on load.

A file holds one :class:`~workers.postfilter.network.PostFilter`. Its ``__metadata__`` has one key,
``adaptjobs-postfilter``, with the JSON of :class:`FilterMetadata`: the filter's name, architecture, the
canonical sha256 of its weights (the id a stream's SEI names the filter by) and how it was trained.
Loading refuses, with one line naming the file and the cause (:class:`~workers.errors.ModelError`), a file
that is missing, truncated or not safetensors, that has no metadata of ours, whose weights do not hash to
the recorded value (edited or corrupted), or whose tensors do not fit the recorded architecture.

Shipped filters live in ``workers/models/postfilter/<name>.safetensors``; :func:`shipped_filter` loads one
by name (or the only / first one when no name is given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.atomic import atomic_write_bytes
from workers.checkpoints import weights_sha256
from workers.errors import ModelError
from workers.postfilter.network import FilterArchitecture, PostFilter

METADATA_KEY = "adaptjobs-postfilter"
SHIPPED_FILTERS_DIR = Path(__file__).resolve().parent.parent / "models" / "postfilter"
_MAX_HEADER_BYTES = 1 << 20  # a filter's safetensors header is a few KB; refuse absurd lengths early


class FilterTraining(BaseModel):
    """How the weights were made (shown in the model card). Every field is optional: a random-init
    filter in a test has none of them."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field("random-init", description="'random-init', 'adaptjobs-pretrain-filter', ...")
    data: str | None = Field(None, description="training data: folders, pair counts, codecs and CRFs")
    steps: int | None = Field(None, ge=0)
    wall_time_s: float | None = Field(None, ge=0)
    seed: int | None = None
    config: dict | None = Field(None, description="the training configuration, as JSON")


class FilterMetadata(BaseModel):
    """The safetensors header metadata of a post-filter checkpoint."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field("adaptjobs-postfilter", pattern="^adaptjobs-postfilter$")
    format_version: int = Field(1, ge=1, le=1)
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.+-]+$")
    architecture: dict = Field(description="FilterArchitecture fields")
    weights_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    training: FilterTraining = Field(default_factory=FilterTraining)


@dataclass
class LoadedFilter:
    model: PostFilter
    metadata: FilterMetadata


def filter_weights(model: PostFilter) -> dict[str, torch.Tensor]:
    """The filter's tensors as float32, contiguous, detached (what is stored and hashed)."""
    return {name: t.detach().to("cpu").float().contiguous() for name, t in model.state_dict().items()}


def make_metadata(model: PostFilter, name: str, training: FilterTraining | None = None) -> FilterMetadata:
    return FilterMetadata(name=name, architecture=model.architecture.to_dict(),
                          weights_sha256=weights_sha256(filter_weights(model)), training=training or FilterTraining())


def filter_bytes(model: PostFilter, metadata: FilterMetadata) -> bytes:
    """The safetensors bytes of ``model`` with ``metadata`` (whose hash must be the model's)."""
    from safetensors.torch import save

    weights = filter_weights(model)
    if weights_sha256(weights) != metadata.weights_sha256:
        raise ValueError("metadata.weights_sha256 does not match the filter's weights")
    return save(weights, metadata={METADATA_KEY: metadata.model_dump_json()})


def save_filter(path: str | Path, model: PostFilter, name: str, training: FilterTraining | None = None) -> FilterMetadata:
    """Write ``model`` to ``path`` atomically; returns the metadata written."""
    metadata = make_metadata(model, name, training)
    atomic_write_bytes(path, filter_bytes(model, metadata))
    return metadata


def _read_header(data: bytes, path: Path) -> dict:
    if len(data) < 8:
        raise ModelError(path, f"truncated checkpoint ({len(data)} bytes)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > _MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise ModelError(path, f"truncated or not a safetensors checkpoint (header of {header_len} bytes, file of {len(data)})")
    try:
        return json.loads(data[8: 8 + header_len])
    except (ValueError, UnicodeDecodeError):
        raise ModelError(path, "not a safetensors checkpoint (unreadable header)") from None


def _parse_metadata(header: dict, path: Path) -> tuple[FilterMetadata, FilterArchitecture]:
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY) if isinstance(header, dict) else None
    if raw is None:
        raise ModelError(path, "a safetensors file without post-filter metadata (not an adaptjobs post-filter)")
    try:
        metadata = FilterMetadata.model_validate_json(raw)
        architecture = FilterArchitecture(**metadata.architecture)
    except (ValidationError, TypeError) as exc:
        raise ModelError(path, f"invalid post-filter metadata ({str(exc).splitlines()[0]})") from None
    return metadata, architecture


def _build_model(architecture: FilterArchitecture, weights: dict[str, torch.Tensor], path: Path) -> PostFilter:
    try:
        model = PostFilter(architecture)
    except ValueError as exc:
        raise ModelError(path, f"invalid architecture {architecture} ({exc})") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ModelError(path, f"weights do not fit the architecture {architecture.to_dict()} "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ModelError(path, f"{name} has shape {tuple(tensor.shape)}, the architecture "
                                   f"{architecture.to_dict()} needs {tuple(expected[name].shape)}")
    model.load_state_dict(weights)
    return model.eval()


def load_filter(path: str | Path) -> LoadedFilter:
    """Load a post-filter checkpoint, checking metadata, weight hash and architecture (module docstring)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(path, f"cannot read the post-filter ({exc.strerror})") from None
    header = _read_header(data, path)
    metadata, architecture = _parse_metadata(header, path)
    try:
        weights = {name: tensor.float() for name, tensor in load(data).items()}
    except (SafetensorError, ValueError) as exc:
        raise ModelError(path, f"not a safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    actual = weights_sha256(weights)
    if actual != metadata.weights_sha256:
        raise ModelError(path, f"weights hash {actual[:12]} does not match its metadata {metadata.weights_sha256[:12]} "
                               "(corrupted or edited post-filter)")
    return LoadedFilter(_build_model(architecture, weights, path), metadata)


def shipped_filter_names() -> list[str]:
    if not SHIPPED_FILTERS_DIR.is_dir():
        return []
    return sorted(p.stem for p in SHIPPED_FILTERS_DIR.glob("*.safetensors"))


def shipped_filter(name: str | None = None) -> LoadedFilter:
    """The shipped filter ``name`` (``workers/models/postfilter/<name>.safetensors``); with no name, the
    first one by name (there is one per release)."""
    names = shipped_filter_names()
    if not names:
        raise ModelError(SHIPPED_FILTERS_DIR, "no post-filter ships with this installation")
    if name is None:
        name = names[0]
    if name not in names:
        raise ModelError(SHIPPED_FILTERS_DIR, f"no shipped post-filter {name!r} (shipped: {', '.join(names)})")
    return load_filter(SHIPPED_FILTERS_DIR / f"{name}.safetensors")
