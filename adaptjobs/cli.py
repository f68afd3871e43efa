"""The `adaptjobs` command line: one entry point, one subcommand per job.

`main(argv)` returns the exit code, so tests call it in process. Errors caused by the input (bad video,
corrupted bitstream, wrong model) print one line naming the file and the cause and exit with 1 (usage: 2,
argparse's own); anything else is a bug: one line naming it and a traceback file, exit 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schemas.methods import method_names
from workers.errors import InputError

METHOD_NAMES = tuple(method_names())

EXIT_INPUT_ERROR = 1
EXIT_INTERNAL_ERROR = 3  # a bug or a crash, not the user's input
EXIT_RUN_INCOMPLETE = 4  # submit/resume: some units failed or did not run
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _thread_count(text: str) -> int:
    """--threads: 1 .. the cores this process may use. Checked before torch sees it (issue 11: 100000
    threads segfaulted in OpenMP); more threads than cores only slow a CPU codec down."""
    from workers.limits import available_cores

    value = _positive_int(text)
    if value > available_cores():
        raise argparse.ArgumentTypeError(f"must be <= {available_cores()} (the cores available), got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _device_spec(text: str) -> str:
    """--device: auto, cpu, cuda or cuda:N (checked here: usage error, exit 2); whether that device exists
    is checked when the command runs (workers/device.resolve_device: one line, exit 1)."""
    from workers.device import check_device_spec

    try:
        return check_device_spec(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}") from None


def _add_device_option(command: argparse.ArgumentParser, per_task: bool = False) -> None:
    where = ("each unit's device: auto = the GPU Ray assigned to the unit (--gpus-per-task), else the CPU"
             if per_task else "where the codec's transforms and training run: auto (the CPU outside Ray), cpu, "
                              "cuda or cuda:N")
    command.add_argument("--device", type=_device_spec, default="auto",
                         help=f"{where}; streams parse on any device (default auto)")


def _add_execution_options(command: argparse.ArgumentParser) -> None:
    _add_device_option(command, per_task=True)
    command.add_argument("--address", help="Ray cluster: auto, ray://HOST:PORT or HOST:PORT (default: RAY_ADDRESS if "
                                           "set, else an embedded local Ray)")
    command.add_argument("--cpus-per-task", type=_non_negative_float, default=1.0,
                         help="CPUs reserved per unit; also its torch threads (default 1)")
    command.add_argument("--gpus-per-task", type=_non_negative_float, default=0.0,
                         help="GPUs reserved per adaptation unit (default 0)")
    command.add_argument("--max-retries", type=_non_negative_int, default=3,
                         help="retries of a unit whose worker or node died (default 3); errors are never retried")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_frame_options(command: argparse.ArgumentParser, frames_help: str) -> None:
    from workers.run_layout import DEFAULT_INTRA_PERIOD

    command.add_argument("--frames", type=_positive_int, help=frames_help)
    command.add_argument("--intra-period", type=_non_negative_int, default=DEFAULT_INTRA_PERIOD,
                         help=f"frames per I-frame; 0 = only the first (default {DEFAULT_INTRA_PERIOD})")


def _codec_names() -> list[str]:
    from workers.codecs import codec_names

    return codec_names()


def _add_codec_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--codec", default="ssf", choices=_codec_names(),
                         help="base codec (default ssf; x264/x265 write Annex B streams .h264/.hevc)")
    command.add_argument("--model", help="SSF: checkpoint (.safetensors), model folder, CompressAI .pth.tar, or shipped "
                                         "name (default: the shipped base model)")
    command.add_argument("--quality", help="the codec's quality: SSF quality index 1..N (default 3 for a family), "
                                           "x264/x265 CRF 0..51 (default 32)")
    command.add_argument("--codec-set", action="append", default=[], metavar="KEY=VALUE",
                         help="codec setting, e.g. preset=slow for x264/x265, filter=PF.safetensors for their "
                              "post-filter (default: the shipped one) (repeatable)")


def _add_encode_parsers(commands) -> None:
    encode = commands.add_parser("encode", help="encode a video with the base codec (no adaptation)")
    encode.add_argument("input", help="video file, raw WxH .yuv, or folder of PNG frames")
    encode.add_argument("-o", "--output", required=True, help="the stream to write (.bits; .h264/.hevc for x264/x265)")
    _add_codec_options(encode)
    _add_frame_options(encode, "encode at most this many frames")
    encode.add_argument("--recon", help="also write the reconstruction (.y4m, or a folder of PNGs)")
    encode.add_argument("--padding", choices=["adaptjobs", "compressai"], default=None,
                        help="SSF: how frames are padded: adaptjobs (default: replicate to x16, latents to x8) or "
                             "compressai (zeros, centred, to x128: what CompressAI's video eval runs, to reproduce "
                             "published ssf2020 numbers; use with --intra-period 0 as its eval does); the same as "
                             "--codec-set padding=... (submit: --codec-set ssf:padding=...)")
    _add_device_option(encode)
    encode.add_argument("--json", action="store_true", help="print the result as JSON")

    decode = commands.add_parser("decode", help="decode a stream (.bits, .h264, .hevc; codec from the suffix)")
    decode.add_argument("input", help="the stream, or a unit folder holding one (and its payload)")
    decode.add_argument("-o", "--output", required=True, help="the reconstruction to write (.y4m, or a folder of PNGs)")
    decode.add_argument("--model", help="SSF: the base model (default: the one the bitstream names, if shipped); "
                                        "x264/x265: a post-filter file, used when the stream's SEI names it "
                                        "(default: the shipped filters)")
    decode.add_argument("--payload", help="the weight payload the stream needs (default: <name>.payload beside it)")
    decode.add_argument("--json", action="store_true", help="print the stream's header as JSON")
    _add_device_option(decode)

    adapt = commands.add_parser("adapt", help="adapt the codec to one video and code it (stream + weight payload)")
    adapt.add_argument("input", help="video file, raw WxH .yuv, or folder of PNG frames")
    adapt.add_argument("-o", "--output", required=True, help="output folder: <name>.bits (.h264, .hevc), <name>.payload, "
                                                             "result.json, adapt.log, checkpoint/")
    adapt.add_argument("--method", required=True, choices=METHOD_NAMES, help="adaptation method")
    _add_codec_options(adapt)
    _add_frame_options(adapt, "use at most this many frames")
    adapt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="method option, e.g. training.epochs=3, variant=repeat, prior.grid=0.004, steps=2, "
                            "lora.ranks=[8,4,4,2] (JSON values; repeatable; see `adaptjobs methods`)")
    adapt.add_argument("--recon", help="also write the reconstruction (.y4m, or a folder of PNGs)")
    adapt.add_argument("--json", action="store_true", help="print result.json")
    _add_device_option(adapt)

    methods = commands.add_parser("methods", help="list the adaptation methods, the codecs they apply to and their "
                                                  "options with defaults")
    methods.add_argument("--json", action="store_true")


def _add_model_parsers(commands) -> None:
    init = commands.add_parser("init-model", help="write an untrained, seeded checkpoint (tests, benchmarks, pretraining start)")
    init.add_argument("output", help="the checkpoint to write (.safetensors)")
    init.add_argument("--arch", default="compact", help="architecture preset: full, compact or tiny")
    init.add_argument("--quality", type=_positive_int, default=1)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--model-id", help="identifier stored in bitstreams (default: from the file name)")

    commands.add_parser("pretrain-filter", add_help=False,
                        help="train the x264/x265 post-filter on cached (original, decoded) pairs (resumable); "
                             "its options are those of workers.postfilter.pretrain: adaptjobs pretrain-filter --help")
    pretrain = commands.add_parser("pretrain", help="train the base codec on folders of videos and images (resumable)")
    pretrain.add_argument("data", nargs="+", help="folders of training videos and images (searched recursively)")
    pretrain.add_argument("-o", "--output", required=True, help="run folder: config, cache, state, log, models/")
    pretrain.add_argument("--arch", default="compact", help="architecture preset: full, compact or tiny")
    pretrain.add_argument("--qualities", default="1,2,3,4", help="comma-separated quality indices (default 1,2,3,4)")
    pretrain.add_argument("--model-id", default="ssf-compact", help="identifier written into checkpoints and bitstreams")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--crop", type=_positive_int, default=128, help="crop side in px, a multiple of 128")
    pretrain.add_argument("--batch", type=_positive_int, default=8)
    pretrain.add_argument("--clip-frames", type=_positive_int, default=3, help="frames per training clip (I + P-frames)")
    pretrain.add_argument("--intra-steps", type=_non_negative_int, default=2000)
    pretrain.add_argument("--inter-steps", type=_positive_int, default=4000)
    pretrain.add_argument("--finetune-steps", type=_positive_int, default=1000)
    pretrain.add_argument("--lr", type=float, default=2e-4)
    pretrain.add_argument("--checkpoint-every", type=_positive_int, default=100)
    pretrain.add_argument("--clips-per-video", type=_positive_int, default=24)
    pretrain.add_argument("--storage-dtype", choices=["float32", "float16"], default="float16")
    pretrain.add_argument("--stop-after-steps", type=_positive_int, help="train at most this many steps now, then save and exit")
    pretrain.add_argument("--time-limit", type=float, help="train at most this many minutes now, then save and exit")
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    pretrain.add_argument("--lambdas", help="comma-separated MSE lambdas, one per quality in increasing order "
                                            "(default: CompressAI's lambdas of those quality indices)")
    pretrain.add_argument("--init-from", help="start from this checkpoint's weights instead of random ones")
    _add_device_option(pretrain)


def _add_run_parsers(commands) -> None:
    submit = commands.add_parser("submit", help="run a directory of videos on Ray: one unit per (video, codec, quality, "
                                                "method), plus x264/x265 anchors (method none)")
    submit.add_argument("videos", help="folder of videos (files with a video suffix, and folders of PNG frames)")
    submit.add_argument("--run", required=True, help="run directory (on storage every node sees, for a cluster)")
    submit.add_argument("--methods", default="none,decoder-lora",
                        help=f"comma-separated adaptation methods (default none,decoder-lora; known: {', '.join(METHOD_NAMES)}); "
                             "each runs on the chosen codecs it applies to")
    submit.add_argument("--codec", action="append", default=[], metavar="CODEC[:Q1,Q2,...]",
                        help=f"base codec and its quality points (repeatable: several codecs in one run; default ssf; "
                             f"known: {', '.join(_codec_names())}), e.g. --codec ssf:1,2,3,4 --codec x264:22,27,32,37")
    submit.add_argument("--qualities", help="comma-separated quality points of the one --codec given without its own "
                                            "(SSF quality indices, default every quality of the model; x264/x265 CRFs)")
    submit.add_argument("--model", help="SSF model family or checkpoint (default: the shipped one)")
    submit.add_argument("--codec-set", action="append", default=[], metavar="CODEC:KEY=VALUE",
                        help="codec setting, e.g. x264:preset=slow (repeatable)")
    _add_frame_options(submit, "use at most this many frames of each video")
    submit.add_argument("--set", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                        help="method option, e.g. decoder-lora:training.epochs=3 (without METHOD: for every chosen "
                             "method; repeatable; see `adaptjobs methods`)")
    submit.add_argument("--anchors", help="x264,x265 (default), a subset, or none: method-none units of these codecs "
                                          "over their default CRFs, unless the codec is already chosen with --codec")
    _add_execution_options(submit)

    resume = commands.add_parser("resume", help="continue a run: DONE units are kept, others continue from their "
                                                "checkpoints")
    resume.add_argument("run", help="the run directory")
    resume.add_argument("--retry-failed", action="store_true", help="also run the FAILED units again")
    _add_execution_options(resume)

    status = commands.add_parser("status", help="show a run's units: state, attempts, last error, time")
    status.add_argument("run", help="the run directory")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    report = commands.add_parser("report", help="tables, RD plots, BD-rates and CSV/JSON of a run (reads RUN only)")
    report.add_argument("run", help="the run directory")
    report.add_argument("--metric", choices=["psnr-rgb", "psnr-yuv", "psnr-y", "ms-ssim"], default=None,
                        help="quality metric of the BD-rates and RD plots (default: psnr-rgb, or psnr-yuv when every "
                             "codec of the run is a standard one; ms-ssim is compared in dB, -10 log10(1 - MS-SSIM))")
    report.add_argument("--out", help="folder to write (default RUN/report)")

    info = commands.add_parser("info", help="describe a stream (.bits, .h264, .hevc), a weight payload (.payload) "
                                            "or a checkpoint (.safetensors; a CompressAI .pth.tar: what it would "
                                            "import)")
    info.add_argument("input", help="a stream, a checkpoint, or (with --rates) a unit folder")
    info.add_argument("--rates", action="store_true",
                      help="SSF: estimated (training's likelihoods) against coded bits per frame and per stream "
                           "(motion y/z, residual y/z, I-frame y/z); decodes the stream")
    info.add_argument("--model", help="--rates: checkpoint or family to decode with (default: found by weights hash)")
    info.add_argument("--payload", help="--rates: the decoder update (default: <stream>.payload beside it)")
    info.add_argument("--json", action="store_true", help="--rates: print the rows and totals as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptjobs", description="Per-video adaptation jobs for video compression.")
    parser.add_argument("--threads", type=_thread_count, default=None,
                        help="torch CPU threads for this process (default: torch's choice)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_encode_parsers(commands)
    _add_model_parsers(commands)
    _add_run_parsers(commands)
    return parser


def _quality(args) -> int | float | None:
    from adaptjobs.options import parse_quality

    return None if args.quality is None else parse_quality(args.quality)


def _cmd_encode(args) -> int:
    from adaptjobs.options import parse_codec_settings
    from adaptjobs.output_paths import make_output_parent
    from workers.encode_job import encode_file

    make_output_parent(args.output, "stream")
    device = _device(args)
    settings = parse_codec_settings(args.codec_set)
    if args.padding is not None:
        settings["padding"] = args.padding
    result = encode_file(args.input, args.output, model=args.model, quality=_quality(args), frames=args.frames,
                         intra_period=args.intra_period, recon=args.recon, codec=args.codec, settings=settings,
                         device=device)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(f"{result.bitstream}: {result.bytes_written} bytes, {result.frames} frames {result.width}x{result.height}, "
              f"{result.bpp:.4f} bpp, PSNR-RGB {result.psnr_rgb:.2f} dB, PSNR-YUV {result.psnr_yuv:.2f} dB, "
              f"MS-SSIM {result.ms_ssim_rgb:.4f} ({result.model_id}, quality {result.quality:g}, verified by decoding)")
    return 0


def _cmd_decode(args) -> int:
    import json

    from adaptjobs.output_paths import make_output_parent
    from workers.encode_job import decode_file

    device = _device(args)
    make_output_parent(args.output, "reconstruction")
    info = decode_file(args.input, args.output, model=args.model, payload_path=args.payload, device=device)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        model = f"model {info['model_id']} q{info['quality']}" if "model_id" in info else info["codec"]
        print(f"{args.output}: {info['frames']} frames {info['width']}x{info['height']} ({model}; "
              f"{_match_note(info, device)})")
    return 0


DECISIONS = {"sent": "update sent", "sent-lora-only": "LoRA update sent, encoder adapters dropped (cheaper)",
             "sent-adapters-only": "encoder adapters on the base model sent, LoRA dropped (cheaper)",
             "base-cheaper": "no update sent (the base codec was cheaper)",
             "zero-update": "no update sent (training left it at zero)", "base-method": "base codec",
             "filter-on": "the shipped post-filter on, named in the stream's SEI (no update)"}


def _device(args):
    """The resolved --device of a command run in this process (auto = the CPU: no Ray task here); a CUDA
    device that is not there is an InputError (one line, exit 1). Sets the CUDA determinism flags."""
    from workers.device import use_device

    return use_device(args.device)


def _match_note(info: dict, device) -> str:
    coded = info.get("device") or "cpu"
    if info.get("expected_match") == "bit-exact":
        return f"coded and decoded on {coded}: bit-exact"
    return (f"coded on {coded}, decoded on {device.type}: parse-exact, the frames may drift in the last bits "
            "(same device kind gives bit-exact frames)")


def _cmd_adapt(args) -> int:
    from adaptjobs.options import parse_codec_settings, parse_set_options
    from schemas.adapt import AdaptResult
    from schemas.job import VideoTask
    from workers.codecs import codec_class
    from workers.methods import check_applies, parse_method_config
    from workers.run_layout import ADAPT_LOG, RESULT_FILE
    from workers.task import describe_input, run_task

    config = parse_method_config(args.method, parse_set_options(args.set))
    check_applies(args.method, args.codec)
    device = _device(args)  # before any work: cuda asked for and absent is a one-line error
    point = codec_class(args.codec).single_point(args.model, _quality(args), parse_codec_settings(args.codec_set))
    from adaptjobs.output_paths import make_output_folder

    outdir = make_output_folder(Path(args.output).resolve(), "output folder")
    task = VideoTask(unit_dir=str(outdir), video=describe_input(args.input), method=config, codec=point,
                     frames=args.frames, intra_period=args.intra_period,
                     recon=None if args.recon is None else str(Path(args.recon).resolve()), device=str(device))
    outcome = run_task(task, redo=True)
    if outcome.state == "failed":
        failure = outcome.failure
        detail = "" if failure.kind == "input" else f" (traceback in {outdir / ADAPT_LOG})"
        print(f"adaptjobs adapt: error: {failure.error}{detail}", file=sys.stderr)
        return EXIT_INPUT_ERROR if failure.kind == "input" else EXIT_INTERNAL_ERROR
    result = AdaptResult.model_validate_json((outdir / RESULT_FILE).read_text())
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(f"{args.output}: {result.codec} {result.method} q{result.quality:g}: {result.bpp_with_payload:.4f} bpp "
              f"({result.payload_bytes} payload bytes, {100 * result.payload_share:.2f}% of the total), "
              f"PSNR-RGB {result.psnr_rgb:.2f} dB, RD cost {result.rd_cost:.4f} vs base {result.rd_cost_base:.4f}; "
              f"{DECISIONS.get(result.decision, result.decision)}; {result.adaptation_steps} steps in "
              f"{result.adapt_seconds:.1f} s; verified by decoding")
    return 0


def _cmd_methods(args) -> int:
    import json

    from schemas.methods import METHOD_CONFIGS
    from workers.methods import METHODS

    described = {name: {"codecs": list(METHODS[name].codecs), "defaults": METHOD_CONFIGS[name]().model_dump(mode="json")}
                 for name in METHOD_NAMES}
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for name, entry in described.items():
        print(f"{name}: {(METHOD_CONFIGS[name].__doc__ or '').strip().splitlines()[0]}")
        print(f"    codecs: {', '.join(entry['codecs'])}")
        print(f"    defaults: {json.dumps({k: v for k, v in entry['defaults'].items() if k != 'method'})}")
    return 0


def _cmd_init_model(args) -> int:
    from schemas.codec import ARCHITECTURE_PRESETS
    from workers.checkpoints import random_model, save_checkpoint

    if args.arch not in ARCHITECTURE_PRESETS:
        raise InputError(None, f"--arch must be one of {sorted(ARCHITECTURE_PRESETS)}, got {args.arch!r}")
    model_id = args.model_id or Path(args.output).name.removesuffix(".safetensors")
    loaded = random_model(ARCHITECTURE_PRESETS[args.arch], args.quality, args.seed, model_id)
    save_checkpoint(args.output, loaded.model, loaded.metadata)
    print(f"{args.output}: untrained {args.arch} SSF, quality {args.quality}, seed {args.seed}, "
          f"sha256 {loaded.metadata.weights_sha256[:12]}")
    return 0


def _cmd_pretrain(args) -> int:
    from pydantic import ValidationError

    from schemas.codec import ARCHITECTURE_PRESETS
    from schemas.pretrain import PretrainConfig
    from workers.pretrain.loop import run_pretrain

    if args.arch not in ARCHITECTURE_PRESETS:
        raise InputError(None, f"--arch must be one of {sorted(ARCHITECTURE_PRESETS)}, got {args.arch!r}")
    try:
        qualities = sorted({int(q) for q in args.qualities.split(",") if q.strip()})
        lambdas = None
        if args.lambdas:
            values = [float(v) for v in args.lambdas.split(",") if v.strip()]
            if len(values) != len(qualities):
                raise ValueError(f"--lambdas gives {len(values)} values for {len(qualities)} qualities")
            lambdas = dict(zip(qualities, values))
        init_from = init_sha256 = None
        if args.init_from:
            from workers.checkpoints import load_checkpoint
            init_from = str(Path(args.init_from).resolve())
            init_sha256 = load_checkpoint(init_from).metadata.weights_sha256
        config = PretrainConfig(
            data=[str(Path(d).resolve()) for d in args.data], architecture=ARCHITECTURE_PRESETS[args.arch],
            qualities=qualities, model_id=args.model_id, seed=args.seed, crop=args.crop, batch=args.batch,
            clip_frames=args.clip_frames, intra_steps=args.intra_steps, inter_steps=args.inter_steps,
            finetune_steps=args.finetune_steps, learning_rate=args.lr, checkpoint_every=args.checkpoint_every,
            clips_per_video=args.clips_per_video, storage_dtype=args.storage_dtype, lambdas=lambdas,
            init_from=init_from, init_sha256=init_sha256)
    except (ValueError, ValidationError) as exc:
        raise InputError(None, f"invalid pretraining options: {str(exc).splitlines()[-1].strip()}") from None
    trainer = run_pretrain(config, Path(args.output), stop_after_steps=args.stop_after_steps,
                           time_limit_s=None if args.time_limit is None else 60 * args.time_limit,
                           progress=not args.no_progress, device=_device(args))
    done = "finished" if trainer.done else f"stopped at step {trainer.steps_done} (run the same command to continue)"
    print(f"{args.output}: pretraining {done}; models in {Path(args.output) / 'models'}")
    return 0


def _cmd_pretrain_filter(args, rest: list[str]) -> int:
    from workers.postfilter.pretrain import main as pretrain_filter

    return pretrain_filter(rest)


def _cmd_report(args) -> int:
    from adaptjobs.report import write_report

    outcome = write_report(args.run, metric=args.metric, out=args.out)
    counts = outcome.counts
    print(f"{outcome.out_dir}: report.md, report.html, summary.csv, summary.json and "
          f"{sum(1 for f in outcome.files if f.suffix == '.png')} plot(s); {counts['done']} of {counts['total']} "
          f"units done, {counts['failed']} failed, {counts['missing']} missing")
    return 0


def _cmd_info(args) -> int:
    from workers.bitstream import unpack
    from workers.checkpoints import load_checkpoint

    path = Path(args.input)
    if args.rates:
        return _print_rates(path, args)
    if path.suffix == ".safetensors":
        print(load_checkpoint(path).metadata.model_dump_json(indent=2))
        return 0
    if path.name.endswith((".pth.tar", ".pth", ".pt")):
        import json

        from workers.checkpoints import read_compressai

        print(json.dumps(read_compressai(path, quality_required=False).summary(), indent=2))
        return 0
    from workers.limits import MAX_BITSTREAM_BYTES, read_regular_file

    if path.suffix == ".payload":
        return _print_payload(path)
    data = read_regular_file(path, "stream", MAX_BITSTREAM_BYTES)  # a FIFO or a device must not hang us
    from workers.codecs.base import codec_for_path, stream_suffixes

    if path.suffix in stream_suffixes() and path.suffix != ".bits":  # a standard codec's Annex B stream
        import json

        print(json.dumps(codec_for_path(path).for_stream(data, path, None).stream_info(data, path), indent=2))
        return 0
    header, frames = unpack(data, path)
    print(header.model_dump_json(indent=2))
    for index, frame in enumerate(frames):
        print(f"frame {index}: {'IP'[frame.frame_type]} streams {[len(s) for s in frame.streams]} bytes")
    return 0


def _print_payload(path: Path) -> int:
    """`info X.payload`: the weight payload's header and where its bytes go (framing and CRC checked, nothing
    decoded: the base model is not needed)."""
    import json

    from workers.adapt.payload import payload_layout, read_payload_header
    from workers.limits import MAX_PAYLOAD_BYTES, read_regular_file

    data = read_regular_file(path, "payload", MAX_PAYLOAD_BYTES)
    layout = payload_layout(data, path)
    print(json.dumps({"bytes": len(data), "format": layout["version"], "header_bytes": layout["header"],
                      "coded_weights_bytes": layout["stream"],
                      **read_payload_header(data, path).model_dump(mode="json")}, indent=2))
    return 0


def _print_rates(path: Path, args) -> int:
    """`info --rates`: workers/rate_audit.py on the stream (or a unit folder's stream)."""
    import json

    from workers.rate_audit import stream_rates_of

    rows, totals = stream_rates_of(path, model=args.model, payload_path=args.payload)
    if args.json:
        from dataclasses import asdict

        print(json.dumps({"frames": [asdict(r) for r in rows], "totals": totals}, indent=2))
        return 0
    print("bits per frame and stream: estimated (training's likelihoods) / table (coding tables) / coded")
    for row in rows:
        escaped = f"  {row.escaped} escaped" if row.escaped else ""
        print(f"frame {row.frame:4d} {row.latent:>8} {row.stream}: {row.estimated:10.0f} / {row.table:10.0f} / "
              f"{row.coded:8d}{escaped}")
    for name, total in totals.items():
        print(f"total {name:>10}: estimated {total['estimated']:.0f}, table {total['table']:.0f}, coded "
              f"{total['coded']:.0f} bits (coded / estimated {total['coded_over_estimated']:.3f}), "
              f"{total['escaped']:.0f} escaped")
    return 0


def _execution(args):
    from adaptjobs.extras import require
    from adaptjobs.runner import Execution

    require("ray", f"adaptjobs {args.command}")  # before anything is written

    if args.cpus_per_task <= 0:
        raise InputError(None, f"--cpus-per-task must be > 0, got {args.cpus_per_task}")
    if args.device != "auto" and args.device != "cpu" and not args.gpus_per_task:
        raise InputError(None, f"--device {args.device} needs --gpus-per-task > 0 (Ray gives a unit a GPU only "
                               "when it reserves one)")
    return Execution(address=args.address, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                     max_retries=args.max_retries, progress=not args.no_progress, sigterm_interrupts=True,
                     device=args.device)


def _drive(store, spec, execution, retry_failed: bool) -> int:
    from adaptjobs.runner import run

    summary = run(store, spec, execution, retry_failed=retry_failed)
    status = store.status()
    counts = status.counts
    print(f"{store.root}: {counts['done']}/{counts['total']} units done, {counts['failed']} failed, "
          f"{counts['pending'] + counts['interrupted'] + counts['running']} not run "
          f"({summary.done} finished and {summary.failed} failed now, {summary.skipped_done} were already done; "
          f"{summary.seconds:.1f} s)")
    for row in status.units:
        if row.state == "failed":
            print(f"  FAILED {row.unit}: {row.last_error}")
    if summary.skipped_failed and not retry_failed:
        print(f"  {summary.skipped_failed} unit(s) failed before and were not retried (adaptjobs resume --retry-failed)")
    return 0 if counts["done"] == counts["total"] else EXIT_RUN_INCOMPLETE


def submit_spec(args):
    """The JobSpec `adaptjobs submit` writes for its parsed ``args`` (also how the demo tells a stale run)."""
    from adaptjobs.spec import build_spec, parse_codec_choices

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    codecs = parse_codec_choices(args.codec, args.qualities, args.codec_set, args.anchors)
    return build_spec(args.videos, methods, args.set, codecs, args.model, args.frames, args.intra_period)


def _cmd_submit(args) -> int:
    from adaptjobs.run_store import RunStore

    execution = _execution(args)
    spec = submit_spec(args)
    store = RunStore(args.run)
    with store.driver_lock():
        store.write_spec_once(spec)
        return _drive(store, spec, execution, retry_failed=False)


def _cmd_resume(args) -> int:
    from adaptjobs.run_store import RunStore

    execution = _execution(args)
    store = RunStore(args.run)
    spec = store.read_spec()
    with store.driver_lock():
        return _drive(store, spec, execution, retry_failed=args.retry_failed)


def _cmd_status(args) -> int:
    from adaptjobs.report import status_bd_rate_line
    from adaptjobs.run_store import RunStore

    status = RunStore(args.run).status()
    if args.json:
        print(status.model_dump_json(indent=2))
        return 0
    counts = status.counts
    print(f"{status.run}: {counts['total']} units: {counts['done']} done, {counts['failed']} failed, "
          f"{counts['running']} running, {counts['interrupted']} interrupted, {counts['pending']} pending"
          f"{' (a driver is working on it)' if status.driver_active else ''}")
    header = ("unit", "state", "tries", "seconds", "all tries s", "last error")
    rows = [(r.unit, r.state, str(r.attempts), "" if r.seconds is None else f"{r.seconds:.1f}",
             "" if r.total_seconds is None else f"{r.total_seconds:.1f}", r.last_error or "") for r in status.units]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:-1])]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1])
    if bd_rate_line := status_bd_rate_line(status):  # complete runs only
        print(bd_rate_line)
    return 0


COMMANDS = {"submit": _cmd_submit, "resume": _cmd_resume, "status": _cmd_status, "report": _cmd_report, "encode": _cmd_encode, "decode": _cmd_decode, "init-model": _cmd_init_model, "pretrain": _cmd_pretrain,
            "info": _cmd_info, "adapt": _cmd_adapt, "methods": _cmd_methods}
PASS_THROUGH = {"pretrain-filter": _cmd_pretrain_filter}  # their options belong to the module they call


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in PASS_THROUGH:
        return PASS_THROUGH[args.command](args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"adaptjobs {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except BrokenPipeError:  # `adaptjobs status RUN | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        run = getattr(args, "run", None)
        after = f"; finished units are kept: adaptjobs resume {run}" if run and args.command in ("submit", "resume") else ""
        print(f"adaptjobs {args.command}: interrupted{after}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, not the input: one line and the traceback's file, never a bare traceback
        print(f"adaptjobs {args.command}: internal error: {exception_type_and_line(exc)} (traceback in "
              f"{write_traceback(args.command, argv)})", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def exception_type_and_line(exc: BaseException) -> str:
    from workers.errors import exception_line

    return f"{type(exc).__name__}: {exception_line(exc)}"


def write_traceback(command: str, argv: list[str] | None) -> str:
    """Write the current exception's traceback to a new file under $TMPDIR and return its path (or a note
    that it could not be written: the one-line report must still come out)."""
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix=f"adaptjobs-{command}-", suffix=".traceback.txt")
        with open(fd, "w") as handle:
            handle.write(f"adaptjobs {' '.join(sys.argv[1:] if argv is None else argv)}\n\n{traceback.format_exc()}")
        return path
    except OSError as error:
        return f"nowhere: {error.strerror}"


if __name__ == "__main__":
    sys.exit(main())
