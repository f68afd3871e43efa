"""Turn `adaptjobs submit` arguments into a validated JobSpec, and probe the inputs before scheduling.

A bad spec (unknown method or option, a quality the model lacks, no videos) is refused as a whole,
before anything is written or scheduled. A video that does not open is not a bad spec: its units become
FAILED with the reason and the other videos run.
"""

from __future__ import annotations

from pathlib import Path

from schemas.job import ANCHOR_CODECS, AnchorSettings, JobSpec, ModelRef, VideoEntry
from workers.adapt.job import parse_method_config, safe_name
from workers.errors import InputError
from workers.model_store import SHIPPED_MODELS_DIR, default_model_name, family_qualities, resolve_model
from workers.task import input_bytes
from workers.video_io import VIDEO_SUFFIXES, read_video


def list_videos(folder: Path) -> list[Path]:
    """The inputs of a video folder (not recursive): files with a video suffix and folders of PNG frames."""
    if not folder.is_dir():
        raise InputError(folder, "is not a directory of videos")
    found = [p for p in sorted(folder.iterdir())
             if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and any(p.glob("*.png")))]
    if not found:
        raise InputError(folder, f"holds no videos (files ending in {', '.join(sorted(VIDEO_SUFFIXES))}, or folders "
                                 "of PNG frames)")
    return found


def name_videos(paths: list[Path]) -> list[VideoEntry]:
    """Unit folder names: the sanitised stem, or the whole file name where stems collide (a.mp4, a.mkv)."""
    stems = [safe_name(p.name.split(".")[0] if p.is_file() else p.name) for p in paths]
    names = [stem if stems.count(stem) == 1 else safe_name(p.name) for stem, p in zip(stems, paths)]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return [VideoEntry(name=n, path=str(p.resolve()), bytes=input_bytes(p)) for n, p in zip(unique, paths)]


def parse_method_options(methods: list[str], pairs: list[str]) -> dict[str, dict]:
    """--set METHOD:KEY=VALUE (or KEY=VALUE for every chosen method) -> per-method option trees."""
    from adaptjobs.cli import parse_set_options

    per_method: dict[str, list[str]] = {m: [] for m in methods}
    for pair in pairs:
        target, sep, rest = pair.partition(":")
        if sep and "=" not in target:
            if target not in per_method:
                raise InputError(None, f"--set {pair}: {target} is not one of the chosen methods ({', '.join(methods)})")
            per_method[target].append(rest)
        else:
            for method in methods:
                per_method[method].append(pair)
    return {m: parse_set_options(p) for m, p in per_method.items()}


def model_reference(model: str | None, qualities: list[int] | None) -> tuple[ModelRef, tuple[int, ...]]:
    """Resolve the base model: every quality of a family (or the asked ones), or one checkpoint."""
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
                   weights_sha256={q: m.metadata.weights_sha256 for q, m in loaded.items()})
    return ref, tuple(chosen)


def anchor_settings(anchors: str | None) -> AnchorSettings:
    if anchors is None:
        return AnchorSettings()
    names = [a.strip() for a in anchors.split(",") if a.strip()]
    if names == ["none"]:
        return AnchorSettings(codecs=())
    unknown = [a for a in names if a not in ANCHOR_CODECS]
    if unknown or not names:
        raise InputError(None, f"--anchors takes a comma-separated subset of {', '.join(ANCHOR_CODECS)}, or none; "
                               f"got {anchors!r}")
    return AnchorSettings(codecs=tuple(dict.fromkeys(names)))


def build_spec(videos_dir: str | Path, methods: list[str], options: list[str], qualities: list[int] | None,
               model: str | None, frames: int | None, intra_period: int, anchors: str | None) -> JobSpec:
    """Validate everything and return the spec (nothing is written)."""
    folder = Path(videos_dir).resolve()
    videos = name_videos(list_videos(folder))
    if not methods:
        raise InputError(None, "--methods is empty")
    if len(set(methods)) != len(methods):
        raise InputError(None, f"--methods names a method twice: {', '.join(methods)}")
    per_method = parse_method_options(methods, options)
    configs = tuple(parse_method_config(m, per_method[m]) for m in methods)
    model_ref, chosen = model_reference(model, qualities)
    if intra_period < 0:
        raise InputError(None, f"--intra-period must be >= 0, got {intra_period}")
    return JobSpec(videos_dir=str(folder), videos=tuple(videos), methods=configs, qualities=chosen, model=model_ref,
                   frames=frames, intra_period=intra_period, anchors=anchor_settings(anchors))


def probe(video: VideoEntry) -> str | None:
    """None if the input opens and has a usable first frame, else the one-line reason."""
    try:
        read_video(video.path, max_frames=1)
    except InputError as exc:
        return str(exc)
    return None
