"""The picture of a trace on docs/observability.md: tests/trace_picture.py runs the scenario and
writes a well-formed waterfall of its spans, and `waterfall` draws each span where its times say."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import pytest
from bench._charts import ERROR, SPAN, Span, waterfall
from trace_picture import EVENTS, main

if TYPE_CHECKING:
    from pathlib import Path

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # noqa: S314 (our own output)
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter(f"{SVG}text")]


def marks(root: ET.Element, tag: str, kind: str) -> list[ET.Element]:
    return [el for el in root.iter(f"{SVG}{tag}") if el.get("class") == kind]


def test_the_generator_draws_the_scenarios_spans(tmp_path: Path) -> None:
    """One row per span of the scenario (on asyncio): the caller's span, the create, a watch
    per task, its polls and the download; the failed task's watch and the 503 and 429 polls
    in red, transitions and retries as ticks."""
    out = tmp_path / "img" / "trace.svg"
    assert main(["--out", str(out)]) == 0
    root = parse(out.read_text(encoding="utf-8"))
    legend = {label for _, label in EVENTS}
    rows = [t for t in texts(root) if t.startswith(("request", "vsr.")) and t not in legend]
    names = [row.split()[0] for row in rows]
    assert names[:3] == ["request", "vsr.create", "vsr.watch"]
    assert names[-1] == "vsr.download"
    assert names.count("vsr.watch") == 2
    assert names.count("vsr.poll") >= 6
    assert any(row.startswith("vsr.poll 503") for row in rows)
    assert any(row.startswith("vsr.poll 429") for row in rows)
    assert any("completed" in row for row in rows if row.startswith("vsr.watch"))
    assert any("failed (error)" in row for row in rows if row.startswith("vsr.watch"))
    bars = marks(root, "rect", "span") + marks(root, "rect", "span error")
    assert len(bars) == len(rows)
    errors = marks(root, "rect", "span error")
    assert len(errors) == 3  # the 503 poll, the 429 poll, the failed task's watch
    assert all(bar.get("fill") == ERROR for bar in errors)
    # Retries: the create's and the two polls'; transitions: each task's first sighting and end
    # at least (a busy emulator may answer "processing" to the first poll that gets through).
    assert len(marks(root, "line", "event")) >= 1 + 2 + 2 * 2


def test_waterfall_draws_each_span_where_its_times_say() -> None:
    """Bars start and end where their times say on one axis, are indented by their depth, in
    red when in error; events are ticks on their bar."""
    spans = [
        Span("request", 0, 0, 100),
        Span("vsr.watch", 1, 10, 90, detail="task_1", events=((50, "vsr.transition"),)),
        Span("vsr.poll", 2, 20, 30, detail="503", error=True, events=((25, "other"),)),
    ]
    root = parse(waterfall("t", "ms", spans, events=[("vsr.transition", "transition")]))
    bars = [*marks(root, "rect", "span"), *marks(root, "rect", "span error")]
    bars.sort(key=lambda bar: float(bar.get("y", "")))
    x = [float(bar.get("x", "")) for bar in bars]
    width = [float(bar.get("width", "")) for bar in bars]
    scale = width[0] / 100
    assert x[1] - x[0] == pytest.approx(10 * scale, abs=0.2)
    assert width[1] == pytest.approx(80 * scale, abs=0.2)
    assert x[2] - x[0] == pytest.approx(20 * scale, abs=0.2)
    assert [bar.get("fill") for bar in bars] == [SPAN, SPAN, ERROR]
    [tick] = marks(root, "line", "event")  # the unknown kind is left out
    assert float(tick.get("x1", "")) == pytest.approx(x[0] + 50 * scale, abs=0.2)
    labels = {text: el for el in root.iter(f"{SVG}text") if (text := el.text or "")}
    indents = [float(labels[text].get("x", "")) for text in ("request", "vsr.watch task_1")]
    assert indents[1] > indents[0]
    assert "vsr.poll 503 (error)" in labels
    assert "transition" in labels


def test_waterfall_without_spans_is_a_document() -> None:
    """No span: still a valid SVG, saying so."""
    assert "no data" in texts(parse(waterfall("t", "ms", [])))
