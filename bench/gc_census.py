"""Issue 4 (gc) benchmark: what the gc census costs.

  CPU   samples/gc_heavy.py traced with --gc-census=off and =on, alternately,
        `repeat` times each; CPU time (user + sys of the traced program and
        the recorder) is what is compared, the median of each mode, because
        the machines are shared and wall time is noisy.
        Budget: census on costs at most +25% CPU over census off (aim: +10%).
  bytes samples/churn.py traced both ways: the census's share of the trace
        file, in bytes per record of the census-off trace.
        Aim: at most 0.1 B/record (the whole trace's budget is 1.5).

bench/run.py (owned by the recorder engineer) may call bench_gc_census(build,
python) and print its lines; it also runs alone:
  python3 bench/gc_census.py --build BUILD [--python PY] [--repeat N] [--no-bytes]
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GC_HEAVY = os.path.join(ROOT, "samples", "gc_heavy.py")
CHURN = os.path.join(ROOT, "samples", "churn.py")
CPU_BUDGET = 1.25
BYTES_AIM = 0.1


def _cpu(cmd, timeout=600):
    """CPU seconds (user + sys) of cmd and everything it waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _traced(refscope, out, mode, argv):
    return [refscope, "run", "-f", "-o", out, "--gc-census=" + mode, "--"] + argv


def _records(refscope, trace):
    res = subprocess.run([refscope, "summary", "--json", trace], check=True, capture_output=True, text=True)
    return json.loads(res.stdout)["records"]


def bench_gc_census(build, python=sys.executable, rounds=300000, repeat=5, churn_rounds=300, bytes_too=True):
    """Returns (lines, ok): CPU of census off/on on gc_heavy, and census bytes per record on churn."""
    refscope = os.path.join(build, "refscope")
    d = tempfile.mkdtemp(prefix="refscope-bench-gc-")
    argv = [python, GC_HEAVY, str(rounds)]
    base = statistics.median(_cpu(argv) for _ in range(3))
    cpu = {"off": [], "on": []}
    for i in range(repeat):
        for mode in (("off", "on") if i % 2 == 0 else ("on", "off")):
            cpu[mode].append(_cpu(_traced(refscope, os.path.join(d, "gc-%s.rfs" % mode), mode, argv)))
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    ratio = on / off
    ok = ratio <= CPU_BUDGET
    lines = ["gc census (samples/gc_heavy.py %d, %s; CPU time, median of %d):" % (rounds, python, repeat),
             "  untraced %.2fs, traced census off %.2fs (%.2fx), census on %.2fs (%.2fx)"
             % (base, off, off / base, on, on / base),
             "  census cost: %+.1f%% CPU (budget +%d%%, aim +10%%) %s"
             % ((ratio - 1) * 100, round((CPU_BUDGET - 1) * 100), "ok" if ok else "OVER BUDGET")]
    if bytes_too:
        size, records = {}, {}
        for mode in ("off", "on"):
            out = os.path.join(d, "churn-%s.rfs" % mode)
            subprocess.run(_traced(refscope, out, mode, [python, CHURN, str(churn_rounds)]), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
            size[mode], records[mode] = os.path.getsize(out), _records(refscope, out)
        per_record = (size["on"] - size["off"]) / records["off"]
        lines.append("  census bytes (samples/churn.py %d): %d B over %d records = %.3f B/record (aim %.1f) %s"
                     % (churn_rounds, size["on"] - size["off"], records["off"], per_record, BYTES_AIM,
                        "ok" if per_record <= BYTES_AIM else "OVER AIM"))
    shutil.rmtree(d, ignore_errors=True)
    return lines, ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=300000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-bytes", action="store_true", help="skip the churn.py trace-size comparison")
    o = ap.parse_args()
    lines, ok = bench_gc_census(os.path.abspath(o.build), o.python, o.rounds, o.repeat, bytes_too=not o.no_bytes)
    print("\n".join(lines))
    sys.exit(0 if ok else 1)
