"""The post-filter network: a small residual CNN on decoded 8-bit YUV 4:2:0 planes.

Dataflow (every conv 3x3, stride 1, zero padding; C = ``channels``; no batch-norm)::

    Y (N,1,H,W) --pixel_unshuffle(2)--> (N,4,H/2,W/2) -+
    U (N,1,H/2,W/2) ----------------------------------+-- cat --> x (N,6,H/2,W/2) in [0,1]
    V (N,1,H/2,W/2) ----------------------------------+
    cat(x, crf/51 plane, codec plane) --conv 8->C, LReLU--> [conv C->C, LReLU] x (layers-2) --conv C->6-->
    residual r (N,6,H/2,W/2);  out = x + r  --split, pixel_shuffle(2) on the luma part--> Y', U', V'

Why this shape (design.md section 9): it works on the decoded planes directly (never through RGB), luma and
chroma see each other at chroma resolution (pixel-unshuffled luma), it is conditioned on the CRF (a filter
trained at one QP can hurt at another) and on the codec (one model serves x264 and x265), and the output is
a residual so a zero last layer is the identity. MACs per luma pixel are ``macs_per_pixel()``: with the
defaults (8 layers, 32 channels) 59,328 MAC per chroma position = 14,832 per luma pixel.

The conditioning planes are constants, so the first layer's response to them is a per-channel bias that
depends on (crf, codec); it is computed once per call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CODEC_INDEX = {"x264": 0.0, "x265": 1.0}
INPUT_PLANES = 6  # 4 luma sub-planes + U + V
CONDITION_PLANES = 2  # crf / 51, codec flag


@dataclass(frozen=True)
class FilterArchitecture:
    layers: int = 8
    channels: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class PostFilter(nn.Module):
    """See the module docstring. ``forward`` takes planes in [0, 1]; ``filter_planes`` takes uint8."""

    def __init__(self, architecture: FilterArchitecture = FilterArchitecture()):
        super().__init__()
        if architecture.layers < 2 or architecture.channels < 1:
            raise ValueError("a post-filter needs at least 2 layers and 1 channel")
        self.architecture = architecture
        c = architecture.channels
        self.head = nn.Conv2d(INPUT_PLANES + CONDITION_PLANES, c, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(architecture.layers - 2))
        self.tail = nn.Conv2d(c, INPUT_PLANES, 3, padding=1)
        for conv in (self.head, *self.body):
            # He init for LeakyReLU(0.1): PyTorch's default init shrinks the features ~2x per layer, so the
            # zero-initialised tail would see features ~50x smaller than the input
            nn.init.kaiming_normal_(conv.weight, a=0.1, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def macs_per_pixel(self) -> float:
        """Multiply-accumulates per luma pixel (the network runs at a quarter of the luma positions)."""
        c = self.architecture.channels
        per_position = 9 * ((INPUT_PLANES + CONDITION_PLANES) * c + (self.architecture.layers - 2) * c * c
                            + c * INPUT_PLANES)
        return per_position / 4.0

    def forward(self, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, crf: torch.Tensor | float,
                codec: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """y (N,1,H,W), u, v (N,1,H/2,W/2) in [0,1]; crf a float or (N,) tensor -> filtered (y, u, v),
        not clamped (training sees the unclamped output; ``filter_planes`` rounds and clamps)."""
        x = torch.cat([F.pixel_unshuffle(y, 2), u, v], dim=1)
        n, _, h, w = x.shape
        crf = torch.as_tensor(crf, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1).expand(n, 1, h, w)
        condition = torch.cat([crf / 51.0, torch.full_like(crf, CODEC_INDEX[codec])], dim=1)
        features = F.leaky_relu(self.head(torch.cat([x, condition], dim=1)), 0.1)
        for conv in self.body:
            features = F.leaky_relu(conv(features), 0.1)
        out = x + self.tail(features)
        return F.pixel_shuffle(out[:, :4], 2), out[:, 4:5], out[:, 5:6]


@torch.no_grad()
def widened(trained: PostFilter, channels: int, generator: torch.Generator) -> PostFilter:
    """A filter of ``channels`` >= the trained one's channels (same depth) that computes exactly what
    ``trained`` computes (up to float summation order): the trained weights fill the first channels, the new
    channels' input weights are He-initialised from ``generator`` and their output weights are zero, so no old
    channel (and no output) sees them until training moves those zeros. Why: a warm start keeps what a long
    run learned and lets further steps use the added capacity, instead of training the wider filter from
    scratch for as long again (workers/postfilter/pretrain.py ``init_from``)."""
    old = trained.architecture
    if channels < old.channels:
        raise ValueError(f"cannot narrow a {old.channels}-channel filter to {channels} channels")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        wide = PostFilter(FilterArchitecture(layers=old.layers, channels=channels))
    for new_conv, old_conv in zip((wide.head, *wide.body, wide.tail), (trained.head, *trained.body, trained.tail)):
        out_old, in_old = old_conv.weight.shape[:2]
        new_conv.weight[:, in_old:] = 0.0  # a new channel reaches nothing yet; new rows keep He init on old inputs
        new_conv.weight[:out_old, :in_old] = old_conv.weight.to(new_conv.weight.dtype)
        new_conv.bias[:out_old] = old_conv.bias
        new_conv.bias[out_old:] = 0.0
    return wide


def planes_to_tensors(planes: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    """uint8 planes (H,W), (H/2,W/2), (H/2,W/2) -> float32 tensors (1,1,h,w) in [0,1]."""
    return tuple(torch.from_numpy(np.ascontiguousarray(p)).float().div(255.0)[None, None] for p in planes)


def tensors_to_planes(tensors: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Filtered float planes (1,1,h,w) -> uint8 (round half to even after clamping to [0, 255])."""
    return tuple(t[0, 0].mul(255.0).clamp(0, 255).round().to(torch.uint8).numpy() for t in tensors)


def scale_residuals(inputs: tuple[torch.Tensor, ...], outputs: tuple[torch.Tensor, ...],
                    scales: tuple[float, ...]) -> tuple[torch.Tensor, ...]:
    """Per plane, x + s (f - x): the filter's residual scaled by s (inputs x, outputs f, same shapes, in
    [0, 1]); a plane whose s is 1 is the output itself, bit for bit. Element-wise float32, so deterministic
    on any thread count (schemas.side_info ``intra_residual_scales``)."""
    return tuple(f if s == 1.0 else x + s * (f - x) for x, f, s in zip(inputs, outputs, scales, strict=True))


@torch.no_grad()
def filter_planes(model: PostFilter, planes: tuple[np.ndarray, ...], crf: float, codec: str,
                  scales: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, ...]:
    """Filter one decoded frame (8-bit 4:2:0 planes), its residual on Y, U, V scaled by ``scales``.
    Deterministic for a given torch build, CPU kind and thread count, so a decoder reproduces the encoder's
    output byte for byte under the same rule as the neural codec (the stream records the thread count)."""
    inputs = planes_to_tensors(planes)
    return tensors_to_planes(scale_residuals(inputs, model(*inputs, float(crf), codec), scales))
