"""Our safetensors checkpoints and CompressAI ssf2020 imports."""

from __future__ import annotations

import json

import pytest
import torch

from schemas.codec import ARCHITECTURE_PRESETS
from workers.checkpoints import load_checkpoint, random_model, weights_sha256
from workers.errors import ModelError
from workers.model_store import resolve_model


def test_save_load_round_trip(tiny_checkpoint, tiny_model):
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.metadata == tiny_model.metadata
    for name, tensor in tiny_model.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = random_model(ARCHITECTURE_PRESETS["tiny"], 1, 7, "a").metadata.weights_sha256
    assert torch.equal(state, torch.random.get_rng_state())
    assert a == random_model(ARCHITECTURE_PRESETS["tiny"], 1, 7, "a").metadata.weights_sha256
    assert a != random_model(ARCHITECTURE_PRESETS["tiny"], 1, 8, "a").metadata.weights_sha256


def test_tampered_weights_are_refused(tiny_checkpoint, tmp_path):
    data = bytearray(tiny_checkpoint.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its metadata"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ModelError, match="not a safetensors checkpoint"):
        load_checkpoint(path)


def test_quality_mismatch_and_family_folder(tmp_path, tiny_checkpoint, tiny_model):
    with pytest.raises(ModelError, match="quality-2 checkpoint"):
        resolve_model(str(tiny_checkpoint), quality=3)
    family = tmp_path / "family"
    family.mkdir()
    (family / "q2.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    assert resolve_model(str(family), 2).metadata == tiny_model.metadata
    assert resolve_model(str(family)).metadata.quality == 2  # the only (middle) quality is the default
    with pytest.raises(ModelError, match="no quality 5"):
        resolve_model(str(family), 5)
    with pytest.raises(ModelError, match="no such checkpoint file, folder or shipped model"):
        resolve_model("no-such-model", 1)


def _compressai_layout(model, old_names: bool) -> dict[str, torch.Tensor]:
    """A state dict laid out as CompressAI's ScaleSpaceFlow saves it, derived buffers included."""
    state = {}
    for name, tensor in model.state_dict().items():
        if old_names and ".entropy_bottleneck." in name and name.split(".")[-2] in ("matrices", "biases", "factors"):
            kind, index = name.split(".")[-2:]
            single = {"matrices": "_matrix", "biases": "_bias", "factors": "_factor"}[kind]
            name = name.rsplit(".", 2)[0] + f".{single}{index}"
        state[name] = tensor.clone()
    for prefix in ("img_hyperprior", "res_hyperprior", "motion_hyperprior"):
        for module in ("entropy_bottleneck", "gaussian_conditional"):
            state[f"{prefix}.{module}._offset"] = torch.zeros(16, dtype=torch.int32)
            state[f"{prefix}.{module}._quantized_cdf"] = torch.zeros(16, 30, dtype=torch.int32)
            state[f"{prefix}.{module}._cdf_length"] = torch.zeros(16, dtype=torch.int32)
            state[f"{prefix}.{module}.likelihood_lower_bound.bound"] = torch.tensor([1e-9])
        state[f"{prefix}.gaussian_conditional.scale_table"] = torch.zeros(64)
        state[f"{prefix}.gaussian_conditional.scale_bound"] = torch.tensor([0.11])
        state[f"{prefix}.gaussian_conditional.lower_bound_scale.bound"] = torch.tensor([0.11])
        state[f"{prefix}.entropy_bottleneck.target"] = torch.zeros(3)
    return state


@pytest.mark.parametrize("old_names", [False, True])
def test_compressai_ssf2020_checkpoint_loads(tmp_path, tiny_model, old_names):
    path = tmp_path / "ssf2020-mse-3-deadbeef.pth.tar"
    torch.save(_compressai_layout(tiny_model.model, old_names), path)
    loaded = resolve_model(str(path))
    assert loaded.metadata.quality == 3
    assert loaded.metadata.architecture == ARCHITECTURE_PRESETS["tiny"]
    assert loaded.metadata.provenance.source == "compressai-import"
    assert loaded.metadata.weights_sha256 == weights_sha256(tiny_model.model.state_dict())
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model.forward_intra(x)[0], tiny_model.model.eval().forward_intra(x)[0])


def test_compressai_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "ssf2020-mse-1-evil.pth.tar"
    torch.save({"x": Payload()}, path)
    with pytest.raises(ModelError, match="not a loadable CompressAI checkpoint"):
        resolve_model(str(path))


def test_metadata_is_json_in_the_safetensors_header(tiny_checkpoint):
    header_len = int.from_bytes(tiny_checkpoint.read_bytes()[:8], "little")
    header = json.loads(tiny_checkpoint.read_bytes()[8: 8 + header_len])
    assert json.loads(header["__metadata__"]["adaptjobs"])["model_id"] == "tiny-test"
