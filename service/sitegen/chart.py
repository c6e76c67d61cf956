"""Line charts drawn as inline SVG at build time.

No JavaScript and no outside assets: the chart is part of the page. Lines differ
in dash pattern as well as colour, every colour has at least 4.5:1 contrast on
white, and the SVG carries a <title> and <desc> for screen readers (the page
also shows the same numbers in a table).
"""

import datetime
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A narrow drawing keeps its text readable when a phone scales it down to ~360 px.
WIDTH, HEIGHT = 480, 270
LEFT, RIGHT, TOP, BOTTOM = 88, 16, 44, 36
FONT = 'font-size="15" fill="#1f2937"'
STYLES = (("#1d4ed8", ""), ("#b91c1c", "8 5"), ("#4b5563", "3 4"))


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[int | None]  # None: not known that day (no point is drawn)


def line_chart(
    *,
    chart_id: str,
    title: str,
    desc: str,
    days: Sequence[datetime.date],
    series: Sequence[Series],
    maximum: int,
    label_value: Callable[[int], str],
    label_day: Callable[[datetime.date], str],
) -> str:
    """An SVG with one line per series against the shared days.

    `maximum` fixes the top of the scale (the cap or the budget), so the chart shows
    how much of it is used. The markup has no blank lines, so Markdown leaves it be.
    """
    top = max([maximum, 1, *(v for s in series for v in s.values if v is not None)])
    parts = [
        f'<svg class="vz-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-title">{html.escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{html.escape(desc)}</desc>',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    parts += _grid(top, label_value)
    parts += _day_labels(days, label_day)
    legend_x = float(LEFT)
    for index, line in enumerate(series):
        parts += _line(index, line, len(days), top, legend_x)
        legend_x += 34 + 8.5 * len(line.label) + 24  # the sample, the label, a gap
    parts.append("</svg>")
    return "\n".join(parts)


def _x(index: int, count: int) -> float:
    span = WIDTH - LEFT - RIGHT
    return LEFT + (span * index / (count - 1) if count > 1 else span / 2)


def _y(value: int, top: int) -> float:
    return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * value / top


def _grid(top: int, label_value: Callable[[int], str]) -> list[str]:
    """Horizontal lines at quarters of the scale, labelled on the left."""
    out = []
    for quarter in range(5):
        value = round(top * quarter / 4)
        y = _y(value, top)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#767676" stroke-width="1"/>')
        out.append(f'<text x="{LEFT - 8}" y="{y + 5:.1f}" text-anchor="end" {FONT}>'
                   f'{html.escape(label_value(value))}</text>')
    return out


def _day_labels(days: Sequence[datetime.date], label_day: Callable[[datetime.date], str]) -> list[str]:
    """The first and last day under the axis; enough to read the period."""
    if not days:
        return []
    picks = {0: "start", len(days) - 1: "end"} if len(days) > 1 else {0: "middle"}
    return [
        f'<text x="{_x(i, len(days)):.1f}" y="{HEIGHT - 10}" text-anchor="{anchor}" {FONT}>'
        f'{html.escape(label_day(days[i]))}</text>'
        for i, anchor in picks.items()
    ]


def _line(index: int, line: Series, count: int, top: int, legend_x: float) -> list[str]:
    """One series: the line (or a dot for a single known day) plus its legend entry."""
    colour, dash = STYLES[index % len(STYLES)]
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    known = [(i, v) for i, v in enumerate(line.values) if v is not None]
    points = " ".join(f"{_x(i, count):.1f},{_y(v, top):.1f}" for i, v in known)
    out = [
        f'<line x1="{legend_x:.1f}" x2="{legend_x + 28:.1f}" y1="16" y2="16" stroke="{colour}" '
        f'stroke-width="3"{dash_attr}/>',
        f'<text x="{legend_x + 34:.1f}" y="21" {FONT}>{html.escape(line.label)}</text>',
    ]
    if len(known) == 1:
        x, y = points.split(",")
        out.append(f'<circle cx="{x}" cy="{y}" r="5" fill="{colour}"/>')
    elif len(known) > 1:
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                   f'stroke-width="3"{dash_attr}/>')
    return out
