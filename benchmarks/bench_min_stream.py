"""How few stream bytes a real frame can take: the basis of workers/limits.MAX_PIXELS_PER_FRAME_BYTE.

Codes the most compressible content there is (flat grey and black 1024x1024 frames, 3 frames, one
I-frame then P-frames) with the shipped model at its lowest and highest quality, one torch thread, and
prints each frame's stream lengths and pixels per stream byte.

    python benchmarks/bench_min_stream.py
"""

from __future__ import annotations

import torch

from schemas.bitstream import BitstreamHeader
from workers.bitstream import unpack
from workers.model_store import (SHIPPED_MODELS_DIR, default_model_name, family_qualities, resolve_model,
                                  shipped_model_names)
from workers.video_codec import encode_sequence


def main(side: int = 1024) -> None:
    torch.set_num_threads(1)
    name = default_model_name()
    available = sorted(family_qualities(SHIPPED_MODELS_DIR / name))
    qualities = sorted({available[0], available[-1]})
    print(f"model {name} (shipped: {shipped_model_names()}), {side}x{side}")
    for quality in qualities:
        loaded = resolve_model(name, quality)
        tables = loaded.model.entropy_tables()
        for label, frame in (("flat grey", torch.full((3, side, side), 0.5)), ("black", torch.zeros(3, side, side))):
            meta = loaded.metadata
            header = BitstreamHeader(model_id=meta.model_id, weights_sha256=meta.weights_sha256, quality=quality,
                                     width=side, height=side, frame_count=3, fps_num=30, fps_den=1, intra_period=0)
            _, chunks = unpack(encode_sequence(loaded.model, tables, [frame] * 3, header).data)
            sizes = [sum(map(len, c.streams)) for c in chunks]
            ratios = ", ".join(f"{side * side / n:.0f}" for n in sizes)
            print(f"q{quality} {label}: stream bytes per frame {sizes}; pixels per stream byte {ratios}")


if __name__ == "__main__":
    main()
