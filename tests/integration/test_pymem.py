"""PyMem domain wrappers (issue 2): Python allocations are seen in their
domains on every interpreter, also after pre-initialization replaced the
allocators (PYTHONMALLOC=malloc, -X dev), and nothing is counted twice."""
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
