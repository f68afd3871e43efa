"""The quick-start job's run folder: a run left by another spec is moved aside (never deleted), the same spec
is resumed in place."""

from __future__ import annotations

import shutil

from adaptjobs.demo import set_aside_stale_run, spec_of
from adaptjobs.run_store import RunStore


def _command(videos, run, frames: int) -> list[str]:
    return ["submit", str(videos), "--run", str(run), "--methods", "none", "--codec", "x264:37",
            "--anchors", "none", "--frames", str(frames)]


def test_a_run_with_another_spec_is_moved_aside_and_the_same_spec_stays(tmp_path, carphone_path):
    videos, run = tmp_path / "videos", tmp_path / "run"
    videos.mkdir()
    shutil.copy(carphone_path, videos / "clip.mp4")
    assert RunStore(run).write_spec_once(spec_of(_command(videos, run, 2)))
    (run / "marker").write_text("results of the old run")

    set_aside_stale_run(run, _command(videos, run, 2))  # the same spec: resumed in place
    assert (run / "marker").exists() and not (tmp_path / "run-previous-1").exists()

    set_aside_stale_run(run, _command(videos, run, 3))  # another spec: moved aside, kept
    assert not run.exists()
    assert (tmp_path / "run-previous-1" / "marker").read_text() == "results of the old run"

    run.mkdir()
    (run / "job.json").write_text("{not json")  # unreadable: stale as well, next free name
    set_aside_stale_run(run, _command(videos, run, 3))
    assert not run.exists() and (tmp_path / "run-previous-2" / "job.json").exists()
