"""Our safetensors checkpoints (CompressAI ssf2020 imports from the real library's layout: test_compressai_interop.py)."""

from __future__ import annotations

import json

import pytest
import torch

from schemas.codec import ARCHITECTURE_PRESETS
from workers.checkpoints import load_checkpoint, random_model
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
