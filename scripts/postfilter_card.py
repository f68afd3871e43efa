"""Ship a trained post-filter: copy its weights into workers/models/postfilter/ and write its model card.

    python -m adaptjobs.postfilter_eval RUN/latest.safetensors --stream-cache S --json EVAL.json
    python scripts/postfilter_card.py --filter RUN/latest.safetensors --eval EVAL.json --train-run RUN

Writes ``workers/models/postfilter/<name>.safetensors`` (the checkpoint's bytes, loaded and hash-checked
first), ``card.json`` (everything below, machine-readable) and ``MODEL_CARD.md``: the architecture and
its cost, the training data, steps, wall time and configuration, the training log's last windows, and
from the evaluation JSON the dB gain of the filter per CRF per eval-dev sequence for each codec, the
postfilter rule's on/off decisions and the BD-rates (PSNR-YUV, PSNR-Y, chroma) against the plain stream.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workers.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from workers.postfilter.checkpoint import SHIPPED_FILTERS_DIR, load_filter  # noqa: E402


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def last_log_lines(run: Path | None, count: int = 4) -> list[dict]:
    if run is None or not (run / "log.jsonl").exists():
        return []
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return lines[-count:]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def bd_table(summary: dict) -> list[str]:
    rows = ["| codec | sequence | BD-rate PSNR-YUV | BD-rate PSNR-Y | BD-rate chroma | PSNR-YUV without the SEI bytes |",
            "|---|---|---|---|---|---|"]
    for codec, data in summary["codecs"].items():
        for name, s in data["sequences"].items():
            bd = s["bd_rate"]
            rows.append(f"| {codec} | {name} | {_fmt(bd['yuv'])} | {_fmt(bd['y'])} | {_fmt(bd['chroma'])} | "
                        f"{_fmt(s['bd_rate_without_sei'])} |")
        m = data["mean_bd_rate"]
        rows.append(f"| {codec} | **mean of sequences** | **{_fmt(m['yuv'])}** | {_fmt(m['y'])} | {_fmt(m['chroma'])} | "
                    f"{_fmt(m['yuv_without_sei'])} |")
    return rows


def gain_table(summary: dict) -> list[str]:
    rows = []
    for codec, data in summary["codecs"].items():
        crfs = list(next(iter(data["sequences"].values()))["gain_db"])
        rows += [f"**{codec}**: PSNR-YUV gain of the filter (dB, filter always on); `off` marks a CRF where the "
                 "postfilter rule switches it off", "",
                 "| sequence | " + " | ".join(f"CRF {c}" for c in crfs) + " |", "|---|" + "---|" * len(crfs)]
        for name, s in data["sequences"].items():
            cells = [f"{s['gain_db'][c]:+.3f}" + ("" if s["filter_on"][c] else " off") for c in crfs]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        rows.append("")
    return rows


def rate_table(points: list[dict]) -> list[str]:
    rows = ["| codec | sequence | CRF | stream bytes | PSNR-Y none | PSNR-U none | PSNR-V none | "
            "PSNR-Y filtered | PSNR-U filtered | PSNR-V filtered |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        n, f = p["none"], p["filtered"]
        rows.append(f"| {p['codec']} | {p['sequence']} | {p['crf']:g} | {p['stream_bytes']:,} | {n['y']:.3f} | "
                    f"{n['u']:.3f} | {n['v']:.3f} | {f['y']:.3f} | {f['u']:.3f} | {f['v']:.3f} |")
    return rows


TARGETS = {"x264": -5.0, "x265": -3.0}  # mean BD-rate on PSNR-YUV the issue asks for (x264 also: no sequence > +0.5%)


def target_lines(summary: dict) -> list[str]:
    lines = []
    for codec, target in TARGETS.items():
        data = summary["codecs"].get(codec)
        if data is None:
            continue
        mean = data["mean_bd_rate"]["yuv"]
        worst = max((s["bd_rate"]["yuv"] for s in data["sequences"].values() if s["bd_rate"]["yuv"] is not None), default=None)
        met = mean is not None and mean <= target and (codec != "x264" or (worst is not None and worst <= 0.5))
        lines.append(f"- {codec}: mean BD-rate {_fmt(mean)} (target <= {target:+.0f}%), worst sequence {_fmt(worst)}: "
                     f"**{'met' if met else 'missed'}**")
    return lines


def card_markdown(card: dict, evaluation: dict) -> str:
    t, arch = card["training"], card["architecture"]
    lines = [f"# Model card: post-filter `{card['name']}`", "",
             f"Generated {card['generated']} by `{card['command']}` on {card['machine']}.", "",
             "## Model", "",
             f"`workers/postfilter/network.py`: {arch['layers']} 3x3 conv layers of {arch['channels']} channels, "
             "LeakyReLU(0.1), on the decoded YUV 4:2:0 planes at chroma resolution (luma pixel-unshuffled), "
             "conditioned on CRF/51 and the codec (x264 = 0, x265 = 1), residual output (the identity at init), "
             f"no batch-norm. {card['macs_per_pixel']:,.0f} MAC per luma pixel, {card['parameters']:,} parameters, "
             f"float32 (`{card['file']}`, {card['bytes']:,} bytes, file sha256 `{card['file_sha256']}`, weights "
             f"sha256 `{card['weights_sha256']}`: the id a stream names it by).", "",
             "## Training", "",
             f"`python -m workers.postfilter.pretrain` (`adaptjobs pretrain-filter`): {t.get('steps')} steps, "
             f"wall time {(t.get('wall_time_s') or 0) / 60:.0f} min on 2 shared CPU cores (no GPU), seed {t.get('seed')}.",
             f"Data: {t.get('data')}. Source: `/work/shared/data/train` only, never eval-dev (sources and licences: "
             "`workers/models/ssf-compact/MODEL_CARD.md`).", "",
             f"Configuration: `{json.dumps(t.get('config'))}`", "",
             "Last training log windows (`gain_db`: mean PSNR-YUV-weighted dB gain on the training crops):", "",
             "```", *[json.dumps(line) for line in card["training_log_tail"]], "```", "",
             "## The filter alone against the issue's targets", "",
             "Switched on or off per unit, conditioned on the unit's CRF: no CRF offsets, no residual scales (method "
             "`postfilter` adds both, chosen per video by the encoder; its numbers through the runner are in "
             "benchmarks/RESULTS.md and the README).", "", *target_lines(evaluation["summary"]), "",
             *([card["notes"], ""] if card.get("notes") else []),
             "## Evaluation on eval-dev", "",
             f"`{card['eval_command']}`: every frame of each sequence, intra period 12, PSNR-tuned x264/x265 (preset "
             "medium, no B-frames, scene-cut off, psy and AQ off, one thread), CRFs "
             f"{', '.join(f'{c:g}' for c in card['crfs'])}. PSNR per frame averaged; PSNR-YUV = (6 Y + U + V) / 8; "
             "chroma = (PSNR-U + PSNR-V) / 2.", "",
             f"The `postfilter` rule applies the filter to a (video, CRF) only when it raises PSNR-YUV; its rate is the "
             f"whole stream plus {sei_text(evaluation['summary']['sei_bytes'])}. BD-rate: PCHIP on log rate (adaptjobs/bdrate.py), "
             "postfilter vs none (the plain stream = the anchor), negative = saving.", "",
             *bd_table(evaluation["summary"]), "", *gain_table(evaluation["summary"]),
             "### Every point", "", *rate_table(evaluation["points"]), ""]
    return "\n".join(lines)


def sei_text(sei_bytes: int | list[int]) -> str:
    """How the evaluation priced the SEI record: a list is what attaching the record measured (adaptjobs.postfilter_eval
    now), an int the flat estimate older evaluations charged."""
    if isinstance(sei_bytes, int):
        return f"{sei_bytes} bytes for the SEI record (an estimate of the record the method writes, on or off)"
    return (f"the SEI record the method writes, on or off ({' or '.join(map(str, sei_bytes))} bytes, measured by "
            "attaching it to the stream)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True, help="JSON written by adaptjobs.postfilter_eval --json")
    parser.add_argument("--train-run", type=Path, default=None, help="the training run folder (for its log)")
    parser.add_argument("--eval-command", default="python -m adaptjobs.postfilter_eval FILTER --json EVAL.json")
    parser.add_argument("--out-dir", type=Path, default=SHIPPED_FILTERS_DIR)
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file whose text goes into the card")
    args = parser.parse_args(argv)
    loaded = load_filter(args.filter)
    evaluation = json.loads(args.eval.read_text())
    if evaluation["weights_sha256"] != loaded.metadata.weights_sha256:
        raise SystemExit(f"{args.eval} evaluated another filter ({evaluation['weights_sha256'][:12]})")
    data = args.filter.read_bytes()
    name = loaded.metadata.name
    atomic_write_bytes(args.out_dir / f"{name}.safetensors", data)
    card = {"name": name, "file": f"{name}.safetensors", "bytes": len(data),
            "file_sha256": hashlib.sha256(data).hexdigest(), "weights_sha256": loaded.metadata.weights_sha256,
            "architecture": loaded.metadata.architecture, "macs_per_pixel": loaded.model.macs_per_pixel(),
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "training": loaded.metadata.training.model_dump(), "training_log_tail": last_log_lines(args.train_run),
            "generated": str(datetime.date.today()), "machine": machine(),
            "command": "python scripts/postfilter_card.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "eval_command": args.eval_command, "frames": evaluation.get("frames"),
            "crfs": sorted({p["crf"] for p in evaluation["points"]}), "evaluation": evaluation["summary"],
            "notes": args.notes.read_text().strip() if args.notes else None}
    atomic_write_text(args.out_dir / "card.json", json.dumps(card, indent=1))
    atomic_write_text(args.out_dir / "MODEL_CARD.md", card_markdown(card, evaluation))
    print(f"wrote {args.out_dir}/{{{name}.safetensors, card.json, MODEL_CARD.md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
