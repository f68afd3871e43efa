"""Fault tolerance with real Ray and real processes (design.md section 7):

- a node of a real multi-node cluster (ray.cluster_utils.Cluster, fast health checks) is killed while a
  unit is adapting: the unit finishes on another node, continuing from its checkpoint, and its bitstream
  and payload are byte-identical to an uninterrupted run;
- the driver process is killed with SIGKILL mid-run: `adaptjobs resume` completes the run, leaves the
  units that were DONE untouched, and ends with the same bytes as an uninterrupted run.

The unit: decoder LoRA on 3 frames of carphone with a tiny seeded model, one optimizer step per epoch and
a checkpoint after every step, long enough (many epochs) that the kill lands mid-training.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.job import CodecPoint, VideoTask
from workers.methods import parse_method_config
from workers.checkpoints import load_checkpoint
from workers.run_layout import read_log
from workers.task import describe_input, run_task

# the kept state is judged by coding the whole sequence (training.evaluate=coded): every 8 epochs, not every
# epoch, keeps these tests' time where it was while resume still has to reproduce the same evaluations
EVAL_EVERY = 8
EPOCHS = 64  # = decoder-lora's min_steps; about 25 s of training left after the kills below on 2 cores
LORA_OPTIONS = {"send_update": "always",
                "training": {"epochs": EPOCHS, "crop": 128, "checkpoint_every": 1, "learning_rate": 0.01,
                             "eval_every": EVAL_EVERY}}
SUBMIT_SETS = ["--set", "decoder-lora:send_update=always", "--set", f"decoder-lora:training.epochs={EPOCHS}",
               "--set", "decoder-lora:training.crop=128", "--set", "decoder-lora:training.checkpoint_every=1",
               "--set", "decoder-lora:training.learning_rate=0.01", "--set", f"decoder-lora:training.eval_every={EVAL_EVERY}"]
FRAMES = 3


def adaptjobs(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "adaptjobs", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def training_step(unit: Path) -> int:
    """The last decoder-training step the unit's log records (0 before training)."""
    steps = [r["step"] for r in read_log(unit / "adapt.log") if r.get("phase") == "decoder"]
    return steps[-1] if steps else 0


def uninterrupted(tmp_path: Path, video: Path, model: Path) -> dict[str, bytes]:
    """The reference: the same unit run once in this process, one thread (as a 1-CPU Ray task runs)."""
    import torch

    metadata = load_checkpoint(model).metadata
    unit = tmp_path / "reference"
    task = VideoTask(unit_dir=str(unit), video=describe_input(video, name="clip"),
                     method=parse_method_config("decoder-lora", LORA_OPTIONS),
                     codec=CodecPoint(codec="ssf", quality=metadata.quality, model_spec=str(model),
                                      weights_sha256=metadata.weights_sha256),
                     frames=FRAMES, intra_period=12, threads=1)
    threads = torch.get_num_threads()
    try:
        assert run_task(task).state == "done"
    finally:
        torch.set_num_threads(threads)
    return {p.suffix: p.read_bytes() for p in unit.glob("clip.*")}


@pytest.fixture()
def one_video(tmp_path, carphone_path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(carphone_path, folder / "clip.mp4")
    return folder


def test_a_killed_node_costs_only_the_steps_since_the_last_checkpoint(tmp_path, one_video, tiny_checkpoint):
    from ray.cluster_utils import Cluster

    reference = uninterrupted(tmp_path, one_video / "clip.mp4", tiny_checkpoint)
    assert set(reference) == {".bits", ".payload"}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0}})
    driver = None
    try:
        first = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run = tmp_path / "run"
        driver = adaptjobs("submit", str(one_video), "--run", str(run), "--address", cluster.address,
                           "--model", str(tiny_checkpoint), "--frames", str(FRAMES), "--methods", "decoder-lora",
                           "--anchors", "none", "--max-retries", "3", "--no-progress", *SUBMIT_SETS)
        unit = run / "units" / "clip" / "ssf" / "decoder-lora" / "q2"
        killed_at = wait_for(lambda: training_step(unit) >= 3, 120, "the unit to train a few steps on the first node")
        cluster.add_node(num_cpus=1)
        cluster.remove_node(first, allow_graceful=False)
        out, err = driver.communicate(timeout=240)
        assert driver.returncode == 0, out + err
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        cluster.shutdown()
    log = read_log(unit / "adapt.log")
    attempts = [r for r in log if r.get("event") == "attempt"]
    assert len(attempts) >= 2, "the unit should have been retried after its node died"
    # one host, two nodes: only the Ray node id tells the attempts apart
    assert len({a["host"] for a in attempts}) == 1 and attempts[0]["node_id"] != attempts[-1]["node_id"]
    done = [r for r in log if r.get("event") == "done"]
    assert len(done) == 1 and done[0]["resumed_from_step"] >= killed_at > 0  # continued, not restarted
    resumed = [r for r in log if r.get("event") == "log" and "resumed from checkpoint" in r["message"]]
    assert resumed and f"at step {done[0]['resumed_from_step']}" in resumed[-1]["message"]  # the training log
    assert done[0]["resumed_from_step"] < EPOCHS
    assert {p.suffix: p.read_bytes() for p in unit.glob("clip.*")} == reference


def test_resume_after_the_driver_is_killed(tmp_path, one_video, tiny_checkpoint):
    reference = uninterrupted(tmp_path, one_video / "clip.mp4", tiny_checkpoint)
    run = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ""}  # an embedded Ray that dies with its driver
    driver = adaptjobs("submit", str(one_video), "--run", str(run), "--model", str(tiny_checkpoint), "--frames",
                       str(FRAMES), "--methods", "none,decoder-lora", "--anchors", "none", "--no-progress",
                       *SUBMIT_SETS, env=env)
    base_unit = run / "units" / "clip" / "ssf" / "none" / "q2"
    lora_unit = run / "units" / "clip" / "ssf" / "decoder-lora" / "q2"
    try:
        wait_for(lambda: (base_unit / "DONE").exists() and training_step(lora_unit) >= 3, 120,
                 "one unit done and the other mid-training")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    assert not (lora_unit / "DONE").exists()
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in base_unit.rglob("*") if p.is_file()
            and p.name != ".unit.lock"}

    resume = adaptjobs("resume", str(run), "--no-progress", env=env)
    out, err = resume.communicate(timeout=240)
    assert resume.returncode == 0, out + err
    assert "2/2 units done" in out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept  # DONE units untouched
    assert sum(1 for r in read_log(base_unit / "adapt.log") if r.get("event") == "attempt") == 1
    done = [r for r in read_log(lora_unit / "adapt.log") if r.get("event") == "done"]
    assert len(done) == 1 and done[0]["resumed_from_step"] >= 3
    assert {p.suffix: p.read_bytes() for p in lora_unit.glob("clip.*")} == reference


def test_sigterm_stops_the_driver_cleanly_and_the_run_resumes(tmp_path, one_video, tiny_checkpoint):
    """SIGTERM (a preempted driver, `kill`) takes the same path as Ctrl-C: exit 130 with a resume hint,
    the unit is left interrupted (not failed) and continues from its checkpoint."""
    run = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = adaptjobs("submit", str(one_video), "--run", str(run), "--model", str(tiny_checkpoint), "--frames",
                       str(FRAMES), "--methods", "decoder-lora", "--anchors", "none", "--no-progress", *SUBMIT_SETS,
                       env=env)
    unit = run / "units" / "clip" / "ssf" / "decoder-lora" / "q2"
    try:
        wait_for(lambda: training_step(unit) >= 2, 120, "the unit to start training")
    finally:
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, out + err
    assert f"interrupted; finished units are kept: adaptjobs resume {run}" in err
    assert not (unit / "DONE").exists() and not (unit / "FAILED").exists()  # interrupted, not failed
    resume = adaptjobs("resume", str(run), "--no-progress", env=env)
    out, err = resume.communicate(timeout=240)
    assert resume.returncode == 0, out + err
    done = [r for r in read_log(unit / "adapt.log") if r.get("event") == "done"]
    assert len(done) == 1 and done[0]["resumed_from_step"] >= 2
