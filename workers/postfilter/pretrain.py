"""Train the post-filter on cached (original, decoded) pairs: ``python -m workers.postfilter.pretrain``.

One model serves both codecs and every CRF (both are inputs of the network). Each step draws, per codec,
one CRF and ``batch / 2`` random crops: an item, a stored frame (I-frames weighted 1/intra_period as in a
coded sequence), an even crop position and a horizontal flip, all from a generator seeded with (seed,
step), so the data of step s never depends on how the run got there.

Loss (``--loss relative``, the default): per codec half and plane, the filtered MSE summed over the crops
over the decoded MSE summed over the same crops, weighted like PSNR-YUV, (6 Y + U + V) / 8; ``--loss mse``
uses the plain weighted MSE. Why a ratio: the MSE at CRF 51 is ~100x the MSE at CRF 17, so the plain MSE
trains almost only the low-rate end while BD-rate weighs every CRF's dB alike; 10 log10 of the ratio is
the (negated) dB gain of the batch. Why one CRF per half and sums over crops: a per-crop ratio (tried
first) is dominated by flat crops whose decoded MSE is ~0, where any change is a large loss; it kept the
filter at the identity (after rounding to 8 bits: +0.000 dB on 12 frames of each eval-dev sequence at
step 200, largest residual 0.13 code values at step 600), while a sum over the crops of one CRF is what a
frame's PSNR sees. Adam with a short warm-up and a cosine decay.

Warm start (``--init-from FILTER``): the run begins from a trained filter of the same depth widened to
``--channels`` (:func:`workers.postfilter.network.widened`: step 0 computes exactly what FILTER computes), so a
wider filter continues a long run instead of repeating it; config.json records FILTER's weights hash and a
resume refuses another file.

Run folder (OUT)::

    config.json                the TrainConfig, written once; another config on the same OUT is refused
    state.safetensors          model + Adam tensors, metadata {"format", "step"} (atomic)
    state.json                 {"step", "wall_time_s", "state_sha256"}, written after the tensors (atomic)
    log.jsonl                  one line per log interval: step, loss, gain_db, lr, seconds
    checkpoints/step-NNNNNN.safetensors   the filter at each checkpoint (workers.postfilter.checkpoint format)
    latest.safetensors         a copy of the newest of them

Resumed == uninterrupted, byte for byte, for the same machine and thread count (tested).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from workers.atomic import atomic_write_bytes, atomic_write_text
from workers.device import on_cpu, to_cpu_state_dict
from workers.errors import InputError
from workers.postfilter.checkpoint import FilterTraining, save_filter
from workers.postfilter.dataset import DatasetConfig, PairCache, build_cache, open_cache
from workers.postfilter.i420 import unpack_i420
from workers.postfilter.network import FilterArchitecture, PostFilter
from workers.postfilter.objective import planes_loss

STATE_FORMAT = "adaptjobs-postfilter-train-state-1"


@dataclass(frozen=True)
class TrainConfig:
    # the defaults are the first of the eight stages behind the shipped filter (pf-yuv-l8c44-w7): 32 channels from
    # scratch; stages 2 (widened to 44 channels) to 8 start from the previous stage with ``init_from`` and are
    # given with their commands in workers/models/postfilter/MODEL_CARD.md
    name: str = "pf-yuv-l8c32-hi"
    data: tuple[str, ...] = ("/work/shared/data/train",)
    cache: str = ""  # "" = OUT/cache
    layers: int = 8
    channels: int = 32
    steps: int = 20000
    batch: int = 16
    crop: int = 128  # luma pixels, even
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.01
    warmup_steps: int = 100
    loss: str = "relative"
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 25
    threads: int = 2
    max_items: int | None = None  # dataset: tests only
    # dataset: clips of 12 frames taken per training video, spread evenly over its first max_frames_per_video frames
    # (workers/postfilter/dataset.py); stages 1-7 used 4 clips of the first 240 frames
    clips_per_video: int = DatasetConfig.clips_per_video
    max_frames_per_video: int = DatasetConfig.max_frames_per_video
    # CRFs 32-51 only: trained over every CRF from 17 (where a filter has nothing to gain) the low CRFs dominate
    # the gradient and the filter stays near the identity (600 steps: +0.004 dB against +0.027 dB for 32-51).
    # A filter trained that way then learns CRFs 22 and 27 too (stages 6 and 7, ``--crfs 22 27 32 37 42 47 51``)
    crfs: tuple[int, ...] = (32, 37, 42, 47, 51)
    codecs: tuple[str, ...] = DatasetConfig.codecs
    # warm start: a trained filter (our checkpoint format) widened to ``channels`` (network.widened), identified by
    # its weights hash so a resumed run cannot silently start from another file; "" = train from scratch
    init_from: str = ""
    init_from_weights_sha256: str = ""

    def dataset_config(self) -> DatasetConfig:
        return DatasetConfig(codecs=self.codecs, crfs=self.crfs, max_items=self.max_items,
                             clips_per_video=self.clips_per_video, max_frames_per_video=self.max_frames_per_video)

    def architecture(self) -> FilterArchitecture:
        return FilterArchitecture(layers=self.layers, channels=self.channels)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``final_lr_fraction`` of it."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    low = config.final_lr_fraction
    return config.learning_rate * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class Batch:
    """Crops as float tensors in [0, 1]: decoded and original planes (N,1,c,c) / (N,1,c/2,c/2), and the
    CRF (N,) and codec of each crop (one codec per batch half: the network takes one codec per call)."""

    decoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    original: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    crf: torch.Tensor
    codec: list[str]


class Sampler:
    """Draws the crops of a step from the cache (see module docstring)."""

    def __init__(self, cache: PairCache, config: TrainConfig):
        self.cache, self.config = cache, config
        self.items = [i for i, item in enumerate(cache.index["items"])
                      if item["height"] >= config.crop and item["width"] >= config.crop]
        if not self.items:
            raise InputError(None, f"no cached item is at least {config.crop} px on each side")
        self.versions = {tuple(v): k for k, v in enumerate(cache.versions) if v is not None}
        period = DatasetConfig().intra_period
        self.frame_weights = []
        for i in self.items:
            types = cache.index["items"][i]["frame_types"]
            n_p = types.count("P")
            self.frame_weights.append(torch.tensor([1.0 / period if t == "I" or not n_p else (1 - 1.0 / period) / n_p
                                                    for t in types], dtype=torch.float64))

    def _crop(self, generator: torch.Generator, codec: str, crf: int) -> tuple[np.ndarray, np.ndarray, int]:
        pick = int(torch.randint(len(self.items), (1,), generator=generator))
        item = self.cache.index["items"][self.items[pick]]
        frame = int(torch.multinomial(self.frame_weights[pick], 1, generator=generator))
        c, h, w = self.config.crop, item["height"], item["width"]
        top = 2 * int(torch.randint((h - c) // 2 + 1, (1,), generator=generator))
        left = 2 * int(torch.randint((w - c) // 2 + 1, (1,), generator=generator))
        flip = bool(torch.randint(2, (1,), generator=generator))
        array = self.cache.arrays[self.items[pick]]
        rows = [array[v, frame] for v in (0, self.versions[(codec, crf)])]  # memory-mapped views: read only the crop
        crops = []
        for packed in rows:
            y, u, v = unpack_i420(packed)
            parts = [y[top:top + c, left:left + c], u[top // 2:(top + c) // 2, left // 2:(left + c) // 2],
                     v[top // 2:(top + c) // 2, left // 2:(left + c) // 2]]
            crops.append([p[:, ::-1] if flip else p for p in parts])
        return crops[0], crops[1], crf

    def batch(self, step: int) -> list[Batch]:
        """One Batch per codec (the batch split evenly between codecs)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        out = []
        per_codec = max(1, self.config.batch // len(self.config.codecs))
        for codec in self.config.codecs:
            crf = self.config.crfs[int(torch.randint(len(self.config.crfs), (1,), generator=generator))]
            drawn = [self._crop(generator, codec, crf) for _ in range(per_codec)]
            stack = lambda which, p: torch.from_numpy(np.stack([np.ascontiguousarray(d[which][p]) for d in drawn]))[:, None].float().div_(255.0)  # noqa: E731
            out.append(Batch(decoded=tuple(stack(1, p) for p in range(3)), original=tuple(stack(0, p) for p in range(3)),
                             crf=torch.tensor([float(d[2]) for d in drawn]), codec=[codec] * per_codec))
        return out


def batch_loss(model: PostFilter, batch: Batch, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, relative error) of one codec's crops (all at one CRF); see the module docstring."""
    return planes_loss(model(*batch.decoded, batch.crf, batch.codec[0]), batch.original, batch.decoded, loss)


class Trainer:
    """Model, Adam and the step counter of one run folder; ``run`` trains to ``config.steps``."""

    def __init__(self, config: TrainConfig, out: Path, cache: PairCache, device: torch.device | str = "cpu"):
        self.config, self.out, self.device = config, out, torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = PostFilter(config.architecture())  # drawn on the CPU: the same weights on every device
        if config.init_from:
            self.model = warm_start(config)
        # channels-last convolutions train ~2x faster on CPU (measured: 1.3 s vs 2.7 s per 16x128^2 step)
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.sampler = Sampler(cache, config)
        self.step, self.wall_time = 0, 0.0

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"adam.{index}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
        return to_cpu_state_dict(tensors)  # device-independent: a run continues on another device

    def save_state(self) -> None:
        """Tensors first, then state.json naming their hash: a crash between the two leaves the old
        state.json, whose hash no longer matches, and resume refuses instead of mixing steps."""
        from safetensors.torch import save

        # one metadata key: safetensors writes several in hash-map order, which would change the bytes
        data = save(self._state_tensors(), metadata={"state": json.dumps({"format": STATE_FORMAT, "step": self.step})})
        atomic_write_bytes(self.out / "state.safetensors", data)
        state = {"step": self.step, "wall_time_s": round(self.wall_time, 3),
                 "state_sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_text(self.out / "state.json", json.dumps(state, indent=1))
        self._save_filter_copy()

    def _save_filter_copy(self) -> None:
        training = FilterTraining(source="adaptjobs-pretrain-filter", data=describe_data(self.sampler.cache),
                                  steps=self.step, wall_time_s=round(self.wall_time, 1), seed=self.config.seed,
                                  config=asdict(self.config))
        path = self.out / "checkpoints" / f"step-{self.step:06d}.safetensors"
        save_filter(path, on_cpu(self.model), self.config.name, training)
        atomic_write_bytes(self.out / "latest.safetensors", path.read_bytes())

    def load_state(self) -> None:
        from safetensors.torch import load

        state = json.loads((self.out / "state.json").read_text())
        data = (self.out / "state.safetensors").read_bytes()
        if hashlib.sha256(data).hexdigest() != state["state_sha256"]:
            raise InputError(self.out / "state.safetensors", "does not match state.json (interrupted save?)")
        tensors = load(data)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_state = self.optimizer.state_dict()
        for index in range(len(optimizer_state["param_groups"][0]["params"])):
            optimizer_state["state"][index] = {key: tensors[f"adam.{index}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq")}
        self.optimizer.load_state_dict(optimizer_state)
        self.step, self.wall_time = state["step"], state["wall_time_s"]

    # ------------------------------------------------------------------ training
    def train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (loss, mean dB gain of the batch over the unfiltered decode)."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        total, relatives = 0.0, []
        for batch in self.sampler.batch(self.step):  # drawn on the CPU from seeded generators, then moved
            batch = replace(batch, decoded=tuple(p.to(self.device) for p in batch.decoded),
                            original=tuple(p.to(self.device) for p in batch.original), crf=batch.crf.to(self.device))
            loss, relative = batch_loss(self.model, batch, self.config.loss)
            (loss / len(self.config.codecs)).backward()
            total += loss.item() / len(self.config.codecs)
            relatives.append(relative)
        self.optimizer.step()
        self.step += 1
        gain_db = float(-10.0 * torch.log10(torch.cat(relatives).clamp_min(1e-12)).mean())
        return total, gain_db

    def run(self, stop_after_steps: int | None = None) -> None:
        window: list[tuple[float, float]] = []
        started, last = time.monotonic(), time.monotonic()
        done = 0
        while self.step < self.config.steps and (stop_after_steps is None or done < stop_after_steps):
            window.append(self.train_step())
            done += 1
            now = time.monotonic()
            self.wall_time += now - last
            last = now
            if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                self._log(window, now - started)
                window = []
            if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                self.save_state()

    def _log(self, window: list[tuple[float, float]], seconds: float) -> None:
        line = {"step": self.step, "loss": round(float(np.mean([w[0] for w in window])), 6),
                "gain_db": round(float(np.mean([w[1] for w in window])), 4),
                "lr": learning_rate(self.config, self.step - 1), "seconds": round(seconds, 1),
                "wall_time_s": round(self.wall_time, 1)}
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


def warm_start(config: TrainConfig) -> PostFilter:
    """The filter ``config.init_from`` names, checked against its recorded weights hash and widened to the
    configured channels (same depth): step 0 of the run computes what that filter computes."""
    from workers.postfilter.checkpoint import load_filter
    from workers.postfilter.network import widened

    loaded = load_filter(config.init_from)
    if loaded.metadata.weights_sha256 != config.init_from_weights_sha256:
        raise InputError(config.init_from, f"weights hash {loaded.metadata.weights_sha256[:12]} is not the "
                                           f"{config.init_from_weights_sha256[:12] or '(none)'} this run started from")
    if loaded.model.architecture.layers != config.layers:
        raise InputError(config.init_from, f"has {loaded.model.architecture.layers} layers, the run {config.layers}")
    try:
        return widened(loaded.model, config.channels, torch.Generator().manual_seed(config.seed))
    except ValueError as exc:
        raise InputError(config.init_from, str(exc)) from None


def describe_data(cache: PairCache) -> str:
    items = cache.index["items"]
    frames = sum(len(i["frame_types"]) for i in items)
    sources = len({i["source"] for i in items})
    codings = [v for v in cache.versions if v is not None]
    crfs = sorted({v[1] for v in codings})
    return (f"{sources} sources, {len(items)} items, {frames} frames, each coded with "
            f"{'/'.join(sorted({v[0] for v in codings}))} at CRF {','.join(map(str, crfs))} (intra period 12)")


def prepare_run(config: TrainConfig, out: Path) -> PairCache:
    """Write or check OUT/config.json, build (or finish) the pair cache, open it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    text = json.dumps(asdict(config), indent=1)
    if path.exists():
        # a field added since the folder's config.json was written reads as its default (what that run used)
        stored = {**json.loads(json.dumps(asdict(TrainConfig()))), **json.loads(path.read_text())}
        if stored != json.loads(text):
            raise InputError(path, "this run folder holds another training config; use another --out")
    else:
        atomic_write_text(path, text)
    cache_dir = Path(config.cache) if config.cache else out / "cache"
    if not (cache_dir / "index.json").exists():
        build_cache([Path(p) for p in config.data], cache_dir, config.dataset_config())
    return open_cache(cache_dir)


def train(config: TrainConfig, out: Path, stop_after_steps: int | None = None,
          device: torch.device | str = "cpu") -> Trainer:
    """Train (or resume) the run in ``out``; ``stop_after_steps`` stops early (tests: an interruption).
    ``device``: where the filter trains (workers/device.py); not part of the config, so a run resumes anywhere."""
    torch.set_num_threads(config.threads)
    cache = prepare_run(config, out)
    trainer = Trainer(config, out, cache, device)
    if (out / "state.json").exists():
        trainer.load_state()
    trainer.run(stop_after_steps)
    return trainer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptjobs pretrain-filter", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="run folder (created; resumed when it exists)")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of this call")
    parser.add_argument("--device", default="auto", help="auto (the CPU outside Ray), cpu, cuda or cuda:N")
    defaults = TrainConfig()
    for field in fields(TrainConfig):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, tuple):
            kind = int if field.name == "crfs" else str
            parser.add_argument(flag, nargs="+", type=kind, default=list(value))
        elif field.name == "max_items":
            parser.add_argument(flag, type=int, default=None, help="dataset size limit (tests)")
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    out, stop_after, device = args.pop("out"), args.pop("stop_after"), args.pop("device")
    if args["init_from"] and not args["init_from_weights_sha256"]:
        from workers.postfilter.checkpoint import load_filter

        try:  # recorded in config.json so that resuming checks the warm start is the same filter
            args["init_from_weights_sha256"] = load_filter(args["init_from"]).metadata.weights_sha256
        except InputError as exc:
            raise SystemExit(f"error: {exc}") from None
    config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    if config.crop % 2 or config.crop < 8:
        raise SystemExit("--crop must be even and at least 8")
    if config.loss not in ("relative", "mse"):
        raise SystemExit("--loss must be 'relative' or 'mse'")
    try:
        from workers.device import use_device

        train(config, out, stop_after, use_device(device))
    except InputError as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
