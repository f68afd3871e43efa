"""The Ray runner on one machine (a real embedded Ray): what `submit`, `resume` and `status` leave in the run
directory, bad inputs, refusals. Tiny seeded model, 2-3 frames of the real carphone sample, CPU only.

The fault-tolerance tests (a killed node, a killed driver) are in test_fault_tolerance.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adaptjobs.cli import EXIT_INPUT_ERROR, EXIT_RUN_INCOMPLETE, main
from adaptjobs.run_store import RunStore
from schemas.adapt import AdaptResult
from schemas.job import CodecPoint, FailureRecord, JobSpec, RunStatus, VideoTask
from workers.run_layout import read_log
from workers.task import describe_input, run_task

FAST_LORA = ["--set", "decoder-lora:training.epochs=1", "--set", "decoder-lora:training.crop=128"]


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray for the module; the runner reuses an initialised Ray and leaves it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def videos(tmp_path, carphone_path) -> Path:
    """A folder with one real video, one file that is not a video, and a file that is ignored."""
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(carphone_path, folder / "car phone;1.mp4")  # a name that needs sanitising
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (folder / "notes.txt").write_text("not a video")
    return folder


def submit(videos: Path, run: Path, model: Path, *extra: str) -> int:
    return main(["submit", str(videos), "--run", str(run), "--model", str(model), "--frames", "2",
                 "--methods", "none,decoder-lora", "--anchors", "x264", "--no-progress", *FAST_LORA, *extra])


def status_json(run: Path, capsys) -> RunStatus:
    capsys.readouterr()
    assert main(["status", str(run), "--json"]) == 0
    return RunStatus.model_validate_json(capsys.readouterr().out)


def test_submit_runs_every_unit_and_records_the_bad_video(local_ray, videos, tmp_path, tiny_checkpoint, capsys):
    run = tmp_path / "run"
    assert submit(videos, run, tiny_checkpoint) == EXIT_RUN_INCOMPLETE  # non-zero: one video failed
    spec = JobSpec.model_validate_json((run / "job.json").read_text())
    assert [v.name for v in spec.videos] == ["broken", "car_phone_1"]  # sanitised; notes.txt is not a video
    status = status_json(run, capsys)
    crfs = spec.codec("x264").qualities
    units = 2 + len(crfs)  # ssf none and decoder-lora at q2, x264 none (the anchor) at every CRF
    assert status.counts == {"total": 2 * units, "done": units, "failed": units, "running": 0, "interrupted": 0,
                             "pending": 0}
    good = run / "units" / "car_phone_1"
    for method in ("none", "decoder-lora"):
        unit = good / "ssf" / method / "q2"
        result = AdaptResult.model_validate_json((unit / "result.json").read_text())
        assert result.bytes_written == (unit / "car_phone_1.bits").stat().st_size  # rates from bytes on disk
        assert result.frames == 2 and result.method == method
        assert (unit / "DONE").exists() and not (unit / "FAILED").exists()
        assert [r["event"] for r in read_log(unit / "adapt.log") if "event" in r][0] == "attempt"
    # the x264 units of method none are the x264 anchor points: the same settings, the same bytes
    from workers.standard.anchors import encode_anchor
    from workers.video_io import read_video

    video = read_video(videos / "car phone;1.mp4", 2)
    for crf in (crfs[0], crfs[-1]):
        unit = good / "x264" / "none" / f"q{crf:g}"
        result = AdaptResult.model_validate_json((unit / "result.json").read_text())
        point, _ = encode_anchor(video, "x264", crf, spec.intra_period)
        assert (unit / "car_phone_1.h264").stat().st_size == result.bytes_written == point.bytes
        assert result.psnr_yuv == pytest.approx(point.psnr_yuv, abs=1e-9) and result.codec == "x264"
        assert result.psnr_y is not None and result.decision == "base-method" and not (unit / "car_phone_1.payload").exists()
    for row in status.units:
        if row.video == "broken":
            assert row.state == "failed"
            assert "broken.mp4" in row.last_error and "not a video" in row.last_error
            failure = FailureRecord.model_validate_json((run / row.unit / "FAILED").read_text())
            assert failure.kind == "input" and "\n" not in failure.error
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))  # atomic writes leave no temp files


def test_resume_keeps_done_units_and_retries_failed_ones_only_when_asked(local_ray, videos, tmp_path,
                                                                          tiny_checkpoint, capsys):
    run = tmp_path / "run"
    submit(videos, run, tiny_checkpoint)
    done_files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*")
                  if p.is_file() and "car_phone_1" in str(p) and p.name != ".unit.lock"}
    before = {r.unit: r.attempts for r in status_json(run, capsys).units}

    capsys.readouterr()
    assert main(["resume", str(run), "--no-progress"]) == EXIT_RUN_INCOMPLETE
    assert f"{len(before) // 2} unit(s) failed before and were not retried" in capsys.readouterr().out
    after = status_json(run, capsys)
    assert {r.unit: r.attempts for r in after.units} == before  # nothing ran again
    assert all(p.stat().st_mtime_ns == m and p.read_bytes() == b for p, (m, b) in done_files.items())

    # the same spec submitted again behaves as resume: nothing recomputed
    assert submit(videos, run, tiny_checkpoint) == EXIT_RUN_INCOMPLETE
    assert {r.unit: r.attempts for r in status_json(run, capsys).units} == before

    (videos / "broken.mp4").unlink()  # the input is gone now: the retry fails again, with the new reason
    assert main(["resume", str(run), "--retry-failed", "--no-progress"]) == EXIT_RUN_INCOMPLETE
    retried = {r.unit: r for r in status_json(run, capsys).units}
    assert "no such file" in retried["units/broken/ssf/none/q2"].last_error
    assert retried["units/car_phone_1/ssf/none/q2"].attempts == 1


def test_a_different_spec_and_a_second_driver_are_refused(local_ray, videos, tmp_path, tiny_checkpoint, capsys):
    run = tmp_path / "run"
    (videos / "broken.mp4").unlink()
    assert submit(videos, run, tiny_checkpoint, "--anchors", "none") == 0
    capsys.readouterr()
    assert submit(videos, run, tiny_checkpoint, "--anchors", "none", "--intra-period", "4") == EXIT_INPUT_ERROR
    assert "another spec (differs in intra_period)" in capsys.readouterr().err

    with RunStore(run).driver_lock():  # a driver is working on RUN
        assert main(["resume", str(run), "--no-progress"]) == EXIT_INPUT_ERROR
        err = capsys.readouterr().err
        assert "another driver is working on this run" in err and str(run) in err
        assert status_json(run, capsys).driver_active


def test_a_bad_spec_is_refused_before_anything_is_written(tmp_path, videos, tiny_checkpoint, capsys):
    run = tmp_path / "run"
    for extra in (["--methods", "none,no-such-method"], ["--set", "decoder-lora:training.no_such_option=1"],
                  ["--qualities", "3"]):
        assert main(["submit", str(videos), "--run", str(run), "--model", str(tiny_checkpoint), "--no-progress",
                     "--methods", "none,decoder-lora", *extra]) == EXIT_INPUT_ERROR
        assert capsys.readouterr().err.count("\n") == 1  # one line
    assert not run.exists()


def test_a_worker_that_cannot_see_the_run_directory_fails_clearly(tmp_path, carphone_path, tiny_checkpoint):
    from workers.checkpoints import load_checkpoint
    from workers.methods import parse_method_config

    metadata = load_checkpoint(tiny_checkpoint).metadata
    unit = tmp_path / "elsewhere" / "units" / "v" / "ssf" / "none" / "q2"
    point = CodecPoint(codec="ssf", quality=2, model_spec=str(tiny_checkpoint), weights_sha256=metadata.weights_sha256)
    task = VideoTask(unit_dir=str(unit), run_dir=str(tmp_path / "elsewhere"), video=describe_input(carphone_path),
                     method=parse_method_config("none"), codec=point, frames=1, intra_period=12)
    outcome = run_task(task)
    assert outcome.state == "failed" and outcome.failure.kind == "storage"
    assert "cannot see the run directory" in outcome.failure.error and str(tmp_path / "elsewhere") in outcome.failure.error
    assert not unit.exists()  # nothing written where RUN is not


def test_status_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == EXIT_INPUT_ERROR
    assert "no job.json" in capsys.readouterr().err
