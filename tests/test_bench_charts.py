"""The benchmarks' SVG charts (``tests/bench/_charts.py``): well-formed documents whose marks
sit where their values say, with their labels, whatever the data."""

from __future__ import annotations

import itertools
import math
import re
import xml.etree.ElementTree as ET

import pytest
from bench._charts import bars, distributions, main, ticks, timeline, write

SVG = "{http://www.w3.org/2000/svg}"
NAN = math.nan


def parse(svg: str) -> ET.Element:
    # Our own output, not untrusted XML.
    root = ET.fromstring(svg)  # noqa: S314
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    return root


def texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter(f"{SVG}text")]


def marks(root: ET.Element, tag: str, kind: str) -> list[ET.Element]:
    return [el for el in root.iter(f"{SVG}{tag}") if el.get("class") == kind]


def points(path: ET.Element) -> list[tuple[float, float]]:
    return [
        (float(x), float(y)) for x, y in re.findall(r"[ML]([-\d.]+),([-\d.]+)", path.get("d", ""))
    ]


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 835), (0, 1), (-3, 7), (0.1, 0.7), (0, 1e12), (1e-9, 3e-9), (42, 42), (0, 0)],
)
def test_ticks_are_round_and_cover_the_range(low: float, high: float) -> None:
    """Ticks are 1, 2 or 5 times a power of ten apart, a handful of them, covering the range."""
    found = ticks(low, high)
    assert 3 <= len(found) <= 8
    assert found[0] <= low
    assert found[-1] >= high
    steps = {round(b - a, 15) for a, b in itertools.pairwise(found)}
    assert len({f"{s:.6g}" for s in steps}) == 1
    mantissa = f"{found[1] - found[0]:.6e}"
    assert mantissa[0] in "125"
    assert mantissa[1:8] == ".000000"


def test_ticks_have_no_floating_point_noise() -> None:
    """0.1 steps come out as 0.3, not 0.30000000000000004."""
    assert ticks(0, 0.9, 10) == [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def test_bars_are_as_long_as_their_values() -> None:
    """Each value is a bar from zero, the larger the longer, labelled at its end; the target
    is one dashed line per group that has one; names and tick values are in the text."""
    root = parse(
        bars(
            "CPU per poll",
            "CPU µs per poll",
            [
                ("throughput", [("client.watch", 491), ("httpx poller (baseline)", 725)]),
                ("idle", [("client.watch", 52.5), ("httpx poller (baseline)", 835)]),
            ],
            target=("target: 0.75x httpx", [543.75, None]),
        )
    )
    assert root.findtext(f"{SVG}title") == "CPU per poll"
    widths = [float(el.get("width", "")) for el in marks(root, "rect", "bar")]
    assert len(widths) == 4
    assert widths[0] / widths[1] == pytest.approx(491 / 725, rel=0.01)
    assert widths[2] < widths[0] < widths[1] < widths[3]
    assert {el.get("x") for el in marks(root, "rect", "bar")} == {
        marks(root, "rect", "bar")[0].get("x")
    }
    words = texts(root)
    for word in [
        "client.watch",
        "httpx poller (baseline)",
        "throughput",
        "idle",
        "CPU µs per poll",
    ]:
        assert word in words
    assert {"491", "725", "52.5", "835", "0", "200", "800", "target: 0.75x httpx"} <= set(words)
    (line,) = marks(root, "line", "target")
    left = float(marks(root, "rect", "bar")[0].get("x", ""))
    assert float(line.get("x1", "")) - left == pytest.approx(widths[1] * 0.75, abs=0.2)


def test_negative_bars_go_left_of_zero() -> None:
    """A negative value is a bar ending left of the zero line."""
    root = parse(bars("Change", "%", [("a", [("up", 10), ("down", -5)])]))
    up, down = marks(root, "rect", "bar")
    assert float(down.get("x", "")) < float(up.get("x", ""))
    assert float(down.get("width", "")) == pytest.approx(float(up.get("width", "")) / 2, abs=0.2)


def test_timeline_lines_and_reference_share_the_y_scale() -> None:
    """A point at the reference value sits on the reference line, zero on the axis; each
    series is one line, broken where a value is NaN; the lower panel has its own series."""
    root = parse(
        timeline(
            "Accepted under a quota",
            "seconds",
            [
                ("client.watch", [(0, 0), (30, 100), (60, 100)]),
                ("poller", [(0, 50), (30, NAN), (60, 50)]),
            ],
            y_label="accepted per second",
            reference=("quota 100/s", 100),
            below=("429 share, %", [("poller", [(0, 30), (60, 35)])]),
        )
    )
    assert root.findtext(f"{SVG}title") == "Accepted under a quota"
    words = texts(root)
    for word in ["client.watch", "poller", "quota 100/s", "seconds", "429 share, %", "0", "60"]:
        assert word in words
    assert "accepted per second" in words
    watch, share = marks(root, "path", "series")
    (line,) = marks(root, "line", "reference")
    start, middle, end = points(watch)
    assert middle[1] == end[1] == float(line.get("y1", ""))
    assert start[1] > middle[1]
    assert start[0] < middle[0] < end[0]
    assert len(marks(root, "circle", "marker")) == 2  # the poller: a dot each side of the gap
    assert min(y for _, y in points(share)) > start[1]  # the lower panel is below


def test_distribution_marks_p50_and_p99() -> None:
    """Each series is a CDF from 0 to 1 whose p50 and p99 (nearest rank) are marked on it
    and named in the legend; the slower series lies to the right."""
    fast = [float(v) for v in range(1, 101)]
    slow = [v * 10 for v in fast]
    for log in (False, True):
        root = parse(distributions("Latency", "ms", [("fast", fast), ("slow", slow)], log=log))
        words = texts(root)
        assert "fast: p50 50 ms, p99 99 ms" in words
        assert "slow: p50 500 ms, p99 990 ms" in words
        assert {"ms", "0%", "50%", "100%", "p50", "p99"} <= set(words)
        fast_line, slow_line = marks(root, "path", "series")
        ys = [y for _, y in points(fast_line)]
        assert max(ys) - min(ys) == pytest.approx(280, abs=0.2)
        assert points(slow_line)[-1][0] > points(fast_line)[-1][0]
        p50, p99, slow_p50, _ = marks(root, "circle", "marker")
        assert float(p50.get("cy", "")) > float(p99.get("cy", ""))
        assert float(p50.get("cx", "")) < float(p99.get("cx", "")) < float(slow_p50.get("cx", ""))


EMPTY = [
    pytest.param([], id="no series"),
    pytest.param([("a", [])], id="empty series"),
    pytest.param([("a", [(1, 5)])], id="one point"),
    pytest.param([("a", [(0, 0), (1, 0)])], id="all zero"),
    pytest.param([("a", [(NAN, 1), (1, NAN), (math.inf, 2)])], id="all NaN"),
    pytest.param([("a", [(0, 1e-9), (1, 1e12)])], id="huge range"),
    pytest.param([("a", [(0, -5), (1, -5)])], id="negative"),
]


@pytest.mark.parametrize("data", EMPTY)
def test_edge_cases_draw_a_valid_document(
    data: list[tuple[str, list[tuple[float, float]]]],
) -> None:
    """Empty, lone, zero, NaN and huge values give a well-formed chart, never an error."""
    named = [(name, [(f"x{i}", v) for i, (_, v) in enumerate(pts)]) for name, pts in data]
    parse(bars("t", "u", named, target=("target", [NAN] * len(named))))
    parse(timeline("t", "x", data, y_label="y", reference=("ref", NAN), below=("z", data)))
    samples = [(name, [v for _, v in pts]) for name, pts in data]
    parse(distributions("t", "u", samples))
    parse(distributions("t", "u", samples, log=True))


def test_no_data_says_so() -> None:
    """A chart without a single finite value says 'no data' rather than drawing nothing."""
    for svg in [
        bars("t", "u", []),
        timeline("t", "x", [("a", [(NAN, NAN)])], y_label="y"),
        distributions("t", "u", [("a", [])]),
    ]:
        assert "no data" in texts(parse(svg))


def test_text_is_escaped() -> None:
    """Names with markup characters stay text."""
    root = parse(bars("<a & b>", "u", [('transport="aiohttp" & <x>', [("s", 1)])]))
    assert root.findtext(f"{SVG}title") == "<a & b>"
    assert 'transport="aiohttp" & <x>' in texts(root)


def test_write_and_demo(tmp_path) -> None:
    """``write`` creates the folders; the demo writes one chart of each kind."""
    write(tmp_path / "a" / "b.svg", bars("t", "u", []))
    parse((tmp_path / "a" / "b.svg").read_text(encoding="utf-8"))
    assert main(["--demo", str(tmp_path / "demo")]) == 0
    written = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert written == ["bars.svg", "distributions.svg", "timeline.svg"]
    for path in (tmp_path / "demo").iterdir():
        parse(path.read_text(encoding="utf-8"))
