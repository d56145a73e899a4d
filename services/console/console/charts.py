"""Charts as inline SVG, drawn on the server: bars and a histogram, from plain numbers.

Guarantee: labels go through the page's escaping like any text (the SVG is built by the
template from the numbers returned here, never from concatenated strings), and any input, empty
or all zero, gives a drawable chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, BAR_HEIGHT, GAP, LABEL_WIDTH = 420, 18, 6, 140


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    shown: str  # the value as text
    y: int
    width: int


@dataclass(frozen=True)
class BarChart:
    title: str
    bars: list[Bar]
    height: int
    plot_width: int = WIDTH - LABEL_WIDTH - 60
    label_width: int = LABEL_WIDTH


def bar_chart(title: str, items: Sequence[tuple[str, float]], *, percent: bool = False) -> BarChart:
    """Horizontal bars, longest = the largest value (a rate as a percentage when `percent`)."""
    plot = WIDTH - LABEL_WIDTH - 60
    largest = max((v for _, v in items), default=0) or 1
    bars = [
        Bar(
            label=label[:24],
            value=value,
            shown=f"{100 * value:.1f}%" if percent else f"{value:g}",
            y=i * (BAR_HEIGHT + GAP),
            width=round(plot * value / largest),
        )
        for i, (label, value) in enumerate(items)
    ]
    return BarChart(title=title, bars=bars, height=max(1, len(bars)) * (BAR_HEIGHT + GAP) + 4)


def histogram(title: str, values: Sequence[float], edges: Sequence[float]) -> BarChart:
    """How many values fall in each [edge, next edge) bucket; the last bucket is open-ended."""
    counts = [0] * len(edges)
    for v in values:
        for i in range(len(edges) - 1, -1, -1):
            if v >= edges[i]:
                counts[i] += 1
                break
    labels = [
        f"{edges[i]:g}–{edges[i + 1]:g} h" if i + 1 < len(edges) else f"≥ {edges[i]:g} h" for i in range(len(edges))
    ]
    return bar_chart(title, list(zip(labels, [float(c) for c in counts], strict=True)))


NOTICE_EDGES = (0, 2, 6, 12, 24, 48, 72, 168)
