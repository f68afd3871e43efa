"""Issue 14 (decoder-lora on small clips): the kept state is judged on what is sent.

- the payload is coded under a prior fitted to its indices: never more bytes than the training prior, and
  the decoder rebuilds exactly the same weights;
- every byte that sending an update adds (payload + the stream header naming it) is what training's state
  choice counts;
- the evaluation sees the whole frames by default: its latent bits are the coded stream's.
"""

from __future__ import annotations

import json

import pytest
import torch

from schemas.adapt import WeightPrior
from workers.adapt.payload import (WeightUpdate, coded_bits, decode_payload, encode_payload, fitted_coding_prior,
                                   make_header, payload_layout)
from workers.methods import parse_method_config

SHA = "ab" * 32
SHAPES = {"a.lora_B": (64, 40), "a.lora_A_delta": (40, 120), "b.lora_B": (15, 10)}


def _sparse_indices(seed: int, nonzero: int, shapes=SHAPES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        values = torch.zeros(shape, dtype=torch.int64).reshape(-1)
        where = torch.randperm(values.numel(), generator=generator)[:nonzero]
        values[where] = torch.randint(-3, 4, (len(where),), generator=generator)
        out[name] = values.reshape(shape)
    return out


def _payload(indices, fit: bool, prior=WeightPrior(grid=0.002)) -> bytes:
    header = make_header(SHA, "full-decoder", {}, prior, indices, fit_prior=fit)
    return encode_payload(WeightUpdate(header, indices))


@pytest.mark.parametrize("seed,nonzero", [(0, 1), (1, 5), (2, 40), (3, 400)])
def test_fitted_prior_never_codes_more_bytes_and_decodes_to_the_same_weights(seed, nonzero):
    indices = _sparse_indices(seed, nonzero)
    preset, fitted = _payload(indices, fit=False), _payload(indices, fit=True)
    # within 4 bytes: the ANS stream is whole 32-bit words (minus dropped zero bytes), the fit counts ideal bits
    assert len(fitted) <= len(preset) + 4
    decoded = {p: decode_payload(p, SHA, lambda header: SHAPES) for p in (preset, fitted)}
    for name, value in indices.items():
        assert torch.equal(decoded[preset].indices[name], value) and torch.equal(decoded[fitted].indices[name], value)
        # the same grid: the decoder applies bit-identical weights whichever table coded them
        assert torch.equal(decoded[preset].dequantized()[name], decoded[fitted].dequantized()[name])


def test_fitted_prior_pays_for_its_header_bytes_on_mostly_zero_updates():
    # 3 non-zeros per tensor among 334k zeros (an extended LoRA of the shipped model has 334k coded weights):
    # the preset's zeros dominate its payload (0.0053 bits each)
    indices = _sparse_indices(4, 3, {"a": (480, 480), "b": (300, 346)})
    preset, fitted = _payload(indices, fit=False), _payload(indices, fit=True)
    assert len(fitted) < len(preset) - 16, (len(fitted), len(preset))
    flat = torch.cat([k.reshape(-1) for k in indices.values()])
    bound = int(flat.abs().max())
    counts = torch.bincount(flat + bound, minlength=2 * bound + 1).double().numpy()
    prior = fitted_coding_prior(WeightPrior(grid=0.002), indices, bound)
    assert prior.grid == pytest.approx(0.002, rel=1e-7)
    # the fitted table's ideal bits are what the coder writes, to within the ANS words' rounding
    stream_bits = 8 * payload_layout(fitted)["stream"]  # the last word's dropped zero bytes: up to 24 bits fewer
    assert coded_bits(prior, counts) - 24 <= stream_bits <= coded_bits(prior, counts) + 64


@pytest.fixture
def lora_context(tmp_path, carphone, tiny_model):
    from workers.codecs.ssf import SSFCodec
    from workers.methods.registry import AdaptContext

    codec = SSFCodec(tiny_model)
    return AdaptContext(carphone, codec, 2, tmp_path, "{}", lambda record: None)


def test_update_bytes_are_the_payload_plus_the_stream_header_growth(lora_context, carphone):
    from workers.methods._decoder_update import update_bytes

    config = parse_method_config("decoder-lora", {"ranks": [2, 2, 2, 1]})
    payload = _payload(_sparse_indices(5, 2), fit=True)
    codec = lora_context.codec
    plain = codec.encode(carphone, 2)
    named = codec.encode(carphone, 2, method=config.method, payload=payload)  # same model: same frame bytes
    added = update_bytes(lora_context, config, payload)
    assert added == len(named.data) + len(payload) - len(plain.data)
    assert added - len(payload) >= 64 + len('"payload_sha256":""')  # the sha256 alone is 64 hex digits
    assert update_bytes(lora_context, config, None) == 0
    # a method that wraps the update names itself in the header: training pays what that stream pays
    combined = codec.encode(carphone, 2, method="gop-adapters+decoder-lora", payload=payload)
    wrapped = update_bytes(lora_context, config, payload, "gop-adapters+decoder-lora")
    assert wrapped == len(combined.data) + len(payload) - len(plain.data) > added


def test_whole_frame_evaluation_sees_the_coded_latent_bits(lora_context, carphone, tiny_model):
    """eval_crop None (the default) evaluates what is coded: its latent bits match the stream's."""
    from schemas.adapt import DecoderTraining
    from workers.adapt.decoder_updates import make_update
    from workers.adapt.training import sequence_rd_cost
    from workers.codec.ssf import pad_frame
    from workers.video_io import SourceFrames

    assert DecoderTraining().eval_crop is None
    config = parse_method_config("decoder-lora", {"ranks": [2, 2, 2, 1]})
    frames = SourceFrames(carphone, lambda frame: pad_frame(frame.unsqueeze(0))[0])
    pixels = carphone.width * carphone.height * len(carphone)
    update = make_update(tiny_model.model, config)
    whole = sequence_rd_cost(tiny_model.model, update, config.prior, frames, lora_context.lmbda, 2, None, pixels,
                             lambda u: 0)
    window = sequence_rd_cost(tiny_model.model, update, config.prior, frames, lora_context.lmbda, 2, 128, pixels,
                              lambda u: 0)
    bits = lora_context.codec.encode(carphone, 2).bits
    coded = bits.intra + bits.motion + bits.residual  # latents of the real stream, no framing
    streams = 2 * 2 + 2 * 4  # 4 frames in GoPs of 2: I-frames code y and z, P-frames motion and residual y, z
    # the ideal bits of every frame's latents, up to ANS's whole 32-bit words (at most 2 per stream)
    assert whole["bpp"] * pixels <= coded <= whole["bpp"] * pixels + 64 * streams, (whole["bpp"] * pixels, coded)
    assert window["bpp"] * 128 * 128 * len(carphone) < whole["bpp"] * pixels  # a 128 window codes part of it


def test_a_wider_gradient_spike_keeps_the_exact_rate_and_weakens_the_pull_at_the_zero_bin_edge():
    from workers.adapt.prior import weight_bits

    prior = WeightPrior(grid=0.002)
    update = torch.tensor([0.0004, -0.0009, 0.0031, 0.0], requires_grad=True)
    exact = weight_bits(prior, update)
    (pull,) = torch.autograd.grad(exact, update)
    wide = weight_bits(prior, update, gradient_spike=prior.grid)
    (weak,) = torch.autograd.grad(wide, update)
    assert float(wide.detach()) == float(exact.detach())  # the value is the coded cost either way
    inside = slice(0, 2)  # inside the zero bin: both pull towards zero, the wide spike much less
    assert torch.all(pull[inside] * update.detach()[inside] > 0) and torch.all(weak[inside] * update.detach()[inside] > 0)
    # measured: 2.7x weaker at 0.2 cells, 9x at 0.45 cells (the zero bin's edge)
    assert weak[0].abs() < pull[0].abs() / 2 and weak[1].abs() < pull[1].abs() / 5


@pytest.mark.parametrize("send_update", ["if-better", "always"])
def test_the_kept_state_is_judged_by_the_cost_the_send_decision_computes(tmp_path, carphone, tiny_model, send_update):
    """evaluate=coded (the default): the best cost training logged is the adapted candidate's real RD cost
    (stream + payload bytes, the codec's distortion), and with if-better it is never above the base's."""
    from workers.encoder import adapt_video

    config = parse_method_config("decoder-lora", {
        "ranks": [2, 2, 2, 1], "send_update": send_update,
        "training": {"epochs": 2, "crop": 128, "batch": 1, "train_gop": 2, "learning_rate": 0.02}})
    assert config.training.evaluate == "coded"
    result = adapt_video(carphone, tiny_model, tmp_path, config, intra_period=2)
    records = [json.loads(line) for line in (tmp_path / "adapt.log").read_text().splitlines()]
    evaluations = [r for r in records if r.get("eval")]
    assert evaluations[0]["cost"] == pytest.approx(result.rd_cost_base, rel=1e-12)  # the base, coded
    best = evaluations[-1]["best_cost"]
    kept = result.rd_cost_adapted if result.rd_cost_adapted is not None else result.rd_cost_base
    assert best == pytest.approx(kept, rel=1e-12)
    if send_update == "if-better":
        assert result.rd_cost <= result.rd_cost_base
