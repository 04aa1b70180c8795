#!/usr/bin/env python3
"""Draws the RSS cycle as an SVG line chart (Python standard library only).

    cargo run --release -p spanalloc-compare --example rss_cycle -- --json-file /tmp/rss.json
    python3 scripts/rss_plot.py /tmp/rss.json docs/rss_cycle.svg

Reads the JSON of `compare/examples/rss_cycle.rs --json-file` and writes one SVG: resident memory (MiB)
over time (s, from each child's start) for every allocator, a dashed line where each one's
free phase began, and under the plot one strip per allocator with its phases (the allocate
phase takes a different time on each). The title carries the date and the machine, from the
JSON, or from this machine (nproc, /proc/cpuinfo) when the JSON lacks them.
"""

import json
import math
import os
import sys
from xml.sax.saxutils import escape

COLORS = {
    "spanalloc": "#d62728",
    "system": "#7f7f7f",
    "mimalloc": "#1f77b4",
    "jemalloc": "#2ca02c",
}
FALLBACK_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#17becf"]
PHASE_COLORS = {
    "baseline": "#eeeeee",
    "alloc": "#fdd0a2",
    "hold": "#fee6ce",
    "free": "#c6dbef",
    "idle": "#e5f5e0",
}
LABELS = {"system": "system (glibc)"}

WIDTH = 900
LEFT, RIGHT = 100, 30
TOP = 92
PLOT_H = 340
STRIP_H = 12
STRIP_GAP = 3
MIB = 1 << 20


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: rss_plot.py <rss.json> <out.svg>\n")
        return 2
    with open(argv[1], encoding="utf-8") as f:
        run = json.load(f)
    svg = draw(run)
    with open(argv[2], "w", encoding="utf-8") as out:
        out.write(svg)
    return 0


def machine_here():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") or line.startswith("Model"):
                    cpu = " ".join(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count() or "?", "cpu": cpu}


def nice_step(span, ticks):
    """A 1/2/5 × 10^k step giving about `ticks` intervals over `span`."""
    raw = span / max(ticks, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def draw(run):
    allocs = run["allocators"]
    runs = run["runs"]
    phases = run["phases"]
    colors = {a: COLORS.get(a, FALLBACK_COLORS[i % 4]) for i, a in enumerate(allocs)}
    machine = run.get("machine") or machine_here()

    t_max = max(s[0] for a in allocs for s in runs[a]["samples"]) / 1000.0
    r_max = max(s[1] for a in allocs for s in runs[a]["samples"]) / MIB
    t_step = nice_step(t_max, 10)
    t_hi = math.ceil(t_max / t_step) * t_step
    r_step = nice_step(r_max, 6)
    r_hi = math.ceil(r_max / r_step) * r_step

    plot_w = WIDTH - LEFT - RIGHT
    plot_bottom = TOP + PLOT_H
    strips_top = plot_bottom + 34
    height = strips_top + len(allocs) * (STRIP_H + STRIP_GAP) + 64

    def xpos(t):
        return LEFT + t / t_hi * plot_w

    def ypos(mib):
        return plot_bottom - mib / r_hi * PLOT_H

    out = []
    add = out.append
    add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">'
    )
    add(f'<rect width="{WIDTH}" height="{height}" fill="white"/>')

    title = "Resident memory through allocate / hold / free / idle: spanalloc vs glibc, mimalloc, jemalloc"
    w = run.get("workload", {})
    sub = (
        f'{run.get("date", "")} · {machine.get("nproc", "?")} CPUs · {machine.get("cpu", "?")} · '
        f'spanalloc decay {run.get("spanalloc_decay_ms", "?")} ms · '
        f'cargo run --release -p spanalloc-compare --example rss_cycle'
    )
    add(f'<text x="12" y="22" font-size="15" font-weight="bold">{escape(title)}</text>')
    add(f'<text x="12" y="40" fill="#444">{escape(sub)}</text>')
    if w:
        desc = (
            f'{w["small_bytes"] // MIB} MiB in objects of {w["small_sizes"][0]}..{w["small_sizes"][1]} B '
            f'+ {w["large_bytes"] // MIB} MiB in {w["large_sizes"][0] // 1024} KiB..'
            f'{w["large_sizes"][1] // MIB} MiB, every page written, then all freed; while idle, '
            f'{w["idle_objects_per_tick"]} objects of {w["idle_sizes"][0]} B..'
            f'{w["idle_sizes"][1] // 1024} KiB allocated and freed every {run.get("sample_ms", 50)} ms'
        )
        add(f'<text x="12" y="56" fill="#444" font-size="10">{escape(desc)}</text>')

    # Legend.
    lx = LEFT
    for a in allocs:
        label = LABELS.get(a, a)
        add(
            f'<line x1="{lx}" y1="72" x2="{lx + 18}" y2="72" stroke="{colors[a]}" '
            f'stroke-width="2.5"/>'
        )
        add(f'<text x="{lx + 23}" y="76">{escape(label)}</text>')
        lx += 23 + 7 * len(label) + 24
    add(
        f'<line x1="{lx}" y1="72" x2="{lx + 18}" y2="72" stroke="#444" stroke-width="1" '
        f'stroke-dasharray="4,3"/>'
    )
    add(f'<text x="{lx + 23}" y="76">start of the free phase</text>')

    # Grid and axes.
    r = 0.0
    while r <= r_hi + 1e-9:
        y = ypos(r)
        add(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" '
            f'stroke="{"#000" if r == 0 else "#e4e4e4"}" stroke-width="1"/>'
        )
        add(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444" '
            f'font-size="10">{r:g}</text>'
        )
        r += r_step
    t = 0.0
    while t <= t_hi + 1e-9:
        x = xpos(t)
        add(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{plot_bottom}" '
            f'stroke="{"#000" if t == 0 else "#f0f0f0"}" stroke-width="1"/>'
        )
        add(
            f'<text x="{x:.1f}" y="{plot_bottom + 14}" text-anchor="middle" fill="#444" '
            f'font-size="10">{t:g}</text>'
        )
        t += t_step
    add(
        f'<text x="{LEFT + plot_w / 2}" y="{plot_bottom + 28}" text-anchor="middle" '
        f'fill="#222">time since the process started (s)</text>'
    )
    add(
        f'<text x="18" y="{TOP + PLOT_H / 2}" text-anchor="middle" fill="#222" '
        f'transform="rotate(-90 18 {TOP + PLOT_H / 2})">RSS (MiB)</text>'
    )

    # Free-phase markers, then the lines.
    for a in allocs:
        ev = runs[a]["phase_start_ms"]
        if "free" in ev:
            x = xpos(ev["free"] / 1000.0)
            add(
                f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{plot_bottom}" '
                f'stroke="{colors[a]}" stroke-width="1" stroke-dasharray="4,3"/>'
            )
    for a in allocs:
        pts = " ".join(
            f"{xpos(s[0] / 1000.0):.1f},{ypos(s[1] / MIB):.1f}" for s in runs[a]["samples"]
        )
        add(
            f'<polyline points="{pts}" fill="none" stroke="{colors[a]}" stroke-width="2" '
            f'stroke-linejoin="round"><title>{escape(LABELS.get(a, a))}</title></polyline>'
        )

    # Phase strips, one per allocator.
    for i, a in enumerate(allocs):
        y = strips_top + i * (STRIP_H + STRIP_GAP)
        ev = runs[a]["phase_start_ms"]
        end = runs[a]["samples"][-1][0]
        add(
            f'<text x="{LEFT - 6}" y="{y + STRIP_H - 2}" text-anchor="end" font-size="10" '
            f'fill="{colors[a]}">{escape(LABELS.get(a, a))}</text>'
        )
        for k, p in enumerate(phases):
            if p not in ev:
                continue
            t0 = ev[p]
            t1 = ev.get(phases[k + 1], end) if k + 1 < len(phases) else end
            x0, x1 = xpos(t0 / 1000.0), xpos(t1 / 1000.0)
            add(
                f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" height="{STRIP_H}" '
                f'fill="{PHASE_COLORS.get(p, "#ddd")}" stroke="white" stroke-width="0.5">'
                f"<title>{escape(a)}: {escape(p)} {t0 / 1000:.2f}..{t1 / 1000:.2f} s</title></rect>"
            )
            if x1 - x0 > 7 * len(p) + 4:
                add(
                    f'<text x="{(x0 + x1) / 2:.1f}" y="{y + STRIP_H - 2.5}" text-anchor="middle" '
                    f'font-size="9" fill="#333">{escape(p)}</text>'
                )

    note_y = strips_top + len(allocs) * (STRIP_H + STRIP_GAP) + 20
    add(
        f'<text x="12" y="{note_y}" fill="#444" font-size="10">RSS is resident pages of '
        f"/proc/self/statm sampled every {run.get('sample_ms', 50)} ms, one fresh process per "
        f"allocator; the strips show each process's phases (allocation speed differs).</text>"
    )
    add(
        f'<text x="12" y="{note_y + 14}" fill="#444" font-size="10">No allocator runs a '
        f"background thread here: memory goes back to the OS inside allocator calls (or at free, "
        f"for glibc's mmapped chunks).</text>"
    )
    add("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
