"""benchmarks/RESULTS.md holds one section per benchmark script, between markers, so each script
rewrites its own numbers and leaves the others' alone."""

from __future__ import annotations

import platform
from pathlib import Path

HEADER = "# Benchmarks\n\nEach section says the machine, the command and the date it was measured.\n"


def replace_section(path: Path, name: str, markdown: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (for the machine line of each section)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                        platform.processor() or "unknown CPU")
    except OSError:
        return platform.processor() or "unknown CPU"
