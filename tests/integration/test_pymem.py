"""PyMem domain wrappers (issue 2): Python allocations are seen in their
domains on every interpreter, also after pre-initialization replaced the
allocators (PYTHONMALLOC=malloc, -X dev), and nothing is counted twice."""
import os
import signal
import subprocess
import time

import harness
from harness import expect, per_interpreter

N, SIZE = 5000, 1000

PROG = """
import os, sys
keep = [bytearray(%d) for _ in range(%d)] if sys.argv[1] == "alloc" else []
if sys.argv[2] == "exit":
    os._exit(0)
""" % (SIZE, N)


def _summary(py, mode, end, args=(), env=None):
    script = harness.write_script(PROG)
    t = harness.run_traced([py.path, *args, script, mode, end], env=env, timeout=120)
    return harness.refscope_json("summary", t.trace)


def _check_seen(py, args=(), env=None, arena=True):
    base = _summary(py, "none", "exit", args, env)
    full = _summary(py, "alloc", "exit", args, env)
    delta = full["live_bytes_end"] - base["live_bytes_end"]
    # 5000 buffers of 1001 bytes, their 5000 objects (~56-72 bytes) and the list:
    # once. Counting the buffer in two domains would give >= 10 MB.
    expect(N * SIZE <= delta <= N * SIZE * 1.25,
           "%s: live bytes at exit grew by %d, expected about %d (seen once)" % (py, delta, N * SIZE))
    doms = full["domains"]
    for d in ("raw", "mem", "obj") + (("arena",) if arena else ()):
        expect(doms.get(d, {}).get("allocations", 0) > 0, "%s: no allocations in domain %s: %s" % (py, d, doms))
    obj_raw = sum(doms.get(d, {}).get("bytes", 0) for d in ("raw", "mem", "obj"))
    expect(obj_raw >= N * SIZE, "%s: raw+mem+obj bytes %d < %d" % (py, obj_raw, N * SIZE))
    return full


@per_interpreter
def test_pymem_bytearrays_seen_once(py):
    _check_seen(py)


@per_interpreter
def test_pymem_kept_until_exit(py):
    s = _summary(py, "alloc", "keep")
    obj_raw = sum(s["domains"].get(d, {}).get("bytes", 0) for d in ("raw", "mem", "obj"))
    expect(obj_raw >= N * SIZE, "%s: raw+mem+obj bytes %d < %d" % (py, obj_raw, N * SIZE))
    expect(s["peak_bytes"] >= N * SIZE, "%s: peak %d < %d" % (py, s["peak_bytes"], N * SIZE))


@per_interpreter
def test_pymem_pythonmalloc_malloc(py):
    # no pymalloc: every domain forwards to libc, still counted once. Free-threaded
    # builds only accept mimalloc allocators; setting one still replaces all domains.
    _check_seen(py, env={"PYTHONMALLOC": "mimalloc" if py.free_threaded else "malloc"}, arena=False)


@per_interpreter
def test_pymem_dev_mode(py):
    _check_seen(py, args=("-X", "dev"), arena=not py.free_threaded)


@per_interpreter
def test_pymem_domains_tagged(py):
    s = _summary(py, "none", "keep")
    for d in ("raw", "mem", "obj"):
        expect(s["domains"].get(d, {}).get("allocations", 0) > 0, "%s: domain %s empty: %s" % (py, d, s["domains"]))
    if not py.free_threaded:
        expect(s["domains"].get("arena", {}).get("allocations", 0) > 0, "%s: no arena blocks" % py)


STATS_PROG = """
import sys
small = [{"i": i} for i in range(2000)]
sys._debugmallocstats()
keep = [(i, str(i)) for i in range(%d)]
""" % (40 * N)
STATS_FIRST_LINE = "Small block threshold"  # pymalloc's and mimalloc's section


@per_interpreter
def test_pymem_debugmallocstats_unchanged(py):
    # CPython prints its allocator's statistics only when that allocator itself
    # tops the OBJ domain; under refscope sys._debugmallocstats() prints them as
    # it does untraced (also under the debug hooks), and the wrapper is back on
    # top after the call: the objects made next are in the OBJ domain.
    script = harness.write_script(STATS_PROG)
    for env in (None, {"PYTHONMALLOC": "debug"}):
        plain = harness.run([py.path, script], env=env, timeout=60)
        expect(plain.returncode == 0, "%s %s: untraced exit %d: %s" % (py, env, plain.returncode, plain.stderr[-500:]))
        t = harness.run_traced([py.path, script], env=env, timeout=120)
        want, got = STATS_FIRST_LINE in plain.stderr, STATS_FIRST_LINE in t.proc.stderr
        expect(want == got, "%s %s: allocator statistics untraced %s, traced %s" % (py, env, want, got))
        expect(t.proc.stderr.count("free PyDictObjects") == plain.stderr.count("free PyDictObjects"),
               "%s %s: type statistics differ" % (py, env))
        s = harness.refscope_json("summary", t.trace)
        expect(s["unknown_frees"] == 0, "%s %s: %d frees of blocks never seen" % (py, env, s["unknown_frees"]))
        obj = s["domains"]["obj"]["allocations"]
        expect(obj >= 2 * 40 * N, "%s %s: %d OBJ allocations, < %d after the call" % (py, env, obj, 2 * 40 * N))


OWN_PROG = """
import gc, sys
keep = []
for i in range(30):
    keep.append([{"i": i} for _ in range(200)])
    gc.collect(i % 3)
gc.set_threshold(500, 5, 5)
"""


@per_interpreter
def test_pymem_refscope_own_apart(py):
    # What refscope's own Python work allocates (the gc module it imports, its
    # callbacks, the census, the exit snapshot) is recorded flagged as its own:
    # the program's later frees of those blocks are not frees of unknown blocks,
    # and none of it is in the program's figures.
    script = harness.write_script(OWN_PROG)
    t = harness.run_traced([py.path, script], timeout=120)
    s = harness.refscope_json("summary", t.trace)
    own = s["refscope_own"]
    expect(s["unknown_frees"] == 0, "%s: %d frees of blocks never seen" % (py, s["unknown_frees"]))
    expect(own["allocations"] > 0, "%s: no allocations of refscope's own: %s" % (py, own))
    expect(own["frees"] <= own["allocations"], "%s: own frees > allocations: %s" % (py, own))
    expect(own["live_bytes_end"] < 256 * 1024, "%s: refscope's own live at end %d" % (py, own["live_bytes_end"]))
    # nor in the sites: `top` counts what `summary` counts
    top = harness.refscope_json("top", "--by", "total", t.trace)
    expect(top["allocations"] == s["allocations"],
           "%s: top counts %d allocations, summary %d" % (py, top["allocations"], s["allocations"]))


OLD_PROG = PROG + """
import gc
gc.collect()
"""


def test_pymem_older_interpreters_allocations_and_collections():
    # Before 3.9 refscope traces allocations (every domain) and, from 3.7,
    # collections: the program runs as it would, and stderr says, in one line each, that
    # Python stacks and snapshots are off. Nothing else.
    olds = harness.older_interpreters()
    if not olds:
        raise harness.Skip("no CPython older than 3.9 found (pyenv's 3.6-3.8 would be used)")
    script = harness.write_script(OLD_PROG)
    for py in olds:
        t = harness.run_traced([py.path, script, "alloc", "keep"], timeout=120)
        expect(t.proc.returncode == 0, "%s: exit %d: %s" % (py, t.proc.returncode, t.proc.stderr))
        s = harness.refscope_json("summary", t.trace)
        expect(s["python_version"] == "%d.%d.%d" % py.version, "%s: python_version %s" % (py, s["python_version"]))
        for d in ("raw", "mem", "obj"):
            expect(s["domains"][d]["allocations"] > 0, "%s: domain %s empty: %s" % (py, d, s["domains"]))
        expect(s["peak_bytes"] >= N * SIZE, "%s: peak %d < %d" % (py, s["peak_bytes"], N * SIZE))
        lines = [ln for ln in t.proc.stderr.splitlines() if ln.startswith("refscope:") and "wrote" not in ln]
        want = ["refscope: Python stacks are off on CPython %d.%d (3.9 and later have them)" % py.version[:2],
                "refscope: snapshots are off on CPython %d.%d (3.9-3.13 have them)" % py.version[:2]]
        expect(lines == want, "%s: stderr lines %s, expected %s" % (py, lines, want))
        gen2 = harness.refscope_json("gc", t.trace)["generations"][2]
        if py.version >= (3, 7, 0):  # 3.6 registers no gc callback: allocations only
            expect(gen2["collections_traced"] >= 1, "%s: gc.collect() not seen: %s" % (py, gen2))
        expect(gen2["promoted"] is None, "%s: promotions without a census: %s" % (py, gen2))


FULL_N, FULL_SIZE = 100000, 333
FULL_PROG = """
import os, sys
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.readline()
keep = [bytearray(%d) for _ in range(%d)]
print(len(keep), flush=True)
os._exit(0)
""" % (FULL_SIZE, FULL_N)


def _full_ring(py, lossy):
    """The program fills its 1 MiB ring (32768 slots) while the recorder is
    stopped (SIGSTOP on `refscope run`, whose thread it is), then the
    recorder goes on. Returns the summary."""
    d = harness.workdir()
    script = os.path.join(d, "full.py")
    with open(script, "w") as f:
        f.write(FULL_PROG)
    trace = os.path.join(d, "trace.rfs")
    args = [harness.refscope_bin(), "run", "-o", trace, "--ring-mb", "1", "--no-stacks", "--no-gc"]
    proc = subprocess.Popen(args + (["--lossy"] if lossy else []) + ["--", py.path, script], cwd=d,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONHASHSEED="0"))
    try:
        expect(proc.stdout.readline().strip() == "ready", "%s: the program did not start" % py)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(0.5)  # the program fills the ring in a few ms, then waits or drops
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    expect(proc.returncode == 0 and out.strip() == str(FULL_N),
           "%s lossy=%s: exit %d, printed %r: %s" % (py, lossy, proc.returncode, out, err[-500:]))
    s = harness.refscope_json("summary", trace)
    s["buffers"] = sum(1 for r in harness.dump_records(trace, "--kind", "alloc") if r["size"] == FULL_SIZE + 1)
    return s


@per_interpreter
def test_pymem_full_ring(py):
    # Lossless (the default): a producer that finds the ring full waits, the
    # waits are counted, nothing is lost, every bytearray is in the trace.
    # Lossy: records are dropped and counted as lost events instead, and what
    # was recorded plus what was lost is what the lossless run recorded
    # (within 1%: clock and LOST records differ; 3.13+ records object events
    # too, so records are compared, not allocations).
    full = _full_ring(py, lossy=False)
    expect(full["lost_events"] == 0 and full["producer_waits"] > 0,
           "%s lossless: %d lost, %d waits" % (py, full["lost_events"], full["producer_waits"]))
    expect(FULL_N <= full["buffers"] <= FULL_N + 20 and full["live_bytes_end"] >= FULL_N * (FULL_SIZE + 1),
           "%s lossless: %d buffers of %d bytes allocated (%d made), %d bytes live at exit"
           % (py, full["buffers"], FULL_SIZE + 1, FULL_N, full["live_bytes_end"]))
    lossy = _full_ring(py, lossy=True)
    expect(lossy["lost_events"] > 0 and lossy["producer_waits"] == 0,
           "%s lossy: %d lost, %d waits" % (py, lossy["lost_events"], lossy["producer_waits"]))
    seen, want = lossy["records"], full["records"]
    expect(seen < want and abs(seen + lossy["lost_events"] - want) <= want // 100,
           "%s lossy: %d records + %d lost, lossless %d" % (py, seen, lossy["lost_events"], want))
