"""The pretraining loop: phases, deterministic steps, atomic resumable state.

Determinism: the batch and the quantization noise of step s in phase p are drawn from generators seeded
with (seed, p, s), not from a running RNG, so a run resumed from its state file continues exactly as an
uninterrupted run would (same machine, same thread count).

Run folder (OUT):
    pretrain.json        the PretrainConfig, written once; another config on the same OUT is refused
    cache/               decoded training material (workers/pretrain/dataset.py)
    state.safetensors    model + optimizer tensors; metadata: phase, step (written atomically)
    log.jsonl            one JSON line per log interval: phase, quality, step, loss, bpp, psnr, lr, seconds
    models/qK.safetensors  each finished quality, as an adaptjobs checkpoint
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from schemas.codec import Provenance
from schemas.pretrain import PretrainConfig
from workers.atomic import atomic_write_bytes, atomic_write_text
from workers.checkpoints import make_metadata, round_weights, save_checkpoint
from workers.codec.ssf import ScaleSpaceFlow
from workers.device import on_cpu, to_cpu_state_dict
from workers.errors import InputError
from workers.pretrain.dataset import TrainingData, build_cache, load_cache
from workers.rd_loss import rate_distortion

STATE_FORMAT = "adaptjobs-pretrain-state-1"


@dataclass(frozen=True)
class Phase:
    kind: str      # "intra", "inter" or "finetune"
    quality: int
    steps: int

    @property
    def frames(self) -> int:
        return 1 if self.kind == "intra" else 0  # 0: use the config's clip length


def phases(config: PretrainConfig) -> list[Phase]:
    top, *lower = sorted(config.qualities, reverse=True)
    plan = [Phase("intra", top, config.intra_steps)] if config.intra_steps else []
    plan.append(Phase("inter", top, config.inter_steps))
    plan += [Phase("finetune", q, config.finetune_steps) for q in lower]
    return plan


def phase_learning_rate(config: PretrainConfig, phase: Phase, step: int) -> float:
    decay_from = phase.steps * (1.0 - config.lr_decay_fraction)
    return config.learning_rate * (0.1 if step >= decay_from else 1.0)


def _step_seed(config: PretrainConfig, phase_index: int, step: int) -> int:
    return (config.seed * 1_000_003 + phase_index) * 10_000_019 + step


class Trainer:
    """Pretraining on ``device`` (workers/device.py): the weights are initialised on the CPU from the seed
    (the same initial weights on every device), then moved; batches are drawn on the CPU from seeded
    generators and moved; the state file holds CPU tensors, so a run continues on another device."""

    def __init__(self, config: PretrainConfig, out: Path, device: torch.device | str = "cpu"):
        self.config, self.out, self.device = config, out, torch.device(device)
        self.plan = phases(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the initial weights
            self.model = ScaleSpaceFlow(config.architecture)
        if config.init_from is not None:
            self._load_initial_weights(Path(config.init_from))
        self.model.to(self.device)
        self.phase_index, self.step = 0, 0
        self._new_optimizers()

    def _load_initial_weights(self, path: Path) -> None:
        """Start from a checkpoint (e.g. to continue a finished run with a new schedule or lambdas)."""
        from workers.checkpoints import load_checkpoint

        loaded = load_checkpoint(path)
        if loaded.metadata.architecture != self.config.architecture:
            raise InputError(path, "the initial checkpoint has another architecture than --arch")
        if self.config.init_sha256 and loaded.metadata.weights_sha256 != self.config.init_sha256:
            raise InputError(path, "the initial checkpoint changed since this run started (sha256 differs)")
        self.model.load_state_dict(loaded.model.state_dict())

    # ------------------------------------------------------------------ optimizers and state
    def _new_optimizers(self) -> None:
        main = [p for n, p in self.model.named_parameters() if not n.endswith("quantiles")]
        aux = [p for n, p in self.model.named_parameters() if n.endswith("quantiles")]
        self.optimizer = torch.optim.Adam(main, lr=self.config.learning_rate)
        self.aux_optimizer = torch.optim.Adam(aux, lr=self.config.aux_learning_rate)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for label, optimizer in (("opt", self.optimizer), ("aux", self.aux_optimizer)):
            for index, state in optimizer.state_dict()["state"].items():
                for key, value in state.items():
                    tensors[f"{label}.{index}.{key}"] = torch.as_tensor(value).detach().clone()
        return to_cpu_state_dict(tensors)  # device-independent: a run continues on another device

    def save_state(self) -> None:
        from safetensors.torch import save

        metadata = {"format": STATE_FORMAT, "phase": str(self.phase_index), "step": str(self.step)}
        atomic_write_bytes(self.out / "state.safetensors", save(self._state_tensors(), metadata=metadata))

    def load_state(self, path: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        if metadata.get("format") != STATE_FORMAT:
            raise InputError(path, "not a pretraining state file of this adaptjobs version")
        tensors = load_file(str(path))
        self.phase_index, self.step = int(metadata["phase"]), int(metadata["step"])
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        self._new_optimizers()
        for label, optimizer in (("opt", self.optimizer), ("aux", self.aux_optimizer)):
            state_dict = optimizer.state_dict()
            state: dict[int, dict[str, torch.Tensor]] = {}
            for name, value in tensors.items():
                prefix, index, key = name.split(".", 2) if name.count(".") >= 2 else (None, None, None)
                if prefix == label:
                    state.setdefault(int(index), {})[key] = value
            state_dict["state"] = state
            optimizer.load_state_dict(state_dict)

    # ------------------------------------------------------------------ one step
    def train_step(self, data: TrainingData) -> dict[str, float]:
        phase = self.plan[self.phase_index]
        frames_per_sample = 1 if phase.kind == "intra" else self.config.clip_frames
        seed = _step_seed(self.config, self.phase_index, self.step)
        batch_generator = torch.Generator().manual_seed(seed)
        frames = [f.to(self.device) for f in data.sample_batch(batch_generator, self.config.batch, frames_per_sample,
                                                               self.config.crop)]
        lmbda = self.config.lambda_for(phase.quality)
        learning_rate = phase_learning_rate(self.config, phase, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the quantization noise of this step
            if frames_per_sample == 1:
                x_hat, likelihoods = self.model.forward_intra(frames[0])
                terms = rate_distortion(frames, [x_hat], [likelihoods], lmbda)
            else:
                out = self.model(frames)
                terms = rate_distortion(frames, out["x_hat"], out["likelihoods"], lmbda)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.config.clip_grad_norm)
        self.optimizer.step()
        aux_loss = self.model.aux_loss()
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux_loss.backward()
        self.aux_optimizer.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()} | {"aux": float(aux_loss.detach()), "lr": learning_rate}

    def finish_phase(self) -> None:
        """Save the quality this phase completes, then move to the next phase (fresh optimizers)."""
        phase = self.plan[self.phase_index]
        last_for_quality = all(p.quality != phase.quality for p in self.plan[self.phase_index + 1:])
        if last_for_quality:
            self.save_quality(phase.quality)
        self.phase_index, self.step = self.phase_index + 1, 0
        self._new_optimizers()

    def save_quality(self, quality: int) -> Path:
        """Write models/q{quality}.safetensors from the current weights (rounded to the storage dtype)."""
        round_weights(self.model, self.config.storage_dtype)  # a float16 round trip: exact on every device
        model = on_cpu(self.model.eval())
        metadata = make_metadata(model, self.config.model_id, quality, self.config.lambda_for(quality),
                                 Provenance(source="adaptjobs-pretrain", seed=self.config.seed,
                                            training_data=", ".join(self.config.data),
                                            notes=f"phases: {[p.kind + ':' + str(p.steps) for p in self.plan if p.quality >= quality]}"))
        path = self.out / "models" / f"q{quality}.safetensors"
        save_checkpoint(path, model, metadata, storage_dtype=self.config.storage_dtype)
        return path

    @property
    def done(self) -> bool:
        return self.phase_index >= len(self.plan)

    @property
    def steps_done(self) -> int:
        return sum(p.steps for p in self.plan[: self.phase_index]) + self.step


def prepare_run(config: PretrainConfig, out: Path) -> None:
    """Write OUT/pretrain.json, or check that an existing one holds the same config."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "pretrain.json"
    if config_path.exists():
        try:
            existing = PretrainConfig.model_validate_json(config_path.read_text())
        except ValidationError as exc:
            raise InputError(config_path, f"invalid pretraining config ({str(exc).splitlines()[0]})") from None
        if existing != config:
            changed = sorted(k for k in type(config).model_fields if getattr(existing, k) != getattr(config, k))
            raise InputError(out, f"holds a pretraining run with another config (differs in {', '.join(changed)}); "
                                  "use a new output folder")
    else:
        atomic_write_text(config_path, config.model_dump_json(indent=2))


def run_pretrain(config: PretrainConfig, out: Path, stop_after_steps: int | None = None,
                 time_limit_s: float | None = None, progress: bool = True, device: torch.device | str = "cpu") -> Trainer:
    """Train (or continue training) into ``out``. Stops early after ``stop_after_steps`` steps or
    ``time_limit_s`` seconds in this invocation, with the state saved; run again to continue."""
    from tqdm import tqdm

    out = Path(out)
    prepare_run(config, out)
    cache = out / "cache"
    if not (cache / "index.json").exists():
        build_cache([Path(d) for d in config.data], cache, config.clip_frames, config.clips_per_video,
                    config.max_frames_per_video, config.crop)
    data = load_cache(cache)
    trainer = Trainer(config, out, device)
    if (out / "state.safetensors").exists():
        trainer.load_state(out / "state.safetensors")
    total = sum(p.steps for p in trainer.plan)
    started, steps_this_run = time.perf_counter(), 0
    window: list[dict[str, float]] = []
    bar = tqdm(total=total, initial=trainer.steps_done, unit="step", disable=not progress, dynamic_ncols=True)
    with bar, open(out / "log.jsonl", "a") as log:
        while not trainer.done:
            phase = trainer.plan[trainer.phase_index]
            if trainer.step >= phase.steps:
                trainer.finish_phase()
                trainer.save_state()
                continue
            if (stop_after_steps is not None and steps_this_run >= stop_after_steps) or (
                    time_limit_s is not None and time.perf_counter() - started >= time_limit_s):
                break
            window.append(trainer.train_step(data))
            steps_this_run += 1
            bar.update(1)
            if trainer.step % config.log_every == 0 or trainer.step == phase.steps:
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                record = {"phase": phase.kind, "quality": phase.quality, "step": trainer.step, **mean,
                          "elapsed_s": round(time.perf_counter() - started, 1)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(q=phase.quality, phase=phase.kind, bpp=f"{mean['bpp']:.3f}", psnr=f"{mean['psnr']:.2f}")
                window = []
            if trainer.step % config.checkpoint_every == 0:
                trainer.save_state()
        trainer.save_state()
    return trainer
