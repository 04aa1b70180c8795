#!/usr/bin/env python3
"""Real-program shapes: spanalloc against glibc, mimalloc, jemalloc and TCMalloc.

    python3 scripts/realprog.py [--quick] [--reps N] [--filter SUBSTR]... [--markdown]
                                [--json-file PATH] [--spanalloc PATH] [--extra NAME=PATH]...
                                [--allocators a,b,...] [--list]

Builds libspanalloc.so (`cargo build --release -p spanalloc-preload`) unless --spanalloc
names one, builds the workload programs of bench/c/ with bench/build.sh, and runs every shape
as its own process under every allocator: glibc's malloc (no preload) and, through
LD_PRELOAD, Debian's libmimalloc.so.2, libjemalloc.so.2, libtcmalloc_minimal.so.4 and
libspanalloc.so (plus any --extra NAME=PATH, e.g. an older libspanalloc.so as
spanalloc-before). Missing Debian packages are installed with apt-get.

Each shape runs --reps times per allocator (default 5, --quick 3); the allocators take turns
within a repetition, in an order rotated each repetition, so that a change in the machine's
load touches them all alike. The median is kept. Every shape is turned into a time, lower is
better: fixed-work programs report the seconds they took ("s"), fixed-time programs report a
throughput that becomes seconds per million operations ("s/Mop"), real programs (python3,
gcc, sort) are timed from the outside (wall seconds). Peak resident memory is the child's
ru_maxrss from wait4 (children of the child included: gcc's cc1, for instance), taken by the
small helper bench/tools/measure.c that forks the child, so that the runner's own memory is
not counted in (Linux counts the exec-ing process's peak into the exec'd program's).

The report gives per shape each allocator's median and its ratio to glibc, each
non-reference allocator's ratio to the best of glibc/mimalloc/jemalloc/TCMalloc, and peak RSS
in MiB with its ratio to glibc; then geometric means of the ratios. Progress goes to stderr,
the table to stdout (plain text, or Markdown with --markdown), everything to --json-file,
which scripts/realprog_chart.py draws. docs/realprog.md describes the shapes.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBDIR = "/usr/lib/x86_64-linux-gnu"
REFERENCES = {
    "mimalloc": (f"{LIBDIR}/libmimalloc.so.2", "libmimalloc2.0"),
    "jemalloc": (f"{LIBDIR}/libjemalloc.so.2", "libjemalloc2"),
    "tcmalloc": (f"{LIBDIR}/libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
}
REFERENCE_NAMES = ["glibc", "mimalloc", "jemalloc", "tcmalloc"]


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ---- the shapes -------------------------------------------------------------------------

SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 12288, 16384, 24576, 32768,
         65536, 131072, 262144]
QUICK_SIZES = [16, 256, 4096, 32768, 262144]


def size_name(s):
    if s == "mixed":
        return "mixed"
    return f"{s // 1024}K" if s >= 1024 else f"{s}B"


def slots_iters(slots, size):
    """free+malloc steps in all (split over the threads), so that one run takes about
    0.1-0.6 s with glibc.

    The costs were measured on a 2-core machine: a small working set stays in cache (tens of
    ns a step); 100000 slots of pages and more miss the cache and the TLB on every step and
    fault pages in (up to a microsecond a step)."""
    if slots <= 1024:
        if size == "mixed":
            return 3_000_000
        if size <= 1024:
            return 8_000_000
        return 4_000_000 if size <= 32768 else 2_000_000
    if size == "mixed":
        return 800_000
    if size <= 16:
        return 6_000_000
    if size <= 1024:
        return 2_000_000
    if size <= 65536:
        return 600_000
    return 1_000_000  # 128K and 256K: the slot count is capped by the 2 GiB of live data


class Shape:
    """One workload: a program and its arguments. kind is "seconds" (fixed work, the program
    prints its seconds), "throughput" (fixed time, the program prints operations per second)
    or "wall" (a real program, timed from the outside)."""

    def __init__(self, name, group, argv, kind, env=None, prepare=None):
        self.name = name
        self.group = group
        self.argv = argv
        self.kind = kind
        self.env = env or {}
        self.prepare = prepare  # makes the shape's input files, if it has any

    @property
    def unit(self):
        return "s/Mop" if self.kind == "throughput" else "s"


def make_shapes(bindir, datadir, quick, python):
    b = lambda prog: os.path.join(bindir, prog)  # noqa: E731
    q = 4 if quick else 1  # work divisor for --quick
    secs = "0.25" if quick else "0.6"  # fixed-time shapes
    shapes = []

    # 1. random-slot working sets: every size, both working-set sizes, one and two threads
    for slots, sname in ((1024, "1k"), (100000, "100k")):
        for threads in (1, 2):
            sizes = QUICK_SIZES if quick else SIZES
            for size in sizes + ["mixed"]:
                if quick and threads == 2 and size != "mixed":
                    continue
                # the same work in all: two threads do half the steps each
                iters = slots_iters(slots, size) // q // threads
                shapes.append(Shape(
                    f"slots-{sname}-{size_name(size)}-t{threads}", "slots",
                    [b("slots"), str(slots), str(size), str(iters), str(threads)], "seconds"))

    # 2. Larson server: workers hand their objects to new threads
    for threads in (2, 8):
        shapes.append(Shape(f"larson-t{threads}", "larson",
                            [b("larson"), str(threads), secs, "5000", "8", "1000", "20"],
                            "throughput"))
    # 3. glibc's bench-malloc-thread shape
    for threads in (1, 2, 8):
        shapes.append(Shape(f"glibc-thread-t{threads}", "glibc-thread",
                            [b("glibc_thread"), str(threads), secs], "throughput"))
    # 4. Pareto sizes and lifetimes, 100M mallocs in all
    total = 10_000_000 if quick else 100_000_000
    for threads in (1, 2):
        shapes.append(Shape(f"pareto-t{threads}", "pareto",
                            [b("pareto"), str(total), str(threads)], "seconds"))
    # 5. producer/consumer
    shapes.append(Shape("prodcons-1x1", "prodcons",
                        [b("prodcons"), "1", str(2_000_000 // q)], "seconds"))
    shapes.append(Shape("prodcons-8x8", "prodcons",
                        [b("prodcons"), "8", str(1_000_000 // q)], "seconds"))
    # 6. thread churn
    shapes.append(Shape("churn-4x100", "churn",
                        [b("churn"), str(100 // q), "4", "20000", "1000"], "seconds"))
    shapes.append(Shape("churn-8x400", "churn",
                        [b("churn"), str(400 // q), "8", "2000", "200"], "seconds"))
    # 7. C++ containers
    # (as everywhere, two threads share the same work between them)
    for threads in (1, 2):
        shapes.append(Shape(f"cxx-map-t{threads}", "cxx",
                            [b("cxx_map"), str(400_000 // q // threads), "100000",
                             str(threads)], "seconds"))
    shapes.append(Shape("cxx-unordered-t1", "cxx",
                        [b("cxx_unordered"), str(120_000 // q), "200000", "1"], "seconds"))
    for threads in (1, 2):
        shapes.append(Shape(f"cxx-shared-ptr-t{threads}", "cxx",
                            [b("cxx_shared_ptr"), str(600 // q // threads), "2000",
                             str(threads)], "seconds"))
    # 8. real programs
    shapes.append(Shape(
        "python", "real",
        [python, os.path.join(ROOT, "bench", "py", "records.py"), "3" if quick else "8"],
        "wall", env={"PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0"}))
    nfunc = 50 if quick else 300
    c_file = os.path.join(datadir, f"big-{nfunc}.c")
    shapes.append(Shape(
        "gcc", "real", ["gcc", "-O2", "-c", c_file, "-o", os.path.join(datadir, "big.o")],
        "wall", env={"LC_ALL": "C"}, prepare=lambda: gen_c_file(c_file, nfunc)))
    nlines = 200_000 if quick else 1_000_000
    txt = os.path.join(datadir, f"sort-{nlines}.txt")
    shapes.append(Shape(
        "sort", "real", ["sort", "--parallel=2", "-k2,2", "-k1,1n", txt],
        "wall", env={"LC_ALL": "C"}, prepare=lambda: gen_sort_file(txt, nlines)))
    return shapes


# ---- generated inputs for the real programs ---------------------------------------------

def gen_c_file(path, nfunc):
    """A C file of nfunc small functions (branches, a switch, a loop, struct fields, a call
    out) for `gcc -O2 -c`: the compiler's parser, IR and passes allocate as they go."""
    if os.path.exists(path):
        return
    out = ["/* generated by scripts/realprog.py for the gcc shape */\n",
           "#include <string.h>\n",
           "struct rec { int a, b; double c; char name[24]; struct rec *next; };\n",
           "int hook(struct rec *, int);\n"]
    for i in range(nfunc):
        k = i * 7919 % 97
        out.append(f"""
int f{i}(struct rec *r, int x) {{
    if (!r) return x * {k + 1};
    switch (x & 3) {{
    case 0: r->a += x * {k}; break;
    case 1: r->b ^= x << {i % 13}; break;
    case 2: r->c += x / {k + 1}.0; break;
    default: if (strlen(r->name) > {k % 20}) r->a -= {i}; break;
    }}
    for (int j = 0; j < (x & 15); j++) r->c = r->c * 0.5 + j * {k};
    return r->a + hook(r->next, x + {k});
}}
""")
    with open(path + ".tmp", "w") as f:
        f.write("".join(out))
    os.replace(path + ".tmp", path)


def gen_sort_file(path, nlines):
    """nlines of "<number> <word> line-<i>" for `sort -k2,2 -k1,1n`, from a fixed LCG."""
    if os.path.exists(path):
        return
    letters = "abcdefghijklmnopqrstuvwxyz" * 2
    x = 12345
    out = []
    for i in range(nlines):
        x = (x * 1103515245 + 12345) % 2147483648
        a = x % 26
        out.append(f"{x % 100000} {letters[a:a + 5 + x % 20]} line-{i}\n")
    with open(path + ".tmp", "w") as f:
        f.write("".join(out))
    os.replace(path + ".tmp", path)


# ---- setup ------------------------------------------------------------------------------

def ensure_packages():
    need = [pkg for path, pkg in REFERENCES.values() if not os.path.exists(path)]
    for tool, pkg in (("gcc", "gcc"), ("c++", "g++"), ("sort", "coreutils")):
        if not shutil.which(tool):
            need.append(pkg)
    if not need:
        return
    log(f"installing: {' '.join(need)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + need, check=True, env=env,
                   stdout=subprocess.DEVNULL)


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def build_spanalloc():
    log("cargo build --release -p spanalloc-preload")
    subprocess.run(["cargo", "build", "--release", "-p", "spanalloc-preload"], cwd=ROOT,
                   check=True, stdout=sys.stderr)
    return os.path.join(target_dir(), "release", "libspanalloc.so")


def build_programs(bindir):
    subprocess.run(["bash", os.path.join(ROOT, "bench", "build.sh"), bindir], check=True,
                   stdout=sys.stderr)


def pick_python():
    # Debian's interpreter when there is one: a fixed build, and a real binary rather than
    # a shim script that would run under the preload too.
    for p in ("/usr/bin/python3",):
        if os.access(p, os.X_OK):
            return p
    return os.path.realpath(sys.executable)


def machine_info():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release()}


# ---- running ----------------------------------------------------------------------------

class RunResult:
    def __init__(self, value=None, rss_kib=None, wall=None, error=None):
        self.value = value
        self.rss_kib = rss_kib
        self.wall = wall
        self.error = error


def run_once(shape, preload, timeout, scratch, measure, alloc_env=None):
    """One process of one shape under one allocator, through bench/tools/measure.c, which
    sets LD_PRELOAD in the child and reports its wall time and ru_maxrss. alloc_env: the
    allocator's own variables (--env), set for every shape it runs."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # the helper sets it in the child only
    env.update(shape.env)
    env.update(alloc_env or {})
    out_path = os.path.join(scratch, "out")
    err_path = os.path.join(scratch, "err")
    rep_path = os.path.join(scratch, "report")
    if os.path.exists(rep_path):
        os.unlink(rep_path)
    with open(out_path, "w") as out, open(err_path, "w") as err:
        p = subprocess.Popen([measure, rep_path, preload] + shape.argv, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL, env=env, cwd=scratch,
                             start_new_session=True)
        timed_out = []

        def kill():  # the whole group: gcc's cc1 and as too
            timed_out.append(True)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            p.wait()
        finally:
            timer.cancel()
    with open(out_path) as f:
        stdout = f.read()
    with open(err_path, errors="replace") as f:
        stderr = f.read()
    if timed_out:
        log(f"  {shape.name} under {preload or 'glibc'}: killed after {timeout:.0f} s")
        return RunResult(error="timeout")
    try:
        with open(rep_path) as f:
            fields = f.read().split()
        wall, rss, status = float(fields[1]), int(fields[3]), int(fields[5])
    except (OSError, IndexError, ValueError):
        log(f"  {shape.name}: the measure helper wrote no report: {stderr.strip()[-200:]}")
        return RunResult(error="no report")
    def failed(error):
        tail = "\n".join(stderr.strip().splitlines()[-3:])
        log(f"  {shape.name} under {preload or 'glibc'}: {error}" + (f"\n  {tail}" if tail else ""))
        return RunResult(error=error, wall=wall, rss_kib=rss)

    if os.WIFSIGNALED(status):
        return failed(signal.Signals(os.WTERMSIG(status)).name)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return failed(f"exit {code}")
    if "ERROR: ld.so" in stderr:  # the preload was not loaded: the run measured glibc
        return failed("preload refused")
    if shape.kind == "wall":
        return RunResult(value=wall, rss_kib=rss, wall=wall)
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "result":
            v = float(parts[1])
            if shape.kind == "throughput":
                if v <= 0:
                    return failed("no operations")
                v = 1e6 / v  # seconds per million operations
            return RunResult(value=v, rss_kib=rss, wall=wall)
    return failed("no result line")


def fmt_num(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    if not xs:
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def summarize(shape, allocs, runs):
    """runs: {alloc: [RunResult]} -> the JSON record of one shape."""
    res = {}
    for a in allocs:
        rs = runs[a]
        ok = [r for r in rs if r.error is None]
        errors = [r.error for r in rs if r.error is not None]
        entry = {
            "values": [r.value for r in ok],
            "rss_kib": [r.rss_kib for r in ok],
            "wall": [round(r.wall, 4) for r in rs if r.wall is not None],
            "errors": errors,
            # one failed run fails the cell: a crash or hang is not averaged away
            "median": statistics.median(r.value for r in ok) if ok and not errors else None,
            "rss_mib": (statistics.median(r.rss_kib for r in ok) / 1024.0
                        if ok and not errors else None),
        }
        res[a] = entry
    base = res.get("glibc", {})
    for a in allocs:
        e = res[a]
        e["time_ratio"] = (e["median"] / base["median"]
                           if e["median"] is not None and base.get("median") else None)
        e["rss_ratio"] = (e["rss_mib"] / base["rss_mib"]
                          if e["rss_mib"] is not None and base.get("rss_mib") else None)
        others = [(res[o]["median"], o) for o in REFERENCE_NAMES
                  if o in res and o != a and res[o]["median"] is not None]
        if e["median"] is not None and others:
            best, who = min(others)
            e["vs_best"] = e["median"] / best
            e["best_other"] = who
        else:
            e["vs_best"] = None
            e["best_other"] = None
    return {"name": shape.name, "group": shape.group, "unit": shape.unit, "kind": shape.kind,
            "argv": [os.path.relpath(x, ROOT) if x.startswith(ROOT) else x
                     for x in shape.argv],
            "results": res}


def geomeans(shapes_json, allocs):
    """Geometric means of each allocator's ratios over the shapes it has a result on (all of
    them unless it failed somewhere: the count is kept, and the report shows it)."""
    out = {}
    for a in allocs:
        ok = [s for s in shapes_json if s["results"][a]["time_ratio"] is not None]
        out[a] = {
            "time_ratio": geomean([s["results"][a]["time_ratio"] for s in ok]),
            "rss_ratio": geomean([s["results"][a]["rss_ratio"] for s in ok]),
            "vs_best": geomean([s["results"][a]["vs_best"] for s in ok]),
            "shapes": len(ok),
            "failed_shapes": [s["name"] for s in shapes_json
                              if s["results"][a]["median"] is None],
        }
    return out


# ---- the report -------------------------------------------------------------------------

def cell_failed(e):
    errs = e["errors"]
    return f"FAIL {errs[0]} ({len(errs)}/{len(errs) + len(e['values'])})"


def tables(run):
    allocs = run["allocators"]
    extra = [a for a in allocs if a not in REFERENCE_NAMES]
    t_head = ["shape", "unit"] + allocs + [f"{a} / best" for a in extra]
    t_rows = []
    m_head = ["shape"] + allocs
    m_rows = []
    for s in run["shapes"]:
        r = s["results"]
        row = [s["name"], s["unit"]]
        mrow = [s["name"]]
        for a in allocs:
            e = r[a]
            if e["median"] is None:
                row.append(cell_failed(e))
                mrow.append("FAIL")
            elif a == "glibc":
                row.append(fmt_num(e["median"]))
                mrow.append(fmt_num(e["rss_mib"]))
            else:
                row.append(f"{fmt_num(e['median'])} ({fmt_ratio(e['time_ratio'])})")
                mrow.append(f"{fmt_num(e['rss_mib'])} ({fmt_ratio(e['rss_ratio'])})")
        for a in extra:
            e = r[a]
            row.append("-" if e["vs_best"] is None
                       else f"{fmt_ratio(e['vs_best'])} {e['best_other']}")
        t_rows.append(row)
        m_rows.append(mrow)
    gm = run["geomean"]
    n = len(run["shapes"])

    def mean(a, key):  # the shape count when the allocator failed on some
        k = gm[a]["shapes"]
        return fmt_ratio(gm[a][key]) + (f" ({k} of {n})" if k != n else "")

    row = [f"geometric mean ({n} shapes)", "ratio"]
    mrow = [f"geometric mean ({n} shapes)"]
    for a in allocs:
        row.append(mean(a, "time_ratio"))
        mrow.append(mean(a, "rss_ratio"))
    for a in extra:
        row.append(mean(a, "vs_best"))
    t_rows.append(row)
    m_rows.append(mrow)
    return (t_head, t_rows), (m_head, m_rows)


def render(head, rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for r in rows:
            cells = list(r)
            if r is rows[-1]:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(  # noqa: E731
        (str(c).ljust(w) if i == 0 else str(c).rjust(w)) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def report(run, markdown):
    (th, tr), (mh, mr) = tables(run)
    m = run["machine"]
    intro = (f"Real-program shapes, {run['date']}, {m['nproc']} CPUs ({m['cpu']}), median of "
             f"{run['reps']} runs{' (--quick)' if run['quick'] else ''}, "
             f"{run['elapsed_seconds'] / 60:.1f} min in all.")
    libs = ", ".join(f"{a} = {p or 'no preload'}" for a, p in run["preloads"].items())
    out = []
    if markdown:
        out += [intro, "", f"Allocators: {libs}.", "",
                "Time (lower is better): s = seconds of fixed work, s/Mop = seconds per "
                "million operations of a fixed-time run (1/throughput); in brackets the ratio "
                "to glibc; `/ best` is the ratio to the fastest of glibc, mimalloc, jemalloc "
                "and tcmalloc on that shape.", "", render(th, tr, True), "",
                "Peak resident memory, MiB (ratio to glibc):", "", render(mh, mr, True)]
    else:
        out += [intro, libs, "", "time (lower is better; ratio to glibc in brackets)",
                render(th, tr, False), "", "peak RSS MiB (ratio to glibc)",
                render(mh, mr, False)]
    fails = {a: g["failed_shapes"] for a, g in run["geomean"].items() if g["failed_shapes"]}
    if fails:
        out += ["", "Failed: " + "; ".join(f"{a}: {', '.join(v)}" for a, v in fails.items())]
    return "\n".join(out) + "\n"


# ---- main -------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a short run: fewer reps, fewer sizes, less work per process")
    ap.add_argument("--reps", type=int, help="runs per shape and allocator (default 5, quick 3)")
    ap.add_argument("--filter", action="append", default=[], metavar="SUBSTR",
                    help="only shapes whose name contains SUBSTR (repeatable: any of them)")
    ap.add_argument("--json-file", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--markdown", action="store_true", help="Markdown tables on stdout")
    ap.add_argument("--spanalloc", metavar="PATH", help="use this libspanalloc.so, no build")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="another preload to compare, e.g. spanalloc-before=/old/libspanalloc.so")
    ap.add_argument("--env", action="append", default=[], metavar="NAME:VAR=VALUE",
                    help="a variable set for one allocator's runs, e.g. "
                         "spanalloc-prof:SPANALLOC_PROFILE=512K with --extra "
                         "spanalloc-prof=PATH (repeatable)")
    ap.add_argument("--allocators", metavar="LIST",
                    help="comma-separated subset of the allocators to run (glibc always runs)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is killed")
    ap.add_argument("--list", action="store_true", help="print the shapes and exit")
    return ap.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    bindir = os.path.join(target_dir(), "realprog")
    datadir = os.path.join(bindir, "data")
    os.makedirs(datadir, exist_ok=True)

    shapes = make_shapes(bindir, datadir, args.quick, pick_python())
    if args.filter:
        shapes = [s for s in shapes if any(f in s.name for f in args.filter)]
    if args.list:
        for s in shapes:
            print(f"{s.name:28} {s.unit:6} {' '.join(os.path.basename(a) for a in s.argv[:1])}"
                  f" {' '.join(s.argv[1:])}")
        return 0
    if not shapes:
        log("no shape matches the filter")
        return 2

    ensure_packages()
    spanalloc = args.spanalloc or build_spanalloc()
    preloads = {"glibc": ""}
    for name, (path, _) in REFERENCES.items():
        preloads[name] = path
    preloads["spanalloc"] = spanalloc
    for spec in args.extra:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            log(f"--extra wants NAME=PATH, got {spec!r}")
            return 2
        preloads[name] = path
    alloc_envs = {}
    for spec in args.env:
        name, sep, assignment = spec.partition(":")
        var, eq, value = assignment.partition("=")
        if not sep or not eq or not var or name not in preloads:
            log(f"--env wants NAME:VAR=VALUE with NAME an allocator, got {spec!r}")
            return 2
        alloc_envs.setdefault(name, {})[var] = value
    if args.allocators:
        keep = {"glibc"} | set(args.allocators.split(","))
        unknown = keep - set(preloads)
        if unknown:
            log(f"unknown allocators: {', '.join(sorted(unknown))}")
            return 2
        preloads = {a: p for a, p in preloads.items() if a in keep}
    preloads = {a: os.path.abspath(p) if p else "" for a, p in preloads.items()}
    for name, path in preloads.items():
        if path and not os.path.exists(path):
            log(f"{name}: {path} does not exist")
            return 2
    build_programs(bindir)
    measure = os.path.join(bindir, "measure")
    for shape in shapes:
        if shape.prepare:
            shape.prepare()
    allocs = list(preloads)

    log(f"{len(shapes)} shapes x {len(allocs)} allocators x {reps} runs")
    start = time.time()
    out_shapes = []
    with tempfile.TemporaryDirectory(prefix="realprog-") as scratch:
        for i, shape in enumerate(shapes):
            runs = {a: [] for a in allocs}
            for rep in range(reps):
                k = rep % len(allocs)
                for a in allocs[k:] + allocs[:k]:
                    runs[a].append(run_once(shape, preloads[a], args.timeout, scratch, measure,
                                            alloc_envs.get(a)))
            rec = summarize(shape, allocs, runs)
            out_shapes.append(rec)
            elapsed = time.time() - start
            eta = elapsed / (i + 1) * (len(shapes) - i - 1)
            cells = []
            for a in allocs:
                e = rec["results"][a]
                cells.append(f"{a} {fmt_num(e['median'])}" if e["median"] is not None
                             else f"{a} FAIL({e['errors'][0]})")
            log(f"[{i + 1}/{len(shapes)} {elapsed / 60:.1f}m, ~{eta / 60:.1f}m left] "
                f"{shape.name} ({shape.unit}): " + ", ".join(cells))

    run = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "reps": reps,
        "quick": args.quick,
        "filter": args.filter,
        "allocators": allocs,
        "references": [a for a in REFERENCE_NAMES if a in allocs],
        "preloads": preloads,
        "allocator_env": alloc_envs,
        "elapsed_seconds": time.time() - start,
        "shapes": out_shapes,
        "geomean": geomeans(out_shapes, allocs),
    }
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(run, f, indent=1)
            f.write("\n")
    sys.stdout.write(report(run, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
