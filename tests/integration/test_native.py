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
