"""Issue 11 phase B: the driver, the CLI and the job schema facing hostile or broken input.

Exit codes (1 input, 2 usage, 3 internal error with a traceback file), a video that breaks the reader
inside `submit`/`resume`, `--threads` beyond the cores, non-finite or negative `--set` values, `status`
agreeing with `report` on DONE units without a valid result, Ray's token-auth notice, unusable output
folders, and `info` on a FIFO. Fast: no Ray except the one `connect` test (a few seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from adaptjobs import cli
from adaptjobs.cli import EXIT_INPUT_ERROR, EXIT_INTERNAL_ERROR, EXIT_RUN_INCOMPLETE, main
from adaptjobs.options import parse_set_options
from adaptjobs.run_store import RunStore
from schemas.job import FailureRecord, RunStatus
from workers.errors import InputError
from workers.limits import available_cores
from workers.methods import parse_method_config

X264_ONLY = ["--codec", "x264:32", "--methods", "none", "--anchors", "none", "--frames", "1", "--no-progress"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- 1. exit codes
def test_a_bug_exits_3_with_one_line_and_the_traceback_in_a_file(tmp_path, monkeypatch, capsys):
    def broken_command(args):
        raise RuntimeError("a bug\nspanning lines")

    monkeypatch.setitem(cli.COMMANDS, "methods", broken_command)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["methods"]) == EXIT_INTERNAL_ERROR
    err = one_error_line(capsys)
    assert err.startswith("adaptjobs methods: internal error: RuntimeError: a bug / spanning lines (traceback in ")
    written = list(tmp_path.glob("adaptjobs-methods-*.traceback.txt"))
    assert len(written) == 1 and str(written[0]) in err
    text = written[0].read_text()
    assert text.startswith("adaptjobs methods\n") and "Traceback (most recent call last)" in text
    assert "broken_command" in text


def test_input_errors_exit_1_and_usage_errors_exit_2(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == EXIT_INPUT_ERROR
    assert "no job.json" in one_error_line(capsys)
    with pytest.raises(SystemExit) as usage:
        main(["status"])
    assert usage.value.code == 2


# ----------------------------------------------------------------------------- 3. --threads
def test_threads_beyond_the_cores_are_a_usage_error_before_torch_sees_them(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    for value in (str(available_cores() + 1), "100000", "0", "-1"):
        with pytest.raises(SystemExit) as usage:
            main(["--threads", value, "status", str(tmp_path)])
        assert usage.value.code == 2
        assert "--threads" in capsys.readouterr().err
        assert torch.get_num_threads() == before
    try:
        assert main(["--threads", str(available_cores()), "status", str(tmp_path)]) == EXIT_INPUT_ERROR  # accepted
        accepted = torch.get_num_threads()  # the accepted value is now torch's; the refusal below must not move it
        with pytest.raises(SystemExit) as usage:  # the segfault: `--threads 100000 encode ...`
            main(["--threads", "100000", "encode", str(tmp_path / "clip.y4m"), "-o", str(tmp_path / "out")])
        assert usage.value.code == 2 and torch.get_num_threads() == accepted
        assert "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- 4. --set values
@pytest.mark.parametrize("pair", ["prior.grid=Infinity", "prior.alpha=NaN", "prior.grid=-Infinity", "prior.grid=1e400",
                                  'training={"epochs": 1, "epochs": 2}'])
def test_set_values_must_be_strict_json(pair):
    with pytest.raises(InputError, match="--set"):
        parse_set_options([pair])


def test_set_keeps_json_values_and_bare_strings():
    assert parse_set_options(["variant=repeat", "lora.ranks=[8,4]", "prior.grid=0.004", "seed=3"]) == {
        "variant": "repeat", "lora": {"ranks": [8, 4]}, "prior": {"grid": 0.004}, "seed": 3}


@pytest.mark.parametrize("options", [{"ranks": [-3]}, {"ranks": [0], "biases": False}, {"ranks": [2048]}, {"ranks": [4] * 65},
                                     {"prior": {"grid": "Infinity"}}, {"prior": {"alpha": "NaN"}},
                                     {"training": {"learning_rate": "inf"}}])
def test_the_schema_refuses_ranks_out_of_bounds_and_non_finite_numbers(options):
    with pytest.raises(InputError, match="invalid options for method decoder-lora"):
        parse_method_config("decoder-lora", options)


def test_gop_adapters_decoder_lora_refuses_them_too():
    with pytest.raises(InputError):
        parse_method_config("gop-adapters+decoder-lora", {"lora": {"ranks": [-1]}})
    with pytest.raises(InputError):
        parse_method_config("gop-adapters+decoder-lora", {"adapters": {"learning_rate": "NaN"}})


@pytest.mark.parametrize(("pair", "cause"), [("ranks=[-3]", "ranks.0: Input should be greater than or equal to 0"),
                                             ("prior.grid=Infinity", "--set prior.grid: non-finite number Infinity"),
                                             ("prior.alpha=NaN", "--set prior.alpha: non-finite number NaN"),
                                             ('prior.grid="Infinity"', "prior.grid: Input should be a finite number")])
def test_a_bad_set_never_reaches_a_run_directory(tmp_path, carphone_path, tiny_checkpoint, pair, cause, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(carphone_path, videos / "car.mp4")
    run = tmp_path / "run"
    code = main(["submit", str(videos), "--run", str(run), "--model", str(tiny_checkpoint), "--methods",
                 "decoder-lora", "--anchors", "none", "--no-progress", "--set", pair])
    assert code == EXIT_INPUT_ERROR
    assert cause in one_error_line(capsys)
    assert not run.exists()


# ----------------------------------------------------------------------------- 2. bad videos in submit/resume
@pytest.fixture()
def bad_videos(tmp_path, carphone_path) -> Path:
    """A truncated mp4 (the first half of carphone) and a file on which the reader itself crashes."""
    folder = tmp_path / "videos"
    folder.mkdir()
    data = carphone_path.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    shutil.copy(carphone_path, folder / "crasher.mp4")
    return folder


@pytest.fixture()
def reader_crashes_on_crasher(monkeypatch):
    """read_video raising a non-InputError on crasher.mp4 (what a truncated mp4 did before phase A)."""
    import adaptjobs.spec as spec_module

    real = spec_module.read_video

    def read_video(path, *args, **kwargs):
        if Path(path).name == "crasher.mp4":
            raise AttributeError("'NoneType' object has no attribute 'pix_fmt'")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(spec_module, "read_video", read_video)


def test_videos_that_do_not_read_become_failed_units_and_resume_does_not_crash(bad_videos, tmp_path,
                                                                               reader_crashes_on_crasher, capsys):
    run = tmp_path / "run"
    assert main(["submit", str(bad_videos), "--run", str(run), *X264_ONLY]) == EXIT_RUN_INCOMPLETE
    out = capsys.readouterr().out
    assert "0/2 units done, 2 failed" in out
    failures = {p.parent.parent.parent.parent.name: FailureRecord.model_validate_json(p.read_text())
                for p in run.rglob("FAILED")}
    assert set(failures) == {"truncated", "crasher"}
    assert failures["truncated"].kind == "input" and "truncated.mp4" in failures["truncated"].error
    assert failures["crasher"].kind == "error" and "AttributeError" in failures["crasher"].error
    assert "crasher.mp4" in failures["crasher"].error
    for flags in ([], ["--retry-failed"]):  # resume records the same failures again, never a traceback
        assert main(["resume", str(run), "--no-progress", *flags]) == EXIT_RUN_INCOMPLETE
        assert "Traceback" not in capsys.readouterr().err
    assert len(list(run.rglob("FAILED"))) == 2


def test_a_bad_video_does_not_stop_the_good_ones_from_being_scheduled(bad_videos, carphone_path, tmp_path,
                                                                      reader_crashes_on_crasher):
    from adaptjobs.runner import RunSummary, fail_unprobed, select_units
    from adaptjobs.spec import build_spec, parse_codec_choices

    shutil.copy(carphone_path, bad_videos / "good.mp4")
    spec = build_spec(bad_videos, ["none"], [], parse_codec_choices(["x264:32"], None, [], "none"), None, 1, 12)
    store = RunStore(tmp_path / "run")
    store.write_spec_once(spec)
    summary = RunSummary()
    runnable = fail_unprobed(store, select_units(store, spec, False, summary), summary)
    assert [u.video.name for u in runnable] == ["good"]
    assert summary.failed == 2 and set(summary.failures) == {"units/crasher/x264/none/q32", "units/truncated/x264/none/q32"}


def _done_x264_run(tmp_path, carphone_path):
    """A run of carphone on x264 at CRFs 32 and 40 (method none) whose two units ran to DONE in process.
    Returns (spec, store, units)."""
    from adaptjobs.spec import build_spec, parse_codec_choices
    from workers.task import run_task

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(carphone_path, videos / "car.mp4")
    spec = build_spec(videos, ["none"], [], parse_codec_choices(["x264:32,40"], None, [], "none"), None, 1, 12)
    store = RunStore(tmp_path / "run")
    store.write_spec_once(spec)
    units = store.units(spec)
    for unit in units:
        assert run_task(store.video_task(spec, unit, 1)).state == "done"
    return spec, store, units


# ----------------------------------------------------------------------------- 5. status == report
def test_status_counts_done_only_with_a_valid_result(tmp_path, carphone_path, capsys):
    from adaptjobs.report_data import collect_run

    spec, store, units = _done_x264_run(tmp_path, carphone_path)

    def states() -> tuple[dict, dict]:
        capsys.readouterr()
        assert main(["status", str(store.root), "--json"]) == 0
        status = RunStatus.model_validate_json(capsys.readouterr().out)
        reported = {row.unit: row.state for row in collect_run(store.root).rows}
        return {row.unit: row.state for row in status.units}, reported

    assert states() == ({u.rel: "done" for u in units}, {u.rel: "done" for u in units})
    (store.unit_dir(units[0]) / "result.json").write_text('{"not": "a result"}')
    (store.unit_dir(units[1]) / "result.json").unlink()
    assert states() == ({u.rel: "failed" for u in units}, {u.rel: "failed" for u in units})
    capsys.readouterr()
    assert main(["status", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "2 units: 0 done, 2 failed" in out and "DONE but result.json" in out
    # resume treats them as failed too: left alone without --retry-failed, redone with it (issue 11 follow-up)
    assert main(["resume", str(store.root), "--no-progress"]) == EXIT_RUN_INCOMPLETE
    assert states() == ({u.rel: "failed" for u in units}, {u.rel: "failed" for u in units})
    assert main(["resume", str(store.root), "--retry-failed", "--no-progress"]) == 0
    assert states() == ({u.rel: "done" for u in units}, {u.rel: "done" for u in units})


def test_retry_failed_selects_a_done_unit_without_a_valid_result(tmp_path, carphone_path):
    """The runner's selection (no Ray): a DONE unit whose result.json is missing or broken is skipped as
    failed by a plain resume and redone by --retry-failed, whose task then really runs (DONE removed)."""
    from adaptjobs.runner import RunSummary, select_units
    from schemas.adapt import AdaptResult
    from workers.task import run_task

    spec, store, (good, broken) = _done_x264_run(tmp_path, carphone_path)
    (store.unit_dir(broken) / "result.json").unlink()

    plain = RunSummary()
    assert select_units(store, spec, False, plain) == [] and (plain.skipped_done, plain.skipped_failed) == (1, 1)
    assert (store.unit_dir(broken) / "DONE").exists()  # a plain resume touches nothing
    retry = RunSummary()
    assert select_units(store, spec, True, retry) == [broken] and retry.skipped_done == 1
    assert not (store.unit_dir(broken) / "DONE").exists()
    outcome = run_task(store.video_task(spec, broken, 1))
    assert outcome.state == "done" and not outcome.skipped
    AdaptResult.model_validate_json((store.unit_dir(broken) / "result.json").read_bytes())


# ----------------------------------------------------------------------------- 6. Ray's notice
def test_connect_does_not_print_rays_token_auth_notice(monkeypatch, capfd):
    ray = pytest.importorskip("ray")
    from adaptjobs.runner import Execution, connect

    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    monkeypatch.setenv("RAY_AUTH_MODE", "unset-by-the-test")
    monkeypatch.delenv("RAY_AUTH_MODE")  # Ray's default path: the one that printed the notice
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    capfd.readouterr()
    try:
        assert connect(Execution(local_cpus=1))
        assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42
    finally:
        ray.shutdown()
    captured = capfd.readouterr()
    assert "Token authentication" not in captured.err + captured.out


# ----------------------------------------------------------------------------- 7. unusable output folders
def test_run_and_output_folders_that_cannot_be_created_are_input_errors(tmp_path, carphone_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(carphone_path, videos / "car.mp4")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for run in (a_file, a_file / "run"):
        assert main(["submit", str(videos), "--run", str(run), *X264_ONLY]) == EXIT_INPUT_ERROR
        assert "cannot create the run directory" in one_error_line(capsys)
        for command in (["resume", str(run)], ["status", str(run)], ["report", str(run)]):
            assert main(command) == EXIT_INPUT_ERROR
            assert "not a run directory" in one_error_line(capsys)
    assert main(["adapt", str(carphone_path), "--codec", "x264", "--method", "none", "--frames", "1", "-o",
                 str(a_file)]) == EXIT_INPUT_ERROR
    assert "cannot create the output folder" in one_error_line(capsys)
    assert main(["encode", str(carphone_path), "--codec", "x264", "--frames", "1", "-o",
                 str(a_file / "x.h264")]) == EXIT_INPUT_ERROR
    assert "cannot create the folder of the stream" in one_error_line(capsys)
    assert a_file.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_run_directory_we_may_not_write_is_an_input_error(tmp_path, carphone_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(carphone_path, videos / "car.mp4")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(["submit", str(videos), "--run", str(locked / "run"), *X264_ONLY]) == EXIT_INPUT_ERROR
        assert "run directory" in one_error_line(capsys)
    finally:
        locked.chmod(0o700)


# ----------------------------------------------------------------------------- 8. info on a FIFO
@pytest.mark.parametrize("name", ["stream.bits", "stream.h264", "model.safetensors"])
def test_info_refuses_a_fifo_without_hanging(tmp_path, name, capsys):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    assert main(["info", str(fifo)]) == EXIT_INPUT_ERROR
    assert "not a regular file (a FIFO)" in one_error_line(capsys)


def test_job_json_holds_only_finite_numbers(tmp_path, carphone_path):
    from adaptjobs.spec import build_spec, parse_codec_choices

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(carphone_path, videos / "car.mp4")
    spec = build_spec(videos, ["none"], [], parse_codec_choices(["x264:32"], None, [], "none"), None, 1, 12)
    store = RunStore(tmp_path / "run")
    assert store.write_spec_once(spec)
    json.loads(store.job_path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in job.json"))
    assert store.read_spec() == spec
