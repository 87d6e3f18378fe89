#!/usr/bin/env python3
"""`make bench`: the tracing pipeline's cost on samples/churn.py.

For every interpreter found (the same discovery as the integration tests:
/usr/bin/python3 first) runs churn untraced and under `refscope run`, and
prints the traced/untraced wall-time ratio, events per second, bytes per
event on disk, the recorder's CPU time and the trace size, for each mode
(MODES below) with the issues' targets, on Debian's python3.11: the pipeline
<= 1.5x wall and <= 1.5 bytes per event (issue 2), the default (Python
stacks and the GC census) <= 2x (issues 3 and 4), --native <= 5x (issue 3).

  python3 bench/run.py [--build DIR] [--repeat N] [--only LABEL,...] [--rounds N] [--mode M]
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gc_census import bench_gc_census  # noqa: E402

TIMEOUT = 600
# --mode: what the traced run records, and the issues' wall-time targets
MODES = {
    "pipeline": ("--no-stacks", "--no-gc"),           # allocation records only (issue 2: <= 1.5x)
    "gcevents": ("--no-stacks", "--gc-census=off"),   # plus GC events (issue 4; gc.callbacks)
    "nostacks": ("--no-stacks",),                     # plus the GC census (issue 4's promotions)
    "default": (),                                    # plus Python stacks: the default (issues 3, 4: <= 2x)
    "native": ("--native",),                          # plus native stacks (issue 3: <= 5x)
}
TARGETS = {"pipeline": 1.5, "default": 2.0, "native": 5.0}
WROTE = re.compile(r"\(pid (\d+), (\d+) records, (\d+) bytes[^)]*\)")
CPU = re.compile(r"recorder CPU ([0-9.]+) s")


def timed(args, env=None):
    """Wall seconds and child CPU seconds of one run (bounded by TIMEOUT)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def bench_one(py, build, rounds, repeat, workdir, mode="default"):
    """Untraced and traced runs alternate, so that a machine whose speed drifts
    (shared VMs) weighs on both alike. The ratio is fastest traced / fastest
    untraced; `pairs` is the median of the ratios of each (untraced, traced)
    pair, the spread a reader should expect from one run."""
    script = os.path.join(ROOT, "samples", "churn.py")
    cmd = [py.path, script, str(rounds)]
    bases, best, pairs = [], None, []
    for i in range(repeat):
        bases.append(timed(cmd)[1])
        trace = os.path.join(workdir, "churn-%s-%d.rfs" % (py.label, i))
        proc, wall, cpu = timed([os.path.join(build, "refscope"), "run", "-f", "-o", trace, *MODES[mode], "--"]
                                + cmd)
        if proc.returncode != 0:
            return "%-16s traced run failed (%d): %s" % (py.label, proc.returncode, proc.stderr.strip()[-300:])
        m, c = WROTE.search(proc.stderr), CPU.search(proc.stderr)
        if not m:
            return "%-16s no trace written: %s" % (py.label, proc.stderr.strip()[-300:])
        records, size = int(m.group(2)), int(m.group(3))
        for name in os.listdir(workdir):  # the trace and any child traces
            os.unlink(os.path.join(workdir, name))
        pairs.append(wall / bases[-1])
        run = (wall, records, size, float(c.group(1)) if c else float("nan"), cpu)
        if best is None or wall < best[0]:
            best = run
    base = min(bases)
    wall, records, size, rec_cpu, cpu = best
    pairs.sort()
    spread = "   pairs: median %.2fx" % pairs[len(pairs) // 2] if len(pairs) > 1 else ""
    return ("%-16s %6.2fx  %8.2f M/s  %6.3f B/ev  %7.2f s  %8.1f MiB  %6.1f M events   (untraced %.2f s)%s"
            % (py.label, wall / base, records / wall / 1e6, size / records, rec_cpu, size / 2**20,
               records / 1e6, base, spread))


# ---- heap snapshots (issue 5; owned by the snapshots feature) ------------------------
SNAPSHOT_BENCH_PROG = r"""
import os, signal, time
data = [(i,) for i in range(500000)]   # 500k tuples + 500k ints: ~1M objects
t0 = time.perf_counter()
if os.environ.get("REFSCOPE_SNAPSHOTS") != "0":   # the baseline has no SIGUSR2 handler
    os.kill(os.getpid(), signal.SIGUSR2)
for _ in range(10):
    pass
print("%.3f" % (time.perf_counter() - t0))
"""


def bench_snapshot(build, python="python3"):
    """A SIGUSR2 heap snapshot of a ~1M-object heap: how long the program is
    paused (goal: < 2 s) and what the snapshot costs in the trace file."""
    refscope = os.path.join(build, "refscope")
    with tempfile.TemporaryDirectory(prefix="refscope-bench-snap-") as d:
        prog = os.path.join(d, "snap.py")
        with open(prog, "w") as f:
            f.write(SNAPSHOT_BENCH_PROG)
        sizes = {}
        for label, env_val in (("with", "1"), ("without", "0")):
            trace = os.path.join(d, "%s.rfs" % label)
            env = dict(os.environ, REFSCOPE_SNAPSHOTS=env_val)
            p = subprocess.run([refscope, "run", "-f", "-o", trace, "--", python, prog], env=env,
                               capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                print("snapshot bench: run failed: %s" % p.stderr.strip()[-300:])
                return
            sizes[label] = os.path.getsize(trace)
            if label == "with":
                pause = float(p.stdout.strip().splitlines()[-1])
                info = json.loads(subprocess.run([refscope, "cycles", "--json", trace], capture_output=True,
                                                 text=True, timeout=600).stdout)
                snaps = info["snapshots"]
    sig = [s for s in snaps if s["reason"] == "signal"][0]
    per_snapshot_file = (sizes["with"] - sizes["without"]) / max(1, len(snaps))
    print("snapshot: %d objects, %d references: %.3f s in the shim, %.3f s as the program saw it (goal < 2 s)"
          % (sig["objects"], sig["references"], sig["duration_ns"] / 1e9, pause))
    print("snapshot size: %.1f MiB of records, ~%.1f MiB in the trace file (zstd), %.1f bytes/object"
          % (sig["record_bytes"] / 2**20, per_snapshot_file / 2**20, per_snapshot_file / max(1, sig["objects"])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--repeat", type=int, default=0,
                    help="runs of each (untraced and traced, alternating), the fastest counts; default 3 "
                         "on the first interpreter (the one with targets), 1 on the others")
    ap.add_argument("--rounds", type=int, default=1000, help="churn rounds (10000 objects each)")
    ap.add_argument("--mode", choices=sorted(MODES) + ["all"], default="all",
                    help="pipeline (--no-stacks --no-gc), gcevents (--no-stacks --gc-census=off), "
                         "nostacks, default (Python stacks), "
                         "native (--native), or all: every mode on the first interpreter and the "
                         "default mode on the others (make bench)")
    ap.add_argument("--only", default="", help="comma-separated interpreter labels or paths")
    opts = ap.parse_args()
    build = os.path.abspath(opts.build)
    if not os.access(os.path.join(build, "refscope"), os.X_OK):
        print("bench: %s/refscope not built (run make first)" % build, file=sys.stderr)
        return 1
    pys = harness.interpreters()
    if opts.only:
        wanted = opts.only.split(",")
        pys = [p for p in pys if p.label in wanted or p.path in wanted]
    for note in harness.missing_interpreter_notes():
        print("skipping: " + note)
    print("churn: %d rounds; load average %.1f on %d CPUs (ratios are only meaningful on an idle machine)"
          % (opts.rounds, os.getloadavg()[0], os.cpu_count() or 0))
    print("%-16s %7s  %10s  %10s  %9s  %12s  %8s" % ("interpreter", "wall", "events/s", "bytes/ev",
                                                    "rec. CPU", "trace size", "events"))
    # (interpreter, mode) pairs
    if opts.mode == "all":
        runs = [(py, m) for py in pys[:1] for m in ("pipeline", "gcevents", "nostacks", "default", "native")]
        runs += [(py, "default") for py in pys[1:]]
    else:
        runs = [(py, opts.mode) for py in pys]
    with tempfile.TemporaryDirectory(prefix="refscope-bench-") as d:
        for py, mode in runs:
            try:
                repeat = opts.repeat or (3 if py is pys[0] else 1)
                line = bench_one(py, build, opts.rounds, repeat, d, mode)
                target = " target <= %.1fx" % TARGETS[mode] if mode in TARGETS else ""
                print("%s  [%s%s]" % (line, mode, target), flush=True)
            except subprocess.TimeoutExpired:
                print("%-16s timed out after %d s [%s]" % (py.label, TIMEOUT, mode), flush=True)
    if pys:
        print()
        lines, _ = bench_gc_census(build, pys[0].path)  # census cost on a GC-heavy workload (issue 4)
        print("\n".join(lines), flush=True)
        print()
        bench_snapshot(build, pys[0].path)  # heap snapshots (issue 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
