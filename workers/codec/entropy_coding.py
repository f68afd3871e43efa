"""Entropy coding of latents with constriction's ANS coder.

Tables are built once per model, in float64 on the CPU, and every call codes whole arrays: one
constriction call per channel (hyper-latents) or per scale-table entry (latents), never per symbol.
Hyper-latent symbols that fall outside a table's range are clamped BEFORE coding, and the encoder
reconstructs from the clamped symbols. Latent symbols beyond their table are escape-coded (bitstream format
4, :class:`EscapeCoder`; formats 2 and 3 clamped them too, see :class:`GaussianTable`). Either way the
decoder reproduces the encoder's reconstruction exactly.

ANS is a stack: we encode the groups in reverse order so the decoder pops them in forward order.
Compressed data is a sequence of little-endian uint32 words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from workers.codec.entropy_models import (CODER_PROBABILITY_FLOOR, CODING_MIN_RANGE, CODING_TAIL_STDS,
                                          EntropyBottleneck, scale_table)
from workers.errors import BitstreamError, exception_line

FACTORIZED_TAIL_MASS = 1e-9   # per side; mass beyond is folded into the outermost bins
FACTORIZED_MAX_OFFSET = 1024  # symbols are searched within median +- this
GAUSSIAN_TAIL_STDS = CODING_TAIL_STDS  # latent symbols range over +- ceil(8 std) of their table entry
GAUSSIAN_MIN_RANGE = CODING_MIN_RANGE
ESCAPE_MAX_EXCESS = 2**31 - 1  # the largest escaped excess |s| - R (a latent of ~2e9: nothing real)


def words_to_bytes(words: np.ndarray) -> bytes:
    return np.ascontiguousarray(words, dtype="<u4").tobytes()


def bytes_to_words(data: bytes, what: str) -> np.ndarray:
    if len(data) % 4:
        raise BitstreamError(None, f"{what}: length {len(data)} is not a multiple of 4 bytes")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def _open_decoder(data: bytes, what: str):
    words = bytes_to_words(data, what)
    try:
        return constriction.stream.stack.AnsCoder(words)
    except BaseException as exc:  # constriction panics are BaseExceptions
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise BitstreamError(None, f"{what}: invalid compressed data ({exception_line(exc, 160)})") from None


def _finish_decoding(coder, what: str) -> None:
    if not coder.is_empty():
        raise BitstreamError(None, f"{what}: data left over after decoding (corrupted stream)")


def _decode_guarded(coder, model, count: int, what: str) -> np.ndarray:
    """``coder.decode(model, count)``, with every failure as a one-line BitstreamError: constriction
    raises multi-line messages (e.g. "not normalizable") and PanicException, a BaseException that
    ``except Exception`` does not catch."""
    try:
        return coder.decode(model, count)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise BitstreamError(None, f"{what}: decoding failed ({exception_line(exc, 160)})") from None


@dataclass
class FactorizedTable:
    """Per-channel probability tables of an :class:`EntropyBottleneck`.

    ``probabilities[c, :lengths[c]]`` is the float64 PMF of symbols ``min_offset[c] .. min_offset[c] +
    lengths[c] - 1`` relative to ``medians[c]``; the first and last bins hold the tails.
    """

    probabilities: np.ndarray   # (C, L) float64, zero-padded past lengths[c]
    lengths: np.ndarray         # (C,) int64
    min_offset: torch.Tensor    # (C,) int64
    medians: torch.Tensor       # (C,) float32

    def __post_init__(self):
        self._models = [constriction.stream.model.Categorical(self.probabilities[c, : self.lengths[c]], perfect=False)
                        for c in range(len(self.lengths))]
        self._max_index = torch.from_numpy(self.lengths - 1)

    @classmethod
    @torch.no_grad()
    def build(cls, bottleneck: EntropyBottleneck) -> "FactorizedTable":
        medians64 = bottleneck.medians().double()
        offsets = torch.arange(-FACTORIZED_MAX_OFFSET, FACTORIZED_MAX_OFFSET + 2, dtype=torch.float64) - 0.5
        edges = medians64[:, None] + offsets[None, :]                      # (C, M + 1) bin edges
        logits = bottleneck.logits_cumulative(edges[:, None, :]).squeeze(1)  # float64
        below = torch.sigmoid(logits)      # mass below each edge
        above = torch.sigmoid(-logits)     # mass above each edge, accurate where `below` is ~1
        channels, num_bins = edges.shape[0], edges.shape[1] - 1
        rows, lengths, first = [], [], []
        for c in range(channels):
            # first bin whose upper edge has more than the tail below it; last bin whose lower edge
            # has more than the tail above it
            heavy_below = torch.nonzero(below[c, 1:] > FACTORIZED_TAIL_MASS)
            heavy_above = torch.nonzero(above[c, :-1] > FACTORIZED_TAIL_MASS)
            lo = int(heavy_below[0]) if len(heavy_below) else 0
            hi = int(heavy_above[-1]) if len(heavy_above) else num_bins - 1
            # at least two symbols: constriction cannot build a one-symbol table, and a channel the model
            # stopped using (all mass in one bin, seen at low lambdas) must still code its symbols
            hi = max(hi, lo + 1)
            if hi > num_bins - 1:
                lo, hi = num_bins - 2, num_bins - 1
            pmf = (below[c, lo + 1: hi + 2] - below[c, lo: hi + 1]).clone()
            pmf[0] = below[c, lo + 1]
            pmf[-1] = above[c, hi]
            rows.append(pmf.clamp_min(0.0).numpy())
            lengths.append(hi - lo + 1)
            first.append(lo - FACTORIZED_MAX_OFFSET)
        width = max(lengths)
        probabilities = np.zeros((channels, width), dtype=np.float64)
        for c, row in enumerate(rows):
            probabilities[c, : len(row)] = row / row.sum()
        return cls(probabilities, np.asarray(lengths, dtype=np.int64),
                   torch.tensor(first, dtype=torch.int64), bottleneck.medians().float().clone())

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, C, H, W) -> symbol indices (N, C, H, W) int64 into each channel's table (clamped)."""
        medians = self.medians.view(1, -1, 1, 1)
        offsets = torch.round(z.detach() - medians).to(torch.int64) - self.min_offset.view(1, -1, 1, 1)
        return torch.minimum(offsets.clamp_min(0), self._max_index.view(1, -1, 1, 1))

    def dequantize(self, symbols: torch.Tensor) -> torch.Tensor:
        """Symbol indices (N, C, H, W) -> z_hat float32, exactly as the decoder computes it."""
        values = (symbols + self.min_offset.view(1, -1, 1, 1)).to(torch.float32)
        return values + self.medians.view(1, -1, 1, 1)

    def encode(self, symbols: torch.Tensor) -> bytes:
        per_channel = symbols.transpose(0, 1).reshape(symbols.shape[1], -1).numpy().astype(np.int32)
        coder = constriction.stream.stack.AnsCoder()
        for c in reversed(range(per_channel.shape[0])):
            coder.encode_reverse(per_channel[c], self._models[c])
        return words_to_bytes(coder.get_compressed())

    def decode(self, data: bytes, shape: tuple[int, int, int, int], what: str = "hyper-latents") -> torch.Tensor:
        n, c, h, w = shape
        coder = _open_decoder(data, what)
        per_channel = np.empty((c, n * h * w), dtype=np.int64)
        for channel in range(c):
            per_channel[channel] = _decode_guarded(coder, self._models[channel], n * h * w, what)
        _finish_decoding(coder, what)
        return torch.from_numpy(per_channel).reshape(c, n, h, w).transpose(0, 1).contiguous()

    def ideal_bits(self, symbols: torch.Tensor) -> float:
        """sum of -log2 p(symbol) under the coder's tables (the information content): the float64 tables plus
        the coder's probability floor (constriction's fixed-point tables give every symbol at least ~2^-24;
        without the floor a far-tail symbol would count up to ~31 bits where the coder pays ~24)."""
        channel = torch.arange(symbols.shape[1]).view(1, -1, 1, 1).expand_as(symbols)
        p = self.probabilities[channel.reshape(-1).numpy(), symbols.reshape(-1).numpy()]
        return float(-np.log2(p + CODER_PROBABILITY_FLOOR).sum())


ESCAPE_MAX_EXPONENT = 30  # an escaped symbol's excess e = |s| - R lies in [1, 2**31 - 1]: floor(log2 e) <= 30
ESCAPE_MANTISSA_CHUNK = 15  # mantissa bits per Uniform symbol (constriction's models have 24-bit precision)


def _exponent_model():
    """Categorical over k = floor(log2 e) in 0..30 with p(k) ~ 2**-(k + 1): Elias-gamma's code lengths."""
    weights = 0.5 ** np.arange(1, ESCAPE_MAX_EXPONENT + 2, dtype=np.float64)
    return constriction.stream.model.Categorical(weights / weights.sum(), perfect=False)


def _exact_exponent(excess: np.ndarray) -> np.ndarray:
    """floor(log2 e) for int64 e >= 1, exact (float log2 alone can be off by one near powers of two)."""
    k = np.floor(np.log2(excess.astype(np.float64))).astype(np.int64)
    k -= (np.left_shift(1, k) > excess).astype(np.int64)
    k += (np.left_shift(1, k + 1) <= excess).astype(np.int64)
    return k


def _mantissa_chunks(exponents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bits below the leading one, split into a high and a low chunk of at most 15 bits each."""
    low = np.minimum(exponents, ESCAPE_MANTISSA_CHUNK)
    return exponents - low, low


class EscapeCoder:
    """Codes the excess e = |s| - R >= 1 of escaped latent symbols (s coded as the escape symbol
    +-(R + 1), which carries the sign), as CompressAI's bypass coding does: k = floor(log2 e) under a
    fixed Elias-gamma-like Categorical, then the k bits below e's leading one as at most two Uniform
    symbols. Each escape costs at most 2 + 1 symbols, so a hostile stream cannot make the decoder spend
    more than a fixed multiple of the latent's symbol count (all arrays are O(escapes))."""

    def __init__(self):
        self._exponents = _exponent_model()
        self._uniform = constriction.stream.model.Uniform()  # family: one size per symbol

    def encode(self, coder, excess: np.ndarray) -> None:
        """Push ``excess`` (int64, >= 1, < 2**31) so that it pops after the main symbols."""
        if not len(excess):
            return
        exponents = _exact_exponent(excess)
        high_bits, low_bits = _mantissa_chunks(exponents)
        mantissa = excess - np.left_shift(1, exponents)
        for bits, values in ((low_bits, mantissa & ((np.left_shift(1, low_bits)) - 1)),
                             (high_bits, np.right_shift(mantissa, low_bits))):
            used = bits > 0  # Uniform needs at least 2 values
            if used.any():
                coder.encode_reverse(values[used].astype(np.int32), self._uniform,
                                     np.left_shift(1, bits[used]).astype(np.int32))
        coder.encode_reverse(exponents.astype(np.int32), self._exponents)

    def decode(self, coder, count: int, what: str) -> np.ndarray:
        """The ``count`` excesses (int64) pushed by :meth:`encode`."""
        if not count:
            return np.zeros(0, dtype=np.int64)
        exponents = _decode_guarded(coder, self._exponents, count, what).astype(np.int64)
        high_bits, low_bits = _mantissa_chunks(exponents)
        chunks = []
        for bits in (high_bits, low_bits):
            values = np.zeros(count, dtype=np.int64)
            used = bits > 0
            if used.any():
                values[used] = _decode_guarded(coder, self._uniform, np.left_shift(1, bits[used]).astype(np.int32), what)
            chunks.append(values)
        return np.left_shift(1, exponents) + np.left_shift(chunks[0], low_bits) + chunks[1]

    def ideal_bits(self, excess: np.ndarray) -> float:
        exponents = _exact_exponent(excess)
        weights = 0.5 ** np.arange(1, ESCAPE_MAX_EXPONENT + 2, dtype=np.float64)
        return float(-np.log2(weights[exponents] / weights.sum()).sum() + exponents.sum())


class GaussianTable:
    """Coding models for latents: one quantized Gaussian (mean 0) per scale-table entry.

    Element i with table index k has symbol s = round(y_i - mean_i) and range R_k = max(4, ceil(8 table[k])).

    - ``escapes=True`` (bitstream format 4): |s| <= R_k is coded under N(0, table[k]^2) on
      [-R_k - 1, R_k + 1], whose edge bins hold the tails; a larger |s| is coded as the escape symbol
      sign(s) (R_k + 1) followed by its excess |s| - R_k (:class:`EscapeCoder`), so the decoder rebuilds
      exactly the encoder's s. Only |s| > R_k + 2**31 - 1 (a latent of ~2e9) is clamped.
    - ``escapes=False`` (formats 2 and 3): s is clamped to [-R_k, R_k] and coded under N(0, table[k]^2) on
      that range; the decoder rebuilds the clamped value, which is what those encoders reconstructed.
    """

    def __init__(self, escapes: bool = True):
        self.escapes = escapes
        self.stds = scale_table()
        self.ranges = np.maximum(GAUSSIAN_MIN_RANGE, np.ceil(GAUSSIAN_TAIL_STDS * self.stds)).astype(np.int64)
        self._ranges_t = torch.from_numpy(self.ranges)
        edges = self.ranges + 1 if escapes else self.ranges
        self._models = [constriction.stream.model.QuantizedGaussian(-int(e), int(e), 0.0, float(s))
                        for e, s in zip(edges, self.stds)]
        self._escape = EscapeCoder()

    def quantize(self, residual: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        """round(y - mean), int64; clamped to each element's table range when ``escapes`` is off (and to
        +-(R + 2**31 - 1) when on; NaN counts as 0)."""
        if not self.escapes:
            bound = self._ranges_t[indexes]
            return torch.maximum(torch.minimum(torch.round(residual.detach()).to(torch.int64), bound), -bound)
        bound = self._ranges_t[indexes] + ESCAPE_MAX_EXCESS
        limit = float(2 * ESCAPE_MAX_EXCESS + self.ranges.max())
        rounded = torch.round(torch.nan_to_num(residual.detach().double(), nan=0.0).clamp(-limit, limit))
        return torch.maximum(torch.minimum(rounded.to(torch.int64), bound), -bound)

    def escape_count(self, symbols: torch.Tensor, indexes: torch.Tensor) -> int:
        """How many symbols lie outside their table range (escaped in format 4, clamped before)."""
        return int((symbols.abs() > self._ranges_t[indexes]).sum())

    def _groups(self, indexes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        flat = indexes.reshape(-1).numpy()
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=len(self.stds))
        return order, counts

    def encode(self, symbols: torch.Tensor, indexes: torch.Tensor) -> bytes:
        order, counts = self._groups(indexes)
        flat = symbols.reshape(-1).numpy().astype(np.int64)
        coder = constriction.stream.stack.AnsCoder()
        if self.escapes:  # pushed first, so popped after the main symbols that say where escapes are
            bound = self.ranges[indexes.reshape(-1).numpy()]
            escaped = np.abs(flat) > bound
            self._escape.encode(coder, np.abs(flat[escaped]) - bound[escaped])
            flat = np.where(escaped, np.sign(flat) * (bound + 1), flat)
        ordered = flat[order].astype(np.int32)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for k in reversed(np.nonzero(counts)[0]):
            coder.encode_reverse(ordered[bounds[k]: bounds[k + 1]], self._models[k])
        return words_to_bytes(coder.get_compressed())

    def decode(self, data: bytes, indexes: torch.Tensor, what: str = "latents") -> torch.Tensor:
        order, counts = self._groups(indexes)
        coder = _open_decoder(data, what)
        ordered = np.empty(len(order), dtype=np.int64)
        start = 0
        for k in np.nonzero(counts)[0]:
            ordered[start: start + counts[k]] = _decode_guarded(coder, self._models[k], int(counts[k]), what)
            start += counts[k]
        symbols = np.empty_like(ordered)
        symbols[order] = ordered
        if self.escapes:
            bound = self.ranges[indexes.reshape(-1).numpy()]
            escaped = np.abs(symbols) > bound
            excess = self._escape.decode(coder, int(escaped.sum()), what)
            symbols[escaped] = np.sign(symbols[escaped]) * (bound[escaped] + excess)
        _finish_decoding(coder, what)
        return torch.from_numpy(symbols).reshape(indexes.shape)

    def ideal_bits(self, symbols: torch.Tensor, indexes: torch.Tensor) -> float:
        """sum of -log2 p(symbol) under the coder's Gaussians: the float64 ones truncated and renormalised to
        [-R, R] without escapes; with them, the tail beyond R + 0.5 is the escape symbol's mass, plus the
        escape's own bits. Every probability carries the coder's floor (~2^-24, as for FactorizedTable)."""
        std = torch.from_numpy(self.stds)[indexes].reshape(-1)
        bound = self._ranges_t[indexes].reshape(-1).double()
        s = symbols.reshape(-1).abs().double()
        upper_tail = _standard_normal_cdf  # P(X <= x); upper tails via symmetry for accuracy
        if not self.escapes:
            mass = upper_tail(-(s - 0.5) / std) - upper_tail(-(s + 0.5) / std)
            inside = 1.0 - 2.0 * upper_tail(-(bound + 0.5) / std)
            return float(-torch.log2(mass / inside + CODER_PROBABILITY_FLOOR).sum())
        escaped = s > bound
        s_coded = torch.where(escaped, bound + 1, s)
        mass = upper_tail(-(s_coded - 0.5) / std) - torch.where(escaped, 0.0, upper_tail(-(s_coded + 0.5) / std))
        excess = (s - bound)[escaped].numpy().astype(np.int64)
        return float(-torch.log2(mass + CODER_PROBABILITY_FLOOR).sum()) + self._escape.ideal_bits(excess)


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """P(X <= x) for X ~ N(0, 1), accurate far into the lower tail (torch.special.ndtr returns 0 already at
    x = -8.5, measured with torch 2.13, which made the ideal bits of an 8.5-sigma symbol infinite)."""
    return 0.5 * torch.special.erfc(-x / math.sqrt(2.0))


_GAUSSIAN_TABLES: dict[bool, GaussianTable] = {}


def gaussian_table(escapes: bool = True) -> GaussianTable:
    """The shared latent coding table (it depends on nothing but constants): with escapes for bitstream
    format 4, clamping for formats 2 and 3."""
    if escapes not in _GAUSSIAN_TABLES:
        _GAUSSIAN_TABLES[escapes] = GaussianTable(escapes)
    return _GAUSSIAN_TABLES[escapes]
