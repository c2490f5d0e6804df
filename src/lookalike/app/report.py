"""A self-contained HTML report: metrics table, key/value info, notes and PNG figures.

The page references nothing outside itself: CSS is inline and figures are embedded as
base64 ``data:`` URIs, so a single ``.html`` file can be mailed or archived as is. Every
string from the caller is HTML-escaped.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from html import escape

from ..errors import LookalikeError
from ..fsutil import atomic_write

log = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 64rem; padding: 1rem; line-height: 1.45; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; text-align: left; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0; }
img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9rem; color: #555; }
"""


def _metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Rows = names, columns = metric names in first-seen order, 3 decimals, best in bold.

    Higher is better; the best displayed value of a column is bold (ties all bold) when the
    column has at least two finite values. A missing value is shown as an en dash.
    """
    columns: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for row, row_metrics in metrics.items():
        for col, value in row_metrics.items():
            if col not in columns:
                columns.append(col)
            try:
                values[row, col] = float(value)
            except (TypeError, ValueError):
                raise LookalikeError(f"metric {row!r}/{col!r} is not a number: {value!r}") from None
    best: dict[str, float] = {}
    for col in columns:
        shown = [round(v, 3) for (_, c), v in values.items() if c == col and math.isfinite(v)]
        if len(shown) >= 2:
            best[col] = max(shown)
    head = "".join(f"<th>{escape(col)}</th>" for col in columns)
    body = []
    for row in metrics:
        cells = []
        for col in columns:
            cell = values.get((row, col))
            if cell is None:
                cells.append('<td class="num">&ndash;</td>')
                continue
            text = f"{cell:.3f}"
            if col in best and math.isfinite(cell) and round(cell, 3) == best[col]:
                text = f"<strong>{text}</strong>"
            cells.append(f'<td class="num">{text}</td>')
        body.append(f"<tr><th>{escape(row)}</th>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="metrics"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure(caption: str, png: bytes) -> str:
    if not isinstance(png, bytes | bytearray) or not bytes(png).startswith(_PNG_MAGIC):
        raise LookalikeError(f"figure {caption!r}: expected PNG bytes")
    data = base64.b64encode(bytes(png)).decode("ascii")
    cap = escape(caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{cap}">'
        f"<figcaption>{cap}</figcaption></figure>"
    )


def render_report(
    title: str,
    metrics: Mapping[str, Mapping[str, float]],
    figures: Sequence[tuple[str, bytes]],
    info: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Return one self-contained HTML page as a string.

    ``metrics`` maps a row name (e.g. ``"model"``, ``"pixels"``) to metric name -> value;
    ``figures`` is a list of ``(caption, PNG bytes)`` shown in order; ``info`` is a
    key/value table (dataset, model, wall time, ...); ``notes`` are paragraphs. Sections with
    nothing to show are left out. Raises :class:`LookalikeError` on a non-numeric metric or
    a figure that is not PNG bytes.
    """
    parts = [f"<h1>{escape(title)}</h1>"]
    if info:
        rows = "".join(
            f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in info.items()
        )
        parts.append(f'<table class="info"><tbody>{rows}</tbody></table>')
    if metrics:
        parts += ["<h2>Metrics</h2>", _metrics_table(metrics)]
    if notes:
        parts += ["<h2>Notes</h2>", *(f"<p>{escape(note)}</p>" for note in notes)]
    if figures:
        parts += ["<h2>Figures</h2>", *(_figure(cap, png) for cap, png in figures)]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def write_report(
    path: str | os.PathLike[str],
    title: str,
    metrics: Mapping[str, Mapping[str, float]],
    figures: Sequence[tuple[str, bytes]],
    info: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> pathlib.Path:
    """Render the report (see :func:`render_report`) and write it atomically to ``path``.

    Creates parent directories; :func:`lookalike.fsutil.atomic_write`: readers never see a
    partial page. The page is left readable by all (0644).
    """
    html = render_report(title, metrics, figures, info=info, notes=notes)

    def write(tmp: str) -> None:
        pathlib.Path(tmp).write_text(html, encoding="utf-8")
        os.chmod(tmp, 0o644)  # (a page to open and share, not a private temporary file)

    out = atomic_write(path, write)
    log.debug("wrote report %s (%d bytes)", out, len(html))
    return out
