"""An allocation-heavy python3 workload for the LD_PRELOAD tests and measurements: dicts,
lists and strings built, grown, sorted and dropped. Prints a deterministic summary."""

import sys


def churn(rounds):
    total = 0
    keep = []
    for r in range(rounds):
        d = {}
        for i in range(20000):
            key = "k%d_%d" % (r, i)
            d[key] = [i, str(i) * (i % 7 + 1), key.upper()]
        words = sorted(d, key=lambda k: (len(d[k][1]), k))
        joined = ",".join(words[:5000])
        total += len(joined) + len(words)
        blob = bytearray()
        for w in words[::50]:
            blob += w.encode() * 3
        total += len(blob)
        keep.append(joined[: 1000 + r])
        if len(keep) > 8:
            keep.pop(0)
        del d, words, joined, blob
    big = [list(range(i % 100)) for i in range(30000)]
    total += sum(len(x) for x in big)
    s = "".join(chr(65 + i % 26) for i in range(200000))
    for _ in range(20):
        s = s[1:] + s[:1]
        total += s.count("ABC")
    return total, sum(len(k) for k in keep)


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    print("python alloc-heavy", rounds, *churn(rounds))
