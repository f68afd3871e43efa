"""Where the heavy tensors live (CPU or one CUDA device), and the rules that keep streams parseable anywhere.

    --device auto|cpu|cuda[:N]  --resolve_device-->  torch.device  --place_model-->  model on it

What runs where (issue 15):

- the heavy transforms (analysis/synthesis autoencoders, the scale-space warp, the hyper-encoders) and
  all training run on the chosen device;
- everything that decides probabilities runs on the CPU in float32 with the stream's recorded thread
  count, on both sides, whatever device the rest uses: the hyper-decoders (means and scales), the
  scale-table indices and the factorized tables (built in float64 on the CPU). Floating-point results
  differ between devices, and one scale-table index off desynchronises the decoder; the CPU parse path
  makes a stream parse the same on every device (workers/codec/hyperprior.py, ``latent_parameters``).
  A reconstruction is bit-exact only on the device kind that encoded it (the header records it,
  schemas/bitstream.py ``device``); elsewhere it parses exactly and drifts by a measured amount.

Checkpoints are device-independent: state is saved with every tensor mapped to the CPU
(:func:`to_cpu_state_dict`) and loaded onto whatever device the resuming unit runs on, so a unit
interrupted on a GPU node resumes on a CPU node and back. Random choices come from CPU generators
(workers/adapt/training.py) so they do not depend on the device either.

Nothing here imports Ray: ``auto`` means "the GPU that Ray assigned to this task"; the driver side
(adaptjobs/runner.py) asks Ray for the task's GPU ids and passes them in.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from workers.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d{1,4})?)$")
CUBLAS_WORKSPACE = ":4096:8"  # what torch's reproducibility notes require for deterministic cuBLAS
PARSE_THREADS_ON_ACCELERATOR = 1  # the CPU thread count of the parse path when the transforms run elsewhere


def check_device_spec(text: str) -> str:
    """``text`` if it is auto, cpu, cuda or cuda:N (the --device syntax); InputError otherwise."""
    if not _DEVICE_SPEC.match(text or ""):
        raise InputError(None, f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def resolve_device(spec: str, gpu_ids: Sequence[int | str] | None = None) -> torch.device:
    """The torch device of a --device value.

    ``auto``: the GPU Ray assigned to the task when ``gpu_ids`` (``ray.get_gpu_ids()`` inside the task,
    passed by the driver side) is not empty, else the CPU. Ray sets CUDA_VISIBLE_DEVICES to the assigned
    GPUs, so the task's GPU is ``cuda:0`` in its process. ``cuda[:N]`` asked for where there is no such
    device is an InputError (one line), never a fallback to the CPU: the user asked for speed they would
    not get.
    """
    spec = check_device_spec(spec)
    if spec == "cpu" or (spec == "auto" and not gpu_ids):
        return torch.device("cpu")
    name = "cuda:0" if spec in ("auto", "cuda") else spec
    index = int(name.split(":")[1])
    if not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise InputError(None, f"--device {spec}: {why} (use --device cpu)")
    if index >= torch.cuda.device_count():
        raise InputError(None, f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(name)


def configure_determinism(device: torch.device) -> None:
    """Set the CUDA determinism flags, in this one place, when ``device`` is a CUDA device (CPU: nothing,
    so CPU streams stay byte for byte what they were).

    No TF32 (it rounds matmul and convolution inputs to 10-bit mantissas), cuDNN autotuning off (it may
    pick another algorithm per run), deterministic algorithms on. ``warn_only``: the backward pass of the
    5-D grid_sample that the scale-space warp uses has no deterministic CUDA kernel (torch documents it
    among the ops that raise), so training on CUDA warns there instead of failing; coding never needs it.
    CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts, so set it before the first CUDA tensor.
    The flags are process-wide; a Ray worker keeps them for its next task, which wants the same ones.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def use_device(spec: str, gpu_ids: Sequence[int | str] | None = None) -> torch.device:
    """resolve_device + configure_determinism: what every command calls once with its --device."""
    device = resolve_device(spec, gpu_ids)
    configure_determinism(device)
    return device


def device_kind(device: torch.device | str) -> str:
    """"cpu", "cuda", ...: what a header records (the index says nothing about the arithmetic)."""
    return torch.device(device).type


def expected_match(encoder_kind: str, decoder_kind: str) -> str:
    """What a decoder can promise: "bit-exact" frames on the device kind that encoded (same arithmetic;
    same thread count on the CPU), else "parse-exact": every symbol is recovered, the frames drift by
    floating-point differences of the transforms (benchmarks/bench_device.py measures the drift)."""
    return "bit-exact" if encoder_kind == decoder_kind else "parse-exact"


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module without tensors."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def is_on_cpu(module: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in (*module.parameters(), *module.buffers()))


def on_cpu(module: nn.Module) -> nn.Module:
    """``module`` itself when all its tensors are on the CPU, else a CPU copy (exact values: a copy, no
    arithmetic). The parse path calls this per latent; a hyper-decoder copy is a few MB, far cheaper than
    the transforms it stands beside, and a copy is never stale after training changed the weights."""
    if is_on_cpu(module):
        return module
    return copy.deepcopy(module).to("cpu")


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``model`` (in place) to ``device`` and return it. The parse path does not care: it always
    evaluates on CPU copies (:func:`on_cpu`)."""
    return model.to(torch.device(device))


def to_cpu_state_dict(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor detached, on the CPU and contiguous: what checkpoints store, whatever device trained."""
    return {name: value.detach().to("cpu").contiguous() for name, value in tensors.items()}


def to_device(tensors: Mapping[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """A loaded (CPU) state mapped onto ``device``: the map_location of a resume."""
    return {name: value.to(torch.device(device)) for name, value in tensors.items()}
