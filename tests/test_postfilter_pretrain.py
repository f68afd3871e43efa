"""Post-filter training: the pair cache is deterministic and resumable; resumed == uninterrupted training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from workers.postfilter.checkpoint import load_filter
from workers.postfilter.dataset import DatasetConfig, build_cache, open_cache
from workers.postfilter.i420 import pack_i420, unpack_i420
from workers.postfilter.pretrain import TrainConfig, main, train

TINY_DATA = DatasetConfig(codecs=("x264", "x265"), crfs=(32, 47), clips_per_video=2, max_frames_per_video=24,
                          max_items=2)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, carphone_path) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    (folder / "carphone.mp4").symlink_to(carphone_path)
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npy"))}


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(0)
    planes = (rng.integers(0, 256, (6, 8), dtype=np.uint8), rng.integers(0, 256, (3, 4), dtype=np.uint8),
              rng.integers(0, 256, (3, 4), dtype=np.uint8))
    for a, b in zip(planes, unpack_i420(pack_i420(planes))):
        assert np.array_equal(a, b)


def test_cache_is_deterministic_and_resumes(sources, tmp_path):
    first = build_cache([sources], tmp_path / "a", TINY_DATA)
    second = build_cache([sources], tmp_path / "b", TINY_DATA)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b") and len(first["items"]) == 2
    assert first == second
    # a killed build: one item missing, the index never written -> the resumed build restores the same bytes
    victim = sorted((tmp_path / "b").glob("*.npy"))[-1]
    victim.unlink()
    (tmp_path / "b" / "index.json").unlink()
    assert build_cache([sources], tmp_path / "b", TINY_DATA) == first
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    cache = open_cache(tmp_path / "a")
    array = cache.arrays[0]
    assert array.shape[0] == 1 + 2 * 2 and array.dtype == np.uint8
    # versions differ from the original and from each other (the CRFs really changed the coding)
    assert not np.array_equal(array[0], array[1]) and not np.array_equal(array[1], array[2])


def test_cache_refuses_another_config(sources, tmp_path):
    build_cache([sources], tmp_path / "c", TINY_DATA)
    from workers.errors import InputError

    with pytest.raises(InputError, match="another dataset config"):
        build_cache([sources], tmp_path / "c", DatasetConfig(crfs=(22,), max_items=1))


def _config(sources: Path, cache: Path) -> TrainConfig:
    return TrainConfig(name="pf-test", data=(str(sources),), cache=str(cache), layers=3, channels=4, steps=6,
                       batch=4, crop=32, warmup_steps=2, checkpoint_every=2, log_every=1, threads=1,
                       max_items=2, crfs=(32, 47))


def test_resumed_training_equals_uninterrupted(sources, tmp_path):
    cache = tmp_path / "cache"
    build_cache([sources], cache, DatasetConfig(crfs=(32, 47), max_items=2))
    config = _config(sources, cache)
    train(config, tmp_path / "whole")
    train(config, tmp_path / "parts", stop_after_steps=3)  # stops between checkpoints: redoes step 3
    assert json.loads((tmp_path / "parts" / "state.json").read_text())["step"] == 2
    train(config, tmp_path / "parts")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert (whole / "state.safetensors").read_bytes() == (parts / "state.safetensors").read_bytes()
    assert (whole / "latest.safetensors").read_bytes() != b""
    a, b = load_filter(whole / "latest.safetensors"), load_filter(parts / "latest.safetensors")
    assert a.metadata.weights_sha256 == b.metadata.weights_sha256 and a.metadata.training.steps == 6
    losses = [json.loads(line)["loss"] for line in (whole / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses != [losses[0]] * 6, "training did not change anything"
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == [
        "step-000002.safetensors", "step-000004.safetensors", "step-000006.safetensors"]


def test_cli_refuses_another_config_on_the_same_folder(sources, tmp_path):
    cache = tmp_path / "cache"
    build_cache([sources], cache, DatasetConfig(crfs=(32, 47), max_items=2))
    args = ["--out", str(tmp_path / "run"), "--data", str(sources), "--cache", str(cache), "--layers", "3",
            "--channels", "4", "--steps", "1", "--batch", "2", "--crop", "32", "--crfs", "32", "47", "--max-items", "2",
            "--threads", "1"]
    assert main(args) == 0
    with pytest.raises(SystemExit, match="another training config"):
        main([*args[:-2], "--threads", "2"])


def test_widened_filter_computes_what_the_trained_one_does_and_can_learn():
    import torch

    from workers.postfilter.network import FilterArchitecture, PostFilter, widened

    torch.manual_seed(5)
    trained = PostFilter(FilterArchitecture(layers=4, channels=6))
    with torch.no_grad():  # a trained filter has a non-zero tail; the init's zero tail would hide a wrong copy
        trained.tail.weight.normal_(0, 0.1)
        trained.tail.bias.normal_(0, 0.01)
    wide = widened(trained, 10, torch.Generator().manual_seed(0))
    assert wide.architecture.channels == 10 and wide.architecture.layers == 4
    planes = (torch.rand(1, 1, 16, 24), torch.rand(1, 1, 8, 12), torch.rand(1, 1, 8, 12))
    for plane, a, b in zip(planes, trained(*planes, 37.0, "x265"), wide(*planes, 37.0, "x265")):
        assert not torch.allclose(a, plane, atol=1e-3)  # the trained filter changes the plane ...
        assert torch.allclose(a, b, atol=1e-6)  # ... and the widened one changes it the same way
    # the added channels are live: their features are non-zero, so the tail's zero columns get a gradient
    loss = sum(o.square().mean() for o in wide(*planes, 37.0, "x265"))
    loss.backward()
    assert wide.tail.weight.grad[:, 6:].abs().max() > 0
    again = widened(trained, 10, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(wide.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="narrow"):
        widened(trained, 4, torch.Generator().manual_seed(0))


def test_warm_start_begins_from_the_named_filter_and_checks_its_hash(sources, tmp_path):
    from dataclasses import replace

    import torch

    from workers.errors import InputError
    from workers.postfilter.network import filter_planes
    from workers.postfilter.pretrain import warm_start

    cache = tmp_path / "cache"
    build_cache([sources], cache, DatasetConfig(crfs=(32, 47), max_items=2))
    small = _config(sources, cache)
    train(small, tmp_path / "small")
    source = tmp_path / "small" / "latest.safetensors"
    loaded = load_filter(source)
    config = replace(small, channels=7, init_from=str(source), init_from_weights_sha256=loaded.metadata.weights_sha256)
    start = warm_start(config)
    planes = tuple(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8) for shape in ((32, 48), (16, 24), (16, 24)))
    assert all(np.array_equal(a, b) for a, b in zip(filter_planes(loaded.model, planes, 40, "x264"),
                                                     filter_planes(start, planes, 40, "x264")))
    with pytest.raises(InputError, match="is not the"):
        warm_start(replace(config, init_from_weights_sha256="0" * 64))
    with pytest.raises(InputError, match="layers"):
        warm_start(replace(config, layers=4))
    trained = train(config, tmp_path / "wide")
    assert trained.model.architecture.channels == 7 and trained.step == config.steps
    assert not torch.equal(trained.model.tail.weight[:, 4:], torch.zeros_like(trained.model.tail.weight[:, 4:]))


def test_clip_options_reach_the_cache_and_an_older_config_resumes(sources, tmp_path):
    """--clips-per-video / --max-frames-per-video shape the pair cache; a run folder whose config.json predates
    those fields reads them as their defaults (what that run used), so it still resumes."""
    args = ["--data", str(sources), "--layers", "3", "--channels", "4", "--steps", "2", "--batch", "2", "--crop", "32",
            "--crfs", "32", "--codecs", "x264", "--threads", "1", "--checkpoint-every", "1"]
    assert main(["--out", str(tmp_path / "many"), *args, "--clips-per-video", "3", "--max-frames-per-video", "30"]) == 0
    many = json.loads((tmp_path / "many" / "cache" / "index.json").read_text())["items"]
    cache_config = json.loads((tmp_path / "many" / "cache" / "cache.json").read_text())
    assert len(many) == 3 and (cache_config["clips_per_video"], cache_config["max_frames_per_video"]) == (3, 30)
    old = tmp_path / "old"
    assert main(["--out", str(old), *args, "--stop-after", "1"]) == 0
    written = json.loads((old / "config.json").read_text())
    assert written["clips_per_video"] == DatasetConfig.clips_per_video
    for name in ("clips_per_video", "max_frames_per_video"):
        del written[name]
    (old / "config.json").write_text(json.dumps(written))
    assert main(["--out", str(old), *args]) == 0
    assert json.loads((old / "state.json").read_text())["step"] == 2
    with pytest.raises(SystemExit, match="another training config"):
        main(["--out", str(old), *args, "--clips-per-video", "3"])
