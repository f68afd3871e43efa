"""Regression tests for issue 11 on the post-filter path: x264/x265 streams whose user_data_unregistered SEI
carries our side info record and a coded filter update (workers/standard/side_info.py,
workers/postfilter/update_payload.py), decoded as `adaptjobs decode case.h264 -o out.y4m` does.

Each case is framed with its CRCs recomputed (workers/fuzz_cases.py), so the checks behind them are what
answers: a decode, or a one-line BitstreamError naming the file and the cause, in bounded time."""

from __future__ import annotations

import time

import pytest
import torch

from workers.errors import BitstreamError
from workers.fuzz_cases import (SAMPLE_CODECS, carry_chunks, decode_standard_action, frame_filter_update,
                                record_chunks, sample_filter_update, sample_standard_stream, side_info_record)
from workers.limits import available_cores

CODECS = list(SAMPLE_CODECS)


@pytest.fixture(scope="module")
def seeds() -> dict:
    from schemas.side_info import filter_id
    from workers.postfilter.checkpoint import shipped_filter

    loaded = shipped_filter()
    return {"streams": {codec: sample_standard_stream(codec) for codec in CODECS}, "loaded": loaded,
            "filter_id": filter_id(loaded.metadata.weights_sha256),
            "update": sample_filter_update(loaded, "cross-linear")}


def with_record(seeds, codec: str, record: bytes, units: int = 1) -> bytes:
    return carry_chunks(seeds["streams"][codec], codec, record_chunks(record), units)


def refusal(data: bytes, codec: str) -> str:
    """The one-line message of a refused decode; it names the file."""
    source = SAMPLE_CODECS[codec]
    with pytest.raises(BitstreamError) as info:
        decode_standard_action(data, codec)()
    message = str(info.value)
    assert message.startswith(f"{source}: ") and "\n" not in message
    return message


@pytest.mark.parametrize("codec", CODECS)
def test_record_threads_are_capped_to_the_cores(seeds, codec, monkeypatch):
    """Item 2 on the post-filter path (found by benchmarks/fuzz_long.py): a record saying 4096 threads set
    torch's thread count to 4096 at decode (5.3 s instead of 0.05 s for 2 frames of 64x48)."""
    requested = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (requested.append(n), real(n))[1])
    data = with_record(seeds, codec, side_info_record(flags=1, threads=4096, filter_id=seeds["filter_id"]))
    started = time.perf_counter()
    frames = decode_standard_action(data, codec)()
    assert len(frames) == 2 and time.perf_counter() - started < 5
    assert max(requested, default=1) <= max(available_cores(), torch.get_num_threads())


@pytest.mark.parametrize("codec", CODECS)
def test_update_for_another_base_filter_is_refused(seeds, codec):
    """A well-formed update (its CRC and the record's recomputed) bound to another base filter's hash."""
    from workers.postfilter.update_payload import _FIELDS

    update = seeds["update"]
    version, number, rank, seed, _, *prior, bound = _FIELDS.unpack_from(update, 4)
    foreign = frame_filter_update(update[4 + _FIELDS.size: -4], number, rank, seed, b"\x01" * 8, tuple(prior), bound)
    record = side_info_record(flags=3, filter_id=seeds["filter_id"], method=number, blob=foreign)
    assert "another base filter" in refusal(with_record(seeds, codec, record), codec)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("field, value, cause", [
    ("bound", 2**32 - 1, "table bound"),
    ("bound", 0, "table bound"),
    ("parameterisation", 9, "invalid post-filter update header"),
    ("prior", (float("nan"), 0.05, 0.001, 1000.0), "invalid post-filter update header"),
    ("prior", (1e-45, 3.4e38, 1e-45, 3.4e38), ""),
    ("rank", 255, "side info says"),
])
def test_absurd_update_fields_behind_valid_crcs_are_refused(seeds, codec, field, value, cause):
    from workers.postfilter.update_payload import _FIELDS

    update = seeds["update"]
    version, number, rank, seed, base, *prior, bound = _FIELDS.unpack_from(update, 4)
    fields = {"parameterisation": number, "rank": rank, "init_seed": seed, "base": base, "prior": tuple(prior),
              "bound": bound, field: value}
    if field == "rank":
        fields["parameterisation"] = 2  # a LoRA update of rank 255 inside a record saying cross-linear
    crafted = frame_filter_update(update[4 + _FIELDS.size: -4], **fields)
    record = side_info_record(flags=3, filter_id=seeds["filter_id"], method=4, blob=crafted)
    started = time.perf_counter()
    assert cause in refusal(with_record(seeds, codec, record), codec)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("fields, cause", [
    ({"method": 4, "length": 2**32 - 1}, "says the update has 4294967295 bytes"),
    ({"method": 4, "length": 0}, "says the update has 0 bytes"),
    ({"method": 0}, "unknown update method 0"),
    ({"method": 255}, "unknown update method 255"),
    ({"method": 2}, "side info says a lora update, the update is cross-linear"),
    ({"crf": 65535}, "crf"),
    ({"flags": 0x80}, "unknown flags 0x80"),
    ({"filter_id": b"\xff" * 8}, "names post-filter ffffffffffffffff"),
    ({"version": 1}, "format version 1"),
])
def test_absurd_record_fields_behind_a_valid_crc_are_refused(seeds, codec, fields, cause):
    base = {"flags": 3, "filter_id": seeds["filter_id"], "method": 4, "blob": seeds["update"]}
    assert cause in refusal(with_record(seeds, codec, side_info_record(**{**base, **fields})), codec)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("parameterisation, number", [("classified-linear", 6), ("classified-linear-on-base", 7)])
@pytest.mark.parametrize("rank, layout, cause", [
    (9, 0x94, "1..8 groups"),  # group count beyond the bound
    (0, 0, "1..8 groups"),
    (3, 0x49, "not increasing"),  # class boundaries out of order
    (2, 0x10, "bits set beyond"),  # a boundary of 0 and stray bits
    (3, 0x7654394, "bits set beyond"),
    (2, 0x40000004, "wide form without the tied one"),  # id 7's wide bit alone (id 6: a stray bit)
])
def test_hostile_classified_layouts_are_refused(seeds, codec, parameterisation, number, rank, layout, cause):
    """classified-linear (wire id 6) and classified-linear-on-base (7): group count and class boundaries behind
    valid CRCs, one line each."""
    from workers.postfilter.update_payload import _FIELDS

    if number == 6 and cause.startswith("wide"):
        cause = "bits set beyond"
    update = sample_filter_update(seeds["loaded"], parameterisation)
    version, said, _, _, base, *prior, bound = _FIELDS.unpack_from(update, 4)
    assert said == number
    crafted = frame_filter_update(update[4 + _FIELDS.size: -4], number, rank, layout, base, tuple(prior), bound)
    record = side_info_record(flags=3, filter_id=seeds["filter_id"], method=number, blob=crafted)
    message = refusal(with_record(seeds, codec, record), codec)
    assert "invalid post-filter update header" in message and cause in message
    valid = side_info_record(flags=3, filter_id=seeds["filter_id"], method=number, blob=update)
    assert len(decode_standard_action(with_record(seeds, codec, valid), codec)()) == 2  # the unchanged one decodes


@pytest.mark.parametrize("codec", CODECS)
def test_annex_b_damage_around_the_sei(seeds, codec):
    """Two of our SEIs are refused (chunks do not match); an SEI in a later access unit is not read (plain
    frames); a stream cut inside the SEI, or with its escapes removed, is refused in one line."""
    from workers.standard.encoder import decode_stream
    from workers.standard.sei import iter_nal_spans, nal_syntax

    record = side_info_record(flags=1, filter_id=seeds["filter_id"])
    data, plain = with_record(seeds, codec, record), seeds["streams"][codec]
    syntax = nal_syntax(codec)
    spans = list(iter_nal_spans(data))
    sei = [s for s in spans if syntax.nal_type(data[s.body: s.body + 2]) == syntax.sei_type][-1]
    unit = data[sei.start: sei.end]
    assert "side info chunks do not match" in refusal(data[: sei.end] + unit + data[sei.end:], codec)
    later = [s for s in iter_nal_spans(plain) if syntax.nal_type(plain[s.body: s.body + 2]) in syntax.vcl_types][1]
    frames = decode_standard_action(plain[: later.start] + unit + plain[later.start:], codec)()
    assert all((a == b).all() for fa, fb in zip(frames, decode_stream(plain, codec)) for a, b in zip(fa, fb))
    assert "malformed SEI" in refusal(data[: sei.start + 12], codec)


@pytest.mark.parametrize("codec", CODECS)
def test_escape_patterns_and_a_record_over_several_seis_decode(seeds, codec):
    """A valid update over CHUNK_BYTES, split over two SEI messages in two NAL units, decodes; so does a
    record whose bytes need emulation prevention (its update then fails its own checks, in one line)."""
    wide = sample_filter_update(seeds["loaded"], "lora", rank=8, spread=300, density=0.5)
    record = side_info_record(flags=3, filter_id=seeds["filter_id"], method=2, blob=wide)
    assert len(record_chunks(record)) >= 2
    assert len(decode_standard_action(with_record(seeds, codec, record, units=2), codec)()) == 2
    escaped = side_info_record(flags=3, filter_id=seeds["filter_id"], method=4, blob=b"\x00\x00\x01\x00\x00\x03" * 40)
    assert "post-filter update" in refusal(with_record(seeds, codec, escaped), codec)
