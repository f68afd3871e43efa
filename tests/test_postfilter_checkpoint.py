"""Post-filter checkpoints: round trip, and one-line refusals of tampered, truncated and mismatched files."""

from __future__ import annotations

import json

import pytest
import torch

from workers.errors import ModelError
from workers.postfilter.checkpoint import (FilterTraining, filter_bytes, load_filter, make_metadata, save_filter,
                                           shipped_filter)
from workers.postfilter.network import FilterArchitecture, PostFilter


def _random_filter(seed: int = 0, architecture: FilterArchitecture = FilterArchitecture(layers=3, channels=4)) -> PostFilter:
    torch.manual_seed(seed)
    model = PostFilter(architecture)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # the tail starts at zero: give it weights so the round trip means something
    return model


def test_round_trip_keeps_weights_metadata_and_output(tmp_path):
    model = _random_filter()
    training = FilterTraining(source="test", data="none", steps=3, wall_time_s=1.5, seed=7)
    path = tmp_path / "f.safetensors"
    written = save_filter(path, model, "pf-test", training)
    loaded = load_filter(path)
    assert loaded.metadata == written
    assert loaded.metadata.training.steps == 3
    assert loaded.model.architecture == model.architecture
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name])
    y, u, v = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)
    for a, b in zip(model(y, u, v, 30.0, "x264"), loaded.model(y, u, v, 30.0, "x264")):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"


def test_same_weights_same_bytes():
    a, b = _random_filter(3), _random_filter(3)
    assert filter_bytes(a, make_metadata(a, "x")) == filter_bytes(b, make_metadata(b, "x"))


def test_tampered_weights_are_refused(tmp_path):
    path = tmp_path / "f.safetensors"
    save_filter(path, _random_filter(), "pf-test")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # a byte of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"f\.safetensors: weights hash .* does not match"):
        load_filter(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "f.safetensors"
    save_filter(path, _random_filter(), "pf-test")
    data = path.read_bytes()
    for cut in (4, 100, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelError, match=r"f\.safetensors: (truncated|not a safetensors)") as info:
            load_filter(path)
        assert "\n" not in str(info.value)


def test_wrong_architecture_is_refused(tmp_path):
    """Metadata claiming a different architecture than the tensors hold (hash still consistent)."""
    from safetensors.torch import save

    model = _random_filter()
    metadata = make_metadata(model, "pf-test").model_copy(update={"architecture": {"layers": 3, "channels": 8}})
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "f.safetensors"
    path.write_bytes(save(weights, metadata={"adaptjobs-postfilter": metadata.model_dump_json()}))
    with pytest.raises(ModelError, match="needs"):
        load_filter(path)
    metadata = metadata.model_copy(update={"architecture": {"layers": 3, "channels": 4, "colour": "rgb"}})
    path.write_bytes(save(weights, metadata={"adaptjobs-postfilter": metadata.model_dump_json()}))
    with pytest.raises(ModelError, match="invalid post-filter metadata"):
        load_filter(path)


def test_foreign_safetensors_and_missing_file_are_refused(tmp_path):
    from safetensors.torch import save

    path = tmp_path / "other.safetensors"
    path.write_bytes(save({"w": torch.zeros(2)}, metadata={"something": json.dumps({})}))
    with pytest.raises(ModelError, match="without post-filter metadata"):
        load_filter(path)
    with pytest.raises(ModelError, match="cannot read"):
        load_filter(tmp_path / "absent.safetensors")


def test_unknown_shipped_filter_is_refused():
    with pytest.raises(ModelError, match="no (shipped )?post-filter"):
        shipped_filter("no-such-filter")


def test_shipped_filters_load_and_are_not_taken_for_ssf_models():
    from workers.model_store import shipped_model_names
    from workers.postfilter.checkpoint import shipped_filter_names

    assert "postfilter" not in shipped_model_names()
    for name in shipped_filter_names():
        loaded = shipped_filter(name)
        assert loaded.metadata.name == name and loaded.model.macs_per_pixel() <= 30_000


def test_a_run_records_the_shipped_filter_and_a_later_release_refuses_it_in_one_line(tmp_path, monkeypatch):
    """The spec of a run on x264 records the shipped filter's hash, so a newer release's filter changes the spec
    (submit refuses to mix) and a unit resumed under it refuses instead of mixing two filters in one run."""
    import workers.postfilter.checkpoint as checkpoint
    from workers.codecs.base import codec_class
    from workers.errors import InputError

    x264 = codec_class("x264")
    run = x264.resolve(None, [37], {})
    assert run.settings["filter_sha256"] == shipped_filter().metadata.weights_sha256

    shipped = tmp_path / "models"
    shipped.mkdir()
    save_filter(shipped / "pf-next.safetensors", _random_filter(3, FilterArchitecture(layers=8, channels=32)), "pf-next")
    monkeypatch.setattr(checkpoint, "SHIPPED_FILTERS_DIR", shipped)
    assert x264.resolve(None, [37], {}).settings != run.settings
    point = x264.single_point(None, 37, {}).model_copy(update={"settings": dict(run.settings)})
    with pytest.raises(InputError) as refused:
        x264.load(point).postfilter()
    message = str(refused.value)
    assert "\n" not in message and "pf-next" in message and run.settings["filter_sha256"][:12] in message
