"""A small data-processing script, as people write them: the "python" shape of the
real-program benchmarks (scripts/realprog.py runs it with PYTHONMALLOC=malloc, so that every
Python object goes through the C malloc under test, and PYTHONHASHSEED=0).

    python3 bench/py/records.py [SCALE]

Each round makes SCALE thousand text records (like lines of a CSV export), parses them into
dicts of strings and numbers, groups them by a key into lists, aggregates, builds objects
with attributes, formats a report of strings, counts words, and keeps a few results from
earlier rounds alive while most of each round's objects die. Prints a checksum so that a
broken allocator shows up as a different number; the runner measures its wall time, start-up
and teardown of the interpreter included.
"""

import sys

CITIES = ["Amsterdam", "Berlin", "Cairo", "Dakar", "Edinburgh", "Florence", "Geneva",
          "Hanoi", "Istanbul", "Jakarta", "Kyoto", "Lima", "Madrid", "Nairobi", "Oslo"]
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron "
         "pi rho sigma tau upsilon phi chi psi omega").split()


class Order:
    __slots__ = ("ident", "city", "amount", "tags")

    def __init__(self, ident, city, amount, tags):
        self.ident = ident
        self.city = city
        self.amount = amount
        self.tags = tags


def make_lines(n, seed):
    # a linear congruential generator keeps the data the same on every run
    x = seed
    lines = []
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        city = CITIES[x % len(CITIES)]
        words = " ".join(WORDS[(x >> k) % len(WORDS)] for k in range(0, 5 * (1 + x % 4), 5))
        lines.append("%d,%s,%d.%02d,%s" % (i, city, x % 10000, x % 100, words))
    return lines


def one_round(n, seed):
    lines = make_lines(n, seed)
    records = []
    for line in lines:
        ident, city, amount, text = line.split(",", 3)
        records.append({"id": int(ident), "city": city, "amount": float(amount),
                        "words": text.split()})
    groups = {}
    for rec in records:
        groups.setdefault(rec["city"], []).append(rec)
    summary = {city: (len(g), round(sum(r["amount"] for r in g), 2), max(r["id"] for r in g))
               for city, g in groups.items()}
    orders = [Order(r["id"], r["city"], r["amount"], set(r["words"])) for r in records]
    orders.sort(key=lambda o: (o.city, -o.amount, o.ident))
    report = "\n".join("%-10s %8d %12.2f %s" % (o.city, o.ident, o.amount, ",".join(sorted(o.tags)))
                       for o in orders[: n // 4])
    counts = {}
    for rec in records:
        for w in rec["words"]:
            counts[w] = counts.get(w, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return summary, report, top


def main():
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    kept = []
    check = 0
    for r in range(10):
        summary, report, top = one_round(scale * 1000, 7 + r)
        check = (check * 31 + len(report) + sum(c for _, c in top)
                 + int(sum(v[1] for v in summary.values()))) % 1000000007
        kept.append((summary, report[: 5000 + r]))
        if len(kept) > 3:
            kept.pop(0)
    print("# scale", scale, "checksum", check)


if __name__ == "__main__":
    main()
