"""Bar charts as server-rendered SVG: no script, no style attribute (the portal's CSP allows neither inline).

Horizontal positions and widths are percentages of the chart's width and vertical ones are pixels, so a
chart fills any width (a 390 px phone, a desktop card) while its text keeps the page's font size, which a
scaled ``viewBox`` would shrink. Colours come from classes that ``portal.css`` styles with the theme's
variables (light and dark). Each chart is ``role="img"`` with a title, and its description lists the
values (the day chart's are also in a table on the page); each bar has a ``<title>`` tooltip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Bar", "column_chart", "nice_ceiling", "ranked_bars"]

_ROW = 38  # px per bar of a ranked chart: a line of text, then the bar
_LABEL_CHARS = 28  # longer labels are cut (the tooltip has them whole): on a phone, a label and its value fit


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: what it stands for, its value (an integer: micro-dollars, requests, tokens)."""

    label: str
    value: int


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten (a whole number) that is at least ``value``."""
    if value <= 1:
        return 1
    scale = 1
    while scale * 10 < value:
        scale *= 10
    for tenths in (10, 20, 25, 50):
        if scale * tenths % 10 == 0 and scale * tenths // 10 >= value:
            return scale * tenths // 10
    return scale * 10


def _pct(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "%"


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"


def _open(chart_id: str, title: str, description: str, height: int, css: str) -> list[str]:
    return [
        f'<svg class="chart {css}" role="img" width="100%" height="{height}" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">{escape(description)}</desc>',
    ]


def column_chart(
    chart_id: str,
    bars: Sequence[Bar],
    *,
    title: str,
    fmt: Callable[[int], str],
    tick: Callable[[str], str] = str,
    height: int = 180,
    description: str = "",
) -> Markup:
    """Vertical bars in order (days), a grid line at the top and middle of the axis, a few x labels.

    Args:
        chart_id: A prefix for the ids of the title and description (unique on the page).
        bars: The bars, left to right.
        title: What the chart shows (read by screen readers, shown as the tooltip of the chart).
        fmt: An axis or bar value as text (``$1.20``, ``1,234``).
        tick: A bar's label as an x-axis label (shorter: ``12-05`` for ``2026-12-05``).
        height: The chart's height in px.
        description: A summary for screen readers (e.g. where the values are as a table).
    """
    top, bottom = 18, height - 24
    plot = bottom - top
    n = max(len(bars), 1)
    axis = nice_ceiling(max((b.value for b in bars), default=0))
    parts = _open(chart_id, title, description, height, "columns")
    for fraction in (1.0, 0.5):
        y = bottom - round(plot * fraction)
        parts.append(f'<line class="grid" x1="0" x2="100%" y1="{y}" y2="{y}"></line>')
        parts.append(f'<text class="axis" x="0" y="{y - 4}">{escape(fmt(round(axis * fraction)))}</text>')
    parts.append(f'<line class="base" x1="0" x2="100%" y1="{bottom}" y2="{bottom}"></line>')
    slot = 100 / n
    for i, bar in enumerate(bars):
        if bar.value <= 0:
            continue
        h = max(1, round(plot * bar.value / axis))
        parts.append(
            f'<rect class="bar" x="{_pct(slot * (i + 0.15))}" y="{bottom - h}" width="{_pct(slot * 0.7)}" '
            f'height="{h}"><title>{escape(bar.label)}: {escape(fmt(bar.value))}</title></rect>'
        )
    for i in _tick_indexes(len(bars)):
        middle = slot * (i + 0.5)
        if middle < 10:
            x, anchor = _pct(slot * (i + 0.15)), "start"
        elif middle > 90:
            x, anchor = _pct(slot * (i + 0.85)), "end"
        else:
            x, anchor = _pct(middle), "middle"
        parts.append(
            f'<text class="axis" x="{x}" y="{height - 6}" text-anchor="{anchor}">{escape(tick(bars[i].label))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # every value in it went through escape()


def _tick_indexes(n: int) -> list[int]:
    """Which bars get an x label: all of up to 7, else about 5 evenly spaced, counted back from the last."""
    step = 1 if n <= 7 else max(1, round(n / 5))
    return sorted(range(n - 1, -1, -step))


def ranked_bars(
    chart_id: str, bars: Sequence[Bar], *, title: str, fmt: Callable[[int], str], description: str = ""
) -> Markup:
    """One horizontal bar per item, largest first as given: its label and value above the bar.

    Args:
        chart_id: A prefix for the ids of the title and description (unique on the page).
        bars: The bars, top to bottom.
        title: What the chart shows.
        fmt: A value as text.
        description: A summary for screen readers; by default every label and value.
    """
    top = max((b.value for b in bars), default=0)
    summary = description or "; ".join(f"{b.label}: {fmt(b.value)}" for b in bars)
    parts = _open(chart_id, title, summary, max(len(bars), 1) * _ROW, "ranked")
    for i, bar in enumerate(bars):
        y = i * _ROW
        width = 0.0 if top <= 0 else max(0.5, 100 * bar.value / top) if bar.value > 0 else 0.0
        parts.append(f'<text class="label" x="0" y="{y + 15}">{escape(_short(bar.label))}</text>')
        parts.append(f'<text class="value" x="100%" y="{y + 15}" text-anchor="end">{escape(fmt(bar.value))}</text>')
        parts.append(f'<rect class="track" x="0" y="{y + 21}" width="100%" height="10" rx="2"></rect>')
        if width:
            parts.append(
                f'<rect class="bar" x="0" y="{y + 21}" width="{_pct(width)}" height="10" rx="2">'
                f"<title>{escape(bar.label)}: {escape(fmt(bar.value))}</title></rect>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # every value in it went through escape()
