"""ALF-style block classes of the decoded luma: which linear filter of a classified update each position gets.

Every 4x4 luma block (= 2x2 chroma positions of the filter's working planes) gets an activity class from
the decoded luma, as VVC's ALF classifies 4x4 blocks by their Laplacian activity:

    activity = sum over the block's 16 pixels of |2 Y - Y_up - Y_down| + |2 Y - Y_left - Y_right|
    class    = the number of ACTIVITY_THRESHOLDS <= activity          (0 .. ACTIVITY_CLASSES - 1)

Integer arithmetic on the 8-bit samples (borders and sizes that are not multiples of 4 replicate the edge
samples), so encoder and decoder derive the same map from the same decoded frame whatever the CPU, the torch
build or the thread count. The thresholds are per-pixel mean activities 1, 2, 3, 4, 6, 8, ... 181 (about
half an octave apart) times the 16 pixels of a block: flat areas, edges and texture fall in different
classes. Classes are then merged into contiguous groups (:func:`class_groups`), whose boundaries the update
carries, so the decoder needs nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BLOCK = 4  # luma samples per block side
ACTIVITY_CLASSES = 16
_PER_PIXEL = (1, 2, 3, 4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128, 181)
ACTIVITY_THRESHOLDS = tuple(BLOCK * BLOCK * t for t in _PER_PIXEL)  # block sums; ACTIVITY_CLASSES - 1 of them


def _edge_index(length: int, padded: int) -> torch.Tensor:
    """Indices -1 .. padded of a line of ``length`` samples, clamped to it (replicate padding)."""
    return torch.arange(-1, padded + 1).clamp(0, length - 1)


def activity_classes(luma: torch.Tensor) -> torch.Tensor:
    """Activity class (int64, 0..ACTIVITY_CLASSES-1) of every chroma position: ``luma`` (B, H, W) or (H, W) of
    integer sample values 0..255 (any integer dtype), H and W even -> (B, H/2, W/2) (or (H/2, W/2)); each
    position gets the class of the 4x4 luma block holding its 2x2 luma samples."""
    squeeze = luma.dim() == 2
    y = (luma[None] if squeeze else luma).to(torch.int32)
    _, height, width = y.shape
    padded_h, padded_w = -(-height // BLOCK) * BLOCK, -(-width // BLOCK) * BLOCK
    p = y[:, _edge_index(height, padded_h)][:, :, _edge_index(width, padded_w)]  # (B, H4 + 2, W4 + 2)
    centre = 2 * p[:, 1:-1, 1:-1]
    laplacian = ((centre - p[:, :-2, 1:-1] - p[:, 2:, 1:-1]).abs()
                 + (centre - p[:, 1:-1, :-2] - p[:, 1:-1, 2:]).abs())
    blocks = laplacian.reshape(-1, padded_h // BLOCK, BLOCK, padded_w // BLOCK, BLOCK).sum(dim=(2, 4))
    thresholds = torch.tensor(ACTIVITY_THRESHOLDS, dtype=blocks.dtype)
    classes = torch.bucketize(blocks, thresholds, right=True).to(torch.int64)
    half = BLOCK // 2
    positions = classes.repeat_interleave(half, 1).repeat_interleave(half, 2)[:, : height // 2, : width // 2]
    return positions[0] if squeeze else positions


def class_groups(boundaries: Sequence[int]) -> torch.Tensor:
    """(ACTIVITY_CLASSES,) int64 group of each class: group g holds the classes from boundaries[g - 1]
    (0 for g = 0) up to boundaries[g] - 1 (the last group up to the last class); boundaries strictly increasing
    in 1..ACTIVITY_CLASSES - 1 (validated by the caller: workers.postfilter.update.UpdateStructure)."""
    return torch.bucketize(torch.arange(ACTIVITY_CLASSES), torch.tensor(list(boundaries), dtype=torch.int64), right=True)


def class_counts(classes: torch.Tensor) -> torch.Tensor:
    """(ACTIVITY_CLASSES,) int64 positions per class of a class map."""
    return torch.bincount(classes.reshape(-1), minlength=ACTIVITY_CLASSES)
