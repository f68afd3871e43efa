"""Assemble a shipped model family from pretraining outputs: pick one checkpoint per quality index.

    python scripts/assemble_model_family.py --out workers/models/ssf-compact \\
        1=/root/adaptjobs-pretrain/run-low/models/q1.safetensors \\
        2=/root/adaptjobs-pretrain/run-low/models/q2.safetensors \\
        3=/root/adaptjobs-pretrain/run-compact/models/q1.safetensors \\
        4=/root/adaptjobs-pretrain/run-compact/models/q3.safetensors

The weights are copied unchanged (same sha256); the metadata gets the new quality index and a note that
names the source checkpoint, so the card and `adaptjobs info` show where every quality came from. The
lambdas must increase with the quality index.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workers.checkpoints import load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the family folder to write")
    parser.add_argument("--storage-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("sources", nargs="+", help="QUALITY=CHECKPOINT")
    args = parser.parse_args()
    chosen = {}
    for item in args.sources:
        quality, _, path = item.partition("=")
        chosen[int(quality)] = Path(path)
    loaded = {q: load_checkpoint(p) for q, p in sorted(chosen.items())}
    lambdas = [loaded[q].metadata.lmbda for q in sorted(loaded)]
    if any(a is None or b is None or a >= b for a, b in zip(lambdas, lambdas[1:])):
        raise SystemExit(f"lambdas must increase with the quality index, got {lambdas}")
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.safetensors"):
        old.unlink()
    for quality, model in loaded.items():
        meta = model.metadata
        notes = f"{meta.provenance.notes or ''}; shipped as quality {quality} from {chosen[quality].parent.parent.name}/" \
                f"{chosen[quality].name} (trained as quality {meta.quality})".lstrip("; ")
        metadata = meta.model_copy(update={"quality": quality,
                                           "provenance": meta.provenance.model_copy(update={"notes": notes})})
        save_checkpoint(args.out / f"q{quality}.safetensors", model.model, metadata, storage_dtype=args.storage_dtype)
        print(f"q{quality}: lambda {meta.lmbda} sha256 {meta.weights_sha256[:12]} <- {chosen[quality]}")


if __name__ == "__main__":
    main()
