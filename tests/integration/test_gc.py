"""Ground truth for issue 4: `refscope gc` and `refscope lifetimes` against
what the interpreter itself reports (gc.get_stats(), gc.get_objects()), on
every interpreter found."""
import json
import os

from harness import (Skip, expect, per_interpreter, refscope_json, run_traced, write_script)

TIMEOUT = 120

STATS_PROG = r"""
import gc, json, sys
class Node:
    def __init__(self, other=None):
        self.other = other if other is not None else self
keep = []
for i in range(30000):
    a = Node(); b = Node(a); a.other = b        # cyclic garbage
    if i % 7 == 0:
        keep.append(Node())                     # survivors (self-cycles, reachable)
gc.collect(1)
for i in range(3000):
    Node()
sys.stdout.write("STATS " + json.dumps(gc.get_stats()) + "\n")
sys.stdout.flush()
"""


def _trace(py, text, run_args=(), name="prog.py"):
    script = write_script(text, name)
    traced = run_traced([py.path, script], run_args=run_args, timeout=TIMEOUT)
    return traced


def _gc_report(traced):
    return refscope_json("gc", traced.trace, timeout=TIMEOUT)


def _has_census(py):
    """The census walks the generation lists of default builds 3.9-3.13."""
    return not py.free_threaded and py.version < (3, 14)


def _printed(traced, tag):
    for line in traced.proc.stdout.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise AssertionError("program printed no %s line; stdout: %s stderr: %s"
                         % (tag, traced.proc.stdout[-1000:], traced.proc.stderr[-1000:]))


@per_interpreter
def test_gc_stats_match_interpreter(py):
    traced = _trace(py, STATS_PROG)
    truth = _printed(traced, "STATS")
    rep = _gc_report(traced)
    gens = rep["generations"]
    expect(len(gens) == 3, "3 generations expected, got %r" % gens)
    for g, st in enumerate(truth[:3]):
        expect(gens[g]["collections"] == st["collections"],
               "gen %d collections: refscope %d, interpreter %d" % (g, gens[g]["collections"], st["collections"]))
        expect(gens[g]["collected"] == st["collected"],
               "gen %d collected: refscope %d, interpreter %d" % (g, gens[g]["collected"], st["collected"]))
        expect(gens[g]["uncollectable"] == st["uncollectable"], "gen %d uncollectable differs" % g)
        for key in ("promoted", "pause_total_ns", "pause_max_ns"):
            expect(key in gens[g], "missing %s" % key)
    expect(sum(st["collections"] for st in truth) > 5, "workload should collect: %r" % truth)
    if _has_census(py):
        expect(rep["census"] and gens[0]["promoted"] is not None and gens[0]["promoted"] > 0,
               "gen-0 promotions expected with the census on: %r" % gens[0])
    else:
        expect(not rep["census"] and any("census" in w for w in rep["warnings"]),
               "no census expected on %s, and a note saying so: %r" % (py.label, rep["warnings"]))


PROMO_PROG = r"""
import gc, sys
gc.disable()
gc.collect()
gc.freeze()
keep = [[i] for i in range(300)]
for i in range(200):
    a = []; b = [a]; a.append(b)
del a, b
gc.collect(0)
sys.stdout.write("PROMOTED %d\n" % len(gc.get_objects(1)))
sys.stdout.flush()
"""


@per_interpreter
def test_gc_promotions_exact(py):
    if not _has_census(py):
        raise Skip("no census: free-threaded GC has no generations; 3.14+ not supported")
    traced = _trace(py, PROMO_PROG)
    truth = _printed(traced, "PROMOTED")
    rep = _gc_report(traced)
    last = [c for c in rep["collections"] if c["generation"] == 0 and not c["shutdown"]]
    expect(last, "no generation-0 collection in the trace")
    expect(last[-1]["promoted"] == truth,
           "promoted by the last gen-0 collection: refscope %r, gc.get_objects(1) %d"
           % (last[-1]["promoted"], truth))
    expect(last[-1]["collected"] >= 400, "the 200 cycles should be collected: %r" % last[-1])


# Promotions of every generation against gc.get_objects(), with generation 1
# not empty and, at its tail, a weakref whose callback the collection runs
# (the collector then moves that weakref to the tail of generation 1: the
# census must not take it for the end of the old members). Truth for a
# generation-g collection: objects in generation g+1 afterwards that were not
# there before (by identity, with the old ones kept alive); for generation 2:
# everything in generation 2 afterwards.
PROMO_ALL_PROG = r"""
import gc, json, sys, weakref
gc.disable()
gc.collect()
out = {}
saved = None
class Res:
    def __del__(self):
        global saved
        saved = self
old = [[i] for i in range(100)]
x = Res()
cb = lambda r: None
gc.collect(0)                  # old, x, cb, ... -> generation 1
wr = weakref.ref(x, cb)
gc.collect(0)                  # wr -> generation 1, last
del x                          # __del__ resurrects x: tracked again, in generation 0
x = saved
saved = None
x.cycle = x
del x                          # cyclic garbage in generation 0, weakly referenced from generation 1
young = [[i] for i in range(50)]
before1 = gc.get_objects(1)
ids1 = set(map(id, before1))
gc.collect(0)
out["gen0"] = sum(1 for o in gc.get_objects(1) if id(o) not in ids1)
out["wr_cleared"] = wr() is None
del before1, ids1
mid = [[i] for i in range(70)]
gc.collect(0)
more = [[i] for i in range(30)]
before2 = gc.get_objects(2)
ids2 = set(map(id, before2))
gc.collect(1)
out["gen1"] = sum(1 for o in gc.get_objects(2) if id(o) not in ids2)
del before2, ids2
young = gc.get_objects(0) + gc.get_objects(1)
ids_young = set(map(id, young))
gc.collect(2)
after = gc.get_objects(2)
out["gen2"] = len(after)
# reached generation 2 from a younger one: what was young before, plus the
# list `young` and the set `ids_young` themselves (young too, in generation 0)
out["gen2_tenured"] = sum(1 for o in after if id(o) in ids_young) + 2
del young, ids_young, after
sys.stdout.write("PROMOTED " + json.dumps(out) + "\n")
sys.stdout.flush()
"""


@per_interpreter
def test_gc_promotions_exact_every_generation(py):
    if not _has_census(py):
        raise Skip("no census: free-threaded GC has no generations; 3.14+ not supported")
    traced = _trace(py, PROMO_ALL_PROG)
    truth = _printed(traced, "PROMOTED")
    expect(truth["wr_cleared"], "the weakref callback scenario did not happen: %r" % truth)
    rep = _gc_report(traced)
    cols = [c for c in rep["collections"] if not c["shutdown"]]
    expect(len(cols) >= 4, "collections: %r" % cols)
    gen0, gen1, gen2 = cols[-4], cols[-2], cols[-1]  # the 4th, 6th and 7th collect()
    expect([gen0["generation"], gen1["generation"], gen2["generation"]] == [0, 1, 2],
           "unexpected collection sequence: %r" % cols[-4:])
    for name, col in (("gen0", gen0), ("gen1", gen1), ("gen2", gen2)):
        expect(col["promoted"] == truth[name],
               "%s collection promoted: refscope %r, gc.get_objects %d" % (name, col["promoted"], truth[name]))
    # what reached generation 2: everything a generation-1 collection
    # promotes, and a full collection's survivors from generations 0-1
    expect(gen0["tenured"] == 0 and gen1["tenured"] == gen1["promoted"],
           "tenured by the gen0/gen1 collections: %r %r" % (gen0, gen1))
    expect(gen2["tenured"] == truth["gen2_tenured"],
           "gen2 collection tenured: refscope %r, gc.get_objects %d" % (gen2["tenured"], truth["gen2_tenured"]))
    expect(gen0["promoted"] >= 51 and gen1["promoted"] >= 100, "too few promotions: %r" % truth)


# The last object of generation 1 (the census's mark) dies during a
# generation-0 collection: freed when the collector clears the young cycle
# that held its only reference. Generation 1 is compared by id (keeping the
# old objects alive would keep the mark alive).
MARK_DIES_PROG = r"""
import gc, sys
gc.disable()
gc.collect()
died = []
class Mark:
    def __del__(self):
        died.append(1)
class Holder:
    pass
Mark(), Holder()               # whatever first instances create lazily
gc.collect()                   # ... goes to generation 2 (weakrefs of the classes too)
old = [[i] for i in range(100)]
m = Mark()
gc.collect(0)                  # old, m -> generation 1, m last
h = Holder()
h.cycle = h
h.m = m
del h, m                       # m is reachable only from young cyclic garbage
young = [[i] for i in range(50)]
ids1 = set(map(id, gc.get_objects(1)))
died_before = len(died)
gc.collect(0)
n = sum(1 for o in gc.get_objects(1) if id(o) not in ids1)
sys.stdout.write("PROMOTED %d %d\n" % (n, len(died) - died_before))
sys.stdout.flush()
"""


@per_interpreter
def test_gc_promotions_exact_when_mark_dies(py):
    if not _has_census(py):
        raise Skip("no census: free-threaded GC has no generations; 3.14+ not supported")
    traced = _trace(py, MARK_DIES_PROG)
    line = [l for l in traced.proc.stdout.splitlines() if l.startswith("PROMOTED ")]
    expect(line, "no PROMOTED line: %s %s" % (traced.proc.stdout[-500:], traced.proc.stderr[-500:]))
    truth, died = map(int, line[0].split()[1:])
    expect(died == 1, "the mark object should have died during the collection")
    cols = [c for c in _gc_report(traced)["collections"] if not c["shutdown"]]
    expect(cols[-1]["generation"] == 0 and cols[-1]["promoted"] == truth,
           "promoted by the last collection: refscope %r, gc.get_objects(1) %d" % (cols[-1], truth))


CONFIG_PROG = r"""
import gc
gc.set_threshold(1234, 7, 3)
gc.disable()
x = [[] for _ in range(10)]
gc.enable()
gc.freeze()
gc.unfreeze()
"""


@per_interpreter
def test_gc_config_changes_visible(py):
    traced = _trace(py, CONFIG_PROG)
    rep = _gc_report(traced)
    hist = rep["thresholds"]
    calls = [h["function"] for h in hist if h["reason"] == "call"]
    expect(calls[:5] == ["set_threshold", "disable", "enable", "freeze", "unfreeze"],
           "gc calls in the trace: %r" % calls)
    st = [h for h in hist if h["function"] == "set_threshold"][0]
    expect(st["thresholds"][:3] == [1234, 7, 3], "thresholds: %r" % st)
    dis = [h for h in hist if h["function"] == "disable"][0]
    expect(not dis["enabled"], "disable should show enabled=false")


LIFETIME_PROG = r"""
import gc, json, time
class LifetimeMarker:
    pass
time.sleep(0.05)
t0 = time.monotonic_ns()
m = LifetimeMarker()
gc.collect()            # before 3.13 the census attaches the type to the block
time.sleep(0.3)
del m
t1 = time.monotonic_ns()
time.sleep(0.05)
t2 = time.monotonic_ns()
print("SPAN " + json.dumps([t1 - t0, t2 - t0]))
"""


@per_interpreter
def test_lifetime_of_known_object(py):
    traced = _trace(py, LIFETIME_PROG)
    deleted, ended = _printed(traced, "SPAN")
    rep = refscope_json("lifetimes", traced.trace, timeout=TIMEOUT)
    rows = [t for t in rep["by_type"] if t["type"].endswith("LifetimeMarker")]
    expect(rows and rows[0]["count"] == 1, "one LifetimeMarker death expected: %r" % rows)
    life = rows[0]["max_ns"]
    # The object lived at least the sleep(0.3) and at most what the program
    # measured around it (however late a loaded machine woke it up), plus
    # the coarseness of record times (include/refscope/clock.h: well under
    # 20 ms). Free-threaded builds may queue the final decref of an object
    # another thread (the collector) touched until the next eval-breaker
    # check, which can fall after the following sleep(0.05).
    span = ended if py.free_threaded else deleted
    expect(0.3e9 <= life <= span + 20e6,
           "lifetime %d ns, expected between 300 ms and the %d ns the program measured" % (life, span))


# Tenured garbage: objects that reached the oldest generation (through a
# generation-1 collection) and died later, by type; objects that only
# reached generation 1 are not tenured.
TENURED_PROG = r"""
import gc
gc.disable()
class TenuredMarker:
    pass
class YoungMarker:
    pass
a = [TenuredMarker() for _ in range(300)]
gc.collect(1)           # a and its items -> generation 2
b = [YoungMarker() for _ in range(200)]
gc.collect(0)           # b and its items -> generation 1 only
del a[:100]
del b[:50]
gc.enable()             # the finalization collection marks where shutdown starts
"""


@per_interpreter
def test_tenured_garbage_by_type(py):
    if not _has_census(py):
        raise Skip("no census: free-threaded GC has no generations; 3.14+ not supported")
    traced = _trace(py, TENURED_PROG)
    rep = refscope_json("lifetimes", traced.trace, timeout=TIMEOUT)
    by_type = {t["type"].rsplit(".", 1)[-1]: t["count"] for t in rep["tenured_garbage"]["by_type"]}
    expect(by_type.get("TenuredMarker") == 100, "100 tenured TenuredMarker deaths expected: %r" % by_type)
    expect("YoungMarker" not in by_type, "YoungMarker never reached generation 2: %r" % by_type)


REBORN_PROG = r"""
import gc, sys
seen, reused = set(), 0
for i in range(300):
    K = type("Reborn%d" % i, (), {})
    reused += id(K) in seen
    seen.add(id(K))
    objs = [K() for _ in range(3)]
    gc.collect(1)           # objs (and K) -> generation 2: tenured, with their type
    del objs, K
    gc.collect()            # K dies; the next class usually takes its address
sys.stdout.write("REUSED %d\n" % reused)
"""


@per_interpreter
def test_types_reborn_at_reused_addresses(py):
    """Classes made in a loop die and the next one takes the address (and its
    name buffer the old name's): each must get its own type id and name."""
    traced = _trace(py, REBORN_PROG)
    reused = _printed(traced, "REUSED")
    if reused < 50:
        raise Skip("only %d of 300 classes reused an address: nothing to check" % reused)
    rep = refscope_json("lifetimes", traced.trace, timeout=TIMEOUT)
    tables = []
    if _has_census(py):
        tables.append(("tenured_garbage", rep["tenured_garbage"]["by_type"]))
    if py.version >= (3, 13):
        tables.append(("by_type", rep["by_type"]))
    if not tables:
        raise Skip("neither a census nor object events on this interpreter")
    for name, table in tables:
        counts = {t["type"]: t["count"] for t in table if "Reborn" in t["type"]}
        wrong = {k: v for k, v in counts.items() if v != 3}
        expect(len(counts) == 300 and not wrong,
               "%s: 300 Reborn types with 3 deaths each expected (%d classes reused an "
               "address): %d types, wrong counts %r" % (name, reused, len(counts),
                                                        dict(list(wrong.items())[:5])))


MANY_TYPES_PROG = r"""
import gc
for wave in range(2):           # 2 x 12000 classes: more than the shim's table holds at once
    classes = [type("W%dC%d" % (wave, i), (), {}) for i in range(12000)]
    objs = [c() for c in classes for _ in range(2)]
    del objs, classes
    gc.collect()
"""


@per_interpreter
def test_dead_types_make_room(py):
    """Types that die free their table slots for new ones: 24000 classes, no
    more than 12000 alive at once, all reported by name."""
    if py.version < (3, 13):
        raise Skip("object events (3.13+) type every object; a census types only tenured ones")
    traced = _trace(py, MANY_TYPES_PROG)
    rep = refscope_json("lifetimes", traced.trace, timeout=TIMEOUT)
    counts = {t["type"]: t["count"] for t in rep["by_type"] if t["type"].startswith("W")}
    wrong = {k: v for k, v in counts.items() if v != 2}
    expect(len(counts) == 24000 and not wrong,
           "24000 classes W<wave>C<i> with 2 instances each expected: %d types, wrong counts %r"
           % (len(counts), dict(list(wrong.items())[:5])))


TRACEMALLOC_PROG = r"""
import gc, tracemalloc
tracemalloc.start()
for i in range(5000):
    a = []; a.append(a)
gc.collect()
"""


@per_interpreter
def test_tracemalloc_takes_ref_tracer(py):
    if py.version < (3, 13):
        raise Skip("no PyRefTracer before 3.13")
    traced = _trace(py, TRACEMALLOC_PROG)
    rep = _gc_report(traced)
    expect(any("took the PyRefTracer slot" in w for w in rep["warnings"]),
           "tracemalloc taking the tracer slot should be reported: %r" % rep["warnings"])
    lt = refscope_json("lifetimes", traced.trace, timeout=TIMEOUT)
    expect(any("PyRefTracer" in w for w in lt["warnings"]), "lifetimes should warn too: %r" % lt["warnings"])


@per_interpreter
def test_gc_census_off(py):
    traced = _trace(py, STATS_PROG, run_args=("--gc-census=off",))
    truth = _printed(traced, "STATS")
    rep = _gc_report(traced)
    expect(not rep["census"], "census should be off")
    expect(rep["generations"][0]["promoted"] is None, "promoted unknown without census")
    expect(rep["generations"][0]["collections"] == truth[0]["collections"], "collections still exact")


NO_GC_PROG = r"""
import gc, sys
callbacks = len(gc.callbacks)
keep = [[i] for i in range(20000)]
gc.collect()
sys.stdout.write("CALLBACKS %d\n" % callbacks)
"""


@per_interpreter
def test_no_gc(py):
    """run --no-gc: the program's gc.callbacks stays untouched, no collection
    is recorded, allocations still are, and the reports say why there are
    no collections; by default refscope's callback is there."""
    for run_args, want in (((), 1), (("--no-gc",), 0)):
        traced = _trace(py, NO_GC_PROG, run_args=run_args)
        expect(_printed(traced, "CALLBACKS") == want,
               "%s: gc.callbacks had %r entries, expected %d" % (run_args, _printed(traced, "CALLBACKS"), want))
    rep = _gc_report(traced)
    expect(all(g["collections"] == 0 for g in rep["generations"]), "--no-gc recorded collections: %r" % rep)
    expect(any("--no-gc" in w for w in rep["warnings"]), "gc report should say --no-gc: %r" % rep["warnings"])
    expect(not any("never registered" in w for w in rep["warnings"]),
           "--no-gc is not a registration failure: %r" % rep["warnings"])
    summary = refscope_json("summary", traced.trace, timeout=TIMEOUT)
    expect(summary["domains"]["obj"]["allocations"] >= 20000, "allocations missing with --no-gc: %r" % summary)


def test_gc_heavy_sample_exists():
    here = os.path.dirname(os.path.abspath(__file__))
    expect(os.path.exists(os.path.join(here, "..", "..", "samples", "gc_heavy.py")), "samples/gc_heavy.py missing")


SITES_PROG = r"""
def make():
    out = []
    for _ in range(50):
        out.append(bytearray(100))      # the site: line 5
    return out
def a():
    return make()
def b():
    return make()
keep = []
for i in range(200):
    x = a()
    y = b()
    keep.append(x[0])
"""


@per_interpreter
def test_lifetimes_group_by_site(py):
    """A site is what a report prints: one row for make's line whoever calls
    it, two rows (one per caller) at --depth 2; never two rows alike."""
    traced = _trace(py, SITES_PROG, name="sites.py")
    one = refscope_json("lifetimes", traced.trace, timeout=TIMEOUT)
    two = refscope_json("lifetimes", "--depth", "2", traced.trace, timeout=TIMEOUT)
    for rep in (one, two):
        labels = [s["site"] for s in rep["by_site"]]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        expect(not dup, "depth %d: sites printed twice: %r" % (rep["depth"], dup[:5]))
    site = [s for s in one["by_site"] if s["site"].startswith("make (") and s["site"].endswith("sites.py:5)")]
    expect(len(site) == 1, "one row for make's line 5 expected: %r" % [s["site"] for s in one["by_site"][:10]])
    callers = {s["site"].rsplit(" <- ", 1)[-1].split(" ")[0]: s["count"] for s in two["by_site"]
               if s["site"].startswith("make (") and s["site"].split(" <- ")[0].endswith("sites.py:5)")}
    expect(set(callers) == {"a", "b"}, "rows for callers a and b expected at depth 2: %r" % callers)
    # 20000 bytearrays (and their buffers before 3.13), 300 alive until shutdown
    expect(callers["a"] + callers["b"] == site[0]["count"] and site[0]["count"] >= 19000,
           "depth 2 rows should add up to the depth 1 row: %r, %d" % (callers, site[0]["count"]))
