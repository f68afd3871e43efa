"""Real bits against the ideal information content, and exact symbol round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.codec.entropy_coding import ESCAPE_MAX_EXCESS, FactorizedTable, gaussian_table
from workers.codec.entropy_models import EntropyBottleneck
from workers.errors import BitstreamError

PER_STREAM_CONSTANT_BITS = 64  # ANS initial state and final flush


def _bottleneck(channels: int = 6, seed: int = 0) -> EntropyBottleneck:
    torch.manual_seed(seed)
    bottleneck = EntropyBottleneck(channels)
    with torch.no_grad():  # give each channel a different shape, width and median
        for parameter in [*bottleneck.matrices, *bottleneck.biases, *bottleneck.factors]:
            parameter.add_(0.3 * torch.randn_like(parameter))
        bottleneck.quantiles[:, 0, 1] = torch.linspace(-2.3, 1.7, channels)
    return bottleneck


def test_factorized_tables_are_normalised_pmfs():
    table = FactorizedTable.build(_bottleneck())
    for c, length in enumerate(table.lengths):
        assert np.isclose(table.probabilities[c, :length].sum(), 1.0, atol=1e-12)
        assert np.all(table.probabilities[c, length:] == 0)
        assert length > 3


def test_factorized_real_bits_close_to_ideal_and_exact_round_trip():
    table = FactorizedTable.build(_bottleneck())
    rng = np.random.default_rng(0)
    n, h, w = 2, 40, 50
    symbols = np.stack([rng.choice(table.lengths[c], size=(n, h, w), p=table.probabilities[c, : table.lengths[c]])
                        for c in range(len(table.lengths))], axis=1)
    symbols = torch.from_numpy(symbols)
    data = table.encode(symbols)
    real, ideal = 8 * len(data), table.ideal_bits(symbols)
    assert ideal <= real <= 1.01 * ideal + PER_STREAM_CONSTANT_BITS
    assert torch.equal(table.decode(data, tuple(symbols.shape)), symbols)


def test_factorized_quantize_clamps_outliers_and_decoder_sees_the_same_values():
    table = FactorizedTable.build(_bottleneck())
    z = torch.randn(1, 6, 4, 4) * 3
    z[0, 0, 0, 0], z[0, 1, 0, 0] = 1e6, -1e6
    symbols = table.quantize(z)
    assert int(symbols[0, 0, 0, 0]) == table.lengths[0] - 1 and int(symbols[0, 1, 0, 0]) == 0
    decoded = table.decode(table.encode(symbols), tuple(symbols.shape))
    assert torch.equal(table.dequantize(decoded), table.dequantize(symbols))
    inside = (z - table.medians.view(1, -1, 1, 1)).abs() < 2
    assert torch.equal(table.dequantize(symbols)[inside], (torch.round(z - table.medians.view(1, -1, 1, 1))
                                                           + table.medians.view(1, -1, 1, 1))[inside])


def test_a_channel_with_all_its_mass_in_one_bin_still_codes():
    """Channels a trained model stopped using put all their mass in one bin (seen in the motion hyperprior at
    the lowest lambda); constriction cannot build a one-symbol table, so such a channel gets two."""
    bottleneck = _bottleneck(channels=3)
    with torch.no_grad():
        for matrix in bottleneck.matrices:
            matrix[1] = 30.0  # softplus(30) ~ 30 per layer: the cumulative of channel 1 is a step
    table = FactorizedTable.build(bottleneck)
    assert table.lengths[1] == 2 and table.probabilities[1, :2].max() > 1 - 1e-9
    z = torch.randn(1, 3, 8, 8)
    z[:, 1] = bottleneck.medians()[1]  # what such a channel carries
    symbols = table.quantize(z)
    assert torch.equal(table.decode(table.encode(symbols), tuple(symbols.shape)), symbols)


@pytest.mark.parametrize("index_range", [(0, 20), (20, 64), (0, 64)])
def test_gaussian_real_bits_close_to_ideal_and_exact_round_trip(index_range):
    gaussian = gaussian_table()
    generator = torch.Generator().manual_seed(1)
    indexes = torch.randint(*index_range, (1, 8, 30, 40), generator=generator)
    stds = torch.from_numpy(gaussian.stds).float()[indexes]
    residual = torch.randn(indexes.shape, generator=generator) * stds
    symbols = gaussian.quantize(residual, indexes)
    data = gaussian.encode(symbols, indexes)
    real, ideal = 8 * len(data), gaussian.ideal_bits(symbols, indexes)
    assert ideal <= real <= 1.01 * ideal + PER_STREAM_CONSTANT_BITS
    assert torch.equal(gaussian.decode(data, indexes), symbols)


def test_formats_2_and_3_clamp_symbols_to_the_table_range():
    gaussian = gaussian_table(escapes=False)
    indexes = torch.zeros(1, 1, 1, 3, dtype=torch.int64)
    symbols = gaussian.quantize(torch.tensor([[[[100.0, -100.0, 1.0]]]]), indexes)
    bound = int(gaussian.ranges[0])
    assert symbols.flatten().tolist() == [bound, -bound, 1]
    assert torch.equal(gaussian.decode(gaussian.encode(symbols, indexes), indexes), symbols)


def test_codec_latents_bits_close_to_ideal(carphone, tiny_model):
    """On a real video through the (random) tiny model: every stream is within the bound."""
    from schemas.bitstream import BitstreamHeader
    from workers.video_codec import encode_sequence

    meta = tiny_model.metadata
    header = BitstreamHeader(model_id=meta.model_id, weights_sha256=meta.weights_sha256, quality=meta.quality,
                             width=carphone.width, height=carphone.height, frame_count=3, fps_num=30, fps_den=1,
                             intra_period=12)
    tables = tiny_model.model.entropy_tables()
    frames = [carphone.frame_rgb(i) for i in range(3)]
    encoded = encode_sequence(tiny_model.model, tables, frames, header, keep_latents=True)
    gaussian = gaussian_table()
    table_of = {"intra": tables.intra, "motion": tables.motion, "residual": tables.residual}
    checked = 0
    for frame in encoded.coded_latents:
        for kind, latent in frame.items():
            y_ideal = gaussian.ideal_bits(latent.y_symbols, latent.y_indexes)
            z_ideal = table_of[kind].ideal_bits(latent.z_symbols)
            for real, ideal in ((8 * len(latent.y_stream), y_ideal), (8 * len(latent.z_stream), z_ideal)):
                assert ideal <= real <= 1.01 * ideal + PER_STREAM_CONSTANT_BITS
                checked += 1
    assert checked == 2 + 4 * 2


@pytest.mark.parametrize("garbage", [b"\x01\x02\x03", b"\x00\x00\x00\x00"])
def test_decoding_malformed_data_raises_bitstream_error(garbage):
    """Wrong length or an invalid final word. (Other corruption can decode to valid-looking symbols:
    the container's CRC32 is what catches it, see test_bitstream.py.)"""
    gaussian = gaussian_table()
    indexes = torch.zeros(1, 2, 8, 8, dtype=torch.int64)
    with pytest.raises(BitstreamError):
        gaussian.decode(garbage, indexes)


def test_decoding_with_data_left_over_raises_bitstream_error():
    gaussian = gaussian_table()
    indexes = torch.full((1, 4, 16, 16), 40, dtype=torch.int64)
    symbols = gaussian.quantize(torch.randn(indexes.shape, generator=torch.Generator().manual_seed(0)) * 20, indexes)
    data = gaussian.encode(symbols, indexes)
    with pytest.raises(BitstreamError, match="left over"):
        gaussian.decode(data, indexes[:, :1])


def test_training_quantization_matched_to_the_coder_gives_the_coders_latents(tiny_model):
    """Encoder-side adaptation trains in eval mode; with match_coder, the y_hat it trains on is exactly the
    y_hat the coder reconstructs, even for latents far outside the coding tables (escape-coded in y, z is
    clamped to its table)."""
    import copy

    model = copy.deepcopy(tiny_model.model).eval()
    hyperprior = model.res_hyperprior
    table = FactorizedTable.build(hyperprior.entropy_bottleneck)
    y = torch.randn(1, model.architecture.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    y[0, 0, 0, 0], y[0, 1, 2, 3] = 4000.0, -4000.0  # beyond every table range
    coded = hyperprior.compress(y, table)
    with torch.no_grad():
        unmatched, _ = hyperprior(y)
        hyperprior.match_coder(table)
        matched, likelihoods = hyperprior(y)
    assert torch.equal(matched, coded.y_hat)
    assert coded.y_hat[0, 0, 0, 0] > 3000 and coded.y_hat[0, 1, 2, 3] < -3000  # escaped, not clamped
    assert torch.isfinite(likelihoods["y"]).all() and torch.isfinite(likelihoods["z"]).all()


def _far_outside(gaussian, indexes: torch.Tensor) -> torch.Tensor:
    """Symbols just past, far past and at the very limit of each element's table range, both signs."""
    bound = gaussian._ranges_t[indexes]
    excess = torch.tensor([1, 2, 3, 7, 1000, 2**15, 2**15 + 1, 2**20 + 12345, ESCAPE_MAX_EXCESS])
    pattern = excess[torch.arange(indexes.numel()) % len(excess)].view(indexes.shape)
    sign = torch.where(torch.arange(indexes.numel()).view(indexes.shape) % 2 == 0, 1, -1)
    return sign * (bound + pattern)


@pytest.mark.parametrize("index", [0, 20, 63])
def test_escaped_symbols_round_trip_exactly_at_bounded_cost(index):
    """Format 4: symbols beyond the table (up to R + 2**31 - 1) decode to exactly what was coded, mixed
    with in-range ones, and each escape costs a bounded number of bits (escape symbol <= 24 bits at
    constriction's precision, exponent <= 24, mantissa <= 30)."""
    gaussian = gaussian_table()
    generator = torch.Generator().manual_seed(3)
    indexes = torch.full((1, 4, 9, 10), index, dtype=torch.int64)
    inside = gaussian.quantize(torch.randn(indexes.shape, generator=generator) * float(gaussian.stds[index]), indexes)
    outside = _far_outside(gaussian, indexes)
    mask = torch.rand(indexes.shape, generator=generator) < 0.3
    symbols = torch.where(mask, outside, inside)
    assert torch.equal(gaussian.quantize(symbols.double(), indexes), symbols)  # the quantizer keeps them
    data = gaussian.encode(symbols, indexes)
    assert torch.equal(gaussian.decode(data, indexes), symbols)
    escapes = gaussian.escape_count(symbols, indexes)
    assert escapes == int(mask.sum()) > 0
    plain = 8 * len(gaussian.encode(inside, indexes))
    assert 8 * len(data) <= plain + escapes * (24 + 24 + 30 + 2) + PER_STREAM_CONSTANT_BITS


def test_escape_quantizer_bounds_non_finite_and_huge_values():
    gaussian = gaussian_table()
    indexes = torch.zeros(1, 1, 1, 5, dtype=torch.int64)
    residual = torch.tensor([[[[float("inf"), -float("inf"), float("nan"), 1e30, -3e9]]]])
    symbols = gaussian.quantize(residual, indexes)
    limit = int(gaussian.ranges[0]) + ESCAPE_MAX_EXCESS
    assert symbols.flatten().tolist() == [limit, -limit, 0, limit, -limit]
    assert torch.equal(gaussian.decode(gaussian.encode(symbols, indexes), indexes), symbols)


def test_a_hostile_all_escape_stream_decodes_in_bounded_time():
    """Every symbol escaped at the largest excess: the decoder's work is a fixed multiple of the symbol
    count (no loop driven by a value read from the stream), and garbage in the escape part of a stream
    is an error or wrong symbols, never a hang."""
    import time

    gaussian = gaussian_table()
    indexes = torch.full((1, 192, 16, 16), 5, dtype=torch.int64)
    bound = gaussian._ranges_t[indexes]
    symbols = torch.where(torch.rand(indexes.shape, generator=torch.Generator().manual_seed(0)) < 0.5, 1, -1) * (
        bound + ESCAPE_MAX_EXCESS)
    data = gaussian.encode(symbols, indexes)
    start = time.perf_counter()
    assert torch.equal(gaussian.decode(data, indexes), symbols)
    assert time.perf_counter() - start < 5.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        garbage = bytearray(data)
        garbage[rng.integers(len(garbage))] ^= 1 << int(rng.integers(8))
        try:
            decoded = gaussian.decode(bytes(garbage), indexes)
        except BitstreamError:
            continue
        assert int(decoded.abs().max()) <= int(bound.max()) + ESCAPE_MAX_EXCESS


def test_a_stream_with_escapes_decodes_to_the_encoders_reconstruction(carphone, tiny_model):
    """Encoders whose latents go far beyond the tables (output layers scaled x200, as a badly adapted encoder
    might): format 4 escape-codes them, counts them, and the decoder rebuilds the encoder's frames exactly,
    whereas clamping them (formats 2-3) would reconstruct other latents."""
    import copy

    from schemas.bitstream import BitstreamHeader
    from workers.video_codec import decode_sequence, encode_sequence

    model = copy.deepcopy(tiny_model.model).eval()
    with torch.no_grad():
        for encoder in (model.img_encoder, model.res_encoder, model.motion_encoder):
            encoder[-1].weight.mul_(200.0)
            encoder[-1].bias.mul_(200.0)
    meta = tiny_model.metadata
    header = BitstreamHeader(model_id=meta.model_id, weights_sha256=meta.weights_sha256, quality=meta.quality,
                             width=carphone.width, height=carphone.height, frame_count=3, fps_num=30, fps_den=1,
                             intra_period=12)
    tables = model.entropy_tables()
    encoded = encode_sequence(model, tables, [carphone.frame_rgb(i) for i in range(3)], header, keep_latents=True)
    counted = sum(gaussian_table().escape_count(c.y_symbols, c.y_indexes)
                  for frame in encoded.coded_latents for c in frame.values())
    assert encoded.bits.escaped_latents == counted > 100
    assert encoded.data[4] == 4
    _, frames = decode_sequence(encoded.data, lambda h: (model, tables))
    assert all(torch.equal(a, b) for a, b in zip(frames, encoded.reconstruction, strict=True))
    intra = encoded.coded_latents[0]["intra"]
    clamped = gaussian_table(escapes=False).quantize(intra.y_symbols.double(), intra.y_indexes)
    assert not torch.equal(clamped, intra.y_symbols)
