"""Turn `adaptjobs submit` arguments into a validated JobSpec, and probe the inputs before scheduling.

A bad spec (unknown method or option, a quality the model lacks, no videos) is refused as a whole,
before anything is written or scheduled. A video that does not open is not a bad spec: its units become
FAILED with the reason and the other videos run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adaptjobs.options import parse_set_options
from schemas.job import CodecRun, JobSpec, VideoEntry
from workers.run_layout import safe_name
from workers.errors import InputError, escape_controls, exception_line
from workers.methods import parse_method_config
from workers.task import input_bytes
from workers.video_io import VIDEO_SUFFIXES, read_video


ANCHOR_CODECS = ("x264", "x265")  # the default --anchors: method none on these, over their default CRFs


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


@dataclass(frozen=True)
class CodecChoice:
    """One --codec of `adaptjobs submit`: the codec, its quality points (None: the codec's default ones) and
    its settings; ``anchor``: added by --anchors (method none only)."""

    name: str
    qualities: list[int | float] | None = None
    settings: dict[str, str] = field(default_factory=dict)
    anchor: bool = False


def parse_codec_choices(codecs: list[str], qualities: str | None, settings: list[str], anchors: str | None) -> list[CodecChoice]:
    """--codec NAME[:Q,...] (repeatable; default ssf), --qualities for the one codec given without its own,
    --codec-set CODEC:KEY=VALUE, --anchors (x264,x265 by default: method-none units of codecs not chosen)."""
    from adaptjobs.options import parse_codec_settings, parse_qualities

    entries = []
    for text in codecs or ["ssf"]:
        name, sep, points = text.partition(":")
        entries.append([name.strip(), parse_qualities(points, f"--codec {text}") if sep else None])
    bare = [e for e in entries if e[1] is None]
    if qualities is not None:
        if len(bare) != 1:
            raise InputError(None, "--qualities applies to exactly one --codec given without its own points; "
                                   "write --codec NAME:Q1,Q2 for each codec instead")
        bare[0][1] = parse_qualities(qualities)
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise InputError(None, f"--codec names a codec twice: {', '.join(names)}")
    per_codec: dict[str, list[str]] = {name: [] for name in names}
    for pair in settings:
        target, sep, rest = pair.partition(":")
        if not sep or target not in per_codec:
            raise InputError(None, f"--codec-set {pair}: expects CODEC:KEY=VALUE for a chosen codec ({', '.join(names)})")
        per_codec[target].append(rest)
    chosen = [CodecChoice(n, q, parse_codec_settings(per_codec[n])) for n, q in entries]
    return chosen + [CodecChoice(name, None, {}, anchor=True) for name in anchor_codecs(anchors) if name not in names]


def anchor_codecs(anchors: str | None) -> list[str]:
    if anchors is None:
        return list(ANCHOR_CODECS)
    names = [a.strip() for a in anchors.split(",") if a.strip()]
    if names == ["none"]:
        return []
    unknown = [a for a in names if a not in ANCHOR_CODECS]
    if unknown or not names:
        raise InputError(None, f"--anchors takes a comma-separated subset of {', '.join(ANCHOR_CODECS)}, or none; "
                               f"got {anchors!r}")
    return list(dict.fromkeys(names))


def codec_runs(choices: list[CodecChoice], methods: list[str], model: str | None) -> tuple[CodecRun, ...]:
    """Resolve every chosen codec (weights hashes, quality points) and the methods that run on it; a method
    that applies to none of the chosen codecs is refused."""
    from workers.codecs import codec_class
    from workers.methods import method

    runs = []
    for choice in choices:
        codec_cls = codec_class(choice.name)
        resolved = codec_cls.resolve(model if codec_cls.takes_model else None, choice.qualities, choice.settings)
        applicable = ["none"] if choice.anchor else [m for m in methods if method(m).applies_to(choice.name)]
        if applicable:
            runs.append(resolved.model_copy(update={"methods": tuple(applicable)}))
    unused = [m for m in methods if not any(m in run.methods for run in runs)]
    if unused:
        raise InputError(None, f"method(s) {', '.join(unused)} apply to none of the chosen codecs "
                               f"({', '.join(c.name for c in choices if not c.anchor)})")
    return tuple(runs)


def build_spec(videos_dir: str | Path, methods: list[str], options: list[str], codecs: list[CodecChoice],
               model: str | None, frames: int | None, intra_period: int) -> JobSpec:
    """Validate everything and return the spec (nothing is written)."""
    folder = Path(videos_dir).resolve()
    videos = name_videos(list_videos(folder))
    if not methods:
        raise InputError(None, "--methods is empty")
    if len(set(methods)) != len(methods):
        raise InputError(None, f"--methods names a method twice: {', '.join(methods)}")
    per_method = parse_method_options(methods, options)
    configs = tuple(parse_method_config(m, per_method[m]) for m in methods)
    runs = codec_runs(codecs, methods, model)
    if intra_period < 0:
        raise InputError(None, f"--intra-period must be >= 0, got {intra_period}")
    return JobSpec(videos_dir=str(folder), videos=tuple(videos), methods=configs, codecs=runs, frames=frames,
                   intra_period=intra_period)


def probe(video: VideoEntry) -> tuple[str, str] | None:
    """None if the input opens and has a usable first frame, else (one-line reason, failure kind).

    kind "input": the video is bad (InputError). Any other exception is kind "error" (a bug in our reading
    code, or a library's surprise on a hostile file): recorded the same way, so that one video never kills
    a run whose job.json is already written, and `resume` does not repeat the crash (issue 11)."""
    try:
        read_video(video.path, max_frames=1)
    except InputError as exc:
        return str(exc), "input"
    except Exception as exc:  # noqa: BLE001 - recorded in the unit, not swallowed
        return f"{escape_controls(video.path)}: cannot be read ({type(exc).__name__}: {exception_line(exc)})", "error"
    return None
