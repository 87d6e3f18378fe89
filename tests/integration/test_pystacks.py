"""Python call stacks (issue 3, part 1): allocations attributed to the right
file:line and function, per thread, in generators and coroutines, for
exec-created code whose addresses are reused, without taking the profiler
slots, and in agreement with tracemalloc."""
import json
import os
import re

import harness
from harness import expect, per_interpreter


def _lines(text, *tags):
    """Line numbers of the lines holding '# TAG' markers."""
    found = {}
    for i, line in enumerate(text.splitlines(), 1):
        for tag in tags:
            if line.rstrip().endswith("# " + tag):
                found[tag] = i
    return found


def _top(trace):
    for extra in (["--depth", "64", "--limit", "100000"], []):
        proc = harness.refscope("top", "--json", *extra, trace)
        if proc.returncode == 0:
            return json.loads(proc.stdout)["sites"]
    raise AssertionError("refscope top failed (%d): %s" % (proc.returncode, proc.stderr.strip()))


def _traced_sites(py, text, args=(), env=None):
    script = harness.write_script(text)
    t = harness.run_traced([py.path, *args, script], env=env, timeout=180)
    return script, t, _top(t.trace)


def _at(sites, script, line, depth=0):
    """Sites whose frame `depth` (0 = innermost) is script:line."""
    base = os.path.basename(script)
    out = []
    for s in sites:
        fr = s.get("frames") or []
        if len(fr) > depth and fr[depth].get("line") == line and os.path.basename(fr[depth].get("file") or "") == base:
            out.append(s)
    return out


def _sum(sites, key):
    return sum(s.get(key, 0) for s in sites)


KNOWN = """
import os
def make_a():
    out = []
    for _ in range(3000):
        out.append(bytearray(1000))  # A
    return out
class K:
    def make_b(self):
        out = []
        for _ in range(2000):
            out.append(bytearray(2000))  # B
        return out
a = make_a()  # CALL_A
b = K().make_b()
os._exit(0)
"""


@per_interpreter
def test_pystacks_known_lines(py):
    ln = _lines(KNOWN, "A", "B", "CALL_A")
    script, _, sites = _traced_sites(py, KNOWN)
    a, b = _at(sites, script, ln["A"]), _at(sites, script, ln["B"])
    expect(_sum(a, "bytes") >= 3000 * 1000, "%s: line %d has %d bytes" % (py, ln["A"], _sum(a, "bytes")))
    expect(_sum(b, "bytes") >= 2000 * 2000, "%s: line %d has %d bytes" % (py, ln["B"], _sum(b, "bytes")))
    expect(_sum(a, "bytes") < 3000 * 1300, "%s: line %d over-counted: %d" % (py, ln["A"], _sum(a, "bytes")))
    expect(_sum(a, "live_bytes_end") >= 3000 * 1000, "%s: live at end at line A: %d" % (py, _sum(a, "live_bytes_end")))
    fa = a[0]["frames"]
    expect(fa[0]["function"] == "make_a", "%s: innermost function %r" % (py, fa[0]["function"]))
    expect(fa[1]["line"] == ln["CALL_A"] and fa[1]["function"] == "<module>", "%s: caller frame %r" % (py, fa[1]))
    fb = b[0]["frames"][0]["function"]
    want = "K.make_b" if py.version >= (3, 11) else "make_b"
    expect(fb == want, "%s: method named %r, expected %r" % (py, fb, want))


THREADS = """
import os, threading
barrier = threading.Barrier(2)
res = {}
def worker_a():
    barrier.wait()
    out = []
    for i in range(2000):
        out.append(bytearray(1500))  # TA
        if i % 50 == 0: os.sched_yield()
    res['a'] = out
def worker_b():
    barrier.wait()
    out = []
    for i in range(2000):
        out.append(bytearray(2500))  # TB
        if i % 50 == 0: os.sched_yield()
    res['b'] = out
ts = [threading.Thread(target=worker_a), threading.Thread(target=worker_b)]
for t in ts: t.start()
for t in ts: t.join()
os._exit(0)
"""


@per_interpreter
def test_pystacks_threads(py):
    ln = _lines(THREADS, "TA", "TB")
    script, _, sites = _traced_sites(py, THREADS)
    for tag, size, fn in (("TA", 1500, "worker_a"), ("TB", 2500, "worker_b")):
        got = _at(sites, script, ln[tag])
        total = _sum(got, "bytes")
        # each allocation of the other thread mis-attributed here would move the total
        expect(2000 * size <= total <= 2000 * (size + 150),
               "%s: line %d (%s) has %d bytes, expected ~%d" % (py, ln[tag], tag, total, 2000 * size))
        expect(all(s["frames"][0]["function"] == fn for s in got), "%s: wrong function at %s" % (py, tag))


GENCORO = """
import asyncio, os
def gen():
    for i in range(2000):
        yield bytearray(1200)  # G
def consume():
    return list(gen())  # C
async def coro():
    out = []
    for i in range(2000):
        out.append(bytearray(1300))  # K
        if i % 100 == 0:
            await asyncio.sleep(0)
    return out
g = consume()
k = asyncio.run(coro())
os._exit(0)
"""


@per_interpreter
def test_pystacks_generator_coroutine(py):
    ln = _lines(GENCORO, "G", "C", "K")
    script, _, sites = _traced_sites(py, GENCORO)
    g = _at(sites, script, ln["G"])
    expect(_sum(g, "bytes") >= 2000 * 1200, "%s: generator line has %d bytes" % (py, _sum(g, "bytes")))
    expect(all(s["frames"][0]["function"] == "gen" for s in g), "%s: generator frame name" % py)
    expect(any(len(s["frames"]) > 1 and s["frames"][1]["line"] == ln["C"] for s in g),
           "%s: generator not attributed below consume(): %r" % (py, [s["frames"][:2] for s in g][:3]))
    k = _at(sites, script, ln["K"])
    expect(_sum(k, "bytes") >= 2000 * 1300, "%s: coroutine line has %d bytes" % (py, _sum(k, "bytes")))
    expect(all(s["frames"][0]["function"] == "coro" for s in k), "%s: coroutine frame name" % py)


EXECLOOP = """
import os
keep = []
for i in range(300):
    ns = {}
    exec("def f_%d():\\n    return bytearray(%d)\\n" % (i, 1000 + 7 * i), ns)
    keep.append(ns["f_%d" % i]())
    del ns
os._exit(0)
"""


@per_interpreter
def test_pystacks_exec_reused_code(py):
    _, _, sites = _traced_sites(py, EXECLOOP)
    by_name = {}
    for s in sites:
        fr = s.get("frames") or []
        m = re.fullmatch(r"f_(\d+)", fr[0].get("function") or "") if fr else None
        if m and fr[0].get("file") == "<string>":
            by_name.setdefault(int(m.group(1)), []).append(s)
    expect(len(by_name) >= 290, "%s: only %d exec'd functions seen" % (py, len(by_name)))
    for i, ss in by_name.items():
        size = 1000 + 7 * i
        total = _sum(ss, "bytes")
        # the buffer (size+1) and the bytearray object; another function's
        # allocation under this name would add >= 1000 bytes
        expect(size <= total <= size + 200, "%s: f_%d has %d bytes, expected ~%d" % (py, i, total, size))


EXEC_MANY = """
import os
for i in range(70000):           # 140000 code objects over the run, few alive at once
    ns = {}
    exec("def f():\\n    return bytearray(1000)\\n", ns)
    ns["f"]()
os._exit(0)
"""


@per_interpreter
def test_pystacks_dead_code_makes_room(py):
    """More code objects over a run than the shim's code table holds, as a
    long-running program making namedtuples or exec'ing templates has: the
    dead ones' slots are taken over, and no frame is left without its code."""
    _, _, sites = _traced_sites(py, EXEC_MANY)
    unknown = _sum([s for s in sites if any(f.get("function") == "<unknown code>"
                                           for f in s.get("frames") or [])], "allocations")
    in_f = _sum([s for s in sites if (s.get("frames") or [{}])[0].get("function") == "f"
                 and s["frames"][0].get("file") == "<string>"], "allocations")
    expect(unknown == 0, "%s: %d allocations have a frame of unknown code" % (py, unknown))
    expect(in_f >= 70000, "%s: %d allocations in the exec'd f(), expected >= 70000" % (py, in_f))


MANY_STACKS = """
import os
src = "".join("def f%d():\\n    return bytearray(1000)\\n" % k for k in range(40))
ns = {}
exec(compile(src, "many_gen.py", "exec"), ns)
def rec(n, f):
    if n == 0:
        return f()
    return rec(n - 1, f)
for rnd in range(3):                # 4000 distinct stacks, each seen 3 times
    for k in range(40):
        for d in range(100):
            rec(d, ns["f%d" % k])
os._exit(0)
"""


@per_interpreter
def test_pystacks_full_table_makes_room(py):
    """More distinct stacks than the shim's stack table holds (1024 slots
    here, 262144 by default): entries not seen lately are taken over, a stack
    whose entry was taken is defined again when next seen, and every
    allocation keeps its stack."""
    _, t, sites = _traced_sites(py, MANY_STACKS, env={"REFSCOPE_TEST_STACK_SLOTS": "1024"})
    per_f = {}
    for s in sites:
        fr = s.get("frames") or []
        if fr and fr[0].get("file") == "many_gen.py" and fr[0].get("function") != "<module>":
            per_f[fr[0]["function"]] = per_f.get(fr[0]["function"], 0) + s["bytes"]
    short = {f: b for f, b in per_f.items() if b < 300 * 1000}
    expect(len(per_f) == 40 and not short,
           "%s: 40 functions with >= 300 KB each expected (3 x 100 calls of bytearray(1000)): "
           "%d functions, short %r" % (py, len(per_f), dict(list(short.items())[:5])))
    dump = harness.refscope("dump", "--kind", "py_stack", t.trace)
    defs = dump.stdout.count("\n")
    expect(dump.returncode == 0 and defs > 4000,
           "%s: stacks should be defined again after their entries were taken: %d definitions" % (py, defs))


PROFILE = """
import sys
def target():
    return [bytearray(100) for _ in range(10)]
calls, lines = [], []
def prof(frame, event, arg):
    if event == "call":
        calls.append(frame.f_code.co_name)
def trace(frame, event, arg):
    if event == "line":
        lines.append(frame.f_lineno)
    return trace
sys.setprofile(prof)
target()
sys.setprofile(None)
sys.settrace(trace)
target()
sys.settrace(None)
print("profile-calls=%d trace-lines=%d" % (calls.count("target"), len(lines)))
"""


@per_interpreter
def test_pystacks_user_profiler_and_tracer(py):
    script = harness.write_script(PROFILE)
    t = harness.run_traced([py.path, script], timeout=120)
    m = re.search(r"profile-calls=(\d+) trace-lines=(\d+)", t.proc.stdout)
    expect(m and int(m.group(1)) >= 1 and int(m.group(2)) >= 2,
           "%s: user callbacks not called under refscope: %r" % (py, t.proc.stdout))
    plain = harness.run([py.path, script], timeout=60)
    expect(plain.stdout == t.proc.stdout, "%s: output differs traced/untraced: %r vs %r" % (py, t.proc.stdout, plain.stdout))
    expect(any((s.get("frames") or [{}])[0].get("function", "").endswith("target") or
               any(f.get("function") == "target" for f in s.get("frames") or [])
               for s in _top(t.trace)), "%s: no stack through target()" % py)


TRACEMALLOC = """
import os, sys, json
def w1():
    return [bytearray(3000) for _ in range(1000)]  # L1
def w2():
    return [str(i) * 50 for i in range(20000)]  # L2
def w3():
    return {i: (i, i + 1) for i in range(20000)}  # L3
def w4():
    return [list(range(40)) for _ in range(2000)]  # L4
held = [w1(), w2(), w3(), w4()]
if sys.argv[1:] == ["tm"]:
    import tracemalloc
    snap = tracemalloc.take_snapshot()
    stats = snap.statistics("lineno")
    print(json.dumps([[os.path.basename(s.traceback[0].filename), s.traceback[0].lineno, s.size] for s in stats[:10]]))
os._exit(0)
"""


@per_interpreter
def test_pystacks_agree_with_tracemalloc(py):
    script = harness.write_script(TRACEMALLOC)
    tm = harness.run([py.path, "-X", "tracemalloc", script, "tm"], timeout=120)
    expect(tm.returncode == 0, "%s: tracemalloc run failed: %s" % (py, tm.stderr[-500:]))
    truth = json.loads(tm.stdout.strip().splitlines()[-1])
    t = harness.run_traced([py.path, script], timeout=180)
    sites = _top(t.trace)
    base = os.path.basename(script)
    checked = 0
    for fname, line, size in truth[:4]:
        if fname != base or size < 200000:
            continue
        ours = _sum(_at(sites, script, line), "live_bytes_end")
        expect(abs(ours - size) <= 0.05 * size,
               "%s: line %d: refscope %d live bytes, tracemalloc %d" % (py, line, ours, size))
        checked += 1
    expect(checked >= 3, "%s: only %d top lines compared: %r" % (py, checked, truth[:4]))


# Objects made in fresh blocks (instances, lists, dicts from several
# functions, threads, a generator, a coroutine, exceptions) and from free
# lists (floats, tuples), on 3.13+ where each creation is announced too.
OBJECT_STACKS = r"""
import asyncio, threading
class Thing:
    def __init__(self, i):
        self.i = i
def gen(n):
    for i in range(n):
        yield Thing(i), float(i) * 0.5, (i, i + 1)
def worker(n):
    out = []
    for t, f, p in gen(n):
        try:
            if t.i % 5 == 0:
                raise KeyError(t.i)
            out.append({"t": t, "f": f, "p": [p]})
        except KeyError as e:
            out.append(e)
    return out
async def co(n):
    acc = []
    for i in range(n):
        await asyncio.sleep(0)
        acc.append(Thing(i))
    return acc
def make_dict(i):
    return {"a": i, "b": i}   # its keys: an OBJ block that holds no object
def make_float(i):
    return i * 0.25           # from the float free list: walked, not reused
for i in range(5000):
    d = make_dict(i)
    f = make_float(i)
ts = [threading.Thread(target=worker, args=(3000,)) for _ in range(3)]
for t in ts:
    t.start()
asyncio.run(co(2000))
worker(3000)
for t in ts:
    t.join()
"""


@per_interpreter
def test_object_stacks_reused_from_block(py):
    """3.13+: an object created in the block its thread allocated last takes
    that block's stack instead of walking the frames again. With
    REFSCOPE_STACK_CHECK=1 every reuse is also walked: none may differ."""
    if py.version < (3, 13):
        raise harness.Skip("%s: no object events before 3.13" % py)
    script = harness.write_script(OBJECT_STACKS, "objstacks.py")
    traced = harness.run_traced([py.path, script], env={"REFSCOPE_STACK_CHECK": "1"}, timeout=180)
    m = re.search(r"stack check: (\d+) object stacks taken from their block, (\d+) differ",
                  traced.proc.stderr)
    expect(m, "%s: no stack check report in %r" % (py, traced.proc.stderr[-500:]))
    reused, differ = int(m.group(1)), int(m.group(2))
    expect(reused > 20000, "%s: only %d reuses" % (py, reused))
    expect(differ == 0, "%s: %d of %d reused object stacks differ from a walk" % (py, differ, reused))


def _stack_check_agrees(py, text, name, at_least):
    """Runs `text` with REFSCOPE_STACK_CHECK=1 (every stack the thread cache
    finds from raw frames is also found by a walk) and expects at least
    `at_least` of them checked, none different."""
    script = harness.write_script(text, name)
    traced = harness.run_traced([py.path, script], env={"REFSCOPE_STACK_CHECK": "1"}, timeout=180)
    expect(traced.proc.returncode == 0, "%s: exit %d: %s" % (py, traced.proc.returncode,
                                                            traced.proc.stderr[-500:]))
    m = re.search(r"(\d+) stacks found from raw frames, (\d+) differ", traced.proc.stderr)
    expect(m, "%s: no stack check report in %r" % (py, traced.proc.stderr[-500:]))
    found, differ = int(m.group(1)), int(m.group(2))
    expect(found > at_least, "%s: only %d stacks checked" % (py, found))
    expect(differ == 0, "%s: %d of %d stacks from raw frames differ from a walk" % (py, differ, found))


# Stacks whose outer frames change all the time: recursion deeper than the
# 128 frames a stack keeps and than the raw frames read (260), calls back from C (sorted's key, map), closures
# and class bodies, generators and coroutines resumed from different
# callers, exec'd functions dying and reborn at the same addresses, threads.
RAW_FRAMES = r"""
import asyncio, threading
def deep(n):
    return [n] * 3 if n == 0 else deep(n - 1) + [n]
def deepc(n):  # every level called from C (map): an entry frame between each
    return list(map(deepc, [n - 1])) if n else [bytearray(3)]
def keyed(x):
    return (x % 7, [x])
def gen(n):
    for i in range(n):
        yield [i] * 2
def pull(g, k):
    return [next(g) for _ in range(k)]
async def co(n):
    acc = []
    for i in range(n):
        await asyncio.sleep(0)
        acc.append({"i": i})
    return acc
def work(rounds):
    for r in range(rounds):
        deep(150 if r % 10 == 0 else 300 if r % 10 == 5 else r % 20)
        deepc(200 if r % 10 == 3 else r % 5)
        if r % 10 == 7:
            deepc(100)  # the same 200 innermost raw frames from two callers
        sorted(range(50), key=keyed)
        list(map(lambda v: [v, v], range(20)))
        g = gen(40)
        pull(g, 10); [x for x in g]
        ns = {}
        exec("def f():\n    return [bytearray(%d)]\n" % (100 + r), ns)
        ns["f"]()
        if r % 10 == 8:
            deepc(100)
        class C:
            items = [dict(a=r)]
ts = [threading.Thread(target=work, args=(150,)) for _ in range(2)]
for t in ts:
    t.start()
work(150)
asyncio.run(co(500))
for t in ts:
    t.join()
"""


@per_interpreter
def test_raw_frame_cache_agrees_with_walks(py):
    """The thread cache finds stacks from raw frames (pystack.c); with
    REFSCOPE_STACK_CHECK=1 each one is also found by walking the frames
    proper: none may differ, on a workload whose outer frames keep changing."""
    _stack_check_agrees(py, RAW_FRAMES, "rawframes.py", 50000)


# Eight threads released together into a function that was just made: on a
# free-threaded build they meet its code object and its stacks for the first
# time at the same moment, and the tables must define each once (a lookup
# that skipped a slot another thread had claimed defined it twice, under two
# ids: the thread caches then disagreed with a walk tens of times a run).
SAME_NEW_CODE = r"""
import threading
N, ROUNDS = 8, 100
bar = threading.Barrier(N + 1)
box = {}
def worker():
    for r in range(ROUNDS):
        bar.wait()
        box["f"]()
        bar.wait()
ts = [threading.Thread(target=worker) for _ in range(N)]
for t in ts:
    t.start()
for r in range(ROUNDS):
    ns = {}
    exec("def f_%d():\n    return [bytearray(10) for _ in range(3)]\n" % r, ns)
    box["f"] = ns["f_%d" % r]
    bar.wait()
    bar.wait()
for t in ts:
    t.join()
"""


@per_interpreter
def test_threads_meeting_new_code_define_it_once(py):
    _stack_check_agrees(py, SAME_NEW_CODE, "samecode.py", 10000)
