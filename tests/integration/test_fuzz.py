"""Damaged traces against every report, under AddressSanitizer and UBSan:
at random (tests/fuzz/fuzz_reports.c) and coverage-guided with libFuzzer
(tests/fuzz/cov_reports.c, built when clang is there). Seeds are real
traces: Python programs with threads, reference cycles, collections and
heap snapshots (with and without native stacks; from an interpreter with
object events, 3.13+, when there is one) and a C program. `make check` runs
a short round of each; `make fuzz` a long one (REFSCOPE_FUZZ_SECONDS).
REFSCOPE_FUZZ_SEED repeats a random round."""
import os
import random
import re
import textwrap

import harness
from harness import Skip, expect

SEED_PROGRAM = """
    import gc, os, signal, threading
    class Node:
        def __init__(self, v):
            self.v = v
            self.peer = None
    keep = []
    def work(n):
        for i in range(n):
            a = Node(i); b = Node(str(i)); a.peer = b; b.peer = a
            keep.append({"k": i, "v": [i] * 3})
    t = threading.Thread(target=work, args=(200,)); t.start(); t.join()
    work(200)
    gc.collect()
    os.kill(os.getpid(), signal.SIGUSR2)
    class Leak: pass
    leak = [Leak() for _ in range(100)]
    cycle = [Node(1)]; cycle.append(cycle)
    del cycle
    os.kill(os.getpid(), signal.SIGUSR2)
"""


_SEEDS = []


def _seeds():
    if not _SEEDS:
        _SEEDS.extend(_make_seeds())
    return _SEEDS


def _make_seeds():
    script = harness.write_script(textwrap.dedent(SEED_PROGRAM))
    pys = harness.interpreters()
    if not pys:
        raise Skip("no CPython found for the seed traces")
    picks = [pys[0]]
    newer = [p for p in pys if p.version >= (3, 13) and not p.free_threaded]
    if newer and newer[0] is not pys[0]:
        picks.append(newer[0])
    seeds = []
    for i, py in enumerate(picks):
        for args in ((), ("--native",)) if i == 0 else ((),):
            run = harness.run_traced([py.path, "-I", "-S", script], run_args=args, timeout=120)
            seeds.append(run.trace)
    seeds.append(harness.run_traced([harness.prog("known_mallocs")], run_args=("--native",)).trace)
    return seeds


def test_damaged_traces_never_crash_a_report():
    fuzz = os.path.join(harness.BUILD, "tests", "fuzz_reports")
    if not os.path.exists(fuzz):
        raise AssertionError("%s is missing: build it with `make %s`" % (fuzz, fuzz))
    seconds = int(os.environ.get("REFSCOPE_FUZZ_SECONDS", "60"))
    seed = os.environ.get("REFSCOPE_FUZZ_SEED") or str(random.randrange(1, 2**31))
    out = harness.workdir()
    proc = harness.run([fuzz, "-o", out, "-t", str(seconds), "-s", seed, *_seeds()], timeout=seconds + 300)
    print(proc.stdout.strip())
    expect(proc.returncode == 0,
           "fuzz_reports found inputs that break a report (seed %s; rerun with REFSCOPE_FUZZ_SEED=%s "
           "REFSCOPE_KEEP=1 to keep them):\n%s\n%s" % (seed, seed, proc.stdout[-1000:], proc.stderr[-6000:]))
    expect("0 failures" in proc.stdout, "unexpected fuzz summary: %r" % proc.stdout)


def test_coverage_guided_fuzzing_never_crashes_a_report():
    cov = os.path.join(harness.BUILD, "tests", "cov_reports")
    fuzz = os.path.join(harness.BUILD, "tests", "fuzz_reports")
    if not os.path.exists(cov):
        raise Skip("%s was not built: there is no clang (`make deps` installs it)" % cov)
    seconds = int(os.environ.get("REFSCOPE_FUZZ_SECONDS", "60"))
    work = harness.workdir()
    seeds, corpus = os.path.join(work, "seeds"), os.path.join(work, "corpus")
    os.mkdir(seeds)
    os.mkdir(corpus)
    for i, trace in enumerate(_seeds()):
        # raw chunks: mutations of zstd bodies would mostly stop at zstd
        conv = harness.run([fuzz, "--raw-chunks", trace, os.path.join(seeds, "%d.rfs" % i)])
        expect(conv.returncode == 0, "fuzz_reports --raw-chunks %s: %s" % (trace, conv.stderr))
    proc = harness.run([cov, "-close_fd_mask=3", "-max_total_time=%d" % seconds, "-timeout=60",
                        "-rss_limit_mb=4096", "-print_final_stats=1", "-artifact_prefix=%s/" % work,
                        corpus, seeds], timeout=seconds + 300)
    found = [f for f in os.listdir(work) if f.split("-")[0] in ("crash", "leak", "timeout", "oom", "slow")]
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
    print("cov_reports: %s inputs in %d s, %d seeds, %d kept for new coverage"
          % (runs.group(1) if runs else "?", seconds, len(os.listdir(seeds)), len(os.listdir(corpus))))
    expect(proc.returncode == 0 and not found,
           "cov_reports found inputs that break a report (%s; replay one with `%s FILE`, "
           "REFSCOPE_KEEP=1 keeps them):\n%s" % (", ".join(found) or "status %d" % proc.returncode,
                                                  cov, proc.stderr[-6000:]))
    expect(runs and int(runs.group(1)) > len(os.listdir(seeds)),
           "cov_reports ran no mutated input: %s" % proc.stderr[-2000:])
