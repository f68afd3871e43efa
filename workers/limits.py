"""Hard limits on what an input may make us spend, and a reader that refuses non-regular files.

Every header field that steers memory, time or threads is checked here or in the schema that quotes these
constants, against a hard limit AND against the bytes actually present, so that a few hundred crafted
bytes cannot ask for gigabytes or hours (issue 11). The numbers, and why:

- ``MAX_SIDE`` / ``MAX_FRAME_PIXELS``: 8K UHD (7680x4320) is the largest video we claim to handle;
  decoding costs about 180 bytes of memory per pixel (measured in issue 11: a 4096x4096 frame, 3 GB).
- ``MAX_PIXELS_PER_FRAME_BYTE``: a coded frame of W*H pixels must carry at least W*H/16384 bytes of
  streams. The most compressible content we could make, a flat grey 1024x1024 clip with the shipped
  ssf-compact q1, needs 25,904 stream bytes for the I-frame (40 px/byte) and >= 1,504 per P-frame
  (697 px/byte; `python benchmarks/bench_min_stream.py`); a stream at 0.1 bpp has 80 px/byte.
  So the limit leaves a 23x margin over flat synthetic content and caps decode work at
  16,384 pixels per byte present.
- ``I_FRAME_FRAMING_BYTES`` / ``P_FRAME_FRAMING_BYTES``: a frame record has a type, a count, one u32
  length per stream and a CRC, so ``frame_count`` is bounded by the bytes present before any frame is read.
- ``MAX_DECODED_FRAME_BYTES`` (8 GiB): the decoded frames one decoder may hold. The bytes-present checks
  do not bound it for x264/x265: a flat 1280x720 x264 frame costs ~45 bytes of stream (13,366 bytes for
  300 frames) and 1.38 MB decoded, so 1 MB of such a stream would hold ~30 GB of 4:2:0 planes (issue 11's
  long fuzz). 8 GiB keeps 300 frames of 1080p float32 RGB (the neural codec's frames, padded to 1920x1088:
  300 x 1920 x 1088 x 3 x 4 bytes = 7.0 GiB) or 2,762 frames of 1080p 4:2:0, and is half of a 16 GB
  machine's memory. Checked from the header up front (neural codec) or as FFmpeg hands out frames
  (x264/x265: the access units times the first frame's size, then every frame before it is kept).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from schemas.bitstream import MAX_FRAME_PIXELS, MAX_FRAMES, MAX_FPS_TERM, MAX_SIDE  # noqa: F401 (re-exported)
from workers.errors import BitstreamError, InputError

MAX_HEADER_BYTES = 64 * 1024  # our JSON headers are ~300 bytes
MAX_PIXELS_PER_FRAME_BYTE = 16384
I_FRAME_FRAMING_BYTES = 1 + 1 + 2 * 4 + 4   # type, count, 2 lengths, CRC
P_FRAME_FRAMING_BYTES = 1 + 1 + 4 * 4 + 4   # type, count, 4 lengths, CRC
MAX_LORA_RANK = 1024  # a rank above the widest layer (192 channels x 5x5 kernel) adds nothing
MAX_STRUCTURE_ITEMS = 64

MAX_BITSTREAM_BYTES = 4 << 30
MAX_PAYLOAD_BYTES = 1 << 30
MAX_CHECKPOINT_BYTES = 4 << 30
MAX_DECODED_FRAME_BYTES = 8 << 30
GIB = 1 << 30


def check_frame_size(source: str | Path | None, width: int, height: int) -> None:
    """Refuse frame sizes beyond MAX_SIDE / MAX_FRAME_PIXELS before anything is allocated for them."""
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_FRAME_PIXELS:
        raise InputError(source, f"frame size {width}x{height} is beyond the limit "
                                 f"(each side <= {MAX_SIDE}, <= {MAX_FRAME_PIXELS} pixels)")


def check_decoded_frame_bytes(source: str | Path | None, held_bytes: int, detail: str = "") -> None:
    """Refuse (BitstreamError) when a decoder would hold ``held_bytes`` of decoded frames, more than
    MAX_DECODED_FRAME_BYTES. Read at call time, so a test can scale the budget down with monkeypatch.
    ``detail``: what the count is made of (e.g. "300 frames of 1280x720"), put in the message."""
    budget = MAX_DECODED_FRAME_BYTES
    if held_bytes > budget:
        made_of = f" ({detail})" if detail else ""
        raise BitstreamError(source, f"would hold {held_bytes / GIB:.3g} GiB of decoded frames{made_of}, "
                                     f"more than the {budget / GIB:.3g} GiB limit")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def capped_threads(requested: int | None, current: int = 1) -> int | None:
    """The torch thread count to decode with: the header's ``requested`` count, capped to the cores available
    (or to ``current``, the process's own setting, when that is higher: an encoder that verifies its own
    stream in process always decodes with the count it encoded with).

    Caveat (bit-exactness): CPU kernels split their sums by thread, so a stream encoded with N threads
    decodes bit for bit only with N threads. A decoder with fewer cores than the encoder's count runs with
    fewer threads and may differ in the last bit of some pixels (P-frames carry it on). That is the
    price of never letting a header start thousands of OpenMP threads (issue 11: 4,097 threads took 42 s
    instead of 2.6 s, or aborted in libgomp); encoders record their own count, which fits their machine.
    """
    if requested is None:
        return None
    return max(1, min(requested, max(available_cores(), current)))


def read_regular_file(path: str | Path, what: str, max_bytes: int) -> bytes:
    """Read the whole of ``path`` if it is a regular file of at most ``max_bytes``; InputError otherwise.

    A FIFO, a device (/dev/zero, /dev/urandom) or a socket is refused before it is read, so it can neither
    hang us nor feed us unbounded bytes. The file is opened non-blocking and checked again through its
    descriptor, so a path swapped for a FIFO between the check and the open is refused too.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(path, f"the {what} is not a regular file ({file_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise InputError(path, f"the {what} is {info.st_size} bytes, more than the limit of {max_bytes}")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise InputError(path, f"cannot read the {what} ({exc.strerror})") from None
    if len(data) > max_bytes:
        raise InputError(path, f"the {what} grew past the limit of {max_bytes} bytes while being read")
    return data


def check_regular_file(path: str | Path, what: str) -> None:
    """Refuse a path that exists but is not a regular file (FIFO, device, socket) before a library opens it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(path, f"the {what} is not a regular file ({file_kind(mode)})")


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"
