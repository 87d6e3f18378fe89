"""Issue 4 (gc) benchmark: cost of the gc census on a GC-heavy workload.

bench/run.py (owned by the recorder engineer) calls bench_gc_census(build,
python) and prints its lines; it also runs alone:
  python3 bench/gc_census.py --build BUILD [--python PY]
Budget: census on costs at most +25% wall time over census off.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "samples", "gc_heavy.py")


def _wall(cmd, env=None, repeat=3, timeout=600):
    best = None
    for _ in range(repeat):
        t0 = time.monotonic()
        subprocess.run(cmd, env=env, check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dt = time.monotonic() - t0
        best = dt if best is None else min(best, dt)
    return best


def bench_gc_census(build, python=sys.executable, rounds=300000):
    """Returns (lines, ok): untraced, census off, census on walls and the ratio."""
    refscope = os.path.join(build, "refscope")
    d = tempfile.mkdtemp(prefix="refscope-bench-gc-")
    base = _wall([python, SAMPLE, str(rounds)])
    walls = {}
    for mode in ("off", "on"):
        out = os.path.join(d, "gc-%s.rfs" % mode)
        walls[mode] = _wall([refscope, "run", "-f", "-o", out, "--gc-census=" + mode, "--",
                             python, SAMPLE, str(rounds)])
    ratio = walls["on"] / walls["off"]
    lines = ["gc census (samples/gc_heavy.py %d, %s):" % (rounds, python),
             "  untraced %.2fs, traced census off %.2fs (%.2fx), census on %.2fs (%.2fx)"
             % (base, walls["off"], walls["off"] / base, walls["on"], walls["on"] / base),
             "  census cost: %+.1f%% (budget +25%%) %s" % ((ratio - 1) * 100, "ok" if ratio <= 1.25 else "OVER BUDGET")]
    return lines, ratio <= 1.25


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=300000)
    o = ap.parse_args()
    lines, ok = bench_gc_census(os.path.abspath(o.build), o.python, o.rounds)
    print("\n".join(lines))
    sys.exit(0 if ok else 1)
