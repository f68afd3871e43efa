"""Anchor units of a run: one video coded with x264 or x265 over the spec's CRF sweep, measured exactly as
our own reconstructions are (adaptjobs/anchors.py). Same life as an adaptation unit (workers/task.py:
lock, attempt, result.json, DONE last), so anchors are cached in RUN and never recomputed."""

from __future__ import annotations

import time
from pathlib import Path

from schemas.job import AnchorResult, AnchorTask, TaskOutcome
from workers.atomic import atomic_write_text
from workers.run_layout import ANCHOR_LOG
from workers.task import check_unchanged, run_unit

ANCHOR_RESULT = "result.json"


def run_anchor_task(task: AnchorTask) -> TaskOutcome:
    unit_dir = Path(task.unit_dir)

    def work() -> dict:
        from workers.standard.anchors import anchor_curve
        from workers.video_io import read_video

        started = time.perf_counter()
        check_unchanged(task.video)
        video = read_video(task.video.path, task.frames)
        points = anchor_curve(video, task.codec, task.intra_period, task.crfs, task.preset)
        result = AnchorResult(input=task.video.path, codec=task.codec, points=points,
                              seconds=time.perf_counter() - started)
        atomic_write_text(unit_dir / ANCHOR_RESULT, result.model_dump_json(indent=2))
        return {"points": len(points)}

    return run_unit(unit_dir, Path(task.run_dir), ANCHOR_LOG, task.video.path, work)
