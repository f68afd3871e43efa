"""gop-adapters' default rate proxy ``coder`` (issue 14): training prices symbols as the coder does.

constriction's models are fixed point (24 bits) and leaky: every symbol of a table's range gets at least one of
2^24 units, so a far-tail symbol costs the coder ~24 bits where the float density charges ~31 (the cause of
mobile and calendar's P-frames coding 3-5% under training's old estimate). These tests check that fact against
the real coder, and that the ``coder`` proxy (the table's scale, plus the floor) prices what the coder codes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workers.codec.entropy_coding import FactorizedTable, gaussian_table
from workers.codec.entropy_models import EntropyBottleneck, GaussianConditional
from tests.test_snapped_scale_rate import symbols_under_the_tables
from workers.rd_loss import likelihood_bits

STATE_BITS = 64  # ANS initial state and final flush per stream (as in test_entropy_coding.py)


def _float_bits(mass: torch.Tensor) -> float:
    return float(-torch.log2(mass).sum())


def test_the_coder_pays_about_24_bits_for_a_far_tail_latent_symbol():
    """|s| = 7 std under the widest-range small-scale entry: the float Gaussian charges ~40 bits, the coder
    ~24 (its floor), and the floored information content is what it codes."""
    table = gaussian_table()
    index = 20
    std, bound = table.stds[index], int(table.ranges[index])
    symbol = int(round(7 * std))
    assert symbol <= bound  # inside the table: coded as itself, not escaped
    count = 400
    indexes = torch.full((1, 1, 20, count // 20), index, dtype=torch.int64)
    symbols = torch.full(indexes.shape, symbol, dtype=torch.int64)
    coded = 8 * len(table.encode(symbols, indexes))
    cdf = lambda x: 0.5 * math.erfc(-x / math.sqrt(2.0))  # noqa: E731
    float_bits = -math.log2(cdf(-(symbol - 0.5) / std) - cdf(-(symbol + 0.5) / std))
    assert float_bits > 30
    assert 23.0 * count <= coded - STATE_BITS and coded <= 24.5 * count + STATE_BITS
    ideal = table.ideal_bits(symbols, indexes)
    assert ideal <= coded <= 1.01 * ideal + STATE_BITS


def test_the_coder_pays_about_24_bits_for_a_far_tail_hyper_latent_symbol():
    torch.manual_seed(0)
    table = FactorizedTable.build(EntropyBottleneck(2))
    p = table.probabilities[0, : table.lengths[0]]
    rare = int(np.argmin(np.where(p > 0, p, 1.0)))
    assert p[rare] < 2.0**-26  # a symbol the float table charges over 26 bits
    symbols = torch.zeros(1, 2, 20, 20, dtype=torch.int64)
    symbols[:, 0] = rare
    symbols[:, 1] = int(np.argmax(table.probabilities[1]))
    coded = 8 * len(table.encode(symbols))
    ideal = table.ideal_bits(symbols)
    assert ideal <= coded <= 1.01 * ideal + STATE_BITS
    assert coded < -np.log2(p[rare]) * 400  # below what the float table charges the rare symbols alone


def _latent_with_tails(seed: int = 0, shape=(1, 8, 12, 16)):
    """y around its mean with ~10% of the elements 5.5-7.5 std out (inside the tables' 8-std range)."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.empty(shape).uniform_(-1.0, 3.0, generator=generator))
    means = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator) * 0.8
    far = torch.rand(shape, generator=generator) < 0.1
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    tail = sign * torch.empty(shape).uniform_(5.5, 7.5, generator=generator)
    return means + scales * torch.where(far, tail, noise), scales, means


def test_the_coder_proxy_prices_latents_at_the_coders_information_content():
    y, scales, means = _latent_with_tails()
    conditional, table, indexes, symbols = symbols_under_the_tables(y, scales, means)
    coded = 8 * len(table.encode(symbols, indexes))
    y_hat = symbols.to(torch.float32) + means
    coder = float(likelihood_bits([conditional.coder_likelihood(y_hat, scales, means)]))
    assert coder == pytest.approx(table.ideal_bits(symbols, indexes), rel=2e-3)
    assert coder <= coded <= 1.01 * coder + STATE_BITS
    conditional.snap_scales = True  # the table's scales without the floor charges the tails far more
    assert float(likelihood_bits([conditional(y_hat, scales, means)[1]])) > 1.05 * coded
    conditional.coder_floor = True  # the module configured as training configures it
    assert float(likelihood_bits([conditional(y_hat, scales, means)[1]])) == pytest.approx(coder, rel=1e-6)


def test_the_coder_proxy_prices_hyper_latents_at_the_coders_information_content():
    torch.manual_seed(1)
    bottleneck = EntropyBottleneck(4, init_scale=2.0).eval()
    table = FactorizedTable.build(bottleneck)
    generator = np.random.default_rng(0)
    symbols = np.zeros((1, 4, 16, 16), dtype=np.int64)
    for c in range(4):
        p = table.probabilities[c, : table.lengths[c]]
        symbols[0, c] = generator.choice(len(p), size=(16, 16), p=p)
        rare = np.nonzero(p[1:-1] < 2.0**-26)[0] + 1  # far-tail symbols inside the table (not its edge bins)
        assert len(rare)
        symbols[0, c, :2] = generator.choice(rare, size=(2, 16))
    symbols = torch.from_numpy(symbols)
    z_hat = table.dequantize(symbols)
    with torch.no_grad():
        floored = float(likelihood_bits([bottleneck.likelihood(z_hat, coder_floor=True)]))
        unfloored = float(likelihood_bits([bottleneck.likelihood(z_hat)]))
    coded = 8 * len(table.encode(symbols))
    assert floored == pytest.approx(table.ideal_bits(symbols), rel=1e-3)
    assert floored <= coded <= 1.01 * floored + STATE_BITS
    assert unfloored > 1.05 * coded  # without the floor, training would charge the tails far more


def test_the_coder_proxy_passes_a_gradient_to_the_scales():
    y, scales, means = _latent_with_tails(1)
    scales.requires_grad_(True)
    likelihood_bits([GaussianConditional().coder_likelihood(y, scales, means)]).backward()
    assert scales.grad is not None and float(scales.grad.abs().sum()) > 0


def test_gop_adapters_default_proxy_is_the_coders_on_every_adapted_entropy_model():
    from workers.adapt.adapters import with_adapters, with_intra_adapters
    from workers.methods import parse_method_config
    from workers.model_store import resolve_model, shipped_model_names

    if not shipped_model_names():
        pytest.skip("no shipped model in this installation")
    base = resolve_model("ssf-compact", 1).model
    config = parse_method_config("gop-adapters", {})
    assert config.rate_proxy == "coder"
    inter, _ = with_adapters(base, config)
    intra, _ = with_intra_adapters(base, config)
    adapted = [inter.motion_hyperprior, inter.res_hyperprior, intra.img_hyperprior]
    assert all(h.gaussian_conditional.snap_scales and h.gaussian_conditional.coder_floor
               and h.entropy_bottleneck.coder_floor for h in adapted)
    assert not base.img_hyperprior.gaussian_conditional.coder_floor  # the base model is left alone
