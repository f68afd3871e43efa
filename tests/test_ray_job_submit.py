"""The cluster path of the README: `ray job submit` against a running head, which plain `ray` (without
`[default]`) cannot do ("require the ray[default] installation"). One real local head with its dashboard
(the job server), started by a driver process of this test and shut down by it; never `ray stop` (it would
kill every Ray process on the machine). Skipped only when ray[default] is not installed."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAD = """
import sys, ray
ray.init(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=int(sys.argv[1]),
         _temp_dir=sys.argv[2], log_to_driver=False)
print("ready", flush=True)
sys.stdin.read()  # until the test closes stdin; ray.shutdown runs at exit
"""


def _ray_default_installed() -> bool:
    """What ray[default] adds to plain ray for the dashboard and its job server."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("ray", "aiohttp", "aiohttp_cors", "grpc",
                                                                  "prometheus_client", "opencensus"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not _ray_default_installed(), reason="ray[default] is not installed (pip install 'adaptjobs[ray]')")
def test_ray_job_submit_runs_adaptjobs_on_a_local_head():
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    # Ray 2.60 asks for token authentication; the head and the CLI share one token, as a real cluster's must
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen([sys.executable, "-c", HEAD, str(port), temp], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert head.stdout.readline().strip() == "ready"
        ray_cli = str(Path(sys.executable).with_name("ray"))
        deadline = time.monotonic() + 120
        while True:  # the head's job agent registers a few seconds after ray.init returns (longer under load)
            job = subprocess.run([ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{port}", "--",
                                  sys.executable, "-m", "adaptjobs", "methods"],
                                 capture_output=True, text=True, env=env, timeout=90)
            if "No available agent" not in job.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stderr[-2000:]
        assert "decoder-lora" in job.stdout and "succeeded" in job.stdout.lower()
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp, ignore_errors=True)
