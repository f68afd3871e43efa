"""Payload format 5 (binary header): round trips for every method, golden bytes, old formats, hostile headers.

The tiny seeded model (tests/conftest.py tiny_model, weights sha256 28b8545a...) is the base of every payload
here, including the golden files of the old formats in tests/data (written by the format-3 encoder)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from adaptjobs.cli import main
from schemas.adapt import WeightPrior
from schemas.methods import METHOD_CONFIGS
from workers.adapt import payload_header
from workers.adapt.decoder_updates import make_update, payload_name
from workers.adapt.payload import (FORMAT_VERSION, MAGIC, READABLE_VERSIONS, WeightUpdate, decode_payload,
                                   encode_payload, make_header, payload_layout, read_payload_header)
from workers.adapt.payload_header import (MAX_BOUND, PAYLOAD_METHOD_IDS, PRIOR_PRESETS, STRUCTURE_LAYOUTS,
                                          transmitted_prior)
from workers.errors import BitstreamError
from workers.fuzz_cases import (PayloadFields, decode_payload_action, explicit_prior, frame_payload, judge,
                                lora_structure, split_payload)
from workers.methods import parse_method_config
from workers.methods._decoder_update import payload_for, rebuild_decoder

DATA = Path(__file__).parent / "data"
# tests/data/golden-format3-tiny-lora.{bits,payload}: written by the format-3 encoder (commit fb632ea) with
# `adaptjobs --threads 1 adapt carphone_pristine.mp4 --method decoder-lora --model <init-model --arch tiny
# --quality 2 --seed 0> --frames 3 --set send_update=always --set training.epochs=1 --set training.crop=128
# --set training.batch=1 --set training.train_gop=2 --set training.learning_rate=0.002 --set
# training.min_steps=0 --recon R.y4m`. golden-format2-tiny-lora.payload: the same update framed as format 2
# (version byte 2, the tensor-list-only fingerprint; same JSON layout as format 3).
OLD_FORMATS = {2: "921578692a371f30b27122ee497a3097c6fd68b9bed2b23ec535b1880bbc3dce",
               3: "4b24cf0e75de804bc3cc3e142bee588de1e8c2891d85ab0d8f26179589a7c3b1"}
OLD_INDICES_SHA256 = "81a1dfa931e1ca965788a224dff0150a7b701ef199b88e3a3c4654df9c14517a"  # as the format-3 decoder read them
OLD_RECON_Y4M_SHA256 = "eb3223e18dc86c7fd97bb2357de408f59226df22dc99aadc959bc6a7ae580593"  # its encoder's --recon
# the same update in format 4: tests/data/golden-format4-tiny-lora.payload, written by the format-4 encoder (main
# d8829ef, /tmp/lora2/make_format4.py: decode the format-3 golden, encode again)
GOLDEN_FORMAT4 = (795, "764a10120d30cd4d80cded127e882afc602e99397b8ccc5af035b814a32d71e7")
# and in format 5 (one byte more: decoder-lora's biases flag, 0 for this update)
GOLDEN_FORMAT5 = (796, "74c1649f1813826d296688a2fd461ce4292b5cd7ce40596c43d099171499067c")


def shapes_for(loaded):
    def shapes(header):
        template = make_update(loaded.model, parse_method_config(header.method, header.structure))
        return {payload_name(k): tuple(v.shape) for k, v in template.coded.items()}
    return shapes


def seeded_indices(loaded, config, seed: int = 0, density: float = 0.1) -> dict[str, torch.Tensor]:
    """Sparse grid indices in -3..3 for every coded tensor of ``config``'s update (what training leaves)."""
    generator = torch.Generator().manual_seed(seed)
    indices = {}
    for key, tensor in make_update(loaded.model, config).coded.items():
        values = torch.randint(-3, 4, tuple(tensor.shape), generator=generator)
        keep = torch.rand(tuple(tensor.shape), generator=generator) < density
        indices[payload_name(key)] = torch.where(keep, values, torch.zeros_like(values))
    return indices


def indices_sha256(indices: dict[str, torch.Tensor]) -> str:
    flat = torch.cat([k.reshape(-1) for k in indices.values()])
    return hashlib.sha256(flat.numpy().astype("<i8").tobytes()).hexdigest()


def refusal(data: bytes, loaded, source: str = "x.payload") -> str:
    with pytest.raises(BitstreamError) as error:
        rebuild_decoder(loaded, data, source)
    message = str(error.value)
    assert message.startswith(f"{source}: ") and "\n" not in message
    return message


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("method, options", [
    ("decoder-lora", {}), ("decoder-lora", {"variant": "repeat", "ranks": [3, 1], "init_seed": 2**31 - 1}),
    ("decoder-lora", {"prior": {"grid": 0.003, "slab_std": 0.04, "alpha": 500.0}}),
    ("decoder-lora", {"ranks": [0]}), ("decoder-lora", {"ranks": [2, 0, 1], "biases": False}),
    ("full-decoder", {}), ("full-decoder", {"prior": {"grid": 0.0015}})])
def test_every_method_round_trips_to_the_same_weights(tiny_model, method, options):
    config = parse_method_config(method, options)
    indices = seeded_indices(tiny_model, config, density=0.02)
    structure = config.model_dump(mode="json", include=set(getattr(config, "STRUCTURE_FIELDS", ())))
    data = encode_payload(WeightUpdate(make_header(tiny_model.metadata.weights_sha256, method, structure,
                                                   config.prior, indices), indices))
    assert data[:3] == MAGIC + bytes([FORMAT_VERSION])
    decoded = decode_payload(data, tiny_model.metadata.weights_sha256, shapes_for(tiny_model))
    assert decoded.header.method == method and decoded.header.structure == structure
    assert all(torch.equal(decoded.indices[k], v) for k, v in indices.items())
    assert decoded.header.prior == transmitted_prior(config.prior)  # a preset exactly, others as float32
    assert encode_payload(decoded) == data  # deterministic: the decoded update re-encodes to the same bytes


def test_the_decoder_lora_header_is_34_bytes_and_an_explicit_prior_16_more(tiny_model):
    config = parse_method_config("decoder-lora", {})
    indices = seeded_indices(tiny_model, config)
    sha = tiny_model.metadata.weights_sha256
    structure = dict(variant="extended", ranks=[16, 8, 8, 2], init_seed=0, biases=True)
    preset = encode_payload(WeightUpdate(make_header(sha, "decoder-lora", structure, config.prior, indices), indices))
    layout = payload_layout(preset)
    assert layout["header"] == 2 + 34 + 4  # magic, fields, CRC
    explicit = WeightPrior(grid=0.002, slab_std=0.05, spike_std=0.002 / 6, alpha=1000.0)  # the same numbers, not the preset
    spelled = encode_payload(WeightUpdate(make_header(sha, "decoder-lora", structure, explicit, indices), indices))
    assert payload_layout(spelled)["header"] == layout["header"] + 16


def test_the_stream_drops_the_last_words_zero_bytes_and_still_decodes(tiny_model):
    """Dropped bytes are put back by the decoder: across seeds every count 0..3 occurs and all decode."""
    config = parse_method_config("full-decoder", {})
    dropped = set()
    for seed in range(12):
        indices = seeded_indices(tiny_model, config, seed=seed, density=0.001)
        data = encode_payload(WeightUpdate(make_header(tiny_model.metadata.weights_sha256, "full-decoder", {},
                                                       config.prior, indices), indices))
        dropped.add(-payload_layout(data)["stream"] % 4)
        decoded = decode_payload(data, tiny_model.metadata.weights_sha256, shapes_for(tiny_model))
        assert all(torch.equal(decoded.indices[k], v) for k, v in indices.items())
    assert len(dropped) >= 3, dropped


def test_payload_for_sends_format_5_and_rebuilds_the_update(tiny_model):
    config = parse_method_config("decoder-lora", {"ranks": [2, 1]})
    update = make_update(tiny_model.model, config)
    with torch.no_grad():
        for value in update.coded.values():
            value.copy_(torch.linspace(-0.01, 0.01, value.numel()).reshape(value.shape))
    data = payload_for(tiny_model, config, update)
    assert read_payload_header(data).base_id == tiny_model.metadata.weights_sha256[:16]
    model = rebuild_decoder(tiny_model, data, "u.payload")
    again = rebuild_decoder(tiny_model, encode_payload(decode_payload(data, tiny_model.metadata.weights_sha256,
                                                                      shapes_for(tiny_model))), "u.payload")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# ------------------------------------------------------------------ golden bytes and old formats
def test_golden_bytes_of_a_tiny_format_5_payload(tiny_model):
    """The old golden update, re-encoded: pins the format-5 layout and the coding tables."""
    old = (DATA / "golden-format3-tiny-lora.payload").read_bytes()
    update = decode_payload(old, tiny_model.metadata.weights_sha256, shapes_for(tiny_model))
    assert update.header.structure["biases"] is False  # what every payload before format 5 implies
    header = make_header(tiny_model.metadata.weights_sha256, update.header.method, update.header.structure,
                         update.header.prior, update.indices)
    data = encode_payload(WeightUpdate(header, update.indices))
    assert (len(data), hashlib.sha256(data).hexdigest()) == GOLDEN_FORMAT5
    assert len(old) - len(data) == 276  # 316 bytes of format-3 header and framing against 40


def test_a_format_4_payload_decodes_to_the_weights_of_its_format_3_original(tiny_model):
    data = (DATA / "golden-format4-tiny-lora.payload").read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == GOLDEN_FORMAT4 and data[2] == 4 and 4 in READABLE_VERSIONS
    update = decode_payload(data, tiny_model.metadata.weights_sha256, shapes_for(tiny_model))
    assert indices_sha256(update.indices) == OLD_INDICES_SHA256
    assert update.header.structure == {"variant": "extended", "ranks": [16, 8, 8, 2], "init_seed": 0, "biases": False}
    old = rebuild_decoder(tiny_model, (DATA / "golden-format3-tiny-lora.payload").read_bytes(), "g3.payload")
    new = rebuild_decoder(tiny_model, data, "g4.payload")
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


@pytest.mark.parametrize("version", sorted(OLD_FORMATS))
def test_old_format_payloads_decode_to_the_weights_their_decoder_read(tiny_model, version):
    data = (DATA / f"golden-format{version}-tiny-lora.payload").read_bytes()
    assert hashlib.sha256(data).hexdigest() == OLD_FORMATS[version] and data[4] == version
    assert version in READABLE_VERSIONS
    update = decode_payload(data, tiny_model.metadata.weights_sha256, shapes_for(tiny_model))
    assert indices_sha256(update.indices) == OLD_INDICES_SHA256
    assert payload_layout(data) == {"version": version, "header": 316, "stream": 756}


def test_an_old_format_unit_decodes_to_its_encoders_reconstruction(tmp_path, tiny_checkpoint):
    bits = tmp_path / "golden.bits"
    bits.write_bytes((DATA / "golden-format3-tiny-lora.bits").read_bytes())
    (tmp_path / "golden.payload").write_bytes((DATA / "golden-format3-tiny-lora.payload").read_bytes())
    out = tmp_path / "decoded.y4m"
    assert main(["decode", str(bits), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == OLD_RECON_Y4M_SHA256


# ------------------------------------------------------------------ registries
def test_every_payload_method_has_a_hand_kept_id_and_a_layout_of_its_structure_fields():
    assert 0 not in PAYLOAD_METHOD_IDS.values() and len(set(PAYLOAD_METHOD_IDS.values())) == len(PAYLOAD_METHOD_IDS)
    assert PAYLOAD_METHOD_IDS == {"decoder-lora": 1, "full-decoder": 2}  # numbers on the wire: never renumber
    with_updates = {name for name, config in METHOD_CONFIGS.items() if hasattr(config, "STRUCTURE_FIELDS")}
    assert with_updates == set(PAYLOAD_METHOD_IDS) == set(STRUCTURE_LAYOUTS)
    for name in with_updates:
        assert STRUCTURE_LAYOUTS[name].fields == METHOD_CONFIGS[name].STRUCTURE_FIELDS
    assert payload_header.EXPLICIT_PRIOR not in PRIOR_PRESETS
    defaults = {METHOD_CONFIGS[name]().prior for name in with_updates}
    assert defaults <= set(PRIOR_PRESETS.values())  # every method's default prior travels as one byte


# ------------------------------------------------------------------ hostile headers
@pytest.fixture(scope="module")
def fields_and_stream(payload):
    return split_payload(payload)


def crafted(fields_and_stream, **changes) -> bytes:
    fields, stream = fields_and_stream
    return frame_payload(PayloadFields(**{**vars(fields), **changes}), stream)


@pytest.mark.parametrize("changes, expected", [
    ({"version": 6}, "version 6 is not supported"),
    ({"version": 3}, "version 3 is not supported"),
    ({"method": 0}, "method id 0 is not a payload method"),
    ({"method": 3}, "method id 3 is not a payload method"),
    ({"method": 255}, "method id 255"),
    ({"method": 2}, "bound 16777730 is outside"),  # full-decoder reads LoRA's structure bytes as prior and bound
    ({"structure": lora_structure(variant=0)}, "LoRA variant id 0"),
    ({"structure": lora_structure(variant=3)}, "LoRA variant id 3"),
    ({"structure": lora_structure(ranks=[])}, "0 LoRA ranks"),
    ({"structure": lora_structure(ranks=[1] * 65)}, "65 LoRA ranks"),
    ({"structure": lora_structure(ranks=[2, 200], count=255)}, "255 LoRA ranks"),
    ({"version": 4, "structure": lora_structure(ranks=[2, 0], biases=None)}, "rank 0 is outside 1..1024"),
    ({"structure": lora_structure(ranks=[0, 0], biases=0)}, "codes no tensor"),
    ({"structure": lora_structure(biases=2)}, "biases flag 2 is not 0 or 1"),
    ({"structure": lora_structure(biases=255)}, "biases flag 255"),
    ({"structure": lora_structure(biases=None)}, "bound 50331648 is outside"),  # prior id read as the flag, the rest shifted
    ({"structure": lora_structure(biases=0)}, "do not match"),  # the fingerprint covers the flag
    ({"structure": lora_structure(ranks=[0, 1])}, "do not match"),
    ({"structure": lora_structure(ranks=[1025])}, "rank 1025 is outside"),
    ({"structure": lora_structure(ranks=[65535])}, "rank 65535 is outside"),
    ({"structure": lora_structure(init_seed=2**31)}, "init_seed 2147483648"),
    ({"structure": lora_structure(init_seed=2**32 - 1)}, "init_seed 4294967295"),
    ({"structure": lora_structure(init_seed=8)}, "do not match"),  # the fingerprint covers init_seed
    ({"structure": lora_structure(ranks=[2, 2])}, "do not match"),
    ({"prior": b"\x09"}, "prior id 9"),
    ({"prior": explicit_prior(0.0, 0.05, 0.001, 1000.0)}, "prior.grid = 0"),
    ({"prior": explicit_prior(-0.002, 0.05, 0.001, 1000.0)}, "prior.grid = -0.002"),
    ({"prior": explicit_prior(0.002, float("nan"), 0.001, 1000.0)}, "prior.slab_std = nan"),
    ({"prior": explicit_prior(0.002, 0.05, float("inf"), 1000.0)}, "prior.spike_std = inf"),
    ({"prior": explicit_prior(0.002, 0.05, 0.001, -1.0)}, "prior.alpha = -1"),
    ({"bound": 0}, "bound 0 is outside"),
    ({"bound": MAX_BOUND + 1}, "bound 1048577 is outside"),
    ({"bound": 2**32 - 1}, "bound 4294967295 is outside"),
    ({"base_id": bytes(8)}, "another base model"),
    ({"fingerprint": bytes(4)}, "do not match"),
])
def test_every_header_field_out_of_range_is_one_line(fields_and_stream, tiny_model, changes, expected):
    assert expected in refusal(crafted(fields_and_stream, **changes), tiny_model)


def test_a_header_cut_at_every_byte_is_one_line(payload, fields_and_stream, tiny_model):
    """Cut anywhere in the header: framed with a fresh CRC (reaches the field reader) and cut as it is."""
    fields, stream = fields_and_stream
    head = fields.to_bytes()
    assert "version 0 is not supported" in refusal(frame_payload(b"", b""), tiny_model)  # the CRC's first byte
    for cut in range(1, len(head)):
        assert "truncated" in refusal(frame_payload(head[:cut], b""), tiny_model)
        refusal(payload[: len(MAGIC) + cut], tiny_model)
    for cut in range(len(MAGIC) + len(head), len(payload)):
        assert "CRC" in refusal(payload[:cut], tiny_model)


def test_trailing_bytes_a_flipped_bit_and_a_foreign_magic_are_refused(payload, tiny_model):
    assert "CRC" in refusal(payload + b"\0", tiny_model)
    for at in (3, 12, len(payload) // 2, len(payload) - 1):
        damaged = bytearray(payload)
        damaged[at] ^= 0x10
        assert "CRC" in refusal(bytes(damaged), tiny_model)
    assert "wrong magic" in refusal(b"AX" + payload[2:], tiny_model)
    assert "version 5 is not supported" in refusal(b"AJWP" + payload[2:], tiny_model)


def test_a_payload_for_another_base_model_is_refused_before_decoding(payload, other_tiny_model):
    assert "another base model" in refusal(payload, other_tiny_model)


def test_an_explicit_prior_at_the_float32_extremes_decodes_or_is_refused_in_one_line(fields_and_stream, tiny_model):
    for values in ((3e38, 1e-45, 1e-45, 3e38), (1e-45, 3e38, 3e38, 1e-45), (1e-30, 1e-30, 1e-30, 1e-30)):
        judge(decode_payload_action(crafted(fields_and_stream, prior=explicit_prior(*values)), tiny_model))


def test_format5_refuses_structure_it_cannot_carry(tiny_model):
    indices = {"w": torch.zeros(2, dtype=torch.int64)}
    sha = tiny_model.metadata.weights_sha256
    for method, structure in (("decoder-lora", {"variant": "extended", "ranks": [2000], "init_seed": 0}),
                              ("decoder-lora", {"variant": "extended", "ranks": [2]}),
                              ("decoder-lora", {"variant": "extended", "ranks": [2], "init_seed": 0}),  # no biases
                              ("decoder-lora", {"variant": "extended", "ranks": [0], "init_seed": 0, "biases": False}),
                              ("decoder-lora", {"variant": "extended", "ranks": [2], "init_seed": 0, "biases": 1}),
                              ("postfilter-adapt", {})):
        with pytest.raises(ValueError):
            encode_payload(WeightUpdate(make_header(sha, method, structure, WeightPrior(), indices), indices))
