"""Bar charts as SVG drawn on the server: readable without JavaScript, no outside requests.

Each chart is an ``<svg role="img">`` named by its ``<title>``; pages put the same numbers in
a table next to it for screen readers and for copying. Colours meet WCAG contrast on white.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

__all__ = ("bar_chart",)

BAR = "#8a0f24"
INK = "#1a1a1a"
LINE = "#6b6b6b"


def bar_chart(chart_id: str, title: str, items: Sequence[tuple[str, int]], fmt: Callable[[int], str], *,
              label_width: int = 190, width: int = 640) -> Markup:
    """Horizontal bars, one per ``(label, value)``, each with its value written after it."""
    row, top = 34, 8
    height = top * 2 + max(1, len(items)) * row
    biggest = max((value for _, value in items), default=0) or 1
    room = width - label_width - 130
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-labelledby="{chart_id}-title" '
        f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<line x1="{label_width}" y1="{top - 4}" x2="{label_width}" y2="{height - top + 4}" stroke="{LINE}"/>',
    ]
    for i, (label, value) in enumerate(items):
        y = top + i * row
        bar = round(room * value / biggest) if value > 0 else 0
        parts.append(f'<text x="{label_width - 8}" y="{y + 21}" text-anchor="end" font-size="14" '
                     f'fill="{INK}">{escape(label)}</text>')
        if bar:
            parts.append(f'<rect x="{label_width}" y="{y + 6}" width="{bar}" height="20" fill="{BAR}"/>')
        parts.append(f'<text x="{label_width + bar + 6}" y="{y + 21}" font-size="14" fill="{INK}">'
                     f'{escape(fmt(value))}</text>')
    if not items:
        parts.append(f'<text x="{label_width + 6}" y="{top + 21}" font-size="14" fill="{INK}">–</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
