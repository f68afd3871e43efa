"""The command line as users call it: exit codes, --json, --recon == decode, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptjobs.cli import main
from schemas.results import EncodeResult

REPO = Path(__file__).resolve().parents[1]


def test_encode_json_and_decode_reproduce_recon(tmp_path, carphone_path, tiny_checkpoint, capsys):
    bits, recon = tmp_path / "c.bits", tmp_path / "rec.y4m"
    code = main(["encode", str(carphone_path), "-o", str(bits), "--model", str(tiny_checkpoint),
                 "--frames", "3", "--intra-period", "2", "--recon", str(recon), "--json"])
    assert code == 0
    result = EncodeResult.model_validate_json(capsys.readouterr().out)
    assert result.bytes_written == bits.stat().st_size and result.frames == 3 and result.quality == 2
    for key in ("bpp", "psnr_rgb", "psnr_yuv", "ms_ssim_rgb"):
        assert key in json.loads(result.model_dump_json())
    # decode in a separate process with one thread: the bytes must not depend on either
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "adaptjobs", "--threads", "1", "decode", str(bits),
                           "-o", str(tmp_path / "dec.y4m"), "--model", str(tiny_checkpoint)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dec.y4m").read_bytes() == recon.read_bytes()


def test_info_lists_frames(tmp_path, carphone_path, tiny_checkpoint, capsys):
    bits = tmp_path / "c.bits"
    assert main(["encode", str(carphone_path), "-o", str(bits), "--model", str(tiny_checkpoint), "--frames", "2"]) == 0
    capsys.readouterr()
    assert main(["info", str(bits)]) == 0
    out = capsys.readouterr().out
    assert '"frame_count": 2' in out and "frame 1: P" in out


@pytest.mark.parametrize("name, version", [("golden-format4-tiny-lora.payload", 4),
                                           ("golden-format3-tiny-lora.payload", 3)])
def test_info_describes_a_weight_payload_and_refuses_a_corrupted_one(tmp_path, capsys, name, version):
    """Payloads written by earlier adaptjobs (tests/data): the header as read, and bytes that add up."""
    source = Path(__file__).parent / "data" / name
    assert main(["info", str(source)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["format"] == version and shown["method"] == "decoder-lora"
    assert shown["bytes"] == source.stat().st_size == shown["header_bytes"] + shown["coded_weights_bytes"]
    corrupted = tmp_path / "bad.payload"
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0x40
    corrupted.write_bytes(bytes(data))
    assert main(["info", str(corrupted)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(corrupted) in err


def test_init_model_writes_a_loadable_checkpoint(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    assert main(["init-model", str(path), "--arch", "tiny", "--quality", "3", "--seed", "5"]) == 0
    assert main(["info", str(path)]) == 0
    assert '"quality": 3' in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing-input", "not-a-video", "corrupted-bits", "wrong-model", "bad-arch"])
def test_errors_are_one_line_and_exit_non_zero(tmp_path, carphone_path, tiny_checkpoint, other_checkpoint, capsys, case):
    bits = tmp_path / "c.bits"
    if case in ("corrupted-bits", "wrong-model"):
        assert main(["encode", str(carphone_path), "-o", str(bits), "--model", str(tiny_checkpoint), "--frames", "1"]) == 0
    capsys.readouterr()
    if case == "missing-input":
        argv, expect = ["encode", str(tmp_path / "nope.mp4"), "-o", str(bits), "--model", str(tiny_checkpoint)], "no such file"
    elif case == "not-a-video":
        junk = tmp_path / "junk.avi"
        junk.write_bytes(os.urandom(5000))
        argv, expect = ["encode", str(junk), "-o", str(bits), "--model", str(tiny_checkpoint)], "not a video"
    elif case == "corrupted-bits":
        data = bytearray(bits.read_bytes())
        data[-2] ^= 0xFF
        bits.write_bytes(bytes(data))
        argv, expect = ["decode", str(bits), "-o", str(tmp_path / "d.y4m"), "--model", str(tiny_checkpoint)], "CRC32"
    elif case == "wrong-model":
        argv, expect = ["decode", str(bits), "-o", str(tmp_path / "d.y4m"), "--model", str(other_checkpoint)], "was encoded with model"
    else:
        argv, expect = ["init-model", str(tmp_path / "m.safetensors"), "--arch", "huge"], "--arch must be one of"
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err and err.startswith("adaptjobs ")
    assert not (tmp_path / "d.y4m").exists()


def test_failed_encode_leaves_no_partial_output(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "c.bits"
    junk = tmp_path / "junk.mp4"
    junk.write_text("nope")
    assert main(["encode", str(junk), "-o", str(out), "--model", str(tiny_checkpoint)]) == 1
    assert list(tmp_path.iterdir()) == [junk]
