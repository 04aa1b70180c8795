#!/usr/bin/env python3
"""Draws the compare table as an SVG chart (Python standard library only).

    cargo run --release -p spanalloc-compare -- --json > /tmp/compare.json
    python3 scripts/chart.py /tmp/compare.json docs/compare.svg

Reads the JSON of `compare --json` (a file, or stdin with "-") and writes one SVG:
per workload, each allocator's time per operation and peak resident memory as a ratio to
the system allocator, on a log scale (left of the 1.0x line is better), then the geometric
means. The title carries the date and the machine from the JSON.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

COLORS = {
    "spanalloc": "#d62728",
    "system": "#7f7f7f",
    "mimalloc": "#1f77b4",
    "mimalloc-v2": "#9ecae1",
    "mimalloc-v3": "#1f77b4",
    "jemalloc": "#2ca02c",
}
FALLBACK_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#17becf"]

LABEL_W = 170  # workload names
PANEL_W = 360  # each of the two panels
GAP = 80
BAR_H = 7
BAR_GAP = 1
GROUP_PAD = 8
TOP = 96
MIN_EXP, MAX_EXP = -6, 7  # the axis spans 2^MIN_EXP .. 2^MAX_EXP at most


def fmt_ratio(r):
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: chart.py <compare.json | -> <out.svg>\n")
        return 2
    src = sys.stdin if argv[1] == "-" else open(argv[1], encoding="utf-8")
    with src:
        run = json.load(src)
    svg = draw(run)
    with open(argv[2], "w", encoding="utf-8") as out:
        out.write(svg)
    return 0


def axis_range(values):
    """Whole powers of two around every value and 1.0, clamped to the allowed span."""
    vals = [v for v in values if v and v > 0]
    lo = min([1.0] + vals)
    hi = max([1.0] + vals)
    lo_e = max(MIN_EXP, math.floor(math.log2(lo)))
    hi_e = min(MAX_EXP, math.ceil(math.log2(hi)))
    if hi_e - lo_e < 2:
        lo_e, hi_e = lo_e - 1, hi_e + 1
    return lo_e, hi_e


def draw(run):
    allocs = run["allocators"]
    colors = {a: COLORS.get(a, FALLBACK_COLORS[i % 4]) for i, a in enumerate(allocs)}
    rows = []  # (label, {alloc: (time_ratio, peak_ratio)}, is_mean)
    none = {"time_ratio": None, "peak_ratio": None}
    for w in run["workloads"]:
        res = w["results"]
        rows.append(
            (
                w["name"],
                {a: (res.get(a, none)["time_ratio"], res.get(a, none)["peak_ratio"]) for a in allocs},
                False,
            )
        )
    gm = run["geomean"]
    rows.append(
        (
            "geometric mean",
            {a: (gm.get(a, none)["time_ratio"], gm.get(a, none)["peak_ratio"]) for a in allocs},
            True,
        )
    )

    t_range = axis_range([r[1][a][0] for r in rows for a in allocs])
    m_range = axis_range([r[1][a][1] for r in rows for a in allocs])

    group_h = len(allocs) * (BAR_H + BAR_GAP) + GROUP_PAD
    height = TOP + len(rows) * group_h + 56
    width = LABEL_W + 2 * PANEL_W + GAP + 30
    out = []
    add = out.append
    add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
    )
    add(f'<rect width="{width}" height="{height}" fill="white"/>')

    machine = run.get("machine", {})
    title = "spanalloc vs system malloc, mimalloc, jemalloc: ratio to system (log scale, lower is better)"
    versions = run.get("mimalloc_versions") or {}
    sub = (
        f'{run.get("date", "")} · {machine.get("nproc", "?")} CPUs · {machine.get("cpu", "?")} · '
        f'median of {run.get("reps", "?")} runs per cell'
        + (" · --quick" if run.get("quick") else "")
        + "".join(f" · {a} = {v}" for a, v in sorted(versions.items()))
        + " · cargo run --release -p spanalloc-compare"
    )
    add(f'<text x="12" y="22" font-size="15" font-weight="bold">{escape(title)}</text>')
    add(f'<text x="12" y="42" fill="#444">{escape(sub)}</text>')

    # Legend.
    lx = 12
    for a in allocs:
        add(f'<rect x="{lx}" y="52" width="12" height="12" fill="{colors[a]}"/>')
        add(f'<text x="{lx + 16}" y="62">{escape(a)}</text>')
        lx += 24 + 7 * len(a) + 20

    panels = [
        ("time per operation", LABEL_W, t_range, 0),
        ("peak resident memory", LABEL_W + PANEL_W + GAP, m_range, 1),
    ]
    plot_top = TOP
    plot_bottom = TOP + len(rows) * group_h
    for name, x0, (lo_e, hi_e), idx in panels:

        def xpos(r, x0=x0, lo_e=lo_e, hi_e=hi_e):
            e = math.log2(min(max(r, 2.0**lo_e), 2.0**hi_e))
            return x0 + (e - lo_e) / (hi_e - lo_e) * PANEL_W

        add(
            f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 12}" text-anchor="middle" '
            f'font-weight="bold">{escape(name)}</text>'
        )
        for e in range(lo_e, hi_e + 1):
            x = xpos(2.0**e)
            stroke = "#000" if e == 0 else "#ddd"
            add(
                f'<line x1="{x:.1f}" y1="{plot_top}" x2="{x:.1f}" y2="{plot_bottom}" '
                f'stroke="{stroke}" stroke-width="1"/>'
            )
            label = f"{2.0**e:g}x" if e >= 0 else f"1/{2**-e}x"
            add(
                f'<text x="{x:.1f}" y="{plot_bottom + 14}" text-anchor="middle" '
                f'fill="#444" font-size="10">{label}</text>'
            )
        one = xpos(1.0)
        for gi, (label, vals, is_mean) in enumerate(rows):
            gy = plot_top + gi * group_h + GROUP_PAD / 2
            for ai, a in enumerate(allocs):
                r = vals[a][idx]
                y = gy + ai * (BAR_H + BAR_GAP)
                if r is None:
                    add(f'<text x="{one + 3:.1f}" y="{y + BAR_H}" font-size="8">failed</text>')
                    continue
                x = xpos(r)
                left, w = min(one, x), max(abs(x - one), 1.0)
                add(
                    f'<rect x="{left:.1f}" y="{y:.1f}" width="{w:.1f}" height="{BAR_H}" '
                    f'fill="{colors[a]}"><title>{escape(label)} · {escape(a)}: '
                    f"{fmt_ratio(r)}</title></rect>"
                )
                if a == allocs[0] or is_mean:
                    tx = x + 3 if x >= one else x - 3
                    anchor = "start" if x >= one else "end"
                    add(
                        f'<text x="{tx:.1f}" y="{y + BAR_H - 0.5:.1f}" font-size="8" '
                        f'text-anchor="{anchor}" fill="#222">{fmt_ratio(r)}</text>'
                    )

    for gi, (label, _, is_mean) in enumerate(rows):
        gy = plot_top + gi * group_h + group_h / 2 + 3
        weight = ' font-weight="bold"' if is_mean else ""
        add(f'<text x="{LABEL_W - 8}" y="{gy:.1f}" text-anchor="end"{weight}>{escape(label)}</text>')
        if gi > 0:
            y = plot_top + gi * group_h
            add(
                f'<line x1="12" y1="{y}" x2="{width - 12}" y2="{y}" stroke="#f0f0f0" '
                f'stroke-width="1"/>'
            )

    add(
        f'<text x="12" y="{height - 14}" fill="#444" font-size="10">Bars grow from the 1.0x '
        f"line (system malloc); numbers label spanalloc and the means. Peak RSS is VmHWM of "
        f"one child process per allocator and workload, process baseline included.</text>"
    )
    add("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
