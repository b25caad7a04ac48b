"""The report page's charts, drawn as inline SVG: no script, every text escaped.

A chart whose bars are days (`axis: "day"`, or labels that are ISO dates) is drawn as a time series: the
days run along the x axis in order, one column per day (or per equal run of days on a long period), with
dated ticks; the y axis is the value, with its unit. Any other chart is drawn as horizontal bars, one per
category, with the value axis below them. Both carry the organization's name in their heading and label
both axes; they show nothing but their own data (no bar is drawn for a zero).
"""

from __future__ import annotations

from datetime import date, timedelta
from html import escape
from typing import Any

TONES = {"normal": "#3b6fb6", "pass": "#2e8b57", "attention": "#d9822b"}
INK, GRID, MUTED = "#1d2733", "#d5dbe3", "#52606d"
WIDTH = 760


def _num(value: float) -> str:
    return f"{int(value):,}" if value == int(value) else f"{value:,.1f}"


def nice_ticks(peak: int, count: int = 5) -> list[int]:
    """0 and round steps up to at least `peak` (1, 2, 2.5 or 5 times a power of ten, in integers)."""
    if peak <= 0:
        return [0, 1]
    raw = peak / count
    magnitude = 1
    while magnitude * 10 <= raw:
        magnitude *= 10
    step = next((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), 10 * magnitude)
    top = -(-peak // step) * step
    return list(range(0, top + 1, step))


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _bar_days(bar: dict[str, Any]) -> tuple[date, date] | None:
    """The first and last day a bar covers: from `start`/`days`, else from its label ("D" or "D to D")."""
    start = _day(str(bar.get("start", "")))
    if start is not None:
        return start, start + timedelta(days=max(1, int(bar.get("days") or 1)) - 1)
    first, _, last = str(bar.get("label", "")).partition(" to ")
    a, b = _day(first), _day(last) if last else _day(first)
    return (a, b) if a is not None and b is not None else None


def _heading(title: str, organization: str, subtitle: str, bars: list[dict[str, Any]]) -> list[str]:
    """The chart's title with the organization's name, its period (or unit) below, and a legend of the
    verdict colours when its bars carry them."""
    head = f"{organization}: {title}" if organization else title
    parts = [
        f"<title>{escape(head)}</title>",
        f'<text x="0" y="18" font-size="15" font-weight="bold">{escape(head)}</text>',
        f'<text x="0" y="36" fill="{MUTED}">{escape(subtitle)}</text>' if subtitle else "",
    ]
    tones = [t for t in ("pass", "attention") if any(b.get("tone") == t for b in bars)]
    x = WIDTH - 90 * len(tones)
    for tone in tones:
        parts.append(f'<rect x="{x}" y="26" width="12" height="12" fill="{TONES[tone]}"/>')
        parts.append(f'<text x="{x + 17}" y="36">{tone}</text>')
        x += 90
    return parts


def _open(width: int, height: int, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" font-family="sans-serif" '
        f'font-size="12" fill="{INK}">'
    )


def time_series(chart: dict[str, Any], organization: str = "", period: str = "") -> str:
    bars = [b for b in chart.get("bars", []) if isinstance(b, dict)]
    spans = [_bar_days(b) for b in bars]
    title, unit = str(chart.get("title", "")), str(chart.get("unit", ""))
    left, right, top, bottom = 78, 16, 56, 62
    plot_w, plot_h = WIDTH - left - right, 240
    height = top + plot_h + bottom
    values = [int(b.get("value") or 0) for b in bars]
    ticks = nice_ticks(max(values, default=0))
    scale = plot_h / ticks[-1]
    width_days = max(((s[1] - s[0]).days + 1 for s in spans if s), default=1)
    per = "day" if width_days == 1 else f"{width_days} days"
    subtitle = period or (f"in {unit}" if unit else "")
    parts = [_open(WIDTH, height, f"{organization}: {title}"), *_heading(title, organization, subtitle, bars)]
    x0, y0 = left, top + plot_h
    for t in ticks:
        y = y0 - t * scale
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + plot_w}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(t)}</text>')
    slot = plot_w / max(1, len(bars))
    label_every = max(1, -(-len(bars) // 7))
    for i, (bar, span, value) in enumerate(zip(bars, spans, values, strict=True)):
        x = x0 + i * slot
        label = escape(str(bar.get("label", "")))
        if value:
            h = value * scale
            fill = TONES.get(str(bar.get("tone")), TONES["normal"])
            parts.append(
                f'<rect x="{x + slot * 0.12:.1f}" y="{y0 - h:.1f}" width="{slot * 0.76:.1f}" height="{h:.1f}" '
                f'fill="{fill}"><title>{label}: {_num(value)} {escape(unit)}</title></rect>'
            )
        if i % label_every == 0 and span is not None:
            cx = x + slot / 2
            parts.append(f'<line x1="{cx:.1f}" y1="{y0}" x2="{cx:.1f}" y2="{y0 + 5}" stroke="{INK}"/>')
            parts.append(f'<text x="{cx:.1f}" y="{y0 + 19}" text-anchor="middle">{span[0].strftime("%d %b")}</text>')
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + plot_w}" y2="{y0}" stroke="{INK}"/>')
    parts.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{y0}" stroke="{INK}"/>')
    years = sorted({s[0].year for s in spans if s} | {s[1].year for s in spans if s})
    year = f"{years[0]}" if len(years) == 1 else f"{years[0]} to {years[-1]}" if years else ""
    x_title = f"Day (UTC{', ' + year if year else ''})" + ("" if per == "day" else f"; each bar sums {per}")
    parts.append(f'<text x="{x0 + plot_w / 2:.1f}" y="{height - 14}" text-anchor="middle">{escape(x_title)}</text>')
    y_title = f"{unit[:1].upper()}{unit[1:]} per {per}" if unit else f"per {per}"
    parts.append(
        f'<text transform="translate(18 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_title)}</text>"
    )
    if not bars:
        parts.append(f'<text x="{x0 + 12}" y="{top + 24}">No data in this period.</text>')
    parts.append("</svg>")
    return "".join(parts)


def category_bars(chart: dict[str, Any], organization: str = "", period: str = "") -> str:
    """Horizontal bars, one per category, scaled on a value axis with round ticks."""
    bars = [b for b in chart.get("bars", []) if isinstance(b, dict)]
    title, unit = str(chart.get("title", "")), str(chart.get("unit", ""))
    axis = str(chart.get("axis") or "Category")
    left, right, top, row_h = 250, 40, 56, 24
    plot_w = WIDTH - left - right
    y0 = top + row_h * max(1, len(bars))
    height = y0 + 52
    values = [int(b.get("value") or 0) for b in bars]
    ticks = nice_ticks(max(values, default=0))
    scale = plot_w / ticks[-1]
    subtitle = period or (f"in {unit}" if unit else "")
    parts = [_open(WIDTH, height, f"{organization}: {title}"), *_heading(title, organization, subtitle, bars)]
    for t in ticks:
        x = left + t * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y0}" stroke="{GRID}"/>')
        parts.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{_num(t)}</text>')
    if not bars:
        parts.append(f'<text x="{left + 8}" y="{top + 16}">No data in this period.</text>')
    for i, (bar, value) in enumerate(zip(bars, values, strict=True)):
        y = top + i * row_h
        label = escape(str(bar.get("label", "")))
        fill = TONES.get(str(bar.get("tone")), TONES["normal"])
        w = value * scale
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{label}</text>')
        if value:
            parts.append(
                f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{fill}">'
                f"<title>{label}: {_num(value)} {escape(unit)}</title></rect>"
            )
        parts.append(f'<text x="{left + w + 5:.1f}" y="{y + 16}">{_num(value)}</text>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="{INK}"/>')
    parts.append(f'<line x1="{left}" y1="{y0}" x2="{left + plot_w}" y2="{y0}" stroke="{INK}"/>')
    u = f"{unit[:1].upper()}{unit[1:]}" if unit else "Value"
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{y0 + 38}" text-anchor="middle">{escape(u)}</text>')
    parts.append(
        f'<text transform="translate(14 {(top + y0) / 2:.1f}) rotate(-90)" text-anchor="middle">{escape(axis)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def is_time_series(chart: dict[str, Any]) -> bool:
    bars = [b for b in chart.get("bars", []) if isinstance(b, dict)]
    if chart.get("axis") == "day":
        return True
    return bool(bars) and all(_bar_days(b) is not None for b in bars)


def draw_chart(chart: dict[str, Any], organization: str = "", period: str = "") -> str:
    """`chart` (a report summary's chart) as SVG, headed by the organization's name and `period`."""
    if is_time_series(chart):
        return time_series(chart, organization, period)
    return category_bars(chart, organization, period)
