"""Native stacks (run --native): libdw symbolization with inlined frames,
Python frames spliced into the native stack, and the build-id check."""
import os
import shutil
import struct

from harness import (Skip, expect, per_interpreter, prog, refscope, refscope_json, run_traced,
                     workdir, write_script, ROOT)

INLINE_SRC = os.path.join(ROOT, "tests", "progs", "inline_alloc.c")


def _marker_line(path, marker):
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if marker in line:
                return number
    raise AssertionError("no %r in %s" % (marker, path))


def _inline_prog():
    path = prog("inline_alloc")
    if not os.path.exists(path):
        raise Skip("tests/progs/inline_alloc not built")
    return path


def _find_site(sites, pred):
    for site in sites:
        if pred(site["frames"]):
            return site
    return None


def _describe(sites):
    out = []
    for s in sites[:3]:
        frames = ["%s (%s:%s)" % (f["function"], f["file"], f["line"]) for f in s["frames"]]
        out.append(" <- ".join(frames[:12]) + (" <- ..." if len(frames) > 12 else ""))
    return "\n".join(out)


def test_inline_function_symbolized():
    """A malloc inside a static inline function resolves to that function,
    flagged inlined, with its file:line, then the function it was inlined into."""
    exe = _inline_prog()
    traced = run_traced([exe, "40"], run_args=("--native",), timeout=60)
    line = _marker_line(INLINE_SRC, "/* ALLOC_LINE */")
    top = refscope_json("top", "--native", "--depth", "8", "--by", "live", traced.trace, timeout=60)
    site = _find_site(top["sites"], lambda fr: any(f["function"] == "make_buffer" for f in fr))
    expect(site is not None, "no site with make_buffer:\n" + _describe(top["sites"]))
    frames = site["frames"]
    names = [f["function"] for f in frames]
    i = names.index("make_buffer")
    f = frames[i]
    expect(f["native"] and f["inlined"], "make_buffer frame not marked inlined: %r" % f)
    expect(f["file"] and f["file"].endswith("inline_alloc.c") and f["line"] == line,
           "make_buffer at %s:%s, expected inline_alloc.c:%d" % (f["file"], f["line"], line))
    expect(i + 1 < len(names) and names[i + 1] == "fill_buffers",
           "make_buffer not followed by fill_buffers: %r" % names)
    expect("malloc" in names[:i], "malloc not innermost: %r" % names)
    expect(site["allocations"] == 40 and site["live_bytes_end"] == 40 * 4096,
           "expected 40 live blocks of 4096 bytes, got %r" % site)


LEAK = """\
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
kept = []
def leak(count):
    for i in range(count):
        kept.append(libc.malloc(300007))  # LEAK_LINE
leak(30)
"""


@per_interpreter
def test_ctypes_malloc_leak_mixed_stack(py):
    """ctypes.CDLL(None).malloc(N) in a loop: one site holds N * count bytes at
    the end, attributed to the Python line and, natively, to malloc."""
    script = write_script(LEAK, "leak.py")
    line = _marker_line(script, "# LEAK_LINE")
    traced = run_traced([py.path, script], run_args=("--native",), timeout=120)

    def at_leak_line(frames):
        return any(f["file"] == script and f["line"] == line and not f["native"] for f in frames)

    mixed = refscope_json("top", "--native", "--depth", "100", "--by", "live", "--limit", "0",
                          "--file", "leak.py", traced.trace, timeout=120)
    site = _find_site(mixed["sites"], lambda fr: at_leak_line(fr)
                      and any(f["native"] and f["function"] == "malloc" for f in fr))
    expect(site is not None, "%s: no mixed stack with malloc and leak.py:%d\n%s"
           % (py, line, _describe(mixed["sites"])))
    names = [f["function"] for f in site["frames"]]
    expect(names[0] == "malloc", "%s: malloc is not the innermost frame: %r" % (py, names))
    expect(site["live_bytes_end"] == 30 * 300007, "%s: live bytes %d, expected %d"
           % (py, site["live_bytes_end"], 30 * 300007))

    python_only = refscope_json("top", "--by", "live", traced.trace, timeout=120)
    first = python_only["sites"][0]
    expect(first["frames"] and first["frames"][0]["file"] == script and first["frames"][0]["line"] == line,
           "%s: top live site is not leak.py:%d:\n%s" % (py, line, _describe(python_only["sites"])))
    expect(first["live_bytes_end"] >= 30 * 300007, "%s: leak line holds %d bytes"
           % (py, first["live_bytes_end"]))


def _flip_build_id(path):
    """Changes the NT_GNU_BUILD_ID bytes of an ELF64 file in place."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
            if p_type != 4:  # PT_NOTE
                continue
            off, end = p_offset, p_offset + p_filesz
            while off + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", data, off)
                name_at = off + 12
                desc_at = name_at + ((namesz + 3) & ~3)
                if ntype == 3 and data[name_at:name_at + 3] == b"GNU":
                    for k in range(descsz):
                        data[desc_at + k] ^= 0x5a
                    f.seek(0)
                    f.write(data)
                    return
                off = desc_at + ((descsz + 3) & ~3)
    raise AssertionError("%s has no build-id note" % path)


def test_build_id_mismatch_warns():
    """A binary changed after tracing is reported, not symbolized with wrong names."""
    d = workdir()
    copy = os.path.join(d, "inline_copy")
    shutil.copy2(_inline_prog(), copy)
    traced = run_traced([copy, "10"], run_args=("--native",), timeout=60)
    before = refscope_json("top", "--native", "--depth", "8", traced.trace, timeout=60)
    expect(not any("inline_copy" in w for w in before["warnings"]),
           "warning before the change: %r" % before["warnings"])
    _flip_build_id(copy)
    after = refscope_json("top", "--native", "--depth", "8", traced.trace, timeout=60)
    expect(any("inline_copy" in w and "build-id" in w for w in after["warnings"]),
           "no build-id warning: %r" % after["warnings"])
    for site in after["sites"]:
        for f in site["frames"]:
            expect(f["function"] not in ("make_buffer", "fill_buffers", "main"),
                   "frame of the changed binary still named: %r" % f)
    text = refscope("top", "--native", traced.trace, timeout=60)
    expect(text.returncode == 0 and "build-id" in text.stdout,
           "text report does not say build-id differs:\n" + text.stdout[:2000])


DLOPEN_LIB = r"""
#include <stdlib.h>
__attribute__((noinline)) void *refscope_dl_alloc_marker(size_t n) { return malloc(n); }
"""

DLOPEN_PROG = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])            # loaded long after tracing started
lib.refscope_dl_alloc_marker.restype = ctypes.c_void_p
lib.refscope_dl_alloc_marker.argtypes = [ctypes.c_size_t]
keep = [lib.refscope_dl_alloc_marker(200003) for _ in range(20)]  # DL_LINE
"""


@per_interpreter
def test_dlopened_library_symbolized(py):
    """A library dlopened by the program after tracing started: the stacks
    through it name its function (its module map was written before the
    first stack that refers to it)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise Skip("no C compiler")
    d = workdir()
    src, lib = os.path.join(d, "dl.c"), os.path.join(d, "libdlmarker.so")
    with open(src, "w") as f:
        f.write(DLOPEN_LIB)
    import subprocess
    subprocess.run([cc, "-O1", "-g", "-shared", "-fPIC", "-o", lib, src], check=True, timeout=120)
    script = write_script(DLOPEN_PROG, "dl.py")
    traced = run_traced([py.path, script, lib], run_args=("--native",), timeout=120)
    top = refscope_json("top", "--native", "--depth", "100", "--by", "live", "--limit", "0",
                        "--file", "dl.py", traced.trace, timeout=120)
    site = _find_site(top["sites"], lambda fr: any(f["native"] and f["function"] == "refscope_dl_alloc_marker"
                                                  for f in fr))
    expect(site is not None, "%s: no stack through the dlopened library's function\n%s"
           % (py, _describe(top["sites"])))
    expect(site["live_bytes_end"] == 20 * 200003, "%s: live bytes %d" % (py, site["live_bytes_end"]))


UNWIND_WORKLOAD = r"""
import asyncio, ctypes, sys, threading

def churn(n):
    keep = []
    for i in range(n):
        keep.append({"i": i, "l": [i] * 3, "s": str(i)})
        if len(keep) > 50:
            keep.clear()

def gen(n):
    for i in range(n):
        yield [i, bytearray(64)]

async def coro(n):
    out = []
    for i in range(n):
        out.append(bytearray(100))
        await asyncio.sleep(0)
    return out

def deep(n):
    # every level passes through C (map): deep native stacks, past the cap
    return list(map(deep, [n - 1])) if n else [bytearray(300) for _ in range(20)]

CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
@CMP
def compare(a, b):
    junk = [a[0], b[0]] * 4          # allocates inside a C library's callback
    return (a[0] > b[0]) - (a[0] < b[0])

def errors(n):
    for i in range(n):
        try:
            raise ValueError("x" * (i % 50))
        except ValueError as e:
            str(e)

threads = [threading.Thread(target=churn, args=(3000,)) for _ in range(3)]
for t in threads:
    t.start()
churn(3000)
sum(len(x) for x in gen(2000))
asyncio.run(coro(300))
deep(60)
arr = (ctypes.c_int * 200)(*range(200, 0, -1))
libc = ctypes.CDLL(None)
libc.qsort(arr, 200, ctypes.sizeof(ctypes.c_int), compare)
errors(2000)
for t in threads:
    t.join()
"""


def _unwind_check(stderr, label):
    """(captures, by rules, differ) from REFSCOPE_UNWIND_CHECK's report."""
    import re
    m = re.search(r"unwind check: (\d+) captures, (\d+) by frame rules, (\d+) differ", stderr)
    expect(m is not None, "%s: no unwind check report in stderr:\n%s" % (label, stderr[-2000:]))
    first = re.search(r"unwind check: first difference.*", stderr)
    captures, fast, differ = (int(x) for x in m.groups())
    expect(differ == 0, "%s: %d of %d stacks differ from libunwind: %s"
           % (label, differ, captures, first.group(0) if first else ""))
    return captures, fast


@per_interpreter
def test_unwinder_matches_libunwind(py):
    """The shim's own unwinder (.eh_frame rules, reuse of the previous walk)
    gives exactly libunwind's frames for every stack of a workload with
    threads, a generator, a coroutine, native stacks deeper than the cap,
    callbacks from a C library and exceptions; and it is what unwinds
    nearly all of them."""
    script = write_script(UNWIND_WORKLOAD, "unwind.py")
    traced = run_traced([py.path, script], run_args=("--native",),
                        env={"REFSCOPE_UNWIND_CHECK": "1"}, timeout=240)
    captures, fast = _unwind_check(traced.proc.stderr, str(py))
    expect(captures > 10000, "%s: only %d captures" % (py, captures))
    expect(fast >= captures * 0.9, "%s: only %d of %d stacks unwound by frame rules"
           % (py, fast, captures))


def test_signal_frames_fall_back():
    """Allocations in a signal handler: the stack through the signal frame
    is libunwind's (the shim's rules do not describe it), complete down to
    main, and the same as libunwind's own walk."""
    exe = prog("signal_alloc")
    if not os.path.exists(exe):
        raise Skip("tests/progs/signal_alloc not built")
    traced = run_traced([exe, "200"], run_args=("--native",),
                        env={"REFSCOPE_UNWIND_CHECK": "1"}, timeout=60)
    captures, fast = _unwind_check(traced.proc.stderr, "signal_alloc")
    expect(captures >= 400 and fast < captures - 150,
           "expected the 200 handler stacks to go to libunwind: %d captures, %d by rules"
           % (captures, fast))
    top = refscope_json("top", "--native", "--depth", "20", "--by", "live", traced.trace, timeout=60)
    site = _find_site(top["sites"], lambda fr: any(f["function"] == "in_handler" for f in fr))
    expect(site is not None, "no stack through in_handler:\n" + _describe(top["sites"]))
    names = [f["function"] for f in site["frames"]]
    expect("main" in names[names.index("in_handler"):],
           "the handler's stack does not reach main: %r" % names)
    expect(site["allocations"] == 200, "handler site has %d allocations" % site["allocations"])


# Two libraries whose reload_alloc returns from its malloc call at the same
# offset, with different frame rules there: a 3016-byte frame addressed from
# rsp in one, a frame pointer (CFA = rbp + 16) in the other. Loaded in turn
# at the same address, a rule cached for one would unwind the other wrongly.
RELOAD_LIB_A = r"""
    .text
    .globl reload_alloc
    .type reload_alloc, @function
reload_alloc:
    .cfi_startproc
    nop
    sub $3016, %rsp
    .cfi_def_cfa_offset 3024
    call malloc@PLT
    add $3016, %rsp
    .cfi_def_cfa_offset 8
    ret
    .cfi_endproc
    .size reload_alloc, .-reload_alloc
    .section .note.GNU-stack,"",@progbits
"""

RELOAD_LIB_B = r"""
    .text
    .globl reload_alloc
    .type reload_alloc, @function
reload_alloc:
    .cfi_startproc
    push %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset %rbp, -16
    mov %rsp, %rbp
    .cfi_def_cfa_register %rbp
    sub $16, %rsp
    call malloc@PLT
    leave
    .cfi_def_cfa %rsp, 8
    ret
    .cfi_endproc
    .size reload_alloc, .-reload_alloc
    .section .note.GNU-stack,"",@progbits
"""

RELOAD_PROG = r"""
import _ctypes, ctypes, sys
addrs = {}
for round in range(15):
    for path in sys.argv[1:3]:
        lib = ctypes.CDLL(path)
        f = lib.reload_alloc
        f.restype = ctypes.c_void_p
        f.argtypes = [ctypes.c_size_t]
        addrs.setdefault(path, set()).add(ctypes.cast(f, ctypes.c_void_p).value)
        keep = [f(5000 + i) for i in range(20)]
        handle = lib._handle
        del f, lib
        _ctypes.dlclose(handle)          # unloaded: the only reference
a, b = (addrs[p] for p in sys.argv[1:3])
print("shared", len(a & b))
"""


@per_interpreter
def test_unwind_rules_forgotten_on_dlclose(py):
    """Two libraries loaded and unloaded in turn (at the same address on
    Linux), with different frame rules at the same return address: every
    stack through them continues into libffi, the real caller, and the
    shim's cached rules were dropped at each unload. Not compared with
    libunwind: its own frame cache keeps the first library's rules
    (libunwind 1.6)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise Skip("no C compiler")
    if os.uname().machine != "x86_64":
        raise Skip("x86-64 assembly")
    import subprocess
    d = workdir()
    libs = []
    for name, src in (("a", RELOAD_LIB_A), ("b", RELOAD_LIB_B)):
        c, so = os.path.join(d, name + ".s"), os.path.join(d, "libreload_%s.so" % name)
        with open(c, "w") as f:
            f.write(src)
        subprocess.run([cc, "-shared", "-fPIC", "-o", so, c], check=True, timeout=120)
        libs.append(so)
    script = write_script(RELOAD_PROG, "reload.py")
    traced = run_traced([py.path, script, *libs], run_args=("--native",),
                        env={"REFSCOPE_UNWIND_CHECK": "1"}, timeout=240)
    import re
    shared = re.search(r"shared (\d+)", traced.proc.stdout)
    expect(shared and int(shared.group(1)) >= 1, "%s: the libraries never shared an address: %s"
           % (py, traced.proc.stdout))
    forgot = re.search(r"frame rules forgotten (\d+) times", traced.proc.stderr)
    expect(forgot and int(forgot.group(1)) >= 30, "%s: rules not forgotten at each of the 30 unloads: %s"
           % (py, forgot.group(0) if forgot else traced.proc.stderr[-1000:]))
    top = refscope_json("top", "--native", "--depth", "100", "--by", "count", "--limit", "0",
                        "--file", "reload.py", traced.trace, timeout=120)
    total = 0
    for site in top["sites"]:
        names = [f["function"] for f in site["frames"]]
        if "reload_alloc" not in names:
            continue
        below = site["frames"][names.index("reload_alloc") + 1:]
        expect(below and "ffi" in (below[0]["function"] + str(below[0].get("file"))),
               "%s: reload_alloc's caller is not libffi: %r" % (py, below[:3]))
        total += site["allocations"]
    expect(total == 15 * 2 * 20, "%s: %d allocations through reload_alloc, expected 600" % (py, total))
