#!/usr/bin/env python3
"""Draws the real-program shapes results as an SVG chart (Python standard library only).

    python3 scripts/realprog.py --json-file /tmp/realprog.json
    python3 scripts/realprog_chart.py /tmp/realprog.json docs/realprog.svg

Reads the JSON of scripts/realprog.py (a file, or stdin with "-") and writes one SVG: per
shape, grouped bars of each allocator's time and peak resident memory as a ratio to glibc's
malloc, on a log scale (left of the 1.0x line is better), then the geometric means. Shapes
an allocator failed on are marked "failed". The title carries the date, the machine and the
number of runs from the JSON.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

COLORS = {
    "spanalloc": "#d62728",
    "glibc": "#7f7f7f",
    "mimalloc": "#1f77b4",
    "jemalloc": "#2ca02c",
    "tcmalloc": "#ff7f0e",
}
FALLBACK_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]

LABEL_W = 170  # shape names
PANEL_W = 380  # each of the two panels
GAP = 60
BAR_H = 5
BAR_GAP = 1
GROUP_PAD = 6
TOP = 100
MIN_EXP, MAX_EXP = -5, 5  # the axis spans 2^MIN_EXP .. 2^MAX_EXP at most


def fmt_ratio(r):
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


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
    shown = [a for a in allocs if a != "glibc"]  # glibc is the 1.0x line itself
    colors = {}
    spare = iter(FALLBACK_COLORS * 3)
    for a in shown:
        colors[a] = COLORS.get(a) or next(spare)

    rows = []  # (label, {alloc: (time_ratio, rss_ratio)}, is_mean)
    for s in run["shapes"]:
        res = s["results"]
        rows.append((s["name"], {a: (res[a]["time_ratio"], res[a]["rss_ratio"]) for a in shown},
                     False))
    gm = run["geomean"]
    n = len(run["shapes"])
    rows.append((f"geometric mean ({n})",
                 {a: (gm[a]["time_ratio"], gm[a]["rss_ratio"]) for a in shown}, True))

    t_range = axis_range([r[1][a][0] for r in rows for a in shown])
    m_range = axis_range([r[1][a][1] for r in rows for a in shown])

    group_h = len(shown) * (BAR_H + BAR_GAP) + GROUP_PAD
    height = TOP + len(rows) * group_h + 56
    width = LABEL_W + 2 * PANEL_W + GAP + 30
    out = []
    add = out.append
    add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">')
    add(f'<rect width="{width}" height="{height}" fill="white"/>')

    machine = run.get("machine", {})
    title = "Real-program shapes: ratio to glibc malloc (log scale, lower is better)"
    sub = (f'{run.get("date", "")} · {machine.get("nproc", "?")} CPUs · '
           f'{machine.get("cpu", "?")} · median of {run.get("reps", "?")} runs per cell'
           + (" · --quick" if run.get("quick") else "") + " · scripts/realprog.py")
    add(f'<text x="12" y="22" font-size="15" font-weight="bold">{escape(title)}</text>')
    add(f'<text x="12" y="42" fill="#444">{escape(sub)}</text>')

    lx = 12
    for a in shown:
        add(f'<rect x="{lx}" y="54" width="12" height="12" fill="{colors[a]}"/>')
        add(f'<text x="{lx + 16}" y="64">{escape(a)}</text>')
        lx += 24 + 7 * len(a) + 20

    panels = [
        ("time (s, or s per Mop for fixed-time shapes)", LABEL_W, t_range, 0),
        ("peak resident memory", LABEL_W + PANEL_W + GAP, m_range, 1),
    ]
    plot_top = TOP
    plot_bottom = TOP + len(rows) * group_h
    for name, x0, (lo_e, hi_e), idx in panels:

        def xpos(r, x0=x0, lo_e=lo_e, hi_e=hi_e):
            e = math.log2(min(max(r, 2.0 ** lo_e), 2.0 ** hi_e))
            return x0 + (e - lo_e) / (hi_e - lo_e) * PANEL_W

        add(f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 12}" text-anchor="middle" '
            f'font-weight="bold">{escape(name)}</text>')
        for e in range(lo_e, hi_e + 1):
            x = xpos(2.0 ** e)
            stroke = "#000" if e == 0 else "#ddd"
            add(f'<line x1="{x:.1f}" y1="{plot_top}" x2="{x:.1f}" y2="{plot_bottom}" '
                f'stroke="{stroke}" stroke-width="1"/>')
            label = f"{2.0 ** e:g}x" if e >= 0 else f"1/{2 ** -e}x"
            add(f'<text x="{x:.1f}" y="{plot_bottom + 14}" text-anchor="middle" '
                f'fill="#444" font-size="10">{label}</text>')
        one = xpos(1.0)
        for gi, (label, vals, is_mean) in enumerate(rows):
            gy = plot_top + gi * group_h + GROUP_PAD / 2
            for ai, a in enumerate(shown):
                r = vals[a][idx]
                y = gy + ai * (BAR_H + BAR_GAP)
                if r is None:
                    add(f'<text x="{one + 3:.1f}" y="{y + BAR_H:.1f}" font-size="7" '
                        f'fill="{colors[a]}">failed</text>')
                    continue
                x = xpos(r)
                left, w = min(one, x), max(abs(x - one), 1.0)
                add(f'<rect x="{left:.1f}" y="{y:.1f}" width="{w:.1f}" height="{BAR_H}" '
                    f'fill="{colors[a]}"><title>{escape(label)} · {escape(a)}: '
                    f"{fmt_ratio(r)}</title></rect>")
                if a == "spanalloc" or is_mean:
                    tx = x + 3 if x >= one else x - 3
                    anchor = "start" if x >= one else "end"
                    add(f'<text x="{tx:.1f}" y="{y + BAR_H:.1f}" font-size="7" '
                        f'text-anchor="{anchor}" fill="#222">{fmt_ratio(r)}</text>')

    for gi, (label, _, is_mean) in enumerate(rows):
        gy = plot_top + gi * group_h + group_h / 2 + 3
        weight = ' font-weight="bold"' if is_mean else ""
        add(f'<text x="{LABEL_W - 8}" y="{gy:.1f}" text-anchor="end"{weight}>'
            f"{escape(label)}</text>")
        if gi > 0:
            y = plot_top + gi * group_h
            add(f'<line x1="12" y1="{y}" x2="{width - 12}" y2="{y}" stroke="#eee" '
                f'stroke-width="1"/>')

    add(f'<text x="12" y="{height - 14}" fill="#444" font-size="10">Bars grow from the 1.0x '
        f"line (glibc malloc); numbers label spanalloc and the means. Peak RSS is ru_maxrss of "
        f"one process per shape and allocator, process baseline included.</text>")
    add("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: realprog_chart.py <results.json | -> <out.svg>\n")
        return 2
    src = sys.stdin if argv[1] == "-" else open(argv[1], encoding="utf-8")
    with src:
        run = json.load(src)
    svg = draw(run)
    with open(argv[2], "w", encoding="utf-8") as out:
        out.write(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
