"""Heap snapshots (issue 5): cycles, leaks, diff, and snapshots that leave no
trace, on every interpreter found."""
import os
import textwrap

from harness import (Skip, expect, per_interpreter, refscope, refscope_json, run_traced, write_script)

TIMEOUT = 180


def _trace(py, source, env=None, files=None, run_args=()):
    script = write_script(textwrap.dedent(source))
    d = os.path.dirname(script)
    for name, text in (files or {}).items():
        with open(os.path.join(d, name), "w") as f:
            f.write(textwrap.dedent(text))
    run = run_traced([py.path, script], run_args=run_args, env=env, timeout=TIMEOUT, cwd=d)
    return run, script


def _cycles(trace, *extra):
    return refscope_json("cycles", *extra, trace, timeout=TIMEOUT)


def _types(group):
    return sorted(o["type"] for o in group["objects"])


@per_interpreter
def test_two_instances_cycle(py):
    run, _ = _trace(py, """
        import gc
        gc.disable()
        class RsCycA: pass
        class RsCycB: pass
        a = RsCycA(); b = RsCycB()
        a.partner = b; b.partner = a
        del a, b
    """)
    data = _cycles(run.trace)
    groups = [g for g in data["groups"] if {"RsCycA", "RsCycB"} & set(_types(g))]
    expect(len(groups) == 1, "expected one group with RsCycA/RsCycB, got %r" % [_types(g) for g in groups])
    g = groups[0]
    expect(g["kind"] == "garbage", "kind %r" % g["kind"])
    types = _types(g)
    expect(types.count("RsCycA") == 1 and types.count("RsCycB") == 1, "members %r" % types)
    # instance dicts exist as objects before 3.11 (managed dicts after)
    expect(set(types) <= {"RsCycA", "RsCycB", "dict"}, "members %r" % types)
    if py.version < (3, 11):
        expect(types.count("dict") == 2, "3.9/3.10 should show both instance dicts: %r" % types)
    for o in g["objects"]:
        expect(isinstance(o["refcount"], int) and o["refcount"] >= 1, "refcount %r" % o)
        expect(o["size"] > 0, "size %r" % o)
        expect("frames" in o, "frames missing")


SELF_CYCLES = """
    import gc
    {setup}
    def make_self_cycles():
        for i in range(8):
            l = [None] * 1000
            l.append(l)
    make_self_cycles()
    {after}
"""


def _self_cycle_groups(data):
    return [g for g in data["groups"]
            if _types(g) == ["list"] and g["objects"][0]["size"] >= 8000 and g["cycles"] == 1]


@per_interpreter
def test_self_cycles_gc_disabled(py):
    run, _ = _trace(py, SELF_CYCLES.format(setup="gc.disable()", after=""))
    # groups of one shape are one entry with a count (before 3.13 a list from
    # the freelist keeps the site of its first allocation: the 8 lists may
    # show several sites, so several entries)
    data = _cycles(run.trace)
    found = _self_cycle_groups(data)
    expect(sum(g["count"] for g in found) == 8,
           "expected 8 self-cycles, got %r" % [g["count"] for g in found])
    expect(all(g["kind"] == "garbage" and g["sccs"] == [[0]] for g in found), "groups %r" % found[:1])
    # --all lists each of them on its own
    found = _self_cycle_groups(_cycles(run.trace, "--all"))
    expect(len(found) == 8 and all(g["count"] == 1 for g in found),
           "expected 8 self-cycles with --all, got %r" % [g["count"] for g in found])
    expect(all(g["kind"] == "garbage" and g["sccs"] == [[0]] for g in found), "groups %r" % found[:1])
    proc = refscope("cycles", run.trace, timeout=TIMEOUT)
    expect(proc.returncode == 0 and "8 groups" in proc.stdout, proc.stdout[:2000] + proc.stderr)
    # garbage is not a leak: leaks leaves it out of its candidates and counts it apart
    leaks = refscope_json("leaks", run.trace, timeout=TIMEOUT)
    lists = [c for c in leaks["candidates"] if c["type"] == "list" and c["frames"]
             and c["frames"][0]["function"].endswith("make_self_cycles")]
    expect(not lists, "unreachable lists reported as leak candidates: %r" % lists[:1])
    expect(leaks["unreachable"]["objects"] >= 8 and leaks["unreachable"]["bytes"] >= 8 * 8000,
           "unreachable %r" % leaks["unreachable"])


@per_interpreter
def test_self_cycles_collected(py):
    run, _ = _trace(py, SELF_CYCLES.format(setup="", after="gc.collect()"))
    found = _self_cycle_groups(_cycles(run.trace))
    expect(not found, "expected no self-cycles after gc.collect(), got %d" % len(found))


@per_interpreter
def test_debug_saveall_uncollectable(py):
    run, _ = _trace(py, """
        import gc
        gc.set_debug(gc.DEBUG_SAVEALL)
        class RsSaved: pass
        def make():
            x = RsSaved(); y = RsSaved()
            x.y = y; y.x = x
        make()
        gc.collect()
        assert any(type(o).__name__ == "RsSaved" for o in gc.garbage)
    """)
    data = _cycles(run.trace)
    groups = [g for g in data["groups"] if "RsSaved" in _types(g)]
    expect(len(groups) == 1, "expected one RsSaved group, got %r" % [_types(g) for g in groups])
    expect(groups[0]["kind"] == "uncollectable", "kind %r" % groups[0]["kind"])
    expect(all(o["in_gc_garbage"] for o in groups[0]["objects"] if o["type"] == "RsSaved"), "flags")


LEAKY_MODULE = """
    CACHE = []

    def handle(request):
        CACHE.append(bytearray(4096))  # the caching line
        return len(CACHE)
"""


@per_interpreter
def test_leak_candidate_module_cache(py):
    run, script = _trace(py, """
        import leakymod
        def serve():
            for i in range(300):
                leakymod.handle(i)
        serve()
    """, files={"leakymod.py": LEAKY_MODULE})
    data = refscope_json("leaks", run.trace, timeout=TIMEOUT)
    cands = data["candidates"]
    expect(cands, "no candidates")
    top = cands[0]
    expect(top["type"] == "bytearray", "top candidate %r" % {k: top[k] for k in ("type", "count", "bytes", "site")})
    expect(top["count"] >= 300, "count %r" % top["count"])
    expect(top["bytes"] >= 300 * 4096, "bytes %r" % top["bytes"])
    f0 = top["frames"][0]
    expect(f0["file"].endswith("leakymod.py") and f0["line"] == 5, "site %r" % f0)
    chain = top["chain"]
    expect(chain and chain[0] == "module leakymod", "chain %r" % chain)
    expect("key 'CACHE'" in chain and chain[-1] == "bytearray", "chain %r" % chain)


@per_interpreter
def test_leak_rows_group_by_printed_site(py):
    # one allocation line reached from two callers: two stacks, one printed
    # site; the rows follow what is printed, and --depth 2 splits them
    run, _ = _trace(py, """
        KEEP = []
        def alloc(n):
            for _ in range(n):
                KEEP.append(bytearray(3000))  # the one site
        def first():
            alloc(100)
        def second():
            alloc(150)
        first()
        second()
    """)
    data = refscope_json("leaks", run.trace, timeout=TIMEOUT)
    rows = [c for c in data["candidates"] if c["type"] == "bytearray"]
    expect(len(rows) == 1 and rows[0]["count"] == 250, "rows %r" % [(c["site"], c["count"]) for c in rows])
    expect(rows[0]["frames"][0]["line"] == 5 and len(rows[0]["frames"]) >= 3, "frames %r" % rows[0]["frames"])
    expect("key 'KEEP'" in rows[0]["chain"], "chain %r" % rows[0]["chain"])
    sites = [c["site"] for c in data["candidates"]]
    expect(len(sites) == len(set((c["site"], c["type"]) for c in data["candidates"])), "duplicate rows %r" % sites)
    deep = refscope_json("leaks", "--depth", "2", run.trace, timeout=TIMEOUT)
    rows = sorted(c["count"] for c in deep["candidates"] if c["type"] == "bytearray")
    expect(rows == [100, 150], "--depth 2 rows %r" % rows)


@per_interpreter
def test_snapshot_while_threads_run(py):
    run, _ = _trace(py, """
        import os, signal, threading, time
        stop = False
        def work(n):
            keep = []
            while not stop:
                keep.append({"n": n, "l": [n] * 10})
                if len(keep) > 500:
                    keep.clear()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.2)
        stop = True
        for t in threads:
            t.join()
    """, env={"REFSCOPE_SNAPSHOT_INTERVAL": "1"})
    data = _cycles(run.trace)
    reasons = [s["reason"] for s in data["snapshots"]]
    expect(reasons.count("signal") >= 1, "snapshots %r" % reasons)
    expect(reasons[-1] == "exit", "snapshots %r" % reasons)
    expect(all(s["status"] == 0 and s["objects"] > 1000 for s in data["snapshots"]), "%r" % data["snapshots"])
    diff = refscope_json("diff", run.trace, timeout=TIMEOUT)
    expect("types" in diff and "sites" in diff, "diff keys %r" % list(diff))


@per_interpreter
def test_snapshot_leaves_no_trace(py):
    run, _ = _trace(py, """
        import gc, os, signal, sys, time
        objs = [object(), [], {}, "refscope-marker", (1, 2), 10**30, type("K", (), {})]
        objs.append(objs[-1]())
        before = [sys.getrefcount(o) for o in objs]
        counts = gc.get_count()
        try:
            raise ValueError("pending")
        except ValueError:
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(100000):
                pass
            time.sleep(0.1)
            assert sys.exc_info()[0] is ValueError, sys.exc_info()
        after = [sys.getrefcount(o) for o in objs]
        assert before == after, (before, after)
        print("ok")
    """)
    expect("ok" in run.proc.stdout, "program output %r %r" % (run.proc.stdout, run.proc.stderr[-2000:]))
    data = _cycles(run.trace)
    reasons = [s["reason"] for s in data["snapshots"]]
    expect(reasons == ["signal", "exit"], "snapshots %r" % reasons)


@per_interpreter
def test_sigusr2_looks_default_to_the_program(py):
    """The shim catches SIGUSR2 for snapshots, but the program sees the
    default it left there: it can save, replace and restore it (CPython's
    test_signal does), its own handler gets the signal, and once it restores
    the default the shim takes snapshots again."""
    run, _ = _trace(py, """
        import os, signal, time
        def caught_by_kernel():
            with open("/proc/self/status") as f:
                line = [l for l in f if l.startswith("SigCgt:")][0]
            return bool(int(line.split()[1], 16) >> (signal.SIGUSR2 - 1) & 1)
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL, signal.getsignal(signal.SIGUSR2)
        assert caught_by_kernel()
        got = []
        old = signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))
        assert old == signal.SIG_DFL, old
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(100):
            if got:
                break
            time.sleep(0.01)
        assert got == [signal.SIGUSR2], got
        signal.signal(signal.SIGUSR2, old)  # raised TypeError when the shim's handler showed
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        assert not caught_by_kernel()
        os.kill(os.getpid(), signal.SIGUSR2)  # ignored: no snapshot
        time.sleep(0.1)
        assert signal.signal(signal.SIGUSR2, signal.SIG_DFL) == signal.SIG_IGN
        assert caught_by_kernel()
        import ctypes  # C's signal() family goes through the same bookkeeping
        libc = ctypes.CDLL(None)
        for name in ("signal", "bsd_signal", "sysv_signal"):
            fn = getattr(libc, name)
            fn.restype, fn.argtypes = ctypes.c_void_p, (ctypes.c_int, ctypes.c_void_p)
            assert not fn(signal.SIGUSR2, 1), name  # SIG_IGN; the default was
            assert not caught_by_kernel(), name
            assert fn(signal.SIGUSR2, 0) == 1, name
            assert caught_by_kernel(), name
        os.kill(os.getpid(), signal.SIGUSR2)  # the default again: the shim's
        for _ in range(100000):
            pass
        time.sleep(0.1)
        print("ok")
    """)
    expect("ok" in run.proc.stdout, "program output %r %r" % (run.proc.stdout, run.proc.stderr[-2000:]))
    reasons = [s["reason"] for s in _cycles(run.trace)["snapshots"]]
    expect(reasons == ["signal", "exit"], "snapshots %r" % reasons)


def test_cycles_dot_output():
    import harness
    run, _ = _trace(harness.first_interpreter(), """
        import gc
        gc.disable()
        class RsDot: pass
        a = RsDot(); a.me = a
        del a
    """)
    out = os.path.join(run.workdir, "g.dot")
    proc = refscope("cycles", "--dot", out, run.trace, timeout=TIMEOUT)
    expect(proc.returncode == 0, proc.stderr)
    with open(out) as f:
        text = f.read()
    expect(text.startswith("digraph") and "RsDot" in text, text[:500])


@per_interpreter
def test_interval_snapshots_diff_and_growth(py):
    run, _ = _trace(py, """
        import time
        HOLD = []
        def grow():
            HOLD.append([bytearray(1000) for _ in range(50)])  # grows every tick
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            grow()
            time.sleep(0.05)
    """, run_args=("--snapshot-interval", "1"))
    data = _cycles(run.trace)
    reasons = [s["reason"] for s in data["snapshots"]]
    expect(reasons.count("interval") >= 2 and reasons[-1] == "exit", "snapshots %r" % reasons)
    diff = refscope_json("diff", run.trace, timeout=TIMEOUT)
    top = {r["type"]: r for r in diff["types"]}
    expect("bytearray" in top and top["bytearray"]["count_delta"] > 0, "diff types %r" % diff["types"][:5])
    sites = [r for r in diff["sites"] if r["type"] == "bytearray"]
    expect(sites and any(f["function"].endswith("grow") or "listcomp" in f["function"]
                         for f in sites[0]["frames"]), "diff sites %r" % sites[:1])
    first, last = data["snapshots"][0]["snapshot"], data["snapshots"][-1]["snapshot"]
    explicit = refscope_json("diff", run.trace, str(first), str(last), timeout=TIMEOUT)
    expect(explicit["a"] == first and explicit["b"] == last, "explicit diff %r" % explicit.get("a"))
    leaks = refscope_json("leaks", run.trace, timeout=TIMEOUT)
    growing = [g for g in leaks["growth"] if g["source"] == "snapshots"]
    expect(growing and growing[0]["slope_bytes_per_s"] > 0, "growth %r" % leaks["growth"][:2])
