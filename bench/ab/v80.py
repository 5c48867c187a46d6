"""v80 (bench/NOTES.md): per split launch of a layer_timing output run with CF_TIMELINE_BLOCKS=1 (round 1 of a v49.sh
file), the norm's latency (input loads issued to normed) over the blocks, its correlation with their entry, wait, index
and end, and the slowest and fastest blocks.

Usage: python3 bench/ab/v80.py <layer_timing output>...
"""
import re
import statistics
import sys


def corr(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / ((va * vb) ** 0.5 + 1e-12)


def blocks(body):
    """Every block line of one kernel's timeline: its marks (µs) and index."""
    rows = []
    for m in re.finditer(r"      block +(\d+):(.*)", body):
        marks = {k.strip(): float(v) for k, v in re.findall(r" ([a-z ]+?) (-?[\d.]+),", m.group(2))}
        marks["index"] = int(m.group(1))
        rows.append(marks)
    return [r for r in rows if "input" in r and "normed" in r and "end" in r]


def describe(r):
    return (f"block {r['index']:3d} entry {r['entry']:.2f} waited {r['waited']:.2f} input {r['input']:.2f} "
            f"normed {r['normed']:.2f} end {r['end']:.2f}")


def main(paths):
    for path in paths:
        text = open(path).read()
        round1 = text.split("### base round 1")[1].split("###")[0]
        split = round1.split("split timeline")[1].split("cooperative timeline")[0]
        parts = re.split(r"\n    (\S+) kernel, ", split)
        for name, body in zip(parts[1::2], parts[2::2]):
            rows = blocks(body)
            if len(rows) < 5:
                continue
            norm = [r["normed"] - r["input"] for r in rows]
            entry = [r["entry"] for r in rows]
            wait = [r["waited"] - r["entry"] for r in rows]
            index = [r["index"] for r in rows]
            end = [r["end"] for r in rows]
            print(f"{path:22s} {name:26s} n={len(rows)} norm med {statistics.median(norm):.2f} max {max(norm):.2f} | "
                  f"r(norm,entry) {corr(norm, entry):+.2f} r(norm,wait len) {corr(norm, wait):+.2f} "
                  f"r(norm,idx) {corr(norm, index):+.2f} r(norm,end) {corr(norm, end):+.2f} "
                  f"r(entry,end) {corr(entry, end):+.2f}")
            by_norm = sorted(rows, key=lambda r: r["normed"] - r["input"])
            for r in reversed(by_norm[-4:]):
                print("      slow: " + describe(r))
            for r in by_norm[:3]:
                print("      fast: " + describe(r))


if __name__ == "__main__":
    main(sys.argv[1:])
