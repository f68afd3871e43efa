"""The device path (issue 15): codec and adaptation speed per device, and cross-device parse checks.

    python benchmarks/bench_device.py [--arch compact] [--size 352x288] [--frames 4] [--out benchmarks/RESULTS.md]

Per device (the CPU, and cuda:0 when torch sees one):
- encode / decode frames per second of one I-frame + P-frames (untrained seeded weights, real
  bigbuckbunny frames centre-cropped to --size), with the parse path on the CPU as always;
- adaptation speed: seconds per frame per optimizer step of decoder-LoRA training (default options,
  batches of --frames frames, the whole cropped picture).
Cross-device (only where CUDA is present): encode on one device, decode on the other; the decode must
parse (every symbol recovered, else BitstreamError) and the drift is the PSNR in dB of the decoder's
frames against the encoder's reconstruction (inf: bit-exact), with the largest per-pixel difference.
Without CUDA the cross-device rows say so; nothing is guessed.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codec import bigbuckbunny_frames  # noqa: E402
from results_file import cpu_name, replace_section  # noqa: E402

from schemas.adapt import DecoderLoraConfig
from schemas.bitstream import BitstreamHeader
from schemas.codec import ARCHITECTURE_PRESETS
from workers.checkpoints import random_model
from workers.device import configure_determinism, place_model
from workers.video_codec import decode_sequence, encode_sequence


def devices() -> list[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda", 0))
    return found


def header_for(loaded, width: int, height: int, frames: int) -> BitstreamHeader:
    meta = loaded.metadata
    return BitstreamHeader(model_id=meta.model_id, weights_sha256=meta.weights_sha256, quality=meta.quality,
                           width=width, height=height, frame_count=frames, fps_num=30, fps_den=1, intra_period=0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def codec_speed(arch: str, device: torch.device, pictures: list[torch.Tensor]) -> dict:
    """Encode and decode frames per second of ``pictures`` (one I-frame, then P-frames) on ``device``."""
    loaded = random_model(ARCHITECTURE_PRESETS[arch], 1, 0, f"bench-{arch}")
    model = place_model(loaded.model, device)
    tables = model.entropy_tables()
    height, width = pictures[0].shape[-2:]
    header = header_for(loaded, width, height, len(pictures))
    encode_sequence(model, tables, pictures[:1], header.model_copy(update={"frame_count": 1}))  # warm-up
    synchronize(device)
    start = time.perf_counter()
    encoded = encode_sequence(model, tables, pictures, header)
    synchronize(device)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decode_sequence(encoded.data, lambda h: (model, tables))
    synchronize(device)
    decode_s = time.perf_counter() - start
    return {"encode fps": len(pictures) / encode_s, "decode fps": len(pictures) / decode_s}


def adaptation_speed(arch: str, device: torch.device, pictures: list[torch.Tensor], steps: int) -> float:
    """Seconds per frame per optimizer step of decoder-LoRA training on ``device`` (after one warm-up step)."""
    from workers.adapt.decoder_updates import make_update
    from workers.adapt.training import decoder_update_cost
    from workers.codec.ssf import pad_frame

    loaded = random_model(ARCHITECTURE_PRESETS[arch], 1, 0, f"bench-{arch}")
    model = place_model(loaded.model, device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    config = DecoderLoraConfig()
    update = make_update(model, config)
    optimizer = torch.optim.Adam(list(update.coded.values()), lr=config.training.learning_rate)
    clip = [pad_frame(p.unsqueeze(0).to(device)) for p in pictures]
    pixels = len(pictures) * pictures[0].shape[-1] * pictures[0].shape[-2]
    times = []
    for _ in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        terms = decoder_update_cost(model, update, config.prior, clip, 0.0067, pixels)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps / len(pictures)


def cross_device(arch: str, encoder: torch.device, decoder: torch.device, pictures: list[torch.Tensor]) -> dict:
    """Encode on ``encoder``, decode on ``decoder``: whether it parsed, the drift in dB and the largest
    per-pixel difference (in 8-bit levels) between the decoder's frames and the encoder's reconstruction."""
    loaded = random_model(ARCHITECTURE_PRESETS[arch], 1, 0, f"bench-{arch}")
    height, width = pictures[0].shape[-2:]
    header = header_for(loaded, width, height, len(pictures))
    model = place_model(loaded.model, encoder)
    encoded = encode_sequence(model, model.entropy_tables(), pictures, header)
    model = place_model(model, decoder)
    _, frames = decode_sequence(encoded.data, lambda h: (model, model.entropy_tables()))
    mse = sum(float((a - b).double().pow(2).mean()) for a, b in zip(frames, encoded.reconstruction)) / len(frames)
    worst = max(float((a - b).abs().max()) for a, b in zip(frames, encoded.reconstruction))
    return {"parsed": True, "drift_db": math.inf if mse == 0 else 10 * math.log10(1.0 / mse), "max_diff": 255 * worst}


def section(args, rows: list[str], cross: list[str]) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return "\n".join([
        "## Device path (benchmarks/bench_device.py)", "",
        f"Measured {datetime.date.today()} on {cpu_name()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch "
        f"threads), GPU: {gpu}; torch {torch.__version__}, Python {platform.python_version()}.", "",
        f"`python benchmarks/bench_device.py --arch {args.arch} --size {args.size} --frames {args.frames} "
        f"--steps {args.steps}`: untrained seeded weights, bigbuckbunny centre crops, one I-frame then P-frames; "
        "the parse path (hyper-decoders, scale-table indices, factorized tables) runs on the CPU on every device.", "",
        "| device | encode fps | decode fps | decoder-LoRA training s / frame / step |", "|---|---|---|---|", *rows, "",
        "Cross-device: encode on one device, decode on the other (drift: PSNR of the decoder's frames against the "
        "encoder's reconstruction; inf = bit-exact).", "",
        "| encoder | decoder | parsed | drift dB | max diff (8-bit levels) |", "|---|---|---|---|---|", *cross, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="compact", choices=sorted(ARCHITECTURE_PRESETS))
    parser.add_argument("--size", default="352x288", help="WxH, multiples of 2")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per device")
    parser.add_argument("--out", type=Path, default=None, help="write the section into this RESULTS.md")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    pictures = bigbuckbunny_frames(args.frames, width, height)
    rows, cross = [], []
    for device in devices():
        configure_determinism(device)
        speed = codec_speed(args.arch, device, pictures)
        seconds = adaptation_speed(args.arch, device, pictures, args.steps)
        rows.append(f"| {device} | {speed['encode fps']:.2f} | {speed['decode fps']:.2f} | {seconds:.3f} |")
        print(rows[-1], flush=True)
    cpu = torch.device("cpu")
    pairs = [(cpu, cpu)]  # the reference row: same device kind, bit-exact
    if len(devices()) > 1:
        pairs += [(devices()[1], cpu), (cpu, devices()[1]), (devices()[1], devices()[1])]
    for encoder, decoder in pairs:
        result = cross_device(args.arch, encoder, decoder, pictures)
        cross.append(f"| {encoder} | {decoder} | yes | {result['drift_db']:.2f} | {result['max_diff']:.3f} |")
        print(cross[-1], flush=True)
    if len(devices()) == 1:
        cross.append("| cuda | cpu, and back | not measured: no CUDA device on this machine | - | - |")
    text = section(args, rows, cross)
    if args.out:
        replace_section(args.out, "device", text)
    print(text)


if __name__ == "__main__":
    main()
