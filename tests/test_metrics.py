"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workers.metrics import PSNR_CAP_DB, ms_ssim_rgb, ms_ssim_settings, psnr_rgb, psnr_yuv


def test_psnr_rgb_of_a_known_error():
    a = torch.zeros(3, 16, 16)
    b = torch.full((3, 16, 16), 4 / 255)  # every sample off by 4 levels: MSE 16
    assert psnr_rgb(a, b) == pytest.approx(10 * math.log10(255**2 / 16))
    assert psnr_rgb(a, a) == PSNR_CAP_DB


def test_psnr_yuv_weights_luma_six_to_one():
    y = np.zeros((16, 16), np.uint8)
    c = np.zeros((8, 8), np.uint8)
    off = lambda p, d: (p.astype(int) + d).astype(np.uint8)  # noqa: E731
    value = psnr_yuv((y, c, c), (off(y, 1), off(c, 2), off(c, 4)))
    expected = (6 * 10 * math.log10(255**2 / 1) + 10 * math.log10(255**2 / 4) + 10 * math.log10(255**2 / 16)) / 8
    assert value == pytest.approx(expected)


@pytest.mark.parametrize("size", [(144, 176), (60, 100), (288, 352), (24, 40)])
def test_ms_ssim_works_at_small_sizes_and_is_one_for_identical_frames(size):
    window, scales = ms_ssim_settings(*size)
    assert window % 2 == 1 and scales in (1, 5)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    assert ms_ssim_rgb(x, x) == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ms_ssim_rgb(x, noisy) < 0.95


def test_ms_ssim_uses_the_standard_window_on_large_frames():
    assert ms_ssim_settings(288, 352) == (11, 5)
    assert ms_ssim_settings(144, 176) == (9, 5)
    assert ms_ssim_settings(24, 40) == (3, 1)
