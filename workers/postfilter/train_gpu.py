"""Continue training the post-filter on one GPU, from a pack (workers/postfilter/pack.py), for a fixed wall time.

Why a separate trainer: the GPU machine is lent for minutes and cannot receive the 2.2 GB pair cache; the CPU
trainer (workers/postfilter/pretrain.py) stays the reproducible, resumable path. This one decodes the pack's
streams (workers.standard.encoder.decode_stream, 16 processes), checks every decoded window against the SHA-256 the
pack recorded (the pairs are the cache's, bit for bit), holds all windows on the GPU and draws crops there.

The objective is the CPU trainer's (workers.postfilter.objective: per codec half one CRF, per plane the filtered
MSE over the decoded MSE, summed over the crops, weighted (6 Y + U + V) / 8), the sampling too (I-frames weighted
1/12, even crop positions, horizontal flips), but crops come from the pack's fixed windows and batches are
larger. Sources listed by ``--holdout-every`` are held out: the validation gain (dB over the unfiltered
decode, whole windows, every version, mean over versions) is logged at each checkpoint to see overfitting.

Wall-time budget: after ``--calibrate`` steps the step time is measured and the cosine schedule is set to end
when ``--seconds`` have passed; checkpoints (plain state_dict safetensors, float32) at quarters of it.

    python -m workers.postfilter.train_gpu --pack PACK --init FILTER.safetensors --out OUT --seconds 330

What the GPU machine lacks (PyAV, pydantic and the rest of benchmarks/bench_device.py's needs) and the pack travel in
``.gpu/``, prepared by benchmarks/device/prepare.sh; benchmarks/device/run.sh is the device call's command. A
filter is a plain state_dict, so ``--init`` takes a shipped filter file; the output's ``step-*.safetensors``
become shipped filters through workers.postfilter.checkpoint.save_filter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from workers.postfilter.i420 import PACK_FORMAT, crop_packed, pack_i420, unpack_i420
from workers.postfilter.linear_system import PLANE_WEIGHTS
from workers.postfilter.network import FilterArchitecture, PostFilter
from workers.postfilter.objective import planes_loss
from workers.standard.encoder import decode_stream


def unpack(packed: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames * 3h/2, w) stacked packed I420 -> Y (F,h,w), U (F,h/2,w/2), V (F,h/2,w/2)."""
    rows, width = packed.shape
    return unpack_i420(packed.reshape(frames, rows // frames, width))


def decode_item(task: tuple[str, dict, list[str]]) -> tuple[int, list[np.ndarray]]:
    """Windows of the original and of every version: list of packed (F*3h/2, w) arrays, original first."""
    from PIL import Image  # Pillow: a training-tool need only (the test extra names it)

    pack, item, versions = task
    pack = Path(pack)
    windows = [np.asarray(Image.open(pack / item["original"]))]
    top, left, sy, sx = item["top"], item["left"], item["size_y"], item["size_x"]
    for key in versions:
        version = item["versions"][key]
        decoded = decode_stream((pack / version["stream"]).read_bytes(), key.split("-")[0])
        window = np.concatenate([crop_packed(pack_i420(decoded[t]), top, left, sy, sx) for t in item["keep"]])
        if hashlib.sha256(window.tobytes()).hexdigest() != version["window_sha256"]:
            raise RuntimeError(f"item {item['number']} {key}: decoded window differs from the pack's hash")
        windows.append(window)
    return item["number"], windows


class GpuData:
    """All windows on the device, padded to the pack's crop: Y (N,V,F,S,S), U/V (N,V,F,S/2,S/2) uint8."""

    def __init__(self, items: list[dict], windows: dict[int, list[np.ndarray]], size: int, intra_period: int,
                 device: torch.device):
        n, v, f = len(items), len(windows[items[0]["number"]]), 4
        self.y = torch.zeros((n, v, f, size, size), dtype=torch.uint8)
        self.u = torch.zeros((n, v, f, size // 2, size // 2), dtype=torch.uint8)
        self.v = torch.zeros_like(self.u)
        self.sizes = torch.zeros((n, 2), dtype=torch.long)
        self.frame_weights = torch.zeros((n, f), dtype=torch.float64)
        for i, item in enumerate(items):
            frames, sy, sx = len(item["keep"]), item["size_y"], item["size_x"]
            for k, window in enumerate(windows[item["number"]]):
                y, u, vv = unpack(window, frames)
                self.y[i, k, :frames, :sy, :sx] = torch.from_numpy(np.ascontiguousarray(y))
                self.u[i, k, :frames, : sy // 2, : sx // 2] = torch.from_numpy(np.ascontiguousarray(u))
                self.v[i, k, :frames, : sy // 2, : sx // 2] = torch.from_numpy(np.ascontiguousarray(vv))
            self.sizes[i] = torch.tensor([sy, sx])
            types = item["frame_types"]
            n_p = types.count("P")
            for t, kind in enumerate(types):
                self.frame_weights[i, t] = 1.0 / intra_period if kind == "I" or not n_p else (1 - 1.0 / intra_period) / n_p
        self.y, self.u, self.v = self.y.to(device), self.u.to(device), self.v.to(device)
        self.sizes, self.frame_weights = self.sizes.to(device), self.frame_weights.to(device)

    def crops(self, generator: torch.Generator, rows: torch.Tensor, version: int, crop: int):
        """(decoded, original) planes of len(rows) random crops of version ``version`` as float in [0, 1]."""
        device = self.y.device
        b = len(rows)
        frame = torch.multinomial(self.frame_weights[rows], 1, generator=generator)[:, 0]
        room = (self.sizes[rows] - crop) // 2 + 1
        top = 2 * (torch.rand(b, device=device, generator=generator) * room[:, 0]).long()
        left = 2 * (torch.rand(b, device=device, generator=generator) * room[:, 1]).long()
        flip = torch.rand(b, device=device, generator=generator) < 0.5
        out = []
        for k in (version, 0):
            planes = []
            for plane, c, t, l in ((self.y, crop, top, left), (self.u, crop // 2, top // 2, left // 2),
                                   (self.v, crop // 2, top // 2, left // 2)):
                r = t[:, None] + torch.arange(c, device=device)[None]
                cols = l[:, None] + torch.arange(c, device=device)[None]
                cols = torch.where(flip[:, None], cols.flip(1), cols)
                picked = plane[rows[:, None, None], k, frame[:, None, None], r[:, :, None], cols[:, None, :]]
                planes.append(picked[:, None].float().div_(255.0).contiguous(memory_format=torch.channels_last))
            out.append(tuple(planes))
        return out[0], out[1]


@torch.no_grad()
def validate(model, data: GpuData, rows: list[int], items: list[dict], versions: list[str]) -> dict:
    """dB gain over the unfiltered decode per version on the held-out windows (sums of weighted MSE)."""
    torch.backends.cudnn.allow_tf32 = False
    gains = {}
    if not rows:
        return {"mean_gain_db": None, "per_version": {}}
    for k, key in enumerate(versions, start=1):
        codec, crf = key.split("-")
        filtered_sum, decoded_sum = 0.0, 0.0
        for i in rows:
            frames, sy, sx = len(items[i]["keep"]), items[i]["size_y"], items[i]["size_x"]
            dec = [p[i, k, :frames, None, : s, : t].float() / 255 for p, s, t in
                   ((data.y, sy, sx), (data.u, sy // 2, sx // 2), (data.v, sy // 2, sx // 2))]
            ref = [p[i, 0, :frames, None, : s, : t].float() / 255 for p, s, t in
                   ((data.y, sy, sx), (data.u, sy // 2, sx // 2), (data.v, sy // 2, sx // 2))]
            out = model(*dec, float(crf), codec)
            for w, o, r, d in zip(PLANE_WEIGHTS, out, ref, dec):
                o = o.mul(255).clamp(0, 255).round() / 255  # as decode rounds
                filtered_sum += w * float((o - r).pow(2).sum()) / r[0].numel()
                decoded_sum += w * float((d - r).pow(2).sum()) / r[0].numel()
        gains[key] = 10 * math.log10(decoded_sum / max(filtered_sum, 1e-20))
    torch.backends.cudnn.allow_tf32 = True
    return {"mean_gain_db": float(np.mean(list(gains.values()))), "per_version": gains}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--init", type=Path, required=True, help="state_dict safetensors of the filter to continue")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=330.0, help="training wall time after data loading")
    parser.add_argument("--batch", type=int, default=128, help="crops per step, half per codec")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--final-lr-fraction", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--calibrate", type=int, default=100)
    parser.add_argument("--holdout-every", type=int, default=10, help="every Nth source (sorted) is held out")
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=44)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args(argv)
    from safetensors.torch import load_file, save_file

    started = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "log.jsonl", "a")

    def emit(line: dict) -> None:
        line = {"t": round(time.monotonic() - started, 1), **line}
        log.write(json.dumps(line) + "\n")
        log.flush()
        print(json.dumps(line), flush=True)

    pack = json.loads((args.pack / "pack.json").read_text())
    if pack.get("format") != PACK_FORMAT:
        raise SystemExit(f"{args.pack / 'pack.json'}: format {pack.get('format')!r}, this trainer reads {PACK_FORMAT!r} "
                         "(rebuild it: python -m workers.postfilter.pack)")
    versions = [f"{c}-{q}" for c in pack["codecs"] for q in pack["crfs"]]
    items = [i for i in pack["items"] if i["size_y"] >= args.crop and i["size_x"] >= args.crop]
    with ProcessPoolExecutor(args.processes) as pool:
        windows = dict(pool.map(decode_item, [(str(args.pack), i, versions) for i in items], chunksize=1))
    data = GpuData(items, windows, pack["crop"], pack["intra_period"], device)
    sources = sorted({i["source"] for i in items})
    held = {s for k, s in enumerate(sources) if k % args.holdout_every == args.holdout_every // 2}
    train_rows = torch.tensor([k for k, i in enumerate(items) if i["source"] not in held], device=device)
    val_rows = [k for k, i in enumerate(items) if i["source"] in held]
    if not len(train_rows):
        raise SystemExit(f"{args.pack}: every item is held out (--holdout-every {args.holdout_every})")
    emit({"event": "data", "device": str(device), "items": len(items), "train_items": len(train_rows),
          "val_items": len(val_rows), "held_out": sorted(held), "versions": versions})

    model = PostFilter(FilterArchitecture(layers=args.layers, channels=args.channels))
    model.load_state_dict(load_file(str(args.init)))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    codecs = pack["codecs"]
    per_codec = args.batch // len(codecs)
    emit({"event": "val", "step": 0, **validate(model, data, val_rows, items, versions)})

    total_steps, step, train_started = None, 0, time.monotonic()
    checkpoints: list[int] = []
    window: list[float] = []

    def rate(s: int) -> float:
        if s < args.warmup_steps:
            return args.learning_rate * (s + 1) / args.warmup_steps
        if total_steps is None:
            return args.learning_rate
        progress = min(1.0, (s - args.warmup_steps) / max(1, total_steps - args.warmup_steps))
        low = args.final_lr_fraction
        return args.learning_rate * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))

    while total_steps is None or step < total_steps:
        for group in optimizer.param_groups:
            group["lr"] = rate(step)
        optimizer.zero_grad(set_to_none=True)
        gains = []
        for codec in codecs:
            crf_index = int(torch.randint(len(pack["crfs"]), (1,), device=device, generator=generator))
            crf = pack["crfs"][crf_index]
            version = 1 + versions.index(f"{codec}-{crf}")
            rows = train_rows[torch.randint(len(train_rows), (per_codec,), device=device, generator=generator)]
            decoded, original = data.crops(generator, rows, version, args.crop)
            crfs = torch.full((per_codec,), float(crf), device=device)
            loss, relative = planes_loss(model(*decoded, crfs, codec), original, decoded)
            (loss / len(codecs)).backward()
            gains.append(relative)
        optimizer.step()
        step += 1
        window.append(float(-10 * torch.log10(torch.stack(gains).clamp_min(1e-12)).mean()) if step % 50 == 0 else 0.0)
        if total_steps is None and step == args.calibrate:
            torch.cuda.synchronize() if device.type == "cuda" else None
            per_step = (time.monotonic() - train_started) / step
            total_steps = max(step + 4, int(args.seconds / per_step))
            checkpoints = sorted({max(step, total_steps * q // 4) for q in (1, 2, 3, 4)})  # none before now
            emit({"event": "calibrated", "seconds_per_step": round(per_step, 5), "total_steps": total_steps})
        if step % 500 == 0:
            emit({"event": "train", "step": step, "lr": rate(step - 1), "gain_db_sampled": round(window[-1], 4)})
        if step in checkpoints:
            state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(args.out / f"step-{step:06d}.safetensors"))
            emit({"event": "val", "step": step, **validate(model, data, val_rows, items, versions)})
    emit({"event": "done", "steps": step, "train_seconds": round(time.monotonic() - train_started, 1)})


if __name__ == "__main__":
    main()
