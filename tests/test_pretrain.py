"""Pretraining end to end on a tiny real sample; resumed == uninterrupted; bad data directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.codec import ARCHITECTURE_PRESETS
from schemas.pretrain import PretrainConfig
from tests.conftest import write_y4m_planes
from workers.checkpoints import load_checkpoint
from workers.errors import InputError
from workers.model_store import resolve_model
from workers.pretrain.loop import phases, run_pretrain


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory, carphone) -> Path:
    folder = tmp_path_factory.mktemp("train")
    write_y4m_planes(folder / "carphone_part.y4m", carphone.yuv)
    (folder / "notes.txt").write_text("not training material")
    return folder


def _config(sample_dir: Path, **overrides) -> PretrainConfig:
    values = dict(data=[str(sample_dir)], architecture=ARCHITECTURE_PRESETS["tiny"], qualities=[1, 3], batch=2,
                  intra_steps=2, inter_steps=3, finetune_steps=2, checkpoint_every=2, clips_per_video=2, log_every=2)
    return PretrainConfig(**(values | overrides))


def test_schedule_trains_the_top_quality_then_finetunes_down(sample_dir):
    plan = phases(_config(sample_dir, qualities=[2, 1, 4]))
    assert [(p.kind, p.quality, p.steps) for p in plan] == [("intra", 4, 2), ("inter", 4, 3), ("finetune", 2, 2),
                                                            ("finetune", 1, 2)]


def test_pretrain_end_to_end_and_resume_gives_the_same_models(tmp_path, sample_dir):
    config = _config(sample_dir)
    straight = run_pretrain(config, tmp_path / "straight", progress=False)
    assert straight.done
    first = run_pretrain(config, tmp_path / "resumed", stop_after_steps=3, progress=False)
    assert not first.done and first.steps_done == 3
    second = run_pretrain(config, tmp_path / "resumed", stop_after_steps=1, progress=False)
    assert second.steps_done == 4  # picked up where the first stopped
    assert run_pretrain(config, tmp_path / "resumed", progress=False).done
    for quality in (1, 3):
        a = (tmp_path / "straight" / "models" / f"q{quality}.safetensors").read_bytes()
        b = (tmp_path / "resumed" / "models" / f"q{quality}.safetensors").read_bytes()
        assert a == b
        loaded = load_checkpoint(tmp_path / "straight" / "models" / f"q{quality}.safetensors")
        assert loaded.metadata.quality == quality and loaded.metadata.provenance.source == "adaptjobs-pretrain"
    family = resolve_model(str(tmp_path / "straight" / "models"), 3)
    assert family.metadata.lmbda == 0.0067
    log = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    assert len(log) >= 3 and '"bpp"' in log[0] and '"psnr"' in log[0]


def test_float16_storage_halves_the_file_and_keeps_the_hash(tmp_path, sample_dir):
    run_pretrain(_config(sample_dir, qualities=[2], storage_dtype="float16"), tmp_path / "f16", progress=False)
    run_pretrain(_config(sample_dir, qualities=[2], storage_dtype="float32"), tmp_path / "f32", progress=False)
    f16, f32 = (tmp_path / "f16/models/q2.safetensors"), (tmp_path / "f32/models/q2.safetensors")
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    load_checkpoint(f16)  # the hash of the upcast weights matches the metadata


def test_another_config_on_the_same_run_is_refused(tmp_path, sample_dir):
    run_pretrain(_config(sample_dir), tmp_path / "run", stop_after_steps=1, progress=False)
    with pytest.raises(InputError, match="another config .*seed"):
        run_pretrain(_config(sample_dir, seed=5), tmp_path / "run", progress=False)


def test_empty_or_unusable_data_directories(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no videos or images found"):
        run_pretrain(_config(empty), tmp_path / "run1", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "clip.mp4").write_bytes(b"garbage" * 100)
    with pytest.raises(InputError, match="no readable video"):
        run_pretrain(_config(broken), tmp_path / "run2", progress=False)
    with pytest.raises(InputError, match="not a directory"):
        run_pretrain(_config(tmp_path / "missing"), tmp_path / "run3", progress=False)


def test_crop_must_be_a_multiple_of_128(sample_dir):
    with pytest.raises(ValueError, match="multiple of 128"):
        _config(sample_dir, crop=192)
