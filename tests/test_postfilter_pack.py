"""The GPU training pack: its streams and PNG windows give back exactly the cache's pairs, a tampered stream
is caught by the recorded hashes, and the GPU trainer runs from a pack (here on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.postfilter.dataset import DatasetConfig, build_cache, open_cache
from workers.postfilter.i420 import crop_packed
from workers.postfilter.pack import build_pack
from workers.postfilter.train_gpu import decode_item, main as train_gpu

DATA = DatasetConfig(codecs=("x264", "x265"), crfs=(32, 47), clips_per_video=1, max_frames_per_video=24, max_items=2)
CROP = 64


@pytest.fixture(scope="module")
def packed(tmp_path_factory, carphone_path) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("pack")
    sources = root / "sources"
    sources.mkdir()
    for name in ("a", "b"):  # two sources: the trainer holds out whole sources
        (sources / f"carphone-{name}.mp4").symlink_to(carphone_path)
    build_cache([sources], root / "cache", DATA)
    pack = build_pack(root / "cache", [sources], root / "pack", crop=CROP, crfs=DATA.crfs, codecs=DATA.codecs,
                      processes=1)
    return root / "cache", root / "pack", pack


def test_pack_decodes_to_the_cache_pairs(packed):
    cache_dir, pack_dir, pack = packed
    cache = open_cache(cache_dir)
    versions = [f"{c}-{q}" for c in DATA.codecs for q in DATA.crfs]
    assert len(pack["items"]) == 2 and json.loads((pack_dir / "pack.json").read_text()) == pack
    assert pack["intra_period"] == DATA.intra_period  # the cache's: the GPU trainer weights I-frames by it
    for item, array in zip(pack["items"], cache.arrays):
        number, windows = decode_item((str(pack_dir), item, versions))
        assert number == item["number"] and len(windows) == 1 + len(versions)
        expected_versions = [None] + [[c, q] for c in DATA.codecs for q in DATA.crfs]
        for window, version in zip(windows, expected_versions):
            row = cache.versions.index(version)
            expected = np.concatenate([crop_packed(frame, item["top"], item["left"], CROP, CROP)
                                       for frame in array[row]])
            assert np.array_equal(window, expected)
        assert item["top"] % 2 == 0 and item["left"] % 2 == 0
        assert item["top"] + CROP <= item["height"] and item["left"] + CROP <= item["width"]
    # the streams are far smaller than the decoded frames they stand for
    stream_bytes = sum((pack_dir / v["stream"]).stat().st_size for i in pack["items"] for v in i["versions"].values())
    assert stream_bytes < sum(a[1:].nbytes for a in cache.arrays) / 20


def test_a_stream_that_decodes_otherwise_is_refused(packed, tmp_path):
    _, pack_dir, pack = packed
    item = json.loads(json.dumps(pack["items"][0]))
    for name in {p.name for p in pack_dir.iterdir()}:
        (tmp_path / name).write_bytes((pack_dir / name).read_bytes())
    swapped = item["versions"]["x264-32"]["stream"]
    (tmp_path / swapped).write_bytes((pack_dir / item["versions"]["x264-47"]["stream"]).read_bytes())
    with pytest.raises(RuntimeError, match="x264-32: decoded window differs"):
        decode_item((str(tmp_path), item, ["x264-32"]))


def test_gpu_trainer_runs_from_a_pack(packed, tmp_path):
    from safetensors.torch import load_file

    from workers.postfilter.checkpoint import shipped_filter
    from workers.postfilter.network import PostFilter

    _, pack_dir, _ = packed
    shipped = shipped_filter()
    init = tmp_path / "init.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in shipped.model.state_dict().items()}, str(init))
    arch = shipped.model.architecture
    train_gpu(["--pack", str(pack_dir), "--init", str(init), "--out", str(tmp_path / "out"), "--seconds", "0.01",
               "--calibrate", "2", "--batch", "4", "--crop", "32", "--warmup-steps", "1", "--processes", "1",
               "--holdout-every", "2", "--channels", str(arch.channels), "--layers", str(arch.layers)])
    events = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][:3] == ["data", "val", "calibrated"] and events[-1]["event"] == "done"
    assert events[0]["val_items"] == 1 and events[0]["train_items"] == 1
    assert all(e["mean_gain_db"] is not None for e in events if e["event"] == "val")
    checkpoints = sorted((tmp_path / "out").glob("step-*.safetensors"))
    assert len(checkpoints) == 4
    model = PostFilter(arch)
    model.load_state_dict(load_file(str(checkpoints[-1])))  # a plain state_dict of the same architecture
    moved = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped.model.state_dict().values()))
    assert moved


def test_gpu_trainer_refuses_a_pack_of_another_format(packed, tmp_path):
    """A pack an older adaptjobs wrote (no intra_period) is refused in one line before any decoding."""
    _, pack_dir, pack = packed
    old = tmp_path / "old-pack"
    old.mkdir()
    (old / "pack.json").write_text(json.dumps({**pack, "format": "adaptjobs-postfilter-pack-1"}))
    with pytest.raises(SystemExit, match="format 'adaptjobs-postfilter-pack-1', this trainer reads"):
        train_gpu(["--pack", str(old), "--init", str(tmp_path / "absent.safetensors"), "--out", str(tmp_path / "out")])
