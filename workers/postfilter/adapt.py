"""Adapting the post-filter to one (video, codec, CRF): train or solve an update, code it, decide if it pays.

    originals, decoded (uint8 4:2:0 planes per frame)
        |  scale-bias / lora: Adam on random crops, loss = lambda * weighted MSE + weight bits / sequence pixels,
        |      grid-quantized with straight-through gradients; the best state by measured RD cost is kept
        |  last-layer: least squares for the tail conv on this video's features
        |  cross-linear: least squares for L in base(x) + L(x - 0.5) on every frame, L's 4 luma rows free or
        |      tied to one 5x5 luma kernel (cross-linear-tied); structure x taps x ridge x prior by RD cost
        |  classified-linear: one such L per group of ALF-style activity classes of the decoded luma, classes
        |      merged greedily into 1..8 groups, each group solved alone (workers/postfilter/classified_solve.py)
        v
    grid indices --encode_update--> blob --rebuild_filter (what the decoder runs)--> adapted filter
        v
    decide: none | generic | adapted by  lambda * distortion(sequence) + 8 * blob bytes / pixels

The RD measure (FilterAdaptConfig.rd_measure, used when the caller gives the stream's size and no lambda):
psnr-yuv prices PSNR-YUV, the metric BD-rate integrates, at log_rate_per_db x the stream's bits per pixel per
dB (BD-rate's log rate: d ln R / d PSNR-YUV is 0.16-0.34 on every x264 CRF step of eval-dev); the
solve uses its first-order form, a weighted MSE whose plane weights are w_p 10 / (ln 10 MSE_p)
(:func:`psnr_rd_weights`), the decision the measured PSNR-YUV. Why: wMSE = (6 MSE_Y + MSE_U + MSE_V) / 8 is
not what PSNR-YUV averages (it averages the planes in dB), so in wMSE a chroma gain counts MSE_Y / MSE_C times
less than in the metric; and the QP-lambda relation (:func:`codec_lambda`) was 2-6x the slope of each video's
own ``none`` curve (:func:`local_slope_lambda`, two extra encodes). wmse: lambda * wMSE with the lambda given,
else the QP relation. On foreman and carphone (x264, CRFs 22..51) psnr-yuv gave -2.97% / -2.93% BD-rate against
-2.04% / -2.38% for wmse at the QP relation, same solver (benchmarks/RESULTS.md, sections postfilter-adapt and
postfilter-adapt-wmse).

Deterministic: every random choice of step s comes from a generator seeded with (seed, s); the state
(coded tensors, Adam moments, best state, counters) is checkpointed atomically with workers/adapt/state.py,
so a resumed run ends with the same bytes as an uninterrupted one (same machine and thread count).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.func import functional_call
from torch.nn import functional as F

from schemas.adapt import WeightPrior
from workers.adapt.prior import coding_probabilities, grid_indices, quantize_ste, weight_bits
from workers.adapt.state import load_state, optimizer_tensors, restore_optimizer, save_state
from workers.metrics import psnr_yuv
from workers.postfilter.linear_system import (PLANE_WEIGHTS, LinearSystem, _channel_weights, _split_coded,  # noqa: F401
                                              _unshuffled, ridge_solution, tap_masks)
from workers.postfilter.network import INPUT_PLANES, PostFilter
from workers.postfilter.stream import filter_frames
from workers.postfilter.update import (CLASSIFIED, CrossLinearUpdate, Parameterisation, UpdateStructure, adapted_filter,
                                       coded_shapes, make_filter_update)
from workers.postfilter.update_payload import FIXED_BYTES, CodedUpdate, decode_update, encode_update, transmitted_prior

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]
QP_LAMBDA_FACTOR = {"x264": 0.85, "x265": 0.57}  # JM (H.264) and HM (HEVC) lambda = f * 2^((QP - 12) / 3)
# Grids: first choices, lightly checked on one train/ clip (imageio_realshort_320x240, 12 frames, x264 CRF 37,
# a barely trained base): scale-bias at 0.004 cost 0.10033 vs 0.10037 at 0.002 (lambda * wMSE + bpp). The
# last layer picks its own grid per unit among DEFAULT grid * grid_scales.
DEFAULT_PRIORS = {
    "scale-bias": WeightPrior(grid=0.004, slab_std=0.05),
    "lora": WeightPrior(grid=0.004, slab_std=0.05),
    "last-layer": WeightPrior(grid=0.002, slab_std=0.05),
    "cross-linear": WeightPrior(grid=0.004, slab_std=0.05),  # grids 0.002..0.016: foreman CRF 37 picked <= 0.008 of 0.001..0.008
    "cross-linear-tied": WeightPrior(grid=0.004, slab_std=0.05),
    "classified-linear": WeightPrior(grid=0.004, slab_std=0.05),
    "classified-linear-on-base": WeightPrior(grid=0.004, slab_std=0.05),
}
LEAST_SQUARES = ("last-layer", "cross-linear", "cross-linear-tied", *CLASSIFIED)  # closed form, not trained


class UpdateTraining(BaseModel):
    """Gradient training of the scale-bias and LoRA updates (CPU-sized: tens of steps on small crops)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(40, ge=0)
    batch: int = Field(4, ge=1, description="crops per step, each from a frame drawn at random")
    crop: int = Field(96, ge=8, description="luma crop side in px (even); whole frame if smaller")
    learning_rate: float = Field(2e-3, gt=0)
    adam_eps: float = Field(1e-6, gt=0, description="of the order of the weak gradients: keeps them in the zero bin")
    eval_every: int = Field(10, ge=1, description="steps between RD measurements that pick the best state")
    eval_frames: int = Field(4, ge=1, description="evenly spaced whole frames the RD measurement uses")
    checkpoint_every: int = Field(10, ge=1)


class ClassifiedSearch(BaseModel):
    """The RD search of classified-linear (workers/postfilter/classified_solve.py): a pruned form of cross-linear's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    groups: tuple[int, ...] = Field((1, 2, 3, 4, 6, 8), min_length=1, description=(
        "numbers of filter groups tried (1..8), each the greedy merge of adjacent activity classes"))
    masks: tuple[Literal["all", "luma-from-luma", "luma-from-luma,chroma-from-own"], ...] = Field(
        ("all", "luma-from-luma"), min_length=1, description="tap masks tried per group (adapt.tap_masks)")
    ridge: tuple[float, ...] = Field((1e-5, 1e-4, 1e-3), min_length=1, description="ridge strengths tried per group")
    merge_ridge: float = Field(1e-3, gt=0, description="ridge strength of the gains that order the class merges")
    grid_scales: tuple[float, ...] = Field((0.25, 0.5, 1.0), min_length=1,
                                           description="multiples of the prior's grid (and spike) tried")
    slab_scales: tuple[float, ...] = Field((1.0,), min_length=1, description="multiples of the prior's slab std tried")
    spike_weights: tuple[float, ...] = Field((0.1, 0.3, 3.0), min_length=1, description="the prior's alpha values tried")
    wide: bool = Field(True, description=(
        "classified-linear-on-base: also try the wide tied form (a 5x5 L on the working planes: one 9x9 luma "
        "kernel, the chroma rows' own plane 5x5)"))


class FilterAdaptConfig(BaseModel):
    """How ``postfilter-adapt`` updates the shipped filter for one (video, codec, CRF)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # the default: classified-linear-on-base (its wide form chosen per unit), x264 -9.61% / x265 -7.78% BD-rate vs none
    # on eval-dev's average against -9.04% / -7.45% for classified-linear, better on every sequence (hi-step13500 base,
    # benchmarks/RESULTS.md, section luma-classified); before it
    # classified-linear, x264 -6.27% against -5.59% for cross-linear (sections postfilter-adapt-classified and
    # postfilter-adapt-cross-linear; scale-bias, lora, last-layer ~0)
    parameterisation: Parameterisation = "classified-linear-on-base"
    rank: int = Field(2, ge=1, lt=256, description="LoRA rank per conv (lora only)")
    init_seed: int = Field(0, ge=0, lt=2**32, description="seed of LoRA's A initialisation (lora only)")
    prior: WeightPrior | None = Field(None, description="default: DEFAULT_PRIORS[parameterisation]")
    training: UpdateTraining = UpdateTraining()
    ridge: tuple[float, ...] = Field((1e-4, 1e-3, 1e-2, 1e-1), min_length=1,
                                     description="last-layer: ridge strengths tried (relative to the features' energy)")
    least_squares_frames: int = Field(32, ge=1, description="last-layer: evenly spaced frames the solve uses")
    grid_scales: tuple[float, ...] = Field((0.5, 1.0, 2.0, 4.0), min_length=1, description=(
        "last-layer: multiples of the prior's grid (and spike) tried; the payload carries the chosen prior, so "
        "each unit may pick its own step"))
    slab_scales: tuple[float, ...] = Field((0.5, 1.0, 2.0), min_length=1, description=(
        "last-layer, cross-linear: multiples of the prior's slab std tried (the payload carries the chosen one); "
        "foreman x264 CRF 42 cross-linear: 211 bytes with (0.25 .. 4) instead of 225 with (1,)"))
    spike_weights: tuple[float, ...] = Field((0.3, 3.0, 30.0, 1000.0), min_length=1, description=(
        "last-layer, cross-linear: the prior's alpha (spike weight against the slab) tried; the payload carries the "
        "chosen one. A non-zero index costs about log2(1 + alpha) bits more than under the slab alone, so a dense "
        "least-squares solution wants a small alpha and a sparse one a large alpha"))
    rd_measure: Literal["psnr-yuv", "wmse"] = Field("psnr-yuv", description=(
        "the distortion the RD cost weighs when the caller gives the stream's size and no lambda: psnr-yuv, "
        "lambda = log_rate_per_db * the stream's bpp per dB of PSNR-YUV (what BD-rate trades: its log rate against "
        "PSNR-YUV, which averages the planes in dB, so a chroma MSE gain counts MSE_Y / MSE_U times more than in "
        "wMSE); wmse: the QP-lambda relation on wMSE"))
    log_rate_per_db: float = Field(0.2, gt=0, description=(
        "psnr-yuv: d ln(rate) / d PSNR-YUV of the codec's own curve; 0.16-0.25 on every x264 CRF step 22..51 of "
        "foreman, carphone and mobile, 0.24-0.34 on calendar (benchmarks/RESULTS.md, section postfilter-adapt)"))
    classified: ClassifiedSearch = ClassifiedSearch()
    send_update: Literal["if-better", "always"] = "if-better"
    seed: int = Field(0, ge=0)

    def structure(self) -> UpdateStructure:
        if self.parameterisation in CLASSIFIED:  # the solve picks groups and form per unit
            from workers.postfilter.update import classified_structure

            return classified_structure((), False, self.parameterisation)
        lora = self.parameterisation == "lora"
        return UpdateStructure(self.parameterisation, self.rank if lora else 0, self.init_seed if lora else 0)

    def coding_prior(self) -> WeightPrior:
        return transmitted_prior(self.prior or DEFAULT_PRIORS[self.parameterisation])


@dataclass
class FilterDecision:
    """What the encoder chose and why: RD costs are lambda * wMSE + 8 * extra bytes / pixels (the stream's
    own bytes are common to all three and left out); PSNRs are PSNR-YUV averaged over frames."""

    decision: Literal["adapted", "generic", "none"]
    blob_bytes: int
    lmbda: float
    lambda_source: str
    psnr_none: float
    psnr_generic: float
    psnr_adapted: float | None
    cost_none: float
    cost_generic: float
    cost_adapted: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FilterAdaptation:
    blob: bytes | None  # the coded update when the decision is "adapted"
    planes: list[Planes]  # what the decoder shows for that decision, byte for byte
    decision: FilterDecision
    stats: dict = field(default_factory=dict)


# ------------------------------------------------------------------ lambda
def codec_lambda(crf: float, codec: str) -> float:
    """Weight of wMSE (code values^2) against bits per pixel, from the standard QP-lambda relation with
    QP ~ CRF: J = SSD + lambda_mode R with lambda_mode = f 2^((QP-12)/3) (JM f = 0.85, HM f = 0.57), so
    per pixel J / lambda_mode = MSE / lambda_mode + bpp. It needs no extra encodes, but on eval-dev (x264,
    PSNR-tuned, CRF 32 and 42) it was 2.2-5.9x the local slope of each sequence's own ``none`` curve, and the
    updates it let through lost BD-rate (benchmarks/RESULTS.md, section postfilter-adapt): callers that can
    afford two extra encodes should pass ``lmbda=local_slope_lambda(...)``, the measured trade-off."""
    return 1.0 / (QP_LAMBDA_FACTOR[codec] * 2.0 ** ((crf - 12.0) / 3.0))


def lambda_from_slope(points: Sequence[tuple[float, float]]) -> float:
    """-d bpp / d wMSE between neighbouring points (bpp, wMSE) of a ``none`` curve: the measured
    alternative to :func:`codec_lambda` (two or three points around the CRF, least-squares slope)."""
    bpp, mse = np.array(points, dtype=np.float64).T
    slope = np.polyfit(mse, bpp, 1)[0]
    if not slope < 0:
        raise ValueError("the none curve's rate does not fall with distortion here")
    return float(-slope)


def local_slope_lambda(originals: Sequence[Planes], decoded: Sequence[Planes], stream_bytes: int, fps, codec: str,
                       crf: float, intra_period: int, delta: float = 3.0) -> float:
    """lambda as the local slope of this video's own ``none`` curve: the unit's point plus x264/x265 encodes
    at CRF -/+ ``delta`` (two extra encodes with the same settings), fitted by :func:`lambda_from_slope`.
    Falls back to :func:`codec_lambda` where the three points do not give a falling curve."""
    from workers.standard.encoder import decode_stream, encode_planes

    height, width = originals[0][0].shape
    pixels = width * height * len(originals)
    points = [(8.0 * stream_bytes / pixels, mean_wmse(originals, decoded))]
    for neighbour in (crf - delta, crf + delta):
        if 0 <= neighbour <= 51:
            data = encode_planes(originals, width, height, fps, codec, neighbour, intra_period)
            points.append((8.0 * len(data) / pixels, mean_wmse(originals, decode_stream(data, codec))))
    try:
        return lambda_from_slope(points)
    except ValueError:
        return codec_lambda(crf, codec)


# ------------------------------------------------------------------ tensors and metrics
def _tensor(plane: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(plane)).float().div(255.0)[None, None]


def weighted_mse(output: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                 weights: Sequence[float] = PLANE_WEIGHTS) -> torch.Tensor:
    """(6 MSE_Y + MSE_U + MSE_V) / 8 (or other plane ``weights``) in code values^2 of float planes in [0, 1]."""
    return sum(w * torch.mean((o - t) ** 2) for w, o, t in zip(weights, output, target)) * 255.0**2


def plane_mses(a: Planes, b: Planes) -> tuple[float, float, float]:
    """MSE of each plane (Y, U, V) of two uint8 frames, float64 code values^2."""
    return tuple(float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)) for x, y in zip(a, b))


def planes_wmse(a: Planes, b: Planes, weights: Sequence[float] = PLANE_WEIGHTS) -> float:
    """wMSE of two uint8 frames, float64."""
    return sum(w * m for w, m in zip(weights, plane_mses(a, b)))


def _crop(planes: Planes, top: int, left: int, height: int, width: int) -> list[torch.Tensor]:
    y, u, v = planes
    return [_tensor(y[top: top + height, left: left + width]),
            *(_tensor(c[top // 2: (top + height) // 2, left // 2: (left + width) // 2]) for c in (u, v))]


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2**62)
    return torch.Generator().manual_seed(seed)


def crop_batch(originals: Sequence[Planes], decoded: Sequence[Planes], crop: int, batch: int,
               generator: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``batch`` random crops (even positions, so chroma aligns): (target, input) lists of Y, U, V tensors
    (B,1,h,w), (B,1,h/2,w/2) in [0, 1]."""
    height, width = decoded[0][0].shape
    ch, cw = min(crop, height) // 2 * 2, min(crop, width) // 2 * 2
    targets, inputs = [], []
    for _ in range(batch):
        index = int(torch.randint(0, len(decoded), (1,), generator=generator))
        top = 2 * int(torch.randint(0, (height - ch) // 2 + 1, (1,), generator=generator))
        left = 2 * int(torch.randint(0, (width - cw) // 2 + 1, (1,), generator=generator))
        targets.append(_crop(originals[index], top, left, ch, cw))
        inputs.append(_crop(decoded[index], top, left, ch, cw))
    stack = lambda crops: [torch.cat([c[p] for c in crops]) for p in range(3)]  # noqa: E731
    return stack(targets), stack(inputs)


def evenly_spaced(count: int, wanted: int) -> list[int]:
    """Up to ``wanted`` frame indices spread over 0..count-1 (all when count <= wanted)."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [count // 2]


def filter_all(model: PostFilter | None, decoded: Sequence[Planes], crf: float | Sequence[float | None],
               codec: str) -> list[Planes]:
    """Every frame through the filter under the current torch thread count (None: the decoded frames as they
    are). ``crf``: one conditioning CRF, or one per frame (None: that frame as it is), as
    :func:`workers.postfilter.stream.filter_frames` takes it."""
    if model is None:
        return list(decoded)
    return filter_frames(model, decoded, crf, codec, torch.get_num_threads())


def mean_psnr_yuv(originals: Sequence[Planes], frames: Sequence[Planes]) -> float:
    return sum(psnr_yuv(o, f) for o, f in zip(originals, frames)) / len(frames)


def mean_wmse(originals: Sequence[Planes], frames: Sequence[Planes], weights: Sequence[float] = PLANE_WEIGHTS) -> float:
    return sum(planes_wmse(o, f, weights) for o, f in zip(originals, frames)) / len(frames)


# ------------------------------------------------------------------ one unit of work
@dataclass
class _Unit:
    """Everything the training, the solve and the decision share for one (video, codec, CRF)."""

    base: PostFilter  # a frozen copy (no gradients), eval mode
    base_sha256: str
    originals: Sequence[Planes]
    decoded: Sequence[Planes]
    crf: float
    codec: str
    config: FilterAdaptConfig
    lmbda: float
    chosen_prior: WeightPrior | None = None  # last-layer, cross-linear: the grid the solve picked
    chosen_structure: UpdateStructure | None = None  # cross-linear: untied or tied, as the solve picked
    generic: Sequence[Planes] | None = None  # the base filter's output on ``decoded`` (cross-linear's target)
    plane_weights: tuple[float, float, float] = PLANE_WEIGHTS  # of the planes' MSEs in the distortion (psnr_rd_weights)

    @property
    def pixels(self) -> int:
        """Luma pixels of the whole sequence: the weight bits are a per-sequence cost."""
        return int(self.decoded[0][0].size) * len(self.decoded)

    @property
    def prior(self) -> WeightPrior:
        return self.chosen_prior or self.config.coding_prior()

    @property
    def structure(self) -> UpdateStructure:
        return self.chosen_structure or self.config.structure()


def _base_model(base) -> PostFilter:
    """A PostFilter, or anything holding one as ``.model`` (the checkpoint loader's LoadedFilter)."""
    model = base if isinstance(base, PostFilter) else getattr(base, "model", None)
    if not isinstance(model, PostFilter):
        raise TypeError(f"expected a PostFilter or a loaded filter, got {type(base).__name__}")
    return model


def _frozen_copy(model: PostFilter) -> PostFilter:
    import copy

    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def rebuild_filter(base, base_sha256: str, blob: bytes, source: str | Path | None = None) -> PostFilter:
    """The adapted filter a decoder runs: the base filter plus the update coded in ``blob``. Refuses an
    update for another base filter and corrupted or truncated bytes with a one-line BitstreamError."""
    model = _base_model(base)
    built = {}

    def shapes_for(structure: UpdateStructure) -> dict[str, tuple[int, ...]]:
        built["update"] = make_filter_update(model, structure)
        return coded_shapes(built["update"])

    coded = decode_update(blob, base_sha256, shapes_for, source)
    return adapted_filter(model, built["update"], coded.values())


def update_blob(unit: _Unit, update) -> bytes | None:
    """The payload of ``update``'s grid indices, or None when every index is zero (nothing to send)."""
    indices = {name: grid_indices(value, unit.prior.grid) for name, value in update.coded.items()}
    if all(int(k.abs().max()) == 0 for k in indices.values()):
        return None
    return encode_update(CodedUpdate(unit.structure, unit.prior, indices), unit.base_sha256)


def measured_cost(unit: _Unit, update, frames: Sequence[int]) -> tuple[float, int]:
    """(lambda * wMSE on ``frames`` + 8 * blob bytes / sequence pixels, blob bytes) of the update as the
    decoder would rebuild it (rounded, clamped 8-bit output, real coded bytes)."""
    blob = update_blob(unit, update)
    model = unit.base if blob is None else rebuild_filter(unit.base, unit.base_sha256, blob)
    filtered = filter_all(model, [unit.decoded[i] for i in frames], unit.crf, unit.codec)
    wmse = mean_wmse([unit.originals[i] for i in frames], filtered, unit.plane_weights)
    size = 0 if blob is None else len(blob)
    return unit.lmbda * wmse + 8.0 * size / unit.pixels, size


def training_loss(unit: _Unit, update, targets, inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, wMSE, weight bits) of one batch, in wMSE units: loss = wMSE + bits / (lambda * pixels), i.e.
    the RD cost divided by lambda (Adam's epsilon then compares with gradients of code values^2)."""
    quantized = {name: quantize_ste(value, unit.prior.grid) for name, value in update.coded.items()}
    out = functional_call(unit.base, update.weights(quantized), (*inputs, unit.crf, unit.codec))
    wmse = weighted_mse(out, targets, unit.plane_weights)
    bits = sum(weight_bits(unit.prior, value) for value in update.coded.values())
    return wmse + bits / (unit.lmbda * unit.pixels), wmse, bits


@dataclass
class _Progress:
    """The resumable part of a training run besides the tensors."""

    step: int = 0
    best_cost: float | None = None
    best_step: int = 0
    best_bytes: int = 0
    resumed_from: int = 0
    prior: dict | None = None  # last-layer, cross-linear: the chosen prior (JSON)
    structure: str | None = None  # last-layer, cross-linear: the chosen structure


def _restore(update, optimizer, state_path: Path | None, config_json: str) -> tuple[_Progress, dict]:
    saved = None if state_path is None else load_state(state_path, config_json)
    if saved is None:
        return _Progress(), {}
    tensors, info = saved
    with torch.no_grad():
        for name, p in update.coded.items():
            p.copy_(tensors[f"coded.{name}"])
    if info.get("param_groups") is not None:
        restore_optimizer(optimizer, "opt", tensors, info["param_groups"])
    best = {name: tensors[f"best.{name}"] for name in update.coded}
    progress = _Progress(info["step"], info["best_cost"], info["best_step"], info["best_bytes"], info["step"],
                         info.get("prior"))
    return progress, best


def _save(update, optimizer, best: dict, progress: _Progress, state_path: Path | None, config_json: str) -> None:
    if state_path is None:
        return
    opt_tensors, groups = optimizer_tensors(optimizer, "opt") if optimizer is not None else ({}, None)
    tensors = ({f"coded.{n}": p.detach().clone() for n, p in update.coded.items()}
               | {f"best.{n}": v for n, v in best.items()} | opt_tensors)
    save_state(state_path, tensors, {"config": config_json, "step": progress.step, "best_cost": progress.best_cost,
                                     "best_step": progress.best_step, "best_bytes": progress.best_bytes,
                                     "param_groups": groups, "prior": progress.prior})


def train_update(unit: _Unit, update, state_path: Path | None, config_json: str,
                 log: Callable[[dict], None] | None = None) -> _Progress:
    """Adam on ``update.coded`` (scale-bias or LoRA), then ``update.coded`` holds the best state measured
    (step 0, the zero update = the generic filter, included). Continues from ``state_path`` if present."""
    training = unit.config.training
    optimizer = torch.optim.Adam(list(update.coded.values()), lr=training.learning_rate, eps=training.adam_eps)
    progress, best = _restore(update, optimizer, state_path, config_json)
    eval_frames = evenly_spaced(len(unit.decoded), training.eval_frames)
    if progress.best_cost is None:
        progress.best_cost, progress.best_bytes = measured_cost(unit, update, eval_frames)
        best = {n: p.detach().clone() for n, p in update.coded.items()}
    while progress.step < training.steps:
        targets, inputs = crop_batch(unit.originals, unit.decoded, training.crop, training.batch,
                                     _generator(unit.config.seed, progress.step))
        loss, wmse, bits = training_loss(unit, update, targets, inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.step += 1
        record = {"step": progress.step, "loss": float(loss.detach()), "wmse": float(wmse.detach()),
                  "weight_bits": float(bits.detach())}
        if progress.step % training.eval_every == 0 or progress.step == training.steps:
            cost, size = measured_cost(unit, update, eval_frames)
            record |= {"rd_cost": cost, "blob_bytes": size}
            if cost < progress.best_cost:
                progress.best_cost, progress.best_step, progress.best_bytes = cost, progress.step, size
                best = {n: p.detach().clone() for n, p in update.coded.items()}
        if progress.step % training.checkpoint_every == 0 or progress.step == training.steps:
            _save(update, optimizer, best, progress, state_path, config_json)
        if log is not None:
            log(record)
    with torch.no_grad():
        for name, p in update.coded.items():
            p.copy_(best[name])
    return progress


# ------------------------------------------------------------------ last layer by least squares
@torch.no_grad()
def tail_statistics(unit: _Unit, frames: Sequence[int], chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Normal equations of the tail conv on this video: G = sum p p^T (D x D) and H = sum p r^T (D x 6),
    float64, over every chroma position p of ``frames``, where p is the tail's 3x3 input patch with a
    trailing 1 (D = 9 C + 1, the unfold order of the tail's weight) and r the residual the base filter
    leaves (original - filtered, unclamped, 6 phases). Returns (G, H, positions)."""
    captured = {}
    hook = unit.base.tail.register_forward_hook(lambda module, args, out: captured.update(features=args[0], out=out))
    try:
        dim = unit.base.tail.weight[0].numel() + 1
        gram, cross, positions = torch.zeros(dim, dim, dtype=torch.float64), torch.zeros(dim, 6, dtype=torch.float64), 0
        for index in frames:
            y, u, v = (_tensor(p) for p in unit.decoded[index])
            unit.base(y, u, v, unit.crf, unit.codec)
            x = _unshuffled(unit.decoded[index])
            residual = (_unshuffled(unit.originals[index]) - x - captured["out"]).flatten(2)[0].t()  # (L, 6)
            patches = F.unfold(captured["features"], 3, padding=1)[0]  # (9C, L)
            for start in range(0, patches.shape[1], chunk):
                p = patches[:, start: start + chunk].to(torch.float64)
                p = torch.cat([p, torch.ones(1, p.shape[1], dtype=torch.float64)])
                gram += p @ p.t()
                cross += p @ residual[start: start + chunk].to(torch.float64)
            positions += patches.shape[1]
    finally:
        hook.remove()
    return gram, cross, positions


@torch.no_grad()
def linear_statistics(unit: _Unit, frames: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Normal equations of the cross-linear filter L: G = sum p p^T (55 x 55), H = sum p r^T (55 x 6), float64,
    over every chroma position of ``frames``; p is the 3x3 patch of the 6 decoded planes minus 0.5 (unfold
    order of a (6, 6, 3, 3) weight) with a trailing 1, r = original - base output (6 planes in [0, 1]).
    The base output is ``unit.generic`` (rounded to 8 bits: the rounding noise is uncorrelated with p and
    saves a second CNN pass). One matmul per frame: calendar 720x576x41 accumulates in about a second."""
    dim = INPUT_PLANES * 9 + 1
    gram, cross, positions = torch.zeros(dim, dim, dtype=torch.float64), torch.zeros(dim, 6, dtype=torch.float64), 0
    for index in frames:
        x = _unshuffled(unit.decoded[index]).to(torch.float64) - 0.5
        patches = F.unfold(x, 3, padding=1)[0]  # (54, L)
        patches = torch.cat([patches, torch.ones(1, patches.shape[1], dtype=torch.float64)])
        residual = (_unshuffled(unit.originals[index]) - _unshuffled(unit.generic[index])).flatten(2)[0]
        gram += patches @ patches.t()
        cross += patches @ residual.t().to(torch.float64)
        positions += patches.shape[1]
    return gram, cross, positions


def _index_bits(prior: WeightPrior, k: torch.Tensor) -> torch.Tensor:
    """(n,) float64 bits of every index of ``k`` under the table the coder would use for ``k`` (bound max |k|)."""
    bound = max(1, int(k.abs().max()))
    return torch.from_numpy(-np.log2(coding_probabilities(prior, bound)))[k + bound]


def _groups_that_pay(unit: _Unit, prior: WeightPrior, k: torch.Tensor, system: LinearSystem) -> torch.Tensor:
    """``k`` with the groups (rows, or tied rows) zeroed whose own predicted distortion change plus bits is not
    negative. Why per group: PSNR-YUV averages the planes in dB while the RD cost weighs MSE, so a joint
    solution may trade a worse plane for a better one and lower wMSE yet lower PSNR-YUV (foreman x264 CRF 22
    did, -0.015 dB at 611 bytes); with every kept group paying alone no plane gets worse. Groups share no
    coded number, so A is block-diagonal over them and each group's change is its own block's."""
    bits = _index_bits(prior, k)
    q = k.to(torch.float64) * prior.grid
    kept = k.clone()
    for group in system.groups:
        if not bool(k[group].any()):
            continue
        qg = q[group]
        change = float(qg @ system.a[group][:, group] @ qg - 2 * qg @ system.b[group])
        if change + float(bits[group].sum()) / unit.pixels >= 0:
            kept[group] = 0
    return kept


def candidate_priors(unit: _Unit) -> list[WeightPrior]:
    """The priors the solve tries: the config's grid x grid_scales (spike scaled alike), slab x slab_scales, and
    every alpha of spike_weights; as transmitted (float32), since the payload carries the chosen one."""
    base = unit.config.coding_prior()
    return [transmitted_prior(WeightPrior(grid=base.grid * g, slab_std=base.slab_std * s, spike_std=base.spike * g,
                                          alpha=alpha))
            for g, s, alpha in itertools.product(unit.config.grid_scales, unit.config.slab_scales,
                                                 unit.config.spike_weights)]


def solve_least_squares(unit: _Unit, systems: Sequence[LinearSystem]) -> tuple[str, torch.Tensor, dict]:
    """(structure, flat grid indices, info) minimising the predicted RD cost over ``systems`` (one per structure
    the parameterisation allows), their tap masks (:func:`tap_masks`), ridge strengths and priors
    (:func:`candidate_priors`): each ridge solution is rounded on each grid, groups that do not pay alone are
    zeroed, and it is scored exactly on the normal equations plus its ideal bits and the payload's fixed bytes
    per pixel. The zero update scores 0 (then the structure is the first one)."""
    best = (systems[0].structure, torch.zeros(systems[0].a.shape[0], dtype=torch.int64), 0.0, unit.config.coding_prior())
    scores, priors = {}, candidate_priors(unit)
    for system in systems:
        for mask_name, mask in tap_masks(system.structure, system.table.shape[1]).items():
            allowed = system.allowed(mask)
            for rho in unit.config.ridge:
                solution = ridge_solution(system, rho, allowed)
                for prior in priors:
                    k = torch.round(solution / prior.grid).clamp(-(1 << 15), 1 << 15).to(torch.int64)
                    k = _groups_that_pay(unit, prior, k, system)
                    if not bool(k.any()):
                        continue
                    bits = float(_index_bits(prior, k).sum()) + 8 * FIXED_BYTES
                    cost = system.distortion(k.to(torch.float64) * prior.grid) + bits / unit.pixels
                    scores[f"{system.structure}:{mask_name}:{rho:g}:{prior.grid:g}x{prior.slab_std:g}x{prior.alpha:g}"] = cost
                    if cost < best[2]:
                        best = (system.structure, k, cost, prior)
    structure, k, cost, prior = best
    return structure, k, {"structure": structure, "predicted_cost_change": cost, "prior": prior.model_dump(),
                          "scores": scores}


def least_squares_structures(parameterisation: str) -> list[str]:
    """The structures a least-squares parameterisation chooses among per unit: cross-linear also tries its tied
    form (fewer numbers, a little less gain: it wins where bytes weigh most)."""
    return ["cross-linear", "cross-linear-tied"] if parameterisation == "cross-linear" else [parameterisation]


def fit_least_squares(unit: _Unit, state_path: Path | None, config_json: str,
                      log: Callable[[dict], None] | None = None) -> tuple[_Progress, object]:
    """(progress, update) for last-layer and the cross-linear parameterisations: the update of the structure
    :func:`solve_least_squares` picked on the normal equations of :func:`tail_statistics` or
    :func:`linear_statistics`, holding the solved values (index * grid). The result (indices, structure, prior)
    is checkpointed, so a resumed unit does not solve again."""
    saved = None if state_path is None else load_state(state_path, config_json)
    if saved is not None:
        tensors, info = saved
        progress = _Progress(info["step"], info["best_cost"], resumed_from=info["step"], prior=info["prior"],
                             structure=info["structure"])
        indices = tensors["best.indices"]
    else:
        linear = unit.config.parameterisation.startswith("cross-linear")
        gram, cross, positions = (linear_statistics(unit, range(len(unit.decoded))) if linear else
                                  tail_statistics(unit, evenly_spaced(len(unit.decoded), unit.config.least_squares_frames)))
        scales = _channel_weights(unit.plane_weights) * unit.lmbda * 255.0**2 / positions
        systems = [LinearSystem.build(name, make_filter_update(unit.base, UpdateStructure(name)).tap_map(), gram, cross,
                                      scales) for name in least_squares_structures(unit.config.parameterisation)]
        from workers.video_codec import torch_threads

        with torch_threads(1):  # thousands of small float64 ops: see classified_solve.fit_classified
            structure, indices, info = solve_least_squares(unit, systems)
        progress = _Progress(1, info["predicted_cost_change"], prior=info["prior"], structure=structure)
        if state_path is not None:
            save_state(state_path, {"best.indices": indices}, {"config": config_json, "step": 1, "best_cost": progress.best_cost,
                                                               "prior": progress.prior, "structure": structure})
        if log is not None:
            log({"step": 1, **info})
    unit.chosen_prior, unit.chosen_structure = WeightPrior(**progress.prior), UpdateStructure(progress.structure)
    update = make_filter_update(unit.base, unit.chosen_structure)
    with torch.no_grad():
        for name, value in _split_coded(update, indices.to(torch.float32) * unit.prior.grid).items():
            update.coded[name].copy_(value)
    return progress, update


def _fit_classified(unit: _Unit, state_path: Path | None, config_json: str,
                    log: Callable[[dict], None] | None = None) -> tuple[_Progress, object]:
    """(progress, update) of classified-linear (workers/postfilter/classified_solve.py), as :func:`fit_least_squares`."""
    from workers.postfilter.classified_solve import fit_classified

    indices, info, resumed = fit_classified(unit, state_path, config_json, log)
    progress = _Progress(1, info["best_cost"], resumed_from=1 if resumed else 0, prior=info["prior"],
                         structure=info["structure"])
    unit.chosen_prior = WeightPrior(**info["prior"])
    unit.chosen_structure = UpdateStructure(unit.config.parameterisation, info["groups"], info["layout"])
    update = make_filter_update(unit.base, unit.chosen_structure)
    with torch.no_grad():
        for name, value in _split_coded(update, indices.to(torch.float32) * unit.prior.grid).items():
            update.coded[name].copy_(value)
    return progress, update


# ------------------------------------------------------------------ decision and the public entry point
def decide(originals: Sequence[Planes], decoded: Sequence[Planes], generic: Sequence[Planes],
           adapted: Sequence[Planes] | None, blob_bytes: int, lmbda: float, lambda_source: str,
           send_update: str = "if-better", psnr_rd: bool = False) -> FilterDecision:
    """The cheapest of no filter, the generic filter and the adapted one (its blob bytes counted), by
    lambda * wMSE + 8 * extra bytes / pixels on the whole sequence, or with ``psnr_rd`` by
    8 * extra bytes / pixels - lambda * PSNR-YUV (lambda in bits per pixel per dB); ties go to the simpler choice."""
    pixels = int(decoded[0][0].size) * len(decoded)
    if psnr_rd:
        distortion = lambda frames: -lmbda * mean_psnr_yuv(originals, frames)  # noqa: E731
    else:
        distortion = lambda frames: lmbda * mean_wmse(originals, frames)  # noqa: E731
    cost_none, cost_generic = distortion(decoded), distortion(generic)
    cost_adapted = None if adapted is None else distortion(adapted) + 8.0 * blob_bytes / pixels
    label = "none" if cost_none <= cost_generic else "generic"
    if cost_adapted is not None and (send_update == "always" or cost_adapted < min(cost_none, cost_generic)):
        label = "adapted"
    return FilterDecision(
        decision=label, blob_bytes=blob_bytes if label == "adapted" else 0, lmbda=lmbda, lambda_source=lambda_source,
        psnr_none=mean_psnr_yuv(originals, decoded), psnr_generic=mean_psnr_yuv(originals, generic),
        psnr_adapted=None if adapted is None else mean_psnr_yuv(originals, adapted),
        cost_none=cost_none, cost_generic=cost_generic, cost_adapted=cost_adapted)


def _check_frames(originals: Sequence[Planes], decoded: Sequence[Planes]) -> None:
    from workers.errors import InputError

    if not decoded or len(originals) != len(decoded):
        raise InputError(None, f"post-filter adaptation needs as many originals as decoded frames "
                               f"({len(originals)} vs {len(decoded)}, at least one)")
    shapes = {tuple(p.shape for p in frame) for frame in [*originals, *decoded]}
    if len(shapes) != 1:
        raise InputError(None, f"post-filter adaptation needs frames of one size, got {sorted(shapes)}")
    if any(p.dtype != np.uint8 for frame in [*originals, *decoded] for p in frame):
        raise InputError(None, "post-filter adaptation takes 8-bit planes")


def unit_fingerprint(originals: Sequence[Planes], decoded: Sequence[Planes]) -> str:
    """sha256 (16 hex digits) of every plane: a checkpoint is resumed only for the same frames."""
    digest = hashlib.sha256()
    for frame in [*originals, *decoded]:
        for plane in frame:
            digest.update(np.ascontiguousarray(plane).tobytes())
    return digest.hexdigest()[:16]


def psnr_rd_weights(originals: Sequence[Planes], generic: Sequence[Planes], config: FilterAdaptConfig,
                    stream_bytes: int) -> tuple[float, tuple[float, float, float]]:
    """(lambda in bits per pixel per dB, plane weights) of the psnr-yuv RD measure: the change of PSNR-YUV (a mean
    over frames f), (10 / ln 10) mean_f sum_p w_p dMSE_pf / MSE_pf to first order (w = 6/8, 1/8, 1/8; MSE_pf of
    the generic filter's output), is for a change spread evenly over the frames a weighted MSE with weights
    w_p 10 mean_f(1 / MSE_pf) / ln 10, and a dB is worth log_rate_per_db times the stream's bits per pixel
    (BD-rate's log rate)."""
    pixels = int(generic[0][0].size) * len(generic)
    inverse = np.mean([[1.0 / max(m, 1e-2) for m in plane_mses(o, g)] for o, g in zip(originals, generic)], axis=0)
    weights = tuple(float(w * 10.0 * i / np.log(10.0)) for w, i in zip(PLANE_WEIGHTS, inverse))
    return config.log_rate_per_db * 8.0 * stream_bytes / pixels, weights


def adapt_filter(base, base_sha256: str, originals: Sequence[Planes], decoded: Sequence[Planes], crf: float,
                 codec: str, config: FilterAdaptConfig = FilterAdaptConfig(), checkpoint_dir: str | Path | None = None,
                 log: Callable[[dict], None] | None = None, lmbda: float | None = None,
                 generic_planes: Sequence[Planes] | None = None, stream_bytes: int | None = None,
                 frame_crfs: Sequence[float | None] | None = None) -> FilterAdaptation:
    """Adapt the base filter (a PostFilter or a loaded filter with ``.model``, weights hashing to
    ``base_sha256``) to this (video, codec, CRF) and decide what to send (module docstring).

    ``originals``/``decoded``: per frame (Y (H,W), U, V (H/2,W/2)) uint8. ``lmbda``: weight of wMSE per bit
    per pixel, default :func:`codec_lambda`. ``checkpoint_dir``: where the resumable state lives (None: no
    checkpoints). The returned planes are what ``rebuild_filter`` + ``filter_planes`` give a decoder for
    the decision (the decoded frames for 'none'), byte for byte. ``generic_planes``: the base filter's
    output on ``decoded`` if the caller has it already (saves a pass when comparing parameterisations).
    ``stream_bytes``: the plain stream's size; with it, no ``lmbda`` and ``config.rd_measure`` psnr-yuv, the RD
    cost is in PSNR-YUV (:func:`psnr_rd_weights`), else in wMSE. ``frame_crfs``: the conditioning of each frame
    at the decoder (the record's per-picture-type CRF offsets; None for a frame shown unfiltered), used for the
    generic and the adapted frames; training and solving still condition on ``crf`` (the solves read the generic
    frames, so classified-linear-on-base corrects the output the decoder really computes)."""
    _check_frames(originals, decoded)
    began = time.perf_counter()
    model = _frozen_copy(_base_model(base))
    shown_crfs = float(crf) if frame_crfs is None else list(frame_crfs)
    if generic_planes is None:
        generic_planes = filter_all(model, decoded, shown_crfs, codec)
    psnr_rd = lmbda is None and stream_bytes is not None and config.rd_measure == "psnr-yuv"
    weights = PLANE_WEIGHTS
    if psnr_rd:
        lmbda, weights = psnr_rd_weights(originals, generic_planes, config, stream_bytes)
        lambda_source = f"psnr-yuv ({config.log_rate_per_db:g} ln-rate per dB x {8.0 * stream_bytes / (decoded[0][0].size * len(decoded)):.4g} bpp)"
    else:
        lambda_source = "given" if lmbda is not None else f"qp-relation (QP = CRF {crf:g}, {codec})"
    unit = _Unit(model, base_sha256, originals, decoded, float(crf), codec, config,
                 codec_lambda(crf, codec) if lmbda is None else float(lmbda), plane_weights=weights)
    config_json = json.dumps({"config": config.model_dump(mode="json"), "crf": unit.crf, "codec": codec,
                              "base": base_sha256, "lmbda": unit.lmbda, "weights": unit.plane_weights,
                              "frames": unit_fingerprint(originals, decoded),
                              **({} if frame_crfs is None else {"frame_crfs": list(frame_crfs)})},
                             sort_keys=True, separators=(",", ":"))
    state_path = None if checkpoint_dir is None else Path(checkpoint_dir) / f"postfilter-{config.parameterisation}.safetensors"
    unit.generic = generic_planes
    fit_began = time.perf_counter()  # adaptation time excludes the generic pass every choice needs
    if config.parameterisation in CLASSIFIED:
        progress, update = _fit_classified(unit, state_path, config_json, log)
    elif config.parameterisation in LEAST_SQUARES:
        progress, update = fit_least_squares(unit, state_path, config_json, log)
    else:
        update = make_filter_update(unit.base, config.structure())
        progress = train_update(unit, update, state_path, config_json, log)
    fitted = time.perf_counter()
    blob = update_blob(unit, update)
    adapted = None if blob is None else rebuild_filter(unit.base, base_sha256, blob)  # exactly the decoder's
    adapted_planes = None if adapted is None else filter_all(adapted, decoded, shown_crfs, codec)
    decision = decide(originals, decoded, generic_planes, adapted_planes, 0 if blob is None else len(blob),
                      unit.lmbda, lambda_source, config.send_update, psnr_rd)
    planes = {"none": list(decoded), "generic": list(generic_planes), "adapted": adapted_planes}[decision.decision]
    frames = len(decoded)
    stats = {"parameterisation": config.parameterisation, "structure": unit.structure.parameterisation,
             "groups": unit.structure.rank if config.parameterisation in CLASSIFIED else None,
             "tied": unit.structure.tied if config.parameterisation in CLASSIFIED else None,
             "wide": unit.structure.wide if config.parameterisation in CLASSIFIED else None,
             "steps": progress.step, "resumed_from": progress.resumed_from,
             "best_step": progress.best_step, "update_bytes": 0 if blob is None else len(blob),
             "coded_numbers": sum(p.numel() for p in update.coded.values()),
             "nonzero_numbers": sum(int(grid_indices(p, unit.prior.grid).count_nonzero()) for p in update.coded.values()),
             "adapt_seconds": fitted - fit_began, "adapt_seconds_per_frame": (fitted - fit_began) / frames,
             "total_seconds": time.perf_counter() - began}
    return FilterAdaptation(blob if decision.decision == "adapted" else None, planes, decision, stats)
