"""Find a base model from what the user typed: a checkpoint file, a folder of them, or a name.

- ``path/to/model.safetensors``: one of our checkpoints (one quality).
- ``path/to/folder/``: a model family, one ``*.safetensors`` per quality; ``--quality`` picks one
  (default: quality 3, or the middle one of what the family has).
- ``path/to/ssf2020-mse-3-*.pth.tar``: a CompressAI checkpoint, imported in memory.
- ``NAME``: a model family shipped inside the package (``workers/models/NAME/``).

A bitstream's header names its model (``model_id``, ``weights_sha256``), but a header is untrusted: it
never names a path that gets opened. :func:`resolve_for_stream` looks only where the user pointed
(``--model``) or where the installation keeps models (the shipped families, and the folders listed in
``ADAPTJOBS_MODEL_DIR``), and picks the checkpoint whose weights hash is the header's.
"""

from __future__ import annotations

import os
from pathlib import Path

from schemas.bitstream import BitstreamHeader
from workers.checkpoints import LoadedModel, import_compressai, load_checkpoint, read_checkpoint_metadata
from workers.errors import ModelError, escape_controls

MODEL_DIR_ENV = "ADAPTJOBS_MODEL_DIR"  # os.pathsep-separated folders of *.safetensors (searched 2 levels deep)

SHIPPED_MODELS_DIR = Path(__file__).parent / "models"


def shipped_model_names() -> list[str]:
    if not SHIPPED_MODELS_DIR.is_dir():
        return []
    # workers/models/postfilter/ holds the standard codecs' post-filters (workers/postfilter/checkpoint.py), not SSF
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir()
                  if p.is_dir() and p.name != "postfilter" and any(p.glob("*.safetensors")))


def default_model_name() -> str | None:
    """The shipped family used when no --model is given (None until one ships)."""
    names = shipped_model_names()
    return names[0] if names else None


DEFAULT_QUALITY = 3


def default_quality(available: list[int]) -> int:
    ordered = sorted(available)
    return DEFAULT_QUALITY if DEFAULT_QUALITY in ordered else ordered[len(ordered) // 2]


def family_qualities(folder: Path) -> dict[int, Path]:
    """quality -> checkpoint path for every checkpoint in ``folder``."""
    qualities: dict[int, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        metadata = load_checkpoint(file).metadata
        if metadata.quality in qualities:
            raise ModelError(folder, f"two checkpoints for quality {metadata.quality}: {qualities[metadata.quality].name}, {file.name}")
        qualities[metadata.quality] = file
    if not qualities:
        raise ModelError(folder, "the folder holds no .safetensors checkpoints")
    return qualities


def resolve_model(spec: str | Path | None, quality: int | None = None) -> LoadedModel:
    """Load the model ``spec`` names at ``quality`` (see module docstring)."""
    if spec is None:
        spec = default_model_name()
        if spec is None:
            raise ModelError(None, "no base model given and none ships with this installation yet; pass --model PATH")
    path = Path(spec)
    if not path.exists() and str(spec) in shipped_model_names():
        path = SHIPPED_MODELS_DIR / str(spec)
    if not path.exists():
        known = ", ".join(shipped_model_names()) or "none"
        raise ModelError(spec, f"no such checkpoint file, folder or shipped model (shipped: {known})")
    if path.is_dir():
        qualities = family_qualities(path)
        if quality is None:
            quality = default_quality(list(qualities))
        if quality not in qualities:
            raise ModelError(path, f"has no quality {quality} (available: {sorted(qualities)})")
        return load_checkpoint(qualities[quality])
    if path.name.endswith((".pth.tar", ".pth", ".pt")):
        loaded = import_compressai(path, quality)
    else:
        loaded = load_checkpoint(path)
    if quality is not None and loaded.metadata.quality != quality:
        raise ModelError(path, f"is a quality-{loaded.metadata.quality} checkpoint, --quality {quality} was asked for")
    return loaded


def configured_model_dirs() -> list[Path]:
    """The folders ``ADAPTJOBS_MODEL_DIR`` lists (os.pathsep-separated), in order; missing ones skipped."""
    value = os.environ.get(MODEL_DIR_ENV, "")
    return [Path(part) for part in value.split(os.pathsep) if part and Path(part).is_dir()]


def _candidate_checkpoints(preferred_family: str | None) -> list[Path]:
    """Our checkpoints an installation offers a decoder: the shipped family named ``preferred_family``
    first (the common case, found with one file read), then every shipped family, then the configured
    folders (files in them and in their direct subfolders)."""
    names = shipped_model_names()
    ordered = ([preferred_family] if preferred_family in names else []) + [n for n in names if n != preferred_family]
    files = [f for name in ordered for f in sorted((SHIPPED_MODELS_DIR / name).glob("*.safetensors"))]
    for folder in configured_model_dirs():
        files += sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*/*.safetensors"))
    return files


def find_by_weights_hash(weights_sha256: str, preferred_family: str | None = None) -> Path | None:
    """The first installed checkpoint (see :func:`_candidate_checkpoints`) whose metadata carries
    ``weights_sha256``; unreadable files are skipped. Only headers are read."""
    for file in _candidate_checkpoints(preferred_family):
        if not file.is_file():
            continue
        try:
            if read_checkpoint_metadata(file).weights_sha256 == weights_sha256:
                return file
        except ModelError:
            continue
    return None


def resolve_for_stream(model_arg: str | Path | None, header: BitstreamHeader,
                       source: str | Path | None = None) -> LoadedModel:
    """The base model to decode a stream with ``header``.

    ``model_arg`` (the user's ``--model``) wins and is resolved like any --model, at the header's quality;
    the caller still checks its weights hash against the header. Without it, the installed checkpoint
    whose weights hash is ``header.weights_sha256`` is loaded (:func:`find_by_weights_hash`): the header's
    ``model_id`` only orders the search, it is never opened as a path.
    """
    if model_arg is not None:
        return resolve_model(model_arg, header.quality)
    found = find_by_weights_hash(header.weights_sha256, header.model_id)
    if found is None:
        where = ", ".join(shipped_model_names()) or "none"
        raise ModelError(source, f"was encoded with model {escape_controls(header.model_id)!r} (weights sha256 "
                                 f"{header.weights_sha256[:12]}), which is neither shipped (shipped: {where}) nor in "
                                 f"${MODEL_DIR_ENV}; pass --model PATH")
    return load_checkpoint(found)
