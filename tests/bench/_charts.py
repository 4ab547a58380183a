"""The benchmarks' figures as charts: SVG text written from Python, no plotting library.

Four kinds, each a function returning a whole SVG document as a ``str``:

- `bars`: grouped horizontal bars, e.g. CPU per poll of each variant in each workload, with
  a dashed target per group;
- `timeline`: lines over time with a reference line (a quota), and an optional second panel
  underneath on the same time axis (a 429 share), rather than a second y axis that a reader
  would have to match to its lines;
- `distributions`: empirical CDFs of samples (latencies), with p50 and p99 marked;
- `waterfall`: the spans of a trace, one row each, indented under their parent, with their
  events as ticks (``tests/trace_picture.py`` draws docs/img/trace.svg with it).

Each chart is dark ink on a white card of its own, rather than in ``currentColor``: the docs
show a chart with ``<img>``, where an SVG is a document of its own that never sees the page's
text colour (``currentColor`` is black there) nor mkdocs-material's palette toggle, so only a
background of its own reads the same on the light and the dark scheme (and on GitHub, or in an
image viewer). Series take the Okabe-Ito colours, told apart with colour blindness too, less
its yellow, too pale on white; a series keeps its colour in every group or panel of a chart.

Values that are not finite are skipped (a gap in a line); a chart with no data is still a valid
document. Text widths are estimated, not measured: labels are laid out for a wide sans-serif.

``python -m tests.bench._charts --demo DIR`` writes the first three kinds with made-up data.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: Where the benchmarks write their charts: docs/performance.md shows ``img/bench/NAME.svg``.
IMAGES = Path(__file__).parents[2] / "docs" / "img" / "bench"

WIDTH = 720
PAD = 16
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
INK = "#1f2328"
MUTED = "#59636e"
GRID = "#e1e4e8"
CARD = "#ffffff"
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#7f7f7f")
SMALL, LABEL, HEADING = 12, 13, 16


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values, 1, 2 or 5 times a power of ten apart, from ``low`` or
    below to ``high`` or above; a range of one value is widened around it."""
    low, high = min(low, high), max(low, high)
    if low == high:
        half = abs(low) / 2 or 0.5
        low, high = (0.0, 1.0) if low == 0 else (low - half, high + half)
    power = 10 ** math.floor(math.log10((high - low) / max(count - 1, 1)))

    def bounds(step: float) -> tuple[int, int]:
        return math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)

    step = min(
        (m * power for m in (1, 2, 5, 10)),
        key=lambda step: abs(bounds(step)[1] - bounds(step)[0] + 1 - count),
    )
    first, last = bounds(step)
    digits = max(0, 1 - math.floor(math.log10(step)))
    return [round(k * step, digits) for k in range(first, last + 1)]


def write(path: Path, svg: str) -> None:
    """Write ``svg`` to ``path``, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg, encoding="utf-8")


def bars(
    title: str,
    unit: str,
    groups: Sequence[tuple[str, Sequence[tuple[str, float]]]],
    *,
    target: tuple[str, Sequence[float | None]] | None = None,
) -> str:
    """Grouped horizontal bars, a value at the end of each.

    Args:
        title: The chart's title.
        unit: The value axis' label, e.g. ``"CPU µs per poll"``.
        groups: ``(name, [(series, value), ...])``, e.g. a workload and its variants; a
            series has the same colour in every group.
        target: A label and one value per group (or None), each drawn as a dashed line
            across its group's bars, e.g. ``("target: 0.75x httpx", [543, 625, None])``.
    """
    groups = [(name, [(s, v) for s, v in members if _finite(v)]) for name, members in groups]
    limits = [*(target[1] if target else ()), *[None] * len(groups)][: len(groups)]
    colour = _colours(s for _, members in groups for s, _ in members)
    values = [v for _, members in groups for _, v in members]
    scale_ticks, low, high = _axis([*values, *_only(limits)])
    legend = [("box", colour[s], s) for s in colour]
    if target and _only(limits):
        legend.append(("dashed", INK, target[0]))
    head, top = _heading(title, legend)

    left = PAD + max((_width(name, LABEL) for name, _ in groups), default=0) + 12
    right = WIDTH - PAD - max((_width(_value(v), SMALL) for v in values), default=0) - 6
    x = _Scale(low, high, left, right)
    bar, gap, group_gap = 18, 4, 16
    back, front, y = [], [], top + 8
    for (name, members), limit in zip(groups, limits, strict=True):
        start = y
        for series, value in members:
            x0, x1 = sorted((x(0), x(value)))
            front.append(_rect(x0, y, x1 - x0, bar, fill=colour[series], kind="bar"))
            end, anchor = (x1 + 4, "start") if value >= 0 else (x0 - 4, "end")
            front.append(_text(end, y + bar / 2 + 4, _value(value), size=SMALL, anchor=anchor))
            y += bar + gap
        y = max(y - gap, start + bar)
        front.append(_text(left - 12, (start + y) / 2 + 4, name, size=LABEL, anchor="end"))
        if limit is not None and _finite(limit):
            front.append(_dashed(x(limit), start - 4, x(limit), y + 4, "target"))
        y += group_gap
    bottom = max(y - group_gap + 8, top + 60)
    if not values:
        front.append(_text((left + right) / 2, (top + bottom) / 2, "no data", anchor="middle"))
    back += [_line(x(tick), top, x(tick), bottom) for tick in scale_ticks]
    back.append(_line(x(0), top, x(0), bottom, stroke=INK))
    front += _x_axis(x, scale_ticks, bottom, unit)
    return _document(title, bottom + 50, [*head, *back, *front])


def timeline(
    title: str,
    x_label: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    y_label: str,
    reference: tuple[str, float] | None = None,
    below: tuple[str, Sequence[tuple[str, Sequence[tuple[float, float]]]]] | None = None,
) -> str:
    """Lines over time, and optionally a second panel under them on the same time axis.

    Args:
        title: The chart's title.
        x_label: The time axis' label, e.g. ``"seconds since the start"``.
        series: ``(name, [(x, y), ...])``, one line each; a NaN leaves a gap.
        y_label: The y axis' label, e.g. ``"accepted requests per second"``.
        reference: A label and a value, drawn as a dashed horizontal line across the upper
            panel, e.g. ``("quota 100/s", 100)``.
        below: A y label and its series for a lower panel, e.g.
            ``("429 share, %", [...])``; a series named as one above keeps its colour.
    """
    lower = below[1] if below else ()
    colour = _colours(name for name, _ in [*series, *lower])
    head, top = _heading(title, [("line", colour[name], name) for name in colour])
    xs = [px for _, points in [*series, *lower] for px, py in points if _finite(px, py)]
    x_ticks = ticks(min(xs, default=0), max(xs, default=1), 7)
    panels = [(series, y_label, reference, 250 if below else 300)]
    if below:
        panels.append((lower, below[0], None, 140))
    axes = [
        _axis([*_ys(members), *_only([ref[1] if ref else None])]) for members, _, ref, _ in panels
    ]
    left = PAD + 22 + max(_width(_tick(t, ts), SMALL) for ts, _, _ in axes for t in ts) + 8
    x = _Scale(x_ticks[0], x_ticks[-1], left, WIDTH - PAD - 8)
    body = list(head)
    for (members, label, ref, height), (scale_ticks, low, high) in zip(panels, axes, strict=True):
        y = _Scale(low, high, top + height, top)
        body += _grid(x, y, x_ticks, scale_ticks, label)
        for name, points in members:
            body += _lines(x, y, points, colour[name])
        if not _ys(members):
            body.append(_text(x.middle, y.middle, "no data", anchor="middle", fill=MUTED))
        if ref is not None and _finite(ref[1]):
            body.append(_dashed(x.start, y(ref[1]), x.end, y(ref[1]), "reference"))
            body.append(
                _text(x.end - 4, y(ref[1]) - 6, ref[0], size=SMALL, anchor="end", halo=True)
            )
        top += height + 22
    bottom = top - 22
    body += _x_axis(x, x_ticks, bottom, x_label)
    return _document(title, bottom + 50, body)


def distributions(
    title: str,
    unit: str,
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    log: bool = False,
) -> str:
    """Empirical CDFs of samples, each with its p50 and p99 marked and named in the legend.

    Args:
        title: The chart's title.
        unit: The samples' unit and the x axis' label, e.g. ``"ms"``.
        series: ``(name, samples)``, e.g. ``("fault-free", [...]), ("chaos", [...])``.
        log: A logarithmic x axis, for samples over several powers of ten; samples at or
            under zero are then drawn at its left end.
    """
    cleaned = [(name, sorted(v for v in samples if _finite(v))) for name, samples in series]
    colour = _colours(name for name, _ in cleaned)
    head, top = _heading(
        title,
        [("line", colour[name], _percentiles(name, samples, unit)) for name, samples in cleaned],
    )

    values = [v for _, samples in cleaned for v in samples]
    positive = [v for v in values if v > 0]
    if log and positive:
        low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
        high = max(high, low + 1)
        steps = (1, 2, 5) if high - low <= 3 else (1,)
        x_ticks = [m * 10.0**p for p in range(low, high) for m in steps] + [10.0**high]
    else:
        x_ticks = ticks(min([0, *values]), max([0, *values]), 7)
    y_ticks = [0, 0.25, 0.5, 0.75, 1.0]
    left = PAD + 22 + _width("100%", SMALL) + 8
    x = _Scale(x_ticks[0], x_ticks[-1], left, WIDTH - PAD - 32, log=log and bool(positive))
    y = _Scale(0, 1, top + 280, top)
    body = [*head, *_grid(x, y, x_ticks, y_ticks, "share of samples at or below", percent=True)]
    for share, name in ((0.5, "p50"), (0.99, "p99")):
        body.append(_line(x.start, y(share), x.end, y(share), stroke=MUTED, dash="2 3"))
        body.append(_text(x.end + 6, y(share) + 4, name, size=SMALL, fill=MUTED))
    for name, samples in cleaned:
        n = len(samples)
        steps_ = [(v, k / n) for i, v in enumerate(samples) for k in (i, i + 1)]
        body += _lines(x, y, steps_, colour[name], clamp=True)
        body += [
            _circle(x(_rank(samples, share)), y(share), colour[name])
            for share in (0.5, 0.99)
            if samples
        ]
    if not values:
        body.append(_text(x.middle, y.middle, "no data", anchor="middle", fill=MUTED))
    bottom = y.start
    body += _x_axis(x, x_ticks, bottom, unit)
    return _document(title, bottom + 50, body)


@dataclass(frozen=True)
class Span:
    """One row of a `waterfall`: a span, its place in the tree and its events.

    Attributes:
        name: Its name, e.g. ``"vsr.poll"``.
        depth: How deep in the tree (0 for the root); the row is indented by it.
        start: When it started, in the chart's unit, e.g. ms since the trace's start.
        end: When it ended, in the same unit.
        detail: A few words after the name, e.g. ``"503"`` or ``"task_3f1c… completed"``.
        error: Whether it ended in error: drawn in red, and said so after its detail.
        events: ``(when, kind)`` of each event drawn on it, ``kind`` a key of the
            ``events`` argument of `waterfall`; other kinds are left out.
    """

    name: str
    depth: int
    start: float
    end: float
    detail: str = ""
    error: bool = False
    events: tuple[tuple[float, str], ...] = ()


#: A span's bar, and an error span's: the Okabe-Ito blue and vermillion (their "red").
SPAN, ERROR = COLOURS[0], COLOURS[3]
#: The events' ticks, by order of the ``events`` argument: ink, then orange, then green.
EVENT_COLOURS = (INK, COLOURS[1], COLOURS[2])


def waterfall(
    title: str,
    unit: str,
    spans: Sequence[Span],
    *,
    events: Sequence[tuple[str, str]] = (),
) -> str:
    """The spans of a trace, one row each in the order given (a parent before its children),
    its name indented by its depth on the left, a bar from its start to its end on a shared
    time axis, its events as ticks across the bar.

    Args:
        title: The chart's title.
        unit: The time axis' label, e.g. ``"ms since the caller's span started"``.
        spans: The rows, in order.
        events: ``(kind, label)`` of the events to draw, e.g.
            ``[("vsr.transition", "status change")]``; each kind its colour and legend entry.
    """
    colour = {kind: c for (kind, _), c in zip(events, cycle(EVENT_COLOURS))}
    legend = [("box", SPAN, "span"), ("box", ERROR, "span ended in error")]
    legend += [("tick", colour[kind], label) for kind, label in events]
    head, top = _heading(title, legend)
    shown = [s for s in spans if _finite(s.start, s.end)]
    times = [t for s in shown for t in (s.start, s.end)]
    x_ticks = ticks(min([0, *times]), max(times, default=1), 7)
    labels = [_row_label(s) for s in shown]
    indent = 14
    left = (
        PAD
        + max(
            (s.depth * indent + _width(lb, SMALL) for s, lb in zip(shown, labels, strict=True)),
            default=0,
        )
        + 12
    )
    x = _Scale(x_ticks[0], x_ticks[-1], left, WIDTH - PAD - 8)
    row, bar = 20, 12
    y = top + 4
    back, front = [], []
    for number, (span, label) in enumerate(zip(shown, labels, strict=True)):
        middle = y + row / 2
        if number % 2:
            back.append(_rect(PAD, y, WIDTH - 2 * PAD, row, fill=STRIPE))
        fill = ERROR if span.error else SPAN
        front.append(
            _text(
                PAD + span.depth * indent,
                middle + 4,
                label,
                size=SMALL,
                fill=fill if span.error else INK,
            )
        )
        x0, x1 = x(span.start), x(max(span.end, span.start))
        kind = "span error" if span.error else "span"
        front.append(_rect(x0, middle - bar / 2, max(x1 - x0, 1.5), bar, fill=fill, kind=kind))
        for when, event in span.events:
            if event in colour and _finite(when):
                front.append(
                    _line(
                        x(when),
                        middle - bar / 2 - 3,
                        x(when),
                        middle + bar / 2 + 3,
                        stroke=colour[event],
                        width=2,
                        kind="event",
                    )
                )
        y += row
    bottom = max(y, top + 60)
    if not shown:
        front.append(_text(x.middle, (top + bottom) / 2, "no data", anchor="middle"))
    back += [_line(x(t), top, x(t), bottom) for t in x_ticks]
    front.append(_line(x.start, bottom, x.end, bottom, stroke=INK))
    front += _x_axis(x, x_ticks, bottom, unit)
    return _document(title, bottom + 50, [*head, *back, *front])


#: The background of every other row of a `waterfall`.
STRIPE = "#f6f8fa"


def _row_label(span: Span) -> str:
    words = [span.name, span.detail, "(error)" if span.error else ""]
    return " ".join(word for word in words if word)


@dataclass(frozen=True)
class _Scale:
    """Maps a value from ``low``-``high`` to a coordinate from ``start`` to ``end``."""

    low: float
    high: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        low, high = self.low, self.high
        if self.log:
            value, low, high = (math.log10(max(v, self.low)) for v in (value, low, high))
        share = (value - low) / (high - low) if high != low else 0
        return self.start + share * (self.end - self.start)

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _only(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _colours(names: Iterable[str]) -> dict[str, str]:
    """Each name its colour, in order of first appearance."""
    return dict(zip(dict.fromkeys(names), cycle(COLOURS)))


def _rank(samples: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of sorted ``samples``: the CDF reaches ``share`` there."""
    return samples[max(0, math.ceil(share * len(samples)) - 1)]


def _axis(values: Sequence[float], count: int = 6) -> tuple[list[float], float, float]:
    """Ticks for ``values`` and zero, and the axis' ends: its top a little over the largest
    value, so that no line runs along the top edge, nor a bar's end hides its value."""
    low, high = min([0, *values]), max([0, *values])
    top = high + (high - low) * 0.08
    all_ticks = ticks(low, top, count)
    if low == high:
        return all_ticks, all_ticks[0], all_ticks[-1]
    return [t for t in all_ticks if t <= top], all_ticks[0], top


def _ys(members: Sequence[tuple[str, Sequence[tuple[float, float]]]]) -> list[float]:
    return [py for _, points in members for px, py in points if _finite(px, py)]


def _percentiles(name: str, samples: Sequence[float], unit: str) -> str:
    if not samples:
        return f"{name}: no samples"
    p50, p99 = (_value(_rank(samples, share)) for share in (0.5, 0.99))
    return f"{name}: p50 {p50} {unit}, p99 {p99} {unit}"


def _value(value: float) -> str:
    """Three significant digits, with k, M or G past a thousand."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if 1e12 > abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _tick(value: float, all_ticks: Sequence[float]) -> str:
    """A tick's label, with as many decimals as its neighbours need."""
    top = max(abs(t) for t in all_ticks)
    scale, suffix = next(
        ((s, x) for s, x in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if top >= s * 10), (1, "")
    )
    if value == 0:
        return "0"
    if top >= 1e13 or top < 1e-4:
        return f"{value:.3g}"
    digits = next(
        d for d in range(13) if all(abs(round(t / scale, d) - t / scale) < 1e-9 for t in all_ticks)
    )
    return f"{value / scale:,.{digits}f}{suffix}"


def _width(text: str, size: float) -> float:
    """An estimate, on the wide side, of the width of ``text`` in a sans-serif font."""
    return len(text) * size * 0.6


def _heading(title: str, legend: Sequence[tuple[str, str, str]]) -> tuple[list[str], float]:
    """The title, the legend in rows under it, and where the plot may start."""
    body = [_text(PAD, PAD + 16, title, size=HEADING, weight="600")]
    x: float = PAD
    y = PAD + 44
    for kind, colour, label in legend:
        width = 26 + _width(label, LABEL)
        if x > PAD and x + width > WIDTH - PAD:
            x, y = PAD, y + 22
        if kind == "box":
            body.append(_rect(x, y - 10, 14, 12, fill=colour))
        elif kind == "line":
            body.append(_line(x, y - 4, x + 18, y - 4, stroke=colour, width=2.5))
        elif kind == "tick":
            body.append(_line(x + 7, y - 12, x + 7, y + 2, stroke=colour, width=2))
        else:
            body.append(_dashed(x, y - 4, x + 18, y - 4, "key"))
        body.append(_text(x + 22, y, label, size=LABEL))
        x += width + 16
    return body, y + (24 if legend else 0)


def _grid(
    x: _Scale,
    y: _Scale,
    x_ticks: Sequence[float],
    y_ticks: Sequence[float],
    label: str,
    *,
    percent: bool = False,
) -> list[str]:
    """A panel's grid lines, its y tick labels and its y axis' label, rotated."""
    body = [_line(x(t), y.start, x(t), y.end) for t in x_ticks]
    for t in y_ticks:
        body.append(_line(x.start, y(t), x.end, y(t)))
        text = f"{t:.0%}" if percent else _tick(t, y_ticks)
        body.append(_text(x.start - 6, y(t) + 4, text, size=SMALL, anchor="end", fill=MUTED))
    body.append(_line(x.start, y.start, x.end, y.start, stroke=INK))
    middle = y.middle
    body.append(
        f'<text x="{PAD + 10}" y="{middle:.1f}" font-size="{LABEL}" text-anchor="middle" '
        f'fill="{INK}" transform="rotate(-90 {PAD + 10} {middle:.1f})">{escape(label)}</text>'
    )
    return body


def _lines(
    x: _Scale,
    y: _Scale,
    points: Sequence[tuple[float, float]],
    colour: str,
    *,
    clamp: bool = False,
) -> list[str]:
    """A polyline through ``points``, broken where one is not finite; a lone point is a dot.
    Points less than half a pixel from the last one drawn are left out."""
    runs: list[list[tuple[float, float]]] = [[]]
    for px, py in points:
        if not _finite(px, py):
            runs.append([])
            continue
        cx, cy = x(px), y(py)
        if clamp:
            cx = min(max(cx, x.start), x.end)
        run = runs[-1]
        if run and abs(cx - run[-1][0]) < 0.5 and abs(cy - run[-1][1]) < 0.5:
            continue
        run.append((cx, cy))
    body = []
    for run in filter(None, runs):
        if len(run) == 1:
            body.append(_circle(*run[0], colour, radius=3))
        else:
            d = " ".join(f"{'L' if i else 'M'}{cx:.1f},{cy:.1f}" for i, (cx, cy) in enumerate(run))
            body.append(
                f'<path class="series" d="{d}" fill="none" stroke="{colour}" stroke-width="2" '
                'stroke-linejoin="round" stroke-linecap="round"/>'
            )
    return body


def _x_axis(x: _Scale, x_ticks: Sequence[float], bottom: float, label: str) -> list[str]:
    """Tick values under the plot, and the axis' label under them."""
    body = []
    for t in x_ticks:
        text = _value(t) if x.log else _tick(t, x_ticks)
        body.append(_text(x(t), bottom + 16, text, size=SMALL, anchor="middle", fill=MUTED))
    return [*body, _text(x.middle, bottom + 38, label, size=LABEL, anchor="middle")]


def _text(
    x: float,
    y: float,
    text: str,
    *,
    size: int = LABEL,
    anchor: str = "start",
    fill: str = INK,
    weight: str | None = None,
    halo: bool = False,
) -> str:
    extra = f' font-weight="{weight}"' if weight else ""
    if halo:
        extra += f' stroke="{CARD}" stroke-width="4" paint-order="stroke"'
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'fill="{fill}"{extra}>{escape(text)}</text>'
    )


def _line(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    *,
    stroke: str = GRID,
    width: float = 1,
    kind: str | None = None,
    dash: str | None = None,
) -> str:
    extra = (f' class="{kind}"' if kind else "") + (f' stroke-dasharray="{dash}"' if dash else "")
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
        f'stroke-width="{width}"{extra}/>'
    )


def _dashed(x1: float, y1: float, x2: float, y2: float, kind: str) -> str:
    """A target or a reference: a dashed line in ink."""
    return _line(x1, y1, x2, y2, stroke=INK, width=1.5, kind=kind, dash="6 4")


def _rect(
    x: float, y: float, width: float, height: float, *, fill: str, kind: str | None = None
) -> str:
    extra = f' class="{kind}"' if kind else ""
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" '
        f'fill="{fill}"{extra}/>'
    )


def _circle(x: float, y: float, fill: str, *, radius: float = 4.5) -> str:
    return (
        f'<circle class="marker" cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{fill}" '
        f'stroke="{CARD}" stroke-width="1.5"/>'
    )


def _document(title: str, height: float, body: Sequence[str]) -> str:
    height = math.ceil(height)
    return "\n".join(
        [
            (
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
                f'viewBox="0 0 {WIDTH} {height}" role="img" font-family={quoteattr(FONT)}>'
            ),
            f"<title>{escape(title)}</title>",
            f'<rect width="{WIDTH}" height="{height}" rx="6" fill="{CARD}"/>',
            *body,
            "</svg>\n",
        ]
    )


def demo(folder: Path) -> list[Path]:
    """One chart of each kind, with made-up data, written to ``folder``."""
    rng = random.Random(1)
    cpu = bars(
        "CPU per poll, by workload",
        "CPU µs per poll (less is better)",
        [
            (workload, list(zip(VARIANTS, values, strict=True)))
            for workload, values in [
                ("throughput", [491, 208, 725, 76]),
                ("fleet", [483, 210, 753, 91]),
                ("idle", [521, 244, 835, 172]),
            ]
        ],
        target=("target: 0.75x the httpx poller", [725 * 0.75, 753 * 0.75, 835 * 0.75]),
    )
    seconds = range(61)
    offered = {"client.watch": 100.0, "fixed 150/s poller": 150.0, "fixed 80/s poller": 80.0}
    accepted, refused = [], []
    for name, rate in offered.items():
        learnt = [
            min(rate, 100 * (1 - math.exp(-(t + 1) / 4)) + rng.gauss(0, 1.5)) for t in seconds
        ]
        got = [min(rate, 100.0) - rng.random() * 3 for _ in seconds]
        got = learnt if name == "client.watch" else got
        accepted.append((name, [(t, g) for t, g in zip(seconds, got, strict=True)]))
        share = [
            (t, max(0.0, 100 * (1 - g / rate)) if rate > 100 else 0.0)
            for t, g in zip(seconds, got, strict=True)
        ]
        refused.append((name, share))
    rates = timeline(
        "Accepted requests under a quota of 100/s",
        "seconds since the start",
        accepted,
        y_label="accepted per second",
        reference=("quota 100/s", 100.0),
        below=("429 share, %", refused),
    )
    latency = distributions(
        "Detection latency, fault-free and under chaos",
        "ms",
        [
            ("fault-free", [rng.lognormvariate(math.log(700), 0.4) for _ in range(20_000)]),
            ("chaos", [rng.lognormvariate(math.log(15_900), 0.8) for _ in range(20_000)]),
        ],
        log=True,
    )
    paths = []
    for name, svg in (("bars", cpu), ("timeline", rates), ("distributions", latency)):
        paths.append(folder / f"{name}.svg")
        write(paths[-1], svg)
    return paths


VARIANTS = (
    "client.watch",
    'client.watch, transport="aiohttp"',
    "httpx poller (baseline)",
    "aiohttp poller (baseline)",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench._charts")
    parser.add_argument(
        "--demo",
        type=Path,
        required=True,
        metavar="DIR",
        help="write one chart of each kind, with made-up data, here",
    )
    args = parser.parse_args(argv)
    for path in demo(args.demo):
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
