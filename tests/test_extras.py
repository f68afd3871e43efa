"""Install what you use: encode/decode/adapt need no Ray, matplotlib, scipy or bjontegaard; a command that
needs a missing extra says which in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptjobs.cli import EXIT_INPUT_ERROR, main
from adaptjobs.extras import MissingExtra, require

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("ray", "matplotlib", "scipy", "bjontegaard")
BLOCKED = """
import sys
for name in {optional!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as if it were not installed
from adaptjobs.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_without_extras(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCKED.format(optional=OPTIONAL), *argv], capture_output=True,
                          text=True, env=env, timeout=300)


def test_encode_and_decode_need_no_optional_dependency(tmp_path, carphone_path, tiny_checkpoint):
    bits, recon, decoded = tmp_path / "c.bits", tmp_path / "rec.y4m", tmp_path / "dec.y4m"
    done = run_without_extras("encode", str(carphone_path), "-o", str(bits), "--model", str(tiny_checkpoint),
                              "--frames", "2", "--recon", str(recon))
    assert done.returncode == 0, done.stderr
    done = run_without_extras("decode", str(bits), "-o", str(decoded), "--model", str(tiny_checkpoint))
    assert done.returncode == 0, done.stderr
    assert decoded.read_bytes() == recon.read_bytes()


def test_commands_name_the_missing_extra(tmp_path):
    report = run_without_extras("report", str(tmp_path))
    assert report.returncode == EXIT_INPUT_ERROR and report.stderr.count("\n") == 1
    assert "pip install 'adaptjobs[report]'" in report.stderr
    resume = run_without_extras("resume", str(tmp_path / "run"))
    assert resume.returncode == EXIT_INPUT_ERROR and resume.stderr.count("\n") == 1
    assert "pip install 'adaptjobs[ray]'" in resume.stderr and not (tmp_path / "run").exists()


def test_require_imports_what_is_there_and_refuses_what_is_not(monkeypatch):
    assert require("json", "x").dumps(1) == "1"
    monkeypatch.setitem(sys.modules, "bjontegaard", None)
    with pytest.raises(MissingExtra, match=r"BD-rates needs bjontegaard.*adaptjobs\[report\]"):
        require("bjontegaard", "BD-rates")
