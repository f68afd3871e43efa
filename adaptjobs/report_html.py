"""report.html: the report's blocks as one self-contained page (PNG plots embedded as base64 data URIs, CSS
inline, no script, nothing fetched), so it can be mailed or opened from any folder. Every piece of text from
the run (video names, errors) is HTML-escaped."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from adaptjobs.report_document import Block, Heading, Image, Paragraph, Table

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; font-size: 14px; color: #1d1d1f;
       max-width: 1300px; margin: 24px auto; padding: 0 16px; line-height: 1.45; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin-bottom: 6px; }
.scroll { overflow-x: auto; margin: 6px 0 12px; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 7px; vertical-align: top; }
td { white-space: nowrap; }
th { background: #f2f2f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { white-space: normal; min-width: 220px; max-width: 560px; }
tr:nth-child(even) td { background: #fafafa; }
td.failed, td.missing { color: #b00020; font-weight: 600; }
p.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 6px 0; }
"""


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    last = len(table.header) - 1
    for row in table.rows:
        cells = []
        for index, cell in enumerate(row):
            classes = []
            if index in table.numeric:
                classes.append("num")
            if index == last and table.wide_last:
                classes.append("text")
            if cell in ("failed", "missing"):
                classes.append(cell)
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _image(image: Image, folder: Path) -> str:
    data = base64.b64encode((folder / image.path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(image.alt)}">'


def render_html(blocks: list[Block], folder: Path, title: str) -> str:
    """The page; ``folder`` is where the blocks' image paths are relative to (the report folder)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f'<p class="warning">{html.escape(block.text)}</p>' if block.warning
                         else f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Image):
            parts.append(_image(block, folder))
        else:
            parts.append(_table(block))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
