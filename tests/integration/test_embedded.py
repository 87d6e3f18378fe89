"""A libpython loaded with dlopen after start-up (embedding programs such as
PyInstaller's bootloader, uwsgi, mod_wsgi): the shim finds it when CPython
pre-initializes, wraps its allocators, and the trace is that interpreter's,
with Python stacks, on every interpreter that has a shared libpython."""
import json
import os

import harness
from harness import Skip, expect, per_interpreter
from test_gc import STATS_PROG

N, SIZE = 5000, 1000
CODE = "keep = [bytearray(%d) for _ in range(%d)]" % (SIZE, N)

_LIB = ("import os, sys, sysconfig; d = sysconfig.get_config_var('LIBDIR') or ''; "
        "n = sysconfig.get_config_var('INSTSONAME') or sysconfig.get_config_var('LDLIBRARY') or ''; "
        "print(os.path.join(d, n)); print(sys.base_prefix)")


def _libpython(py):
    """(path of py's shared libpython, its prefix), or Skip."""
    out = harness.run([py.path, "-c", _LIB], timeout=30).stdout.split("\n")
    lib, prefix = out[0].strip(), out[1].strip()
    if ".so" not in os.path.basename(lib) or not os.path.exists(lib):
        raise Skip("%s: no shared libpython (%s)" % (py, lib or "none"))
    return lib, prefix


def _embedded(py, mode, code=CODE, env=None):
    lib, prefix = _libpython(py)
    full_env = {"PYTHONHOME": prefix}
    full_env.update(env or {})
    t = harness.run_traced([harness.prog("embed_dlopen"), lib, mode, code], env=full_env, timeout=120)
    return t, harness.refscope_json("summary", t.trace)


def _check(py, s, what, arena=True):
    want = "%d.%d.%d" % py.version
    expect(s["python_version"] == want, "%s %s: python_version %r, expected %s" % (py, what, s["python_version"], want))
    doms = s["domains"]
    for d in ("raw", "mem", "obj") + (("arena",) if arena and not py.free_threaded else ()):
        expect(doms.get(d, {}).get("allocations", 0) > 0, "%s %s: no allocations in domain %s: %s" % (py, what, d, doms))
    py_bytes = sum(doms.get(d, {}).get("bytes", 0) for d in ("raw", "mem", "obj"))
    expect(py_bytes >= N * SIZE, "%s %s: raw+mem+obj bytes %d < %d" % (py, what, py_bytes, N * SIZE))
    expect(s["peak_bytes"] >= N * SIZE, "%s %s: peak %d < %d" % (py, what, s["peak_bytes"], N * SIZE))
    # what refscope's own calls allocate is recorded as its own, so frees of
    # blocks never seen are only the few made before the wrappers (2 here)
    expect(s["unknown_frees"] < 20, "%s %s: %d frees of blocks never seen" % (py, what, s["unknown_frees"]))


@per_interpreter
def test_embedded_libpython_local(py):
    t, s = _embedded(py, "local")
    _check(py, s, "RTLD_LOCAL")
    dump = harness.run([harness.refscope_bin(), "dump", t.trace], timeout=60).stdout
    expect(" python " in dump and " allocator_wrapped " in dump,
           "%s: no python / allocator_wrapped record in the dump" % py)
    # the 5000 buffers come from the embedded code, with its Python stack
    top = harness.refscope_json("top", t.trace)
    frames = top["sites"][0]["frames"] if top["sites"] else []
    expect(frames and frames[0]["file"] == "<string>" and top["sites"][0]["bytes"] >= N * SIZE,
           "%s: the top site is not the embedded code: %s" % (py, top["sites"][:1]))


@per_interpreter
def test_embedded_libpython_global(py):
    _check(py, _embedded(py, "global")[1], "RTLD_GLOBAL")


@per_interpreter
def test_embedded_libpython_pythonmalloc(py):
    # pre-initialization replaces the allocators the late start wrapped (and
    # without pymalloc there are no arenas)
    env = {"PYTHONMALLOC": "mimalloc" if py.free_threaded else "malloc"}
    _check(py, _embedded(py, "local", env=env)[1], "PYTHONMALLOC", arena=False)


@per_interpreter
def test_embedded_fork_child_is_python(py):
    code = CODE + "\nimport os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)"
    t, _ = _embedded(py, "local", code=code)
    traces = t.traces()
    expect(len(traces) == 2, "%s: %d traces, expected the process and its fork child" % (py, len(traces)))
    child = harness.refscope_json("summary", traces[1])
    want = "%d.%d.%d" % py.version
    expect(child["python_version"] == want, "%s: fork child python_version %r" % (py, child["python_version"]))


@per_interpreter
def test_embedded_libpython_gc_events(py):
    # RTLD_LOCAL: the C API the gc watcher calls is looked up through the
    # libpython's own handle, not the global scope; its collections are the
    # interpreter's own count (the ground-truth program of test_gc)
    t, _ = _embedded(py, "local", code=STATS_PROG)
    line = [l for l in t.proc.stdout.splitlines() if l.startswith("STATS ")]
    expect(line, "%s: the embedded code printed no STATS line: %s" % (py, t.proc.stderr[-500:]))
    truth = json.loads(line[0][len("STATS "):])
    gens = harness.refscope_json("gc", t.trace)["generations"]
    got = [(g["collections"], g["collected"]) for g in gens][:len(truth)]
    want = [(st["collections"], st["collected"]) for st in truth]
    expect(sum(c for c, _ in want) > 5 and got == want,
           "%s: gc report %r, the embedded interpreter's gc.get_stats() %r" % (py, got, want))


def test_embedded_not_python_stays_libc_only():
    # a library that is not libpython calling setlocale changes nothing
    t = harness.run_traced(["/bin/sh", "-c", "exec /bin/ls / > /dev/null"], timeout=60)
    s = harness.refscope_json("summary", t.trace)
    expect(s["python_version"] is None, "ls: python_version %r" % s["python_version"])
    expect(s["domains"]["libc"]["allocations"] > 0, "ls: no libc allocations")
