"""Checkpoints of the SSF base codec.

Our format is a safetensors file (one quality) whose ``__metadata__`` holds one key, ``adaptjobs``, with
the JSON of :class:`schemas.CheckpointMetadata`. ``weights_sha256`` is a canonical hash of the weights
(sorted names, dtype, shape, little-endian bytes): it identifies the model in bitstream headers, and a
file whose weights do not hash to it is refused.

CompressAI ``ssf2020`` ``.pth.tar`` files are imported with ``torch.load(weights_only=True)`` (no pickle
code runs); both EntropyBottleneck key generations (``matrices.0`` and ``_matrix0``) are accepted and
the derived CDF buffers are ignored (we rebuild coding tables from the weights). The bottleneck's filters
are part of the architecture, read off the matrices: CompressAI's are (3, 3, 3, 3), ours (3, 3, 3).
tests/fixtures/compressai/ holds the real library's layouts (scripts/make_compressai_fixture.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from schemas.codec import CheckpointMetadata, Provenance, SSFArchitecture
from workers.atomic import atomic_write_bytes
from workers.codec.ssf import ScaleSpaceFlow
from workers.errors import InputError, ModelError, exception_line, one_line, validation_line
from workers.limits import MAX_CHECKPOINT_BYTES, check_regular_file, read_regular_file
from workers.strict_json import StrictJsonError, loads_strict

METADATA_KEY = "adaptjobs"
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20  # names, shapes and offsets of ~200 tensors + our metadata: ~40 KB
# Buffers CompressAI stores that are derived from the parameters (or constants): never loaded.
_DERIVED_SUFFIXES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table", "scale_bound", "target",
                     "likelihood_lower_bound.bound", "lower_bound_scale.bound")
_OLD_EB_NAME = re.compile(r"entropy_bottleneck\._(matrix|bias|factor)(\d+)$")


@dataclass
class LoadedModel:
    model: ScaleSpaceFlow
    metadata: CheckpointMetadata
    source: str


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """Canonical sha256 of a state dict: independent of file layout and of key order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}".encode() + b"\0")
        digest.update(tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def model_weights(model: ScaleSpaceFlow) -> dict[str, torch.Tensor]:
    """The persistent tensors of a model (parameters only: every buffer is derived)."""
    return {name: tensor.detach().float().contiguous() for name, tensor in model.state_dict().items()}


def round_weights(model: ScaleSpaceFlow, storage_dtype: str) -> None:
    """Round the model's weights in place to what ``storage_dtype`` ("float32" or "float16") can hold,
    so that the weights the model runs with are exactly the stored ones."""
    if storage_dtype == "float32":
        return
    if storage_dtype != "float16":
        raise ValueError(f"unsupported storage dtype {storage_dtype!r}")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def make_metadata(model: ScaleSpaceFlow, model_id: str, quality: int, lmbda: float | None,
                  provenance: Provenance) -> CheckpointMetadata:
    return CheckpointMetadata(model_id=model_id, architecture=model.architecture, quality=quality, lmbda=lmbda,
                              provenance=provenance, weights_sha256=weights_sha256(model_weights(model)))


def checkpoint_bytes(model: ScaleSpaceFlow, metadata: CheckpointMetadata, storage_dtype: str = "float32") -> bytes:
    """safetensors bytes of the weights, stored as ``storage_dtype`` (float16 halves the size; the
    weights must already be rounded with :func:`round_weights`, which the hash check enforces)."""
    from safetensors.torch import save

    weights = model_weights(model)
    if weights_sha256(weights) != metadata.weights_sha256:
        raise ValueError("metadata.weights_sha256 does not match the model's weights")
    if storage_dtype == "float16":
        stored = {k: v.half() for k, v in weights.items()}
        if weights_sha256({k: v.float() for k, v in stored.items()}) != metadata.weights_sha256:
            raise ValueError("weights are not representable in float16: call round_weights first")
        weights = stored
    return save(weights, metadata={METADATA_KEY: metadata.model_dump_json()})


def save_checkpoint(path: str | Path, model: ScaleSpaceFlow, metadata: CheckpointMetadata,
                    storage_dtype: str = "float32") -> None:
    atomic_write_bytes(path, checkpoint_bytes(model, metadata, storage_dtype))


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return read_regular_file(path, what, MAX_CHECKPOINT_BYTES)
    except InputError as exc:
        raise ModelError(path, exc.cause) from None


def _metadata_from_header(header_bytes: bytes, path: Path) -> CheckpointMetadata:
    """Our metadata from a safetensors JSON header (strict JSON; the metadata value is strict JSON too)."""
    try:
        header = loads_strict(header_bytes)
        raw_metadata = (header.get("__metadata__") or {}).get(METADATA_KEY) if isinstance(header, dict) else None
    except (StrictJsonError, AttributeError) as exc:
        raise ModelError(path, f"not a safetensors checkpoint (header: {exception_line(exc)})") from None
    if raw_metadata is None:
        raise ModelError(path, "a safetensors file without adaptjobs metadata (not an adaptjobs checkpoint)")
    try:
        return CheckpointMetadata.model_validate(loads_strict(raw_metadata))
    except (StrictJsonError, TypeError) as exc:
        raise ModelError(path, f"invalid checkpoint metadata ({exception_line(exc)})") from None
    except ValidationError as exc:
        raise ModelError(path, f"invalid checkpoint metadata ({validation_line(exc)})") from None


def _header_length(prefix: bytes, size: int, path: Path) -> int:
    if len(prefix) < 8:
        raise ModelError(path, f"not a safetensors checkpoint ({len(prefix)} bytes, shorter than its header length)")
    length = int.from_bytes(prefix[:8], "little")
    if length > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
        raise ModelError(path, f"not a safetensors checkpoint (header length {length} does not fit)")
    return length


def read_checkpoint_metadata(path: str | Path) -> CheckpointMetadata:
    """The metadata of one of our checkpoints, reading only its header (no weights loaded or hashed):
    cheap enough to scan a model folder for the weights hash a bitstream names. A match must still be
    loaded with :func:`load_checkpoint`, which checks the weights against the hash."""
    path = Path(path)
    try:
        check_regular_file(path, "checkpoint")
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            length = _header_length(handle.read(8), size, path)
            header_bytes = handle.read(length)
    except InputError as exc:
        raise ModelError(path, exc.cause) from None
    except OSError as exc:
        raise ModelError(path, f"cannot read the checkpoint ({exc.strerror})") from None
    return _metadata_from_header(header_bytes, path)


def load_checkpoint(path: str | Path) -> LoadedModel:
    """Load one of our safetensors checkpoints, checking its metadata and weight hash."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    data = _read_bytes(path, "checkpoint")
    header_len = _header_length(data[:8], len(data), path)
    metadata = _metadata_from_header(data[8: 8 + header_len], path)
    try:
        weights = {name: tensor.float() for name, tensor in load(data).items()}
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(path, f"not a safetensors checkpoint ({exception_line(exc, 200)})") from None
    actual = weights_sha256(weights)
    if actual != metadata.weights_sha256:
        raise ModelError(path, f"weights hash {actual[:12]} does not match its metadata {metadata.weights_sha256[:12]} "
                               "(corrupted or edited checkpoint)")
    model = ScaleSpaceFlow(metadata.architecture)
    _load_state(model, weights, path)
    return LoadedModel(model.eval(), metadata, str(path))


def _load_state(model: ScaleSpaceFlow, weights: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ModelError(path, f"weights do not fit the SSF architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ModelError(path, f"{name} has shape {tuple(tensor.shape)}, the architecture needs {tuple(expected[name].shape)}")
    model.load_state_dict(weights)


def _canonical_compressai_name(name: str) -> str:
    name = name.removeprefix("module.")
    match = _OLD_EB_NAME.search(name)
    if match:
        plural = {"matrix": "matrices", "bias": "biases", "factor": "factors"}[match.group(1)]
        name = name[: match.start()] + f"entropy_bottleneck.{plural}.{match.group(2)}"
    return name


def _torch_load_reason(exc: Exception) -> str:
    """One line for a torch.load failure. torch's weights_only refusal is a paragraph that advises re-running
    with ``weights_only=False``, which would run the file's pickle code: keep only the unpickler's finding."""
    message = str(exc)
    if "Weights only load failed" not in message:
        return exception_line(exc, 200)
    finding = next((line.strip() for line in message.splitlines() if "Unpickler error" in line), "")
    finding = finding.split("Unpickler error:", 1)[-1].strip().split(". ")[0] or "not a tensor-only file"
    return f"refused: it needs more than tensors to load ({one_line(finding, 160)}); nothing in it was run"


_COMPRESSAI_NAME = re.compile(r"ssf2020-(mse|ms-ssim)-(\d+)(?=[-.])")
_FIRST_BOTTLENECK = "img_hyperprior.entropy_bottleneck"


@dataclass
class CompressAIStateDict:
    """What a CompressAI ``ssf2020`` checkpoint holds, read without building a model (`adaptjobs info`).

    ``weights``: tensors under our (current CompressAI) names, float32, derived buffers dropped;
    ``key_generation``: "current" (``entropy_bottleneck.matrices.0``) or "old" (``_matrix0``, renamed by
    CompressAI's own ``remap_old_keys`` on load); ``metric``: "mse" / "ms-ssim" from the file name, or None.
    """

    weights: dict[str, torch.Tensor]
    architecture: SSFArchitecture
    quality: int | None
    metric: str | None
    key_generation: str
    ignored: list[str]

    def summary(self) -> dict:
        return {"format": "compressai ssf2020 state dict (imported in memory, not an adaptjobs checkpoint)",
                "architecture": self.architecture.model_dump(mode="json"), "quality": self.quality,
                "metric": self.metric, "key_generation": self.key_generation,
                "parameters": sum(t.numel() for t in self.weights.values()),
                "tensors": len(self.weights), "derived_buffers_ignored": len(self.ignored),
                "bottleneck_filters": list(self.architecture.bottleneck_filters)}


def _raw_state_dict(path: Path) -> dict[str, torch.Tensor]:
    data = _read_bytes(path, "checkpoint")
    if not data:
        raise ModelError(path, "the checkpoint is empty (0 bytes)")
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for non-checkpoints
        raise ModelError(path, f"not a loadable CompressAI checkpoint ({_torch_load_reason(exc)})") from None
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in raw.items()):
        raise ModelError(path, "the checkpoint does not hold a state dict of tensors")
    return raw


def _key_generation(names: list[str], path: Path) -> str:
    old = any(_OLD_EB_NAME.search(name) for name in names)
    current = any(re.search(r"entropy_bottleneck\.(matrices|biases|factors)\.\d+$", name) for name in names)
    if old and current:
        raise ModelError(path, "mixes old (_matrix0) and current (matrices.0) entropy-bottleneck key names")
    return "old" if old else "current"


def _bottleneck_filters(weights: dict[str, torch.Tensor], path: Path) -> tuple[int, ...]:
    """Hidden widths of the entropy bottleneck's density network, read off its matrices (C, out, in): a
    CompressAI default bottleneck has 5 matrices, (3, 3, 3, 3); ours 4, (3, 3, 3)."""
    shapes = []
    while f"{_FIRST_BOTTLENECK}.matrices.{len(shapes)}" in weights:
        shapes.append(tuple(weights[f"{_FIRST_BOTTLENECK}.matrices.{len(shapes)}"].shape))
    if len(shapes) < 2 or any(len(shape) != 3 for shape in shapes):
        raise ModelError(path, f"not an ssf2020 state dict (entropy-bottleneck matrices {shapes})")
    return tuple(shape[1] for shape in shapes[:-1])


def _quality_and_metric(path: Path, quality: int | None, required: bool = True) -> tuple[int | None, str | None]:
    match = _COMPRESSAI_NAME.search(path.name)
    if quality is None and not match and required:
        raise ModelError(path, "cannot tell the quality from the file name (ssf2020-mse-Q-*.pth.tar or "
                               "ssf2020-ms-ssim-Q-*.pth.tar); pass --quality")
    if quality is None:
        quality = int(match.group(2)) if match else None
    return quality, (match.group(1) if match else None)


def read_compressai(path: str | Path, quality: int | None = None, quality_required: bool = True) -> CompressAIStateDict:
    """Read and check a CompressAI ``ssf2020`` checkpoint (``torch.load(weights_only=True)``: no pickle
    code runs). Widths and bottleneck filters are read off the tensor shapes, so compact re-trainings in
    CompressAI's layout load too; the quality comes from ``quality`` or the file name (None when neither
    says and not ``quality_required``: `adaptjobs info`)."""
    path = Path(path)
    raw = _raw_state_dict(path)
    generation = _key_generation(list(raw), path)
    ignored = sorted(k for k in raw if k.endswith(_DERIVED_SUFFIXES))
    weights = {_canonical_compressai_name(k): v.float() for k, v in raw.items() if not k.endswith(_DERIVED_SUFFIXES)}
    try:
        architecture = SSFArchitecture(
            mid_channels=weights["img_encoder.0.weight"].shape[0],
            latent_channels=weights["img_encoder.6.weight"].shape[0],
            hyper_channels=weights["img_hyperprior.hyper_encoder.0.weight"].shape[0],
            bottleneck_filters=_bottleneck_filters(weights, path))
    except KeyError as exc:
        raise ModelError(path, f"not an ssf2020 state dict (no {exc.args[0]})") from None
    except ValidationError as exc:
        raise ModelError(path, f"not an ssf2020 state dict ({validation_line(exc)})") from None
    quality, metric = _quality_and_metric(path, quality, quality_required)
    return CompressAIStateDict(weights, architecture, quality, metric, generation, ignored)


def import_compressai(path: str | Path, quality: int | None = None) -> LoadedModel:
    """Load a CompressAI ``ssf2020`` checkpoint (``.pth.tar``) into our model (see :func:`read_compressai`)."""
    path = Path(path)
    state = read_compressai(path, quality)
    model = ScaleSpaceFlow(state.architecture)
    _load_state(model, state.weights, path)
    model_id = re.sub(r"[^A-Za-z0-9_.+-]", "_", path.name.removesuffix(".tar").removesuffix(".pth"))[:128]
    notes = f"imported from {path.name} ({state.key_generation} key names, metric {state.metric or 'unknown'})"
    metadata = make_metadata(model, model_id, state.quality, None, Provenance(source="compressai-import", notes=notes))
    return LoadedModel(model.eval(), metadata, str(path))


def random_model(architecture: SSFArchitecture, quality: int, seed: int, model_id: str) -> LoadedModel:
    """An untrained model with seeded weights (tests, benchmarks, and the start of pretraining)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = ScaleSpaceFlow(architecture)
    finally:
        torch.random.set_rng_state(generator_state)
    metadata = make_metadata(model, model_id, quality, None, Provenance(source="random-init", seed=seed,
                                                                         notes="untrained: for tests only"))
    return LoadedModel(model.eval(), metadata, f"random-init(seed={seed})")
