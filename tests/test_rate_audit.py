"""`adaptjobs info --rates` (workers/rate_audit.py): estimated against coded bits per frame and stream."""

from __future__ import annotations

import json

from adaptjobs.cli import main
from workers.rate_audit import StreamRate

PER_STREAM_CONSTANT_BITS = 64  # ANS initial state and final flush (as in test_entropy_coding.py)


def _rows(out: str) -> tuple[list[StreamRate], dict]:
    parsed = json.loads(out)
    return [StreamRate(**row) for row in parsed["frames"]], parsed["totals"]


def test_info_rates_accounts_for_every_coded_bit(tmp_path, carphone_path, tiny_checkpoint, capsys):
    """Per stream, coded bits are the stream's bytes (they add up to what the encoder reported per frame
    type) and lie within the entropy coder's bound of the information content under the coding tables;
    the training estimate is finite and, for this unadapted stream, near the table bits."""
    bits = tmp_path / "c.bits"
    assert main(["--threads", "1", "encode", str(carphone_path), "-o", str(bits), "--model", str(tiny_checkpoint),
                 "--frames", "3", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)["bits"]
    assert main(["info", "--rates", str(bits), "--model", str(tiny_checkpoint), "--json"]) == 0
    rows, totals = _rows(capsys.readouterr().out)
    assert [(r.frame, r.latent, r.stream) for r in rows][:4] == [(0, "intra", "y"), (0, "intra", "z"),
                                                                 (1, "motion", "y"), (1, "motion", "z")]
    assert len(rows) == 2 + 4 * 2
    assert sum(r.coded for r in rows if r.latent == "intra") == reported["intra"]
    assert sum(r.coded for r in rows if r.latent == "motion") == reported["motion"]
    assert sum(r.coded for r in rows if r.latent == "residual") == reported["residual"]
    for row in rows:
        assert row.table - 1e-6 <= row.coded <= 1.01 * row.table + PER_STREAM_CONSTANT_BITS
        assert 0 <= row.estimated < float("inf")
    assert set(totals) == {"intra y", "intra z", "motion y", "motion z", "residual y", "residual z", "stream header",
                           "frame records"}
    assert sum(t["coded"] for t in totals.values()) == 8 * bits.stat().st_size  # every byte accounted for
    assert main(["info", "--rates", str(bits), "--model", str(tiny_checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "frame    2 residual z" in text and "total   motion y" in text


def _golden_unit(tmp_path, capsys, files: dict[str, str]):
    """(checkpoint, unit folder): the seeded tiny model the committed goldens were made with, and a unit
    folder holding the committed files of ``files`` (suffix -> name under tests/data) as golden.<suffix>."""
    from pathlib import Path

    folder = Path(__file__).parent / "data"
    checkpoint = tmp_path / "golden-tiny.safetensors"
    assert main(["init-model", str(checkpoint), "--arch", "tiny", "--quality", "2", "--seed", "0"]) == 0
    capsys.readouterr()
    unit = tmp_path / "unit"
    unit.mkdir()
    for suffix, name in files.items():
        (unit / f"golden.{suffix}").write_bytes((folder / name).read_bytes())
    return checkpoint, unit


def test_info_rates_reads_a_unit_folder_and_a_format3_stream(tmp_path, capsys):
    """The committed format-3 stream (clamping tables) is audited with its own tables: the coded bits are
    within the coder's bound of the table bits."""
    checkpoint, unit = _golden_unit(tmp_path, capsys, {"bits": "golden-format3-tiny.bits"})
    assert main(["info", "--rates", str(unit), "--model", str(checkpoint), "--json"]) == 0
    rows, _ = _rows(capsys.readouterr().out)
    assert len(rows) == 2 + 4 * 2
    assert all(r.table - 1e-6 <= r.coded <= 1.01 * r.table + PER_STREAM_CONSTANT_BITS for r in rows)


def test_info_rates_refuses_a_standard_codec_stream_in_one_line(tmp_path, capsys):
    path = tmp_path / "x.h264"
    path.write_bytes(b"\x00\x00\x00\x01" + b"\x67" * 20)
    assert main(["info", "--rates", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert "x.h264" in err and "--rates" in err and "\n" not in err


def test_info_rates_accounts_for_the_payload_and_its_binding(tmp_path, capsys):
    """A unit with a decoder-lora payload (the committed format-3 golden): the totals split the payload into its
    header and its coded weights and, with the stream's header and framing, add up to every byte sent."""
    checkpoint, unit = _golden_unit(tmp_path, capsys, {suffix: f"golden-format3-tiny-lora.{suffix}"
                                                       for suffix in ("bits", "payload")})
    assert main(["info", "--rates", str(unit), "--model", str(checkpoint), "--json"]) == 0
    _, totals = _rows(capsys.readouterr().out)
    assert (totals["payload header"]["coded"], totals["payload weights"]["coded"]) == (8 * 316, 8 * 756)
    sent = (unit / "golden.bits").stat().st_size + (unit / "golden.payload").stat().st_size
    assert sum(t["coded"] for t in totals.values()) == 8 * sent
