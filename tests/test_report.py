"""Tests for lookalike.app.report: a self-contained, escaped, atomically written HTML page."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.figure import Figure

from lookalike.app import figures, report
from lookalike.errors import LookalikeError

METRICS = {
    "model": {"mAP": 0.43127, "P@1": 0.93, "P@10": 0.8149},
    "pixels": {"mAP": 0.30004, "P@1": 0.951, "P@100": 0.25},
}


@pytest.fixture(scope="module")
def pngs() -> list[tuple[str, bytes]]:
    """Two real PNGs rendered from small matplotlib figures."""
    out = []
    for caption, values in [("loss curve", [3.0, 2.0, 1.5]), ("other", [1.0, 4.0])]:
        fig = Figure(figsize=(2, 1.5), layout="constrained")
        fig.subplots().plot(values)
        out.append((caption, figures.to_png(fig, dpi=40)))
    ramp = np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1) * 4
    out.append(("ramp", figures.to_png(figures.image_rows([("ramp", ramp)]), dpi=30)))
    return out


class _Collector(HTMLParser):
    """Collects tables (cells as (text, bold)), img srcs, figcaptions and paragraphs."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[tuple[str, bool]]]] = []
        self.imgs: list[str] = []
        self.captions: list[str] = []
        self.paragraphs: list[str] = []
        self.meta: list[dict[str, str | None]] = []
        self._cell: list[str] | None = None
        self._bold = False
        self._text: list[str] | None = None
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self._stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell, self._bold = [], False
        elif tag == "strong" and self._cell is not None:
            self._bold = True
        elif tag == "img":
            self.imgs.append(dict(attrs)["src"] or "")
        elif tag == "meta":
            self.meta.append(dict(attrs))
        elif tag in ("figcaption", "p"):
            self._text = []

    def handle_endtag(self, tag):
        self._stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(("".join(self._cell).strip(), self._bold))
            self._cell = None
        elif tag in ("figcaption", "p") and self._text is not None:
            (self.captions if tag == "figcaption" else self.paragraphs).append("".join(self._text))
            self._text = None

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self._stack.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._text is not None:
            self._text.append(data)


def _parse(html: str) -> _Collector:
    parser = _Collector()
    parser.feed(html)
    parser.close()
    return parser


def test_render_report_content(pngs) -> None:
    info = {"dataset": "digits (1,797 images)", "model": "conv-16-8-8", "wall time": "12.3 s"}
    notes = ["First paragraph.", "Second & last."]
    html = report.render_report("Retrieval report", METRICS, pngs, info=info, notes=notes)
    assert html.startswith("<!DOCTYPE html>")
    assert "http://" not in html and "https://" not in html
    assert "<title>Retrieval report</title>" in html
    doc = _parse(html)
    assert any(m.get("name") == "viewport" for m in doc.meta)
    assert "max-width: 100%" in html or "max-width:100%" in html

    info_table, metrics_table = doc.tables
    assert [(row[0][0], row[1][0]) for row in info_table] == list(info.items())

    header, model, pixels = metrics_table
    # higher is better; a column with a single value (P@10, P@100) has nothing to beat
    assert [text for text, _ in header] == ["", "mAP", "P@1", "P@10", "P@100"]
    assert model == [
        ("model", False),
        ("0.431", True),
        ("0.930", False),
        ("0.815", False),
        ("–", False),
    ]
    assert pixels == [
        ("pixels", False),
        ("0.300", False),
        ("0.951", True),
        ("–", False),
        ("0.250", False),
    ]

    assert doc.captions == [caption for caption, _ in pngs]
    assert len(doc.imgs) == len(pngs)
    for src, (_, png) in zip(doc.imgs, pngs, strict=True):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :], validate=True) == png
    assert doc.paragraphs == notes
    assert "Second &amp; last." in html
    # order of sections: info, metrics, notes, figures in caption order
    assert html.index("dataset") < html.index("mAP") < html.index("First paragraph")
    assert html.index("First paragraph") < html.index("loss curve") < html.index("ramp")


def test_best_value_ties_and_single_row() -> None:
    html = report.render_report("t", {"a": {"m": 0.5001}, "b": {"m": 0.49996}}, [])
    rows = _parse(html).tables[0]
    assert rows[1][1] == ("0.500", True) and rows[2][1] == ("0.500", True)
    html = report.render_report("t", {"only": {"m": 0.25}}, [])
    assert _parse(html).tables[0][1][1] == ("0.250", False)
    html = report.render_report("t", {"a": {"m": float("nan")}, "b": {"m": 0.1}}, [])
    assert _parse(html).tables[0][1][1] == ("nan", False)


def test_everything_is_escaped(pngs) -> None:
    evil = "<script>alert('x')</script>"
    html = report.render_report(
        evil,
        {evil: {evil: 1.0}, "ok": {evil: 0.0}},
        [(evil, pngs[0][1])],
        info={evil: evil},
        notes=[evil],
    )
    assert "<script" not in html.lower()
    assert html.count("&lt;script&gt;") == 9  # title x2, row, column, caption+alt, info x2, note
    doc = _parse(html)
    assert doc.captions == [evil] and doc.paragraphs == [evil]
    assert re.search(r'alt="&lt;script&gt;alert\(&#x27;x&#x27;\)&lt;/script&gt;"', html)


def test_empty_sections_are_left_out() -> None:
    html = report.render_report("Just a title", {}, [])
    doc = _parse(html)
    assert doc.tables == [] and doc.imgs == [] and doc.paragraphs == []
    assert "<h1>Just a title</h1>" in html


@pytest.mark.parametrize(
    "metrics, figs",
    [
        ({"model": {"mAP": "high"}}, []),
        ({}, [("not a png", b"GIF89a....")]),
        ({}, [("not bytes", "\x89PNG")]),
    ],
)
def test_render_report_rejects_bad_input(metrics, figs) -> None:
    with pytest.raises(LookalikeError):
        report.render_report("t", metrics, figs)


def test_write_report(tmp_path, pngs) -> None:
    target = tmp_path / "a" / "b" / "report.html"
    out = report.write_report(target, title="R", metrics=METRICS, figures=pngs, notes=["n"])
    assert out == target
    text = target.read_text(encoding="utf-8")
    assert text == report.render_report("R", METRICS, pngs, notes=["n"])
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]
    assert target.stat().st_mode & 0o777 == 0o644  # (not the temporary file's 0600)
    # overwrite in place, still no leftovers
    report.write_report(str(target), "R2", {}, [])
    assert "<h1>R2</h1>" in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_write_report_failure_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "report.html"
    with pytest.raises(LookalikeError):
        report.write_report(target, "t", {}, [("bad", b"nope")])
    assert list(tmp_path.iterdir()) == []
