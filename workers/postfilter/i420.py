"""Packed I420 frames (numpy only, so the GPU trainer can import it without the codec's dependencies).

A packed frame is one (3H/2, W) uint8 array: Y in rows [0, H), U in rows [H, 3H/2) columns [0, W/2), V beside
it in columns [W/2, W). The pair cache, the GPU pack and both trainers store frames this way.
"""

from __future__ import annotations

import numpy as np

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]

# The training pack's format (workers/postfilter/pack.py writes it, train_gpu.py reads it); 2 adds the cache's
# intra_period to pack.json
PACK_FORMAT = "adaptjobs-postfilter-pack-2"


def pack_i420(planes: Planes) -> np.ndarray:
    """(Y (H,W), U, V (H/2,W/2)) -> one (3H/2, W) uint8 array: Y on top, U beside V below."""
    y, u, v = planes
    return np.concatenate([y, np.concatenate([u, v], axis=1)], axis=0)


def unpack_i420(packed: np.ndarray) -> Planes:
    """Inverse of :func:`pack_i420` for (..., 3H/2, W) arrays (views, no copy)."""
    h = packed.shape[-2] * 2 // 3
    w = packed.shape[-1]
    return packed[..., :h, :], packed[..., h:, : w // 2], packed[..., h:, w // 2:]


def crop_packed(packed: np.ndarray, top: int, left: int, size_y: int, size_x: int) -> np.ndarray:
    """The packed (3 size_y / 2, size_x) window at luma (top, left) of a packed frame; top, left, sizes even."""
    y, u, v = unpack_i420(packed)
    return pack_i420((y[top:top + size_y, left:left + size_x],
                      u[top // 2:(top + size_y) // 2, left // 2:(left + size_x) // 2],
                      v[top // 2:(top + size_y) // 2, left // 2:(left + size_x) // 2]))
