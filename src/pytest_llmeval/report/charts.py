"""The HTML report's charts: inline SVG with axes, ticks, gridlines and labelled axes (no script, no library)."""

from __future__ import annotations

import html
import math
from typing import Any

MAX_BARS = 60  # suite x model rows drawn in the pass-rate chart (the table above lists them all)
LATENCY_MIN_S, LATENCY_MAX_S = 0.01, 100.0  # the histogram's range; latencies outside go in its end bins
BINS_PER_DECADE = 4

AXIS = 'stroke="#57606a" stroke-width="1"'
PALETTE = ("#54aeff", "#fb8f44", "#4ac26b", "#c297ff", "#ff8182", "#d4a72c")
GRID = 'stroke="#d0d7de" stroke-width="1" stroke-dasharray="2,3"'


def _text(x: float, y: float, text: str, cls: str = "", anchor: str = "start", extra: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<text{c} x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{html.escape(text)}</text>'


def pass_rate_chart(rows: list[dict[str, Any]], verdicts: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Horizontal bars of each suite x model pass rate on a 0-100% axis, with its 95% interval as a whisker and
    the baseline's rate as a red tick. At most MAX_BARS rows (the lowest pass rates first when there are more)."""
    shown = rows
    note = ""
    if len(rows) > MAX_BARS:
        shown = sorted(rows, key=lambda r: (r.get("pass_rate") is None, r.get("pass_rate") or 0.0))[:MAX_BARS]
        note = f"the {MAX_BARS} lowest of {len(rows)} suite x model pass rates"
    models = list(dict.fromkeys(str(r["model"]) for r in shown))
    left, width, top, step = 250, 420, 24, 22
    bottom = top + step * len(shown)
    height = bottom + 48
    parts = [f'<svg id="pass-chart" class="chart" width="{left + width + 70}" height="{height}" role="img" '
             f'aria-label="pass rate per suite and model">']
    parts.append(_text(left, 14, note or "pass rate per suite [model]; whisker: 95% interval; red tick: baseline",
                       "chart-title"))
    for k in range(5):  # x ticks every 25%
        x = left + width * k / 4
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" {GRID}/>')
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 5}" {AXIS}/>')
        parts.append(_text(x, bottom + 17, f"{25 * k}%", "tick", "middle"))
    parts.append(f'<line class="x-axis" x1="{left}" x2="{left + width}" y1="{bottom}" y2="{bottom}" {AXIS}/>')
    parts.append(f'<line class="y-axis" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" {AXIS}/>')
    parts.append(_text(left + width / 2, bottom + 36, "pass rate (% of graded cases)", "axis-label", "middle"))
    for i, r in enumerate(shown):
        y = top + 3 + step * i
        label = f"{r['suite']} [{r['model']}]"
        parts.append(_text(left - 6, y + 12, label if len(label) <= 40 else label[:39] + "…", "tick", "end"))
        rate = r.get("pass_rate")
        if rate is None:
            parts.append(_text(left + 4, y + 12, "no graded case", "meta"))
            continue
        parts.append(f'<rect class="bar" x="{left}" y="{y}" width="{rate * width:.1f}" height="16" '
                     f'fill="{PALETTE[models.index(str(r["model"])) % len(PALETTE)]}">'
                     f'<title>{html.escape(label)}: {rate:.1%}</title></rect>')
        ci = r.get("pass_rate_ci")
        if ci:
            parts.append(f'<line x1="{left + ci[0] * width:.1f}" x2="{left + ci[1] * width:.1f}" y1="{y + 8}" '
                         f'y2="{y + 8}" stroke="#0a3069" stroke-width="2"/>')
        v = verdicts.get((r["suite"], r["model"]), {})
        if v.get("base_pass_rate") is not None:
            x = left + v["base_pass_rate"] * width
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 2}" y2="{y + 18}" stroke="#cf222e" '
                         f'stroke-width="2"><title>baseline {v["base_pass_rate"]:.1%}</title></line>')
        parts.append(_text(left + width + 6, y + 12, f"{rate:.0%}", "value"))
    parts.append("</svg>")
    return "".join(parts)


def _bin(v: float) -> int:
    bins = int(round(math.log10(LATENCY_MAX_S / LATENCY_MIN_S))) * BINS_PER_DECADE
    k = math.floor(math.log10(max(v, 1e-9) / LATENCY_MIN_S) * BINS_PER_DECADE)
    return min(max(k, 0), bins - 1)


def _nice_ceiling(n: int) -> int:
    """The smallest 1, 2 or 5 x 10^k at or above n (a y axis' top)."""
    if n <= 1:
        return 1
    p = 10 ** math.floor(math.log10(n))
    return next(m * p for m in (1, 2, 5, 10) if m * p >= n)


def latency_chart(cases: list[dict[str, Any]]) -> str:
    """A histogram of case latencies per model: log-scaled x axis in seconds (10 ms .. 100 s, four bins a decade,
    values beyond in the end bins), a y axis counting cases, the median marked."""
    by_model: dict[str, list[float]] = {}
    for c in cases:
        lat = c.get("latency_s")
        if isinstance(lat, int | float) and lat > 0 and math.isfinite(lat):
            by_model.setdefault(str(c.get("model")), []).append(float(lat))
    if not by_model:
        return '<p class="meta">no latencies recorded</p>'
    decades = int(round(math.log10(LATENCY_MAX_S / LATENCY_MIN_S)))
    bins = decades * BINS_PER_DECADE
    left, width, top, plot = 56, 480, 26, 110
    bottom = top + plot
    out = []
    for model, values in sorted(by_model.items()):
        counts = [0] * bins
        for v in values:
            counts[_bin(v)] += 1
        peak = _nice_ceiling(max(counts))
        values.sort()
        median = values[len(values) // 2]
        parts = [f'<svg class="latency chart" width="{left + width + 20}" height="{bottom + 46}" role="img" '
                 f'aria-label="latency histogram of {html.escape(model, quote=True)}">']
        parts.append(_text(left, 14, f"{model}: {len(values)} case(s), median {median:.2f} s, "
                                     f"p95 {values[min(len(values) - 1, int(0.95 * len(values)))]:.2f} s",
                           "chart-title"))
        for k in range(3):  # y ticks: 0, half, top
            n = peak * k / 2
            y = bottom - plot * k / 2
            parts.append(f'<line x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" {GRID}/>')
            parts.append(f'<line x1="{left - 5}" x2="{left}" y1="{y:.1f}" y2="{y:.1f}" {AXIS}/>')
            parts.append(_text(left - 8, y + 4, f"{n:g}", "tick", "end"))
        bar = width / bins
        for i, n in enumerate(counts):
            if not n:
                continue
            h = plot * n / peak
            lo = LATENCY_MIN_S * 10 ** (i / BINS_PER_DECADE)
            hi = LATENCY_MIN_S * 10 ** ((i + 1) / BINS_PER_DECADE)
            parts.append(f'<rect class="bar" x="{left + i * bar + 1:.1f}" y="{bottom - h:.1f}" width="{bar - 2:.1f}" '
                         f'height="{h:.1f}" fill="#8250df"><title>{n} case(s), {lo:.3g}-{hi:.3g} s</title></rect>')
        for d in range(decades + 1):  # x ticks at each decade
            x = left + width * d / decades
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 5}" {AXIS}/>')
            parts.append(_text(x, bottom + 17, f"{LATENCY_MIN_S * 10 ** d:g}", "tick", "middle"))
        mx = left + width * min(max(math.log10(median / LATENCY_MIN_S) / decades, 0.0), 1.0)
        parts.append(f'<line class="median" x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{bottom}" stroke="#cf222e" '
                     f'stroke-width="1.5"><title>median {median:.2f} s</title></line>')
        parts.append(f'<line class="x-axis" x1="{left}" x2="{left + width}" y1="{bottom}" y2="{bottom}" {AXIS}/>')
        parts.append(f'<line class="y-axis" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" {AXIS}/>')
        parts.append(_text(left + width / 2, bottom + 36, "latency (seconds, log scale)", "axis-label", "middle"))
        parts.append(_text(14, top + plot / 2, "cases", "axis-label", "middle",
                           f' transform="rotate(-90 14 {top + plot / 2:.1f})"'))
        parts.append("</svg>")
        out.append("".join(parts))
    return "".join(out)
