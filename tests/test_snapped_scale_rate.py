"""gop-adapters' ``rate_proxy="table"``: the rate training estimates under the coding table's scales.

With ``snap_scales`` the Gaussian conditional prices y under the scale-table entry the coder picks for each
element (the next entry up, up to 13% wider than the hyper-decoder's scale), so the estimate is the
information content the coder codes (workers/rate_audit.py's ``table`` column), and the scale still gets a
gradient (straight through the snap).
"""

from __future__ import annotations

import pytest
import torch

from workers.codec.entropy_coding import gaussian_table
from workers.codec.entropy_models import GaussianConditional
from workers.rd_loss import likelihood_bits


def _latent(seed: int = 0, shape=(1, 8, 12, 16)):
    generator = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.empty(shape).uniform_(-2.0, 3.0, generator=generator))  # 0.14 .. 20
    means = torch.randn(shape, generator=generator)
    y = means + scales * torch.randn(shape, generator=generator) * 0.8  # inside the tables: no escapes
    return y, scales, means


def _bits(conditional: GaussianConditional, y, scales, means) -> float:
    return float(likelihood_bits([conditional(y, scales, means)[1]]))


def symbols_under_the_tables(y, scales, means):
    """(eval-mode GaussianConditional, the coding table, y's table indexes, y's symbols), none escaped."""
    conditional = GaussianConditional().eval()
    table = gaussian_table()
    indexes = conditional.indexes(scales)
    symbols = table.quantize(y - means, indexes)
    assert table.escape_count(symbols, indexes) == 0
    return conditional, table, indexes, symbols


def test_snapped_estimate_is_the_coding_tables_information_content():
    y, scales, means = _latent()
    conditional, table, indexes, symbols = symbols_under_the_tables(y, scales, means)
    ideal = table.ideal_bits(symbols, indexes)
    continuous = _bits(conditional, y, scales, means)
    conditional.snap_scales = True
    snapped = _bits(conditional, y, scales, means)
    assert snapped == pytest.approx(ideal, rel=2e-3)
    # the snap moves the estimate by more than that tolerance here (so the check above can tell them apart)
    assert abs(continuous - ideal) > 0.01 * ideal


def test_snapped_estimate_passes_a_gradient_to_the_scales():
    y, scales, means = _latent(1)
    scales.requires_grad_(True)
    conditional = GaussianConditional().eval()
    conditional.snap_scales = True
    likelihood_bits([conditional(y, scales, means)[1]]).backward()
    assert scales.grad is not None and float(scales.grad.abs().sum()) > 0


def test_gop_adapters_table_proxy_snaps_both_p_frame_entropy_models():
    from workers.adapt.adapters import with_adapters
    from workers.methods import parse_method_config
    from workers.model_store import resolve_model, shipped_model_names

    if not shipped_model_names():
        pytest.skip("no shipped model in this installation")
    base = resolve_model("ssf-compact", 1).model
    for proxy, snapped in (("table", True), ("rounded", False)):
        adapted, _ = with_adapters(base, parse_method_config("gop-adapters", {"rate_proxy": proxy}))
        assert [h.gaussian_conditional.snap_scales for h in (adapted.motion_hyperprior, adapted.res_hyperprior)] \
            == [snapped, snapped]
