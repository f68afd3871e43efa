"""Find a base model from what the user typed: a checkpoint file, a folder of them, or a name.

- ``path/to/model.safetensors``: one of our checkpoints (one quality).
- ``path/to/folder/``: a model family, one ``*.safetensors`` per quality; ``--quality`` picks one
  (default: quality 3, or the middle one of what the family has).
- ``path/to/ssf2020-mse-3-*.pth.tar``: a CompressAI checkpoint, imported in memory.
- ``NAME``: a model family shipped inside the package (``workers/models/NAME/``).
"""

from __future__ import annotations

from pathlib import Path

from workers.checkpoints import LoadedModel, import_compressai, load_checkpoint
from workers.errors import ModelError

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
