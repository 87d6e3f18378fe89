/*
 * CPython detection and per-version layouts (see pyver.h for the model).
 * Offsets for 3.9-3.12 were taken with offsetof() against each version's
 * installed internal headers (Py_BUILD_CORE); 3.13+ come from _Py_DebugOffsets,
 * whose own layout changed between 3.13 and 3.14, so its sections are found by
 * their signatures rather than by a fixed index.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "capi.h"
#include "pysafe.h"
#include "pyver.h"
#include "shim.h"
#include "refscope/events.h"

struct rs_pyver rs_py;
uint32_t rs_py_peeking;
static int pyver_done;
static int pyver_status;

/* Where the C API is looked up: the global scope, or the libpython that
 * rs_pyver_late found (its own handle: it may be loaded RTLD_LOCAL). */
static void *py_handle = RTLD_DEFAULT;

void *rs_py_sym(const char *name) { return dlsym(py_handle, name); }

static void *sym(const char *name) { return rs_py_sym(name); }

/* One line on stderr: `what` is off on this CPython (X.Y), which versions
 * `have` it. */
static void warn_off(const char *what, const char *have)
{
    char line[128];
    snprintf(line, sizeof(line), "%s off on CPython %u.%u (%s have them)", what, rs_py.hex >> 24,
             (rs_py.hex >> 16) & 0xff, have);
    rs_warn(line);
}

/* "3.10.13 (main, ...)" -> PY_VERSION_HEX-like value (final release assumed) */
static uint32_t parse_version(const char *s)
{
    uint32_t part[3] = {0, 0, 0};
    int i = 0;
    for (; *s && i < 3; s++) {
        if (*s >= '0' && *s <= '9')
            part[i] = part[i] * 10 + (uint32_t)(*s - '0');
        else if (*s == '.')
            i++;
        else
            break;
    }
    return (part[0] << 24) | (part[1] << 16) | (part[2] << 8) | 0xf0;
}

static void layout_39_310(int minor)
{
    rs_py.frames = RS_PYFRAMES_OBJECT;
    rs_py.rt_tstate_current = 568;
    rs_py.ts_frame = 24;
    rs_py.fr_previous = 24;
    rs_py.fr_code = 32;
    rs_py.fr_instr = minor == 9 ? 104 : 96;
    rs_py.lasti_scale = minor == 9 ? 1 : 2;
    rs_py.co_filename = 104;
    rs_py.co_name = 112;
    rs_py.co_qualname = 112; /* no co_qualname before 3.11 */
    rs_py.co_firstlineno = 40;
    rs_py.str_length = 16;
    rs_py.str_state = 32;
    rs_py.str_ascii_size = 48;
    rs_py.str_compact_size = 72;
}

static void layout_311(void)
{
    rs_py.frames = RS_PYFRAMES_INTERP_311;
    rs_py.rt_tstate_current = 576;
    rs_py.ts_frame = 56;
    rs_py.cframe_current = 8;
    rs_py.fr_code = 32;
    rs_py.fr_previous = 48;
    rs_py.fr_instr = 56;
    rs_py.fr_is_entry = 68;
    rs_py.fr_owner = 69;
    rs_py.co_filename = 112;
    rs_py.co_name = 120;
    rs_py.co_qualname = 128;
    rs_py.co_firstlineno = 72;
    rs_py.co_firsttraceable = 168;
    rs_py.co_code_adaptive = 184;
    rs_py.str_length = 16;
    rs_py.str_state = 32;
    rs_py.str_ascii_size = 48;
    rs_py.str_compact_size = 72;
}

static void layout_312(void)
{
    rs_py.frames = RS_PYFRAMES_INTERP_312;
    rs_py.ts_frame = 56;
    rs_py.cframe_current = 0;
    rs_py.fr_code = 0;
    rs_py.fr_previous = 8;
    rs_py.fr_instr = 56;
    rs_py.fr_owner = 70;
    rs_py.co_filename = 112;
    rs_py.co_name = 120;
    rs_py.co_qualname = 128;
    rs_py.co_firstlineno = 68;
    rs_py.co_firsttraceable = 176;
    rs_py.co_code_adaptive = 192;
    rs_py.str_length = 16;
    rs_py.str_state = 32;
    rs_py.str_ascii_size = 40;
    rs_py.str_compact_size = 56;
}

/* 3.13+: read _Py_DebugOffsets. Sections are arrays of u64 starting with the
 * struct size; the thread-state section is recognised by prev/next/interp at
 * 0/8/16, the frame and code sections follow it, the unicode section is
 * recognised by length/state/asciiobject_size. Returns 0 or -ENOTSUP. */
static int layout_debug_offsets(const uint64_t *w)
{
    enum { WORDS = 160 };
    int t = -1, f = -1, c = -1, u = -1;
    if (memcmp(w, "xdebugpy", 8) != 0)
        return -ENOTSUP;
    rs_py.free_threaded |= w[2] != 0;
    for (int i = 3; i + 4 < WORDS && t < 0; i++)
        if (w[i + 1] == 0 && w[i + 2] == 8 && w[i + 3] == 16 && w[i] >= 64 && w[i] < (1u << 20))
            t = i;
    if (t < 0)
        return -ENOTSUP;
    for (int i = t + 9; i < t + 16 && f < 0; i++)
        if (w[i] >= 32 && w[i] <= 512 && w[i + 1] < w[i] && w[i + 2] < w[i] && w[i + 3] < w[i])
            f = i;
    if (f < 0)
        return -ENOTSUP;
    for (int i = f + 6; i < f + 14 && c < 0; i++)
        if (w[i] >= 100 && w[i] <= 4096 && w[i + 1] >= 16 && w[i + 1] < w[i] && w[i + 2] < w[i] &&
            w[i + 3] < w[i] && w[i + 5] < w[i] && w[i + 9] < w[i])
            c = i;
    if (c < 0)
        return -ENOTSUP;
    uint64_t len_off = rs_py.free_threaded ? 32 : 16;
    for (int i = c + 10; i + 3 < WORDS && u < 0; i++)
        if (w[i + 2] == len_off && w[i + 1] == len_off + 16 && w[i + 3] == len_off + 24 && w[i] > w[i + 3])
            u = i;
    if (u < 0)
        return -ENOTSUP;

    rs_py.frames = RS_PYFRAMES_INTERP_313;
    rs_py.ts_frame = (uint32_t)w[t + 4];
    rs_py.fr_previous = (uint32_t)w[f + 1];
    rs_py.fr_code = (uint32_t)w[f + 2];
    rs_py.fr_instr = (uint32_t)w[f + 3];
    rs_py.fr_owner = (uint32_t)w[f + 5];
    rs_py.co_filename = (uint32_t)w[c + 1];
    rs_py.co_name = (uint32_t)w[c + 2];
    rs_py.co_qualname = (uint32_t)w[c + 3];
    rs_py.co_firstlineno = (uint32_t)w[c + 5];
    rs_py.co_code_adaptive = (uint32_t)w[c + 9];
    rs_py.str_state = (uint32_t)w[u + 1];
    rs_py.str_length = (uint32_t)w[u + 2];
    rs_py.str_ascii_size = (uint32_t)w[u + 3];
    rs_py.str_compact_size = rs_py.str_ascii_size + 16;
    return 0;
}

/* Raw frames (rs_py_raw_frames): f_lasti is an int before 3.11, then a
 * pointer (below 2^48 in user space); the owner byte, with 3.11's is_entry
 * just before it (layout_311). */
static void raw_frames_init(void)
{
    switch (rs_py.frames) {
    case RS_PYFRAMES_OBJECT:
        rs_py.raw_instr_mask = 0xffffffffull;
        rs_py.raw_bits = 0;
        rs_py.raw_bits_mask = 0;
        break;
    case RS_PYFRAMES_INTERP_311:
        rs_py.raw_instr_mask = (1ull << 48) - 1;
        rs_py.raw_bits = rs_py.fr_is_entry; /* is_entry, then owner */
        rs_py.raw_bits_mask = 0xffffu;
        break;
    case RS_PYFRAMES_NONE:
        break;
    default:
        rs_py.raw_instr_mask = (1ull << 48) - 1;
        rs_py.raw_bits = rs_py.fr_owner;
        rs_py.raw_bits_mask = 0xffu;
        break;
    }
}

int rs_pyver_init(void)
{
    if (pyver_done)
        return pyver_status;
    pyver_done = 1;
    memset(&rs_py, 0, sizeof rs_py);

    rs_py.Py_IsInitialized = (int (*)(void))sym("Py_IsInitialized");
    rs_py.PyMem_GetAllocator = (void (*)(int, struct rs_pymem_allocator *))sym("PyMem_GetAllocator");
    rs_py.PyMem_SetAllocator = (void (*)(int, struct rs_pymem_allocator *))sym("PyMem_SetAllocator");
    if (!rs_py.Py_IsInitialized || !rs_py.PyMem_GetAllocator || !rs_py.PyMem_SetAllocator)
        return pyver_status = -ENOENT;
    rs_py.is_python = 1;
    rs_capi_resolve();

    Dl_info info;
    if (dladdr((void *)rs_py.Py_IsInitialized, &info) && info.dli_fname && strstr(info.dli_fname, "libpython"))
        rs_py.shared = 1;

    /* "3.13.15 experimental free-threading build (main, ...)"; a static
     * string once formatted, no allocation */
    const char *(*get_version)(void) = (const char *(*)(void))sym("Py_GetVersion");
    const char *text = get_version ? get_version() : NULL;
    const unsigned long *py_version = sym("Py_Version");
    rs_py.hex = py_version ? (uint32_t)*py_version : text ? parse_version(text) : 0;
    rs_py.free_threaded = text && strstr(text, "free-threading");
    rs_py.minor = (int)((rs_py.hex >> 16) & 0xff);

    rs_py.Py_AddPendingCall = (int (*)(int (*)(void *), void *))sym("Py_AddPendingCall");
    rs_py.PyObject_GetArenaAllocator = (void (*)(struct rs_pyarena_allocator *))sym("PyObject_GetArenaAllocator");
    rs_py.PyObject_SetArenaAllocator = (void (*)(struct rs_pyarena_allocator *))sym("PyObject_SetArenaAllocator");
    rs_py.PyCode_Addr2Line = (int (*)(void *, int))sym("PyCode_Addr2Line");
    rs_py.code_type = sym("PyCode_Type");
    rs_py.runtime = sym("_PyRuntime");

    /* Thread-state getters that return this OS thread's state (not the GIL
     * holder's): 3.13+ PyThreadState_GetUnchecked, 3.12 the thread-local
     * _PyThreadState_UncheckedGet, before that the GILState TSS slot. */
    if (rs_py.hex >= 0x030d0000)
        rs_py.get_tstate = (void *(*)(void))sym("PyThreadState_GetUnchecked");
    else if (rs_py.hex >= 0x030c0000)
        rs_py.get_tstate = (void *(*)(void))sym("_PyThreadState_UncheckedGet");
    else
        rs_py.get_tstate = (void *(*)(void))sym("PyGILState_GetThisThreadState");
    /* 3.12+ clear the thread-local state while a thread has released the GIL
     * (ctypes calls, blocking I/O), yet its frames stay valid and are what the
     * allocation belongs to: the GILState TSS slot still names the thread's
     * state then (a pthread_getspecific, no lock). */
    rs_py.get_tstate_detached = (void *(*)(void))sym("PyGILState_GetThisThreadState");

    rs_py.ob_refcnt = 0;
    rs_py.ob_type = 8;
    rs_py.ob_size = 16;
    rs_py.str_kind_shift = 2;

    int rc = 0;
    if (rs_py.minor == 9 || rs_py.minor == 10)
        layout_39_310(rs_py.minor);
    else if (rs_py.minor == 11)
        layout_311();
    else if (rs_py.minor == 12)
        layout_312();
    else if (rs_py.hex >= 0x030d0000 && rs_py.runtime)
        rc = layout_debug_offsets(rs_py.runtime);
    else
        rc = -ENOTSUP;

    if (rs_py.free_threaded) {
        rs_py.ob_refcnt = 12; /* ob_ref_local (u32) */
        rs_py.ob_ref_shared = 16;
        rs_py.ob_type = 24;
        rs_py.ob_size = 32;
        if (rs_py.hex >= 0x030e0000)
            rs_py.str_kind_shift = 8; /* 3.14t: `interned` is a whole byte */
    }
    if (!rs_py.get_tstate || !rs_py.PyCode_Addr2Line || !rs_py.code_type)
        rc = -ENOTSUP;
    if (rc < 0) {
        rs_py.frames = RS_PYFRAMES_NONE;
        if (rs_py.hex < 0x03090000)
            warn_off("Python stacks are", "3.9 and later");
        else
            rs_warn("unknown CPython layout: Python stacks are off");
    }
    raw_frames_init();
    return pyver_status = rc;
}

/* At the init safe point (main thread, GIL held): before 3.12 the GIL
 * holder's state is a word of _PyRuntime, at an offset fixed per minor
 * version; it is used only once it is seen to hold this thread's state. */
static void check_gil_tstate(void *arg)
{
    (void)arg;
    if (!rs_py.runtime || !rs_py.rt_tstate_current || rs_py.free_threaded || !rs_py.get_tstate)
        return;
    const void *const *slot = (const void *const *)((const char *)rs_py.runtime + rs_py.rt_tstate_current);
    const void *ts = rs_py.get_tstate();
    if (ts && __atomic_load_n(slot, __ATOMIC_RELAXED) == ts)
        __atomic_store_n(&rs_py.gil_tstate, slot, __ATOMIC_RELEASE);
}

/* ---- a libpython loaded later ------------------------------------------------- */

#define START_FNS 16
static void (*start_fns[START_FNS])(void);
static int start_count;
static const void *late_rejected; /* base of the last object found not to be libpython */

int rs_pyver_when_found(void (*start)(void))
{
    if (rs_pyver_init() != -ENOENT) {
        start();
        return 0;
    }
    if (start_count == START_FNS)
        return -ENOSPC;
    start_fns[start_count++] = start;
    return 0;
}

int rs_pyver_late(const void *caller)
{
    Dl_info info;
    if (rs_py.is_python || !caller)
        return 0;
    if (!dladdr(caller, &info) || !info.dli_fname || !*info.dli_fname || info.dli_fbase == late_rejected)
        return 0;
    /* a handle of our own keeps it loaded: the wrappers call into it */
    void *h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return 0;
    py_handle = h;
    pyver_done = 0;
    if (rs_pyver_init() == -ENOENT) { /* not the C API: leave it as it was */
        py_handle = RTLD_DEFAULT;
        late_rejected = info.dli_fbase;
        dlclose(h);
        return 0;
    }
    rs_py.loaded_late = 1;
    for (int i = 0; i < start_count; i++)
        start_fns[i]();
    return 1;
}

static void pyver_start(void)
{
    if (rs_py.rt_tstate_current)
        rs_pysafe_on_init(check_gil_tstate, NULL);
}

__attribute__((constructor(RS_CTOR_PYTHON))) static void pyver_ctor(void)
{
    rs_pyver_when_found(pyver_start);
}

/* ---- object header ------------------------------------------------------------ */

int64_t rs_py_refcnt(const void *obj)
{
    const char *o = obj;
    if (rs_py.free_threaded) {
        uint32_t local = *(const uint32_t *)(o + rs_py.ob_refcnt);
        if (local == UINT32_MAX)
            return -1;
        int64_t shared = *(const int64_t *)(o + rs_py.ob_ref_shared);
        return (int64_t)local + (shared >> 2);
    }
    if (rs_py.hex >= 0x030c0000) {
        uint32_t low = *(const uint32_t *)o;
        if ((int32_t)low < 0)
            return -1;
        if (rs_py.hex >= 0x030e0000)
            return low;
    }
    return *(const int64_t *)o;
}

/* ---- str objects --------------------------------------------------------------- */

static uint32_t put_utf8(char *buf, uint32_t pos, uint32_t cap, uint32_t ch)
{
    char tmp[4];
    uint32_t n;
    if (ch < 0x80) {
        tmp[0] = (char)ch;
        n = 1;
    } else if (ch < 0x800) {
        tmp[0] = (char)(0xc0 | (ch >> 6));
        tmp[1] = (char)(0x80 | (ch & 0x3f));
        n = 2;
    } else if (ch < 0x10000) {
        tmp[0] = (char)(0xe0 | (ch >> 12));
        tmp[1] = (char)(0x80 | ((ch >> 6) & 0x3f));
        tmp[2] = (char)(0x80 | (ch & 0x3f));
        n = 3;
    } else {
        tmp[0] = (char)(0xf0 | (ch >> 18));
        tmp[1] = (char)(0x80 | ((ch >> 12) & 0x3f));
        tmp[2] = (char)(0x80 | ((ch >> 6) & 0x3f));
        tmp[3] = (char)(0x80 | (ch & 0x3f));
        n = 4;
    }
    if (pos + n > cap)
        return 0;
    memcpy(buf + pos, tmp, n);
    return n;
}

int rs_py_str_utf8(const void *obj, char *buf, uint32_t cap)
{
    if (!obj || !rs_py.str_state)
        return -EINVAL;
    const char *o = obj;
    uint32_t state = *(const uint32_t *)(o + rs_py.str_state);
    uint32_t kind = (state >> rs_py.str_kind_shift) & 7;
    uint32_t compact = (state >> (rs_py.str_kind_shift + 3)) & 1;
    uint32_t ascii = (state >> (rs_py.str_kind_shift + 4)) & 1;
    int64_t length = *(const int64_t *)(o + rs_py.str_length);
    if (!compact || length < 0 || (kind != 1 && kind != 2 && kind != 4))
        return -EINVAL;
    const char *data = o + (ascii ? rs_py.str_ascii_size : rs_py.str_compact_size);
    if (ascii) {
        uint32_t n = length > cap ? cap : (uint32_t)length;
        memcpy(buf, data, n);
        return (int)n;
    }
    uint32_t pos = 0;
    for (int64_t i = 0; i < length; i++) {
        uint32_t ch = kind == 1 ? ((const uint8_t *)data)[i]
                    : kind == 2 ? ((const uint16_t *)data)[i]
                                : ((const uint32_t *)data)[i];
        uint32_t n = put_utf8(buf, pos, cap, ch);
        if (!n)
            break;
        pos += n;
    }
    return (int)pos;
}

/* ---- code objects --------------------------------------------------------------- */

static const void *field(const void *p, uint32_t off)
{
    return *(const void *const *)((const char *)p + off);
}

const void *rs_py_code_filename(const void *code) { return field(code, rs_py.co_filename); }
const void *rs_py_code_qualname(const void *code) { return field(code, rs_py.co_qualname); }

uint32_t rs_py_code_firstline(const void *code)
{
    int v = *(const int *)((const char *)code + rs_py.co_firstlineno);
    return v > 0 ? (uint32_t)v : 0;
}

uint32_t rs_py_code_line(const void *code, int32_t offset)
{
    if (!rs_py.PyCode_Addr2Line || offset < 0)
        return rs_py_code_firstline(code);
    int line = rs_py.PyCode_Addr2Line((void *)code, offset);
    return line > 0 ? (uint32_t)line : 0;
}

/* ---- frames ------------------------------------------------------------------------ */

static int is_code(const void *p)
{
    return p && rs_py_type(p) == rs_py.code_type;
}

/* One walker per frame model. rs_py_frames runs for every allocation record
 * with Python stacks on, so the model and the offsets are taken out of the
 * loop: each loop reads only the fields its frames have. */

/* 3.9/3.10: a chain of PyFrameObjects; each runs in its own eval-loop call. */
static int frames_object(const char *f, struct rs_pyframe *out, int max, int *truncated)
{
    const uint32_t prev = rs_py.fr_previous, co = rs_py.fr_code, lasti = rs_py.fr_instr;
    const int32_t scale = (int32_t)rs_py.lasti_scale;
    int n = 0;
    for (; f; f = field(f, prev)) {
        const void *code = field(f, co);
        if (!code)
            continue;
        if (n == max) {
            *truncated = 1;
            break;
        }
        int32_t offset = *(const int *)(f + lasti) * scale;
        rs_pyframe_set(&out[n++], code, offset < 0 ? -1 : offset, RS_PYFRAME_ENTRY);
    }
    return n;
}

/* 3.11/3.12: _PyInterpreterFrames; f_code is always a code object there
 * (no type check needed), entry frames are flagged (3.11 is_entry) or are
 * frames of their own owned by the C stack (3.12). Only the innermost frame
 * can be incomplete (pushed, its prologue not run yet: nothing it calls can
 * push a frame before that), so only it is checked, and the code object's
 * _co_firsttraceable it needs is remembered per thread, until any code
 * object dies (rs_py_code_freed: another may take its address). */
static __thread struct {
    const char *code;
    const char *traceable_end; /* code + co_code_adaptive + 2 * _co_firsttraceable */
    uint64_t deaths;           /* code_deaths when filled                         */
} frames_first __attribute__((tls_model("initial-exec")));
static uint64_t code_deaths = 1;

void rs_py_code_freed(void)
{
    __atomic_add_fetch(&code_deaths, 1, __ATOMIC_RELEASE);
}

static int frames_interp_311_312(const char *f, struct rs_pyframe *out, int max, int *truncated)
{
    const uint32_t prev = rs_py.fr_previous, co = rs_py.fr_code, ins = rs_py.fr_instr;
    const uint32_t own = rs_py.fr_owner, entry = rs_py.fr_is_entry;
    const uint32_t adaptive = rs_py.co_code_adaptive, traceable = rs_py.co_firsttraceable;
    int n = 0;
    for (; f; f = field(f, prev)) {
        uint8_t owner = *(const uint8_t *)(f + own);
        if (owner == 3) { /* FRAME_OWNED_BY_CSTACK (3.12): the eval loop's entry */
            if (n)
                rs_pyframe_add_flags(&out[n - 1], RS_PYFRAME_ENTRY);
            continue;
        }
        const char *code = field(f, co);
        const char *start = code + adaptive;
        const char *instr = field(f, ins);
        /* incomplete frame: pushed, not yet started (_PyFrame_IsIncomplete) */
        if (n == 0 && owner != 1) {
            uint64_t deaths = __atomic_load_n(&code_deaths, __ATOMIC_ACQUIRE);
            if (frames_first.code != code || frames_first.deaths != deaths) {
                frames_first.code = code;
                frames_first.traceable_end = start + 2 * *(const int *)(code + traceable);
                frames_first.deaths = deaths;
            }
            if (instr < frames_first.traceable_end)
                continue;
        }
        if (n == max) {
            *truncated = 1;
            break;
        }
        uint32_t flags = owner == 1 ? RS_PYFRAME_GENERATOR : 0;
        if (entry && *(const uint8_t *)(f + entry))
            flags |= RS_PYFRAME_ENTRY;
        int32_t offset = (int32_t)(instr - start);
        rs_pyframe_set(&out[n++], code, offset < 0 ? -1 : offset, flags);
    }
    return n;
}

/* 3.13+: f_executable may be a non-code object (entry and base frames run
 * None) and 3.14 tags the reference in its low bits. */
static int frames_interp_313(const char *f, struct rs_pyframe *out, int max, int *truncated)
{
    const uint32_t prev = rs_py.fr_previous, co = rs_py.fr_code, ins = rs_py.fr_instr;
    const uint32_t own = rs_py.fr_owner, adaptive = rs_py.co_code_adaptive;
    int n = 0;
    for (; f; f = field(f, prev)) {
        const char *code = (const char *)((uintptr_t)field(f, co) & ~(uintptr_t)3);
        if (!is_code(code)) {
            if (n)
                rs_pyframe_add_flags(&out[n - 1], RS_PYFRAME_ENTRY);
            continue;
        }
        if (n == max) {
            *truncated = 1;
            break;
        }
        int32_t offset = (int32_t)((const char *)field(f, ins) - (code + adaptive));
        rs_pyframe_set(&out[n++], code, offset < 0 ? -1 : offset,
                       *(const uint8_t *)(f + own) == 1 ? RS_PYFRAME_GENERATOR : 0);
    }
    return n;
}

/* The thread's innermost frame (3.11/3.12: the _PyInterpreterFrame, not the
 * cframe), or NULL. Not for RS_PYFRAMES_NONE. */
static inline const char *current_frame(int gil_held)
{
    const void *const *gil_tstate = __atomic_load_n(&rs_py.gil_tstate, __ATOMIC_ACQUIRE);
    const char *ts;
    if (gil_held && gil_tstate) {
        ts = __atomic_load_n(gil_tstate, __ATOMIC_RELAXED);
    } else {
        ts = rs_py.get_tstate();
        if (!ts && rs_py.get_tstate_detached)
            ts = rs_py.get_tstate_detached();
    }
    if (!ts)
        return NULL;
    const char *f = field(ts, rs_py.ts_frame);
    if (f && (rs_py.frames == RS_PYFRAMES_INTERP_311 || rs_py.frames == RS_PYFRAMES_INTERP_312))
        f = field(f, rs_py.cframe_current);
    return f;
}

int rs_py_frames(struct rs_pyframe *out, int max, int *truncated, int gil_held)
{
    *truncated = 0;
    if (rs_py.frames == RS_PYFRAMES_NONE)
        return 0;
    const char *f = current_frame(gil_held);
    switch (rs_py.frames) {
    case RS_PYFRAMES_OBJECT:
        return frames_object(f, out, max, truncated);
    case RS_PYFRAMES_INTERP_311:
    case RS_PYFRAMES_INTERP_312:
        return frames_interp_311_312(f, out, max, truncated);
    default:
        return frames_interp_313(f, out, max, truncated);
    }
}

/* ---- raw frames ------------------------------------------------------------------- */

struct raw_layout {
    uint32_t prev, code, instr, bits;
    uint64_t instr_mask, bits_mask;
};

static inline struct raw_layout raw_layout_now(void)
{
    struct raw_layout l = { rs_py.fr_previous, rs_py.fr_code, rs_py.fr_instr, rs_py.raw_bits,
                            rs_py.raw_instr_mask, rs_py.raw_bits_mask };
    return l;
}

static inline uint64_t raw_word(const char *f, const struct raw_layout *l)
{
    uint64_t instr;
    uint16_t bits;
    memcpy(&instr, f + l->instr, 8);
    memcpy(&bits, f + l->bits, 2);
    return (instr & l->instr_mask) | ((uint64_t)bits & l->bits_mask) << 48;
}

static inline void raw_frame(struct rs_pyframe *out, const char *f, const struct raw_layout *l)
{
    uint64_t w = raw_word(f, l);
    out->code = field(f, l->code);
    memcpy((char *)out + offsetof(struct rs_pyframe, offset), &w, sizeof w);
}

int rs_py_raw_frames(struct rs_pyframe *out, int max, int *truncated, int gil_held)
{
    *truncated = 0;
    if (rs_py.frames == RS_PYFRAMES_NONE)
        return 0;
    const struct raw_layout l = raw_layout_now();
    int n = 0;
    for (const char *f = current_frame(gil_held); f; f = field(f, l.prev)) {
        if (n == max) {
            *truncated = 1;
            break;
        }
        raw_frame(&out[n++], f, &l);
    }
    return n;
}

int rs_py_raw_match(struct rs_pyframe *inner, const struct rs_pyframe *expect, int expect_n,
                    int gil_held)
{
    if (rs_py.frames == RS_PYFRAMES_NONE)
        return 0;
    const char *f = current_frame(gil_held);
    if (!f)
        return 0;
    const struct raw_layout l = raw_layout_now();
    raw_frame(inner, f, &l);
    for (int k = expect_n - 1; k >= 0; k--) {
        f = field(f, l.prev);
        if (!f || field(f, l.code) != expect[k].code || raw_word(f, &l) != rs_pyframe_word(&expect[k]))
            return -1;
    }
    return field(f, l.prev) ? -1 : expect_n + 1;
}

/* ---- snapshots (issue 5) ---- */
/*
 * GC lists (default builds, 3.9-3.13): struct _gc_runtime_state has kept one
 * layout since 3.9 (Include/internal/pycore_gc.h): generations[3] (each
 * {PyGC_Head head; int threshold; int count;}, 24 bytes), then
 * `PyGC_Head *generation0` pointing at generations[0].head, then
 * permanent_generation. The state sits inside PyInterpreterState at an offset
 * that changes with every version, so we find it by its signature: the only
 * pointer in the interpreter state that points 72 bytes before itself (checked
 * on 3.9.18, 3.10.13, 3.11.2/7, 3.12.1, 3.13.0/15). `enabled` is the int 12
 * bytes before generations[0].
 * Free-threaded builds keep no lists; PyUnstable_GC_VisitObjects walks the
 * mimalloc heaps with the world stopped.
 */
#define SNAP_GEN_STRIDE    24u
#define SNAP_GEN0_SELF     72u  /* generation0 field, from generations[0]    */
#define SNAP_GEN_PERMANENT 80u  /* permanent_generation, from generations[0] */
#define SNAP_GC_ENABLED    12u  /* `enabled`, before generations[0]          */
#define SNAP_TPFLAGS_MANAGED_WEAKREF (1ul << 3)
#define SNAP_TPFLAGS_MANAGED_DICT    (1ul << 4)
#define SNAP_TPFLAGS_UNICODE_SUB     (1ul << 28)
#define SNAP_TPFLAGS_TYPE_SUB        (1ul << 31)

/* What snapshots found about this interpreter (the C API they call is rs_capi's). */
static struct {
    int checked, usable;
    char *gen0;
} snap;

static char *snap_find_gen0(void)
{
    char *interp = rs_capi.PyInterpreterState_Get ? rs_capi.PyInterpreterState_Get() : NULL;
    if (!interp)
        return NULL;
    for (uint32_t k = SNAP_GEN0_SELF + 24; k < (1u << 16); k += 8) {
        char *field = interp + k;
        if (*(char **)field != field - SNAP_GEN0_SELF)
            continue;
        char *gen0 = field - SNAP_GEN0_SELF;
        int enabled = *(int *)(gen0 - SNAP_GC_ENABLED);
        int threshold = *(int *)(gen0 + 16);
        if ((enabled == 0 || enabled == 1) && threshold >= 0 && *(char **)gen0)
            return gen0;
    }
    return NULL;
}

int rs_pyver_snap_supported(void)
{
    if (!snap.checked) {
        snap.checked = 1;
        static const size_t needs[] = {
            RS_CAPI(PyObject_IS_GC), RS_CAPI(PyObject_GC_IsTracked), RS_CAPI(PyDict_Next),
            RS_CAPI(PyErr_Fetch), RS_CAPI(PyErr_Restore), RS_CAPI(PyErr_Clear), RS_CAPI(Py_DecRef),
            RS_CAPI(Py_IncRef), RS_CAPI(PyDict_Type), RS_CAPI(PyList_Type), RS_CAPI(PyTuple_Type),
        };
        snap.usable = rs_py.is_python && rs_py.ob_size && rs_py.hex >= 0x03090000 && rs_py.hex < 0x030e0000 &&
                      !rs_capi_missing(needs, RS_CAPI_COUNT(needs)) &&
                      (rs_py.free_threaded ? rs_capi.PyUnstable_GC_VisitObjects != NULL
                                           : rs_capi.PyInterpreterState_Get != NULL);
        if (rs_py.is_python && !snap.usable)
            warn_off("snapshots are", "3.9-3.13");
    }
    return snap.usable;
}

int rs_pyver_snap_ready(void)
{
    if (!rs_pyver_snap_supported() || !rs_py.Py_IsInitialized || !rs_py.Py_IsInitialized())
        return 0;
    if (!rs_py.free_threaded && !snap.gen0) {
        snap.gen0 = snap_find_gen0();
        if (!snap.gen0) {
            snap.usable = 0;
            rs_warn("snapshots: cannot find the GC lists of this CPython; snapshots are off");
            return 0;
        }
    }
    return 1;
}

void rs_pyver_snap_typeinfo(const void *type, struct rs_pyver_typeinfo *out)
{
    const char *t = type;
    uint32_t v = rs_py.ob_size + 8; /* tp_name */
    memset(out, 0, sizeof(*out));
    out->name = rs_py_type_name(type);
    if (!out->name)
        out->name = "?";
    out->basicsize = *(const int64_t *)(t + v + 8);
    out->itemsize = *(const int64_t *)(t + v + 16);
    out->tp_flags = rs_py_type_flags(type);
    out->traverse = *(int (*const *)(void *, rs_py_visitproc, void *))(t + v + 20 * 8);
    if (rs_py.minor == 11)
        out->preheader_extra = (out->tp_flags & SNAP_TPFLAGS_MANAGED_DICT) ? 16 : 0;
    else if (rs_py.minor >= 12)
        out->preheader_extra =
            (out->tp_flags & (SNAP_TPFLAGS_MANAGED_DICT | SNAP_TPFLAGS_MANAGED_WEAKREF)) ? 16 : 0;
    if (type == rs_capi.PyDict_Type)
        out->kind = RS_PYKIND_DICT;
    else if (type == rs_capi.PyList_Type)
        out->kind = RS_PYKIND_LIST;
    else if (type == rs_capi.PyTuple_Type)
        out->kind = RS_PYKIND_TUPLE;
    else if (type == rs_capi.PyModule_Type)
        out->kind = RS_PYKIND_MODULE;
    else if (type == rs_py.code_type)
        out->kind = RS_PYKIND_CODE;
    else if (out->tp_flags & SNAP_TPFLAGS_UNICODE_SUB)
        out->kind = RS_PYKIND_STR;
    else if (out->tp_flags & SNAP_TPFLAGS_TYPE_SUB)
        out->kind = RS_PYKIND_TYPE;

    /* A C __sizeof__ (method descriptor) other than object.__sizeof__. The
     * name is interned already (every type dict has it); our reference is
     * dropped right away so its refcount is unchanged afterwards. */
    static const size_t needs[] = {
        RS_CAPI(_PyType_Lookup), RS_CAPI(PyUnicode_InternFromString), RS_CAPI(PyMethodDescr_Type),
    };
    if (rs_capi_missing(needs, RS_CAPI_COUNT(needs)))
        return;
    void *name = rs_capi.PyUnicode_InternFromString("__sizeof__");
    if (!name) {
        rs_capi.PyErr_Clear();
        return;
    }
    const char *descr = rs_capi._PyType_Lookup(type, name);
    rs_capi.Py_DecRef(name);
    if (!descr || rs_py_type(descr) != rs_capi.PyMethodDescr_Type)
        return;
    const void *d_type = *(const void *const *)(descr + rs_py.ob_size); /* PyDescrObject.d_type */
    if (d_type == rs_capi.PyBaseObject_Type)
        return;
    /* PyMethodDescrObject: PyDescrObject {head, d_type, d_name, d_qualname}, d_method */
    const struct rs_py_methoddef *def = *(const struct rs_py_methoddef *const *)(descr + rs_py.ob_size + 3 * 8);
    if (!def || !(def->flags & RS_METH_NOARGS))
        return;
    out->sizeof_meth = (void *(*)(void *, void *))def->meth;
}

uint32_t rs_pyver_snap_preheader(void *obj, const struct rs_pyver_typeinfo *ti)
{
    uint32_t gc = !rs_py.free_threaded && rs_capi.PyObject_IS_GC(obj) ? 16 : 0;
    return gc + ti->preheader_extra;
}

static int obj_type_is(const void *obj, const void *type)
{
    return type && rs_py_type(obj) == type;
}

uint64_t rs_pyver_snap_sizeof(void *obj, const struct rs_pyver_typeinfo *ti, int may_call)
{
    int64_t size = -1;
    if (may_call && ti->sizeof_meth && rs_capi.PyLong_AsSsize_t) {
        void *res = ti->sizeof_meth(obj, NULL);
        if (res) {
            size = rs_capi.PyLong_AsSsize_t(res);
            rs_capi.Py_DecRef(res);
        }
        if (size < 0) {
            rs_capi.PyErr_Clear();
            size = -1;
        }
    }
    if (size < 0 && (ti->kind == RS_PYKIND_LIST || obj_type_is(obj, rs_capi.PyByteArray_Type))) {
        /* what list.__sizeof__ / bytearray.__sizeof__ compute, without calling
         * them (free-threaded builds: no allocation while the world is stopped) */
        int64_t allocated = *(const int64_t *)((const char *)obj + rs_py.ob_size + (ti->kind == RS_PYKIND_LIST ? 16 : 8));
        size = ti->basicsize + (allocated > 0 ? allocated : 0) * (ti->kind == RS_PYKIND_LIST ? 8 : 1);
    }
    if (size < 0) {
        size = ti->basicsize;
        if (ti->itemsize > 0) {
            int64_t n = *(const int64_t *)((const char *)obj + rs_py.ob_size);
            size += (n < 0 ? -n : n) * ti->itemsize;
        }
    }
    return (uint64_t)size + rs_pyver_snap_preheader(obj, ti);
}

int rs_pyver_snap_refs(void *obj, const struct rs_pyver_typeinfo *ti, rs_py_visitproc visit,
                       int (*visit_item)(void *key, void *value, void *arg), void *arg)
{
    char *o = obj;
    int64_t n;
    switch (ti->kind) {
    case RS_PYKIND_DICT: {
        int64_t pos = 0;
        void *key, *value;
        while (rs_capi.PyDict_Next(obj, &pos, &key, &value))
            if (visit_item(key, value, arg) < 0)
                break;
        return 0;
    }
    case RS_PYKIND_LIST: {
        n = *(const int64_t *)(o + rs_py.ob_size);
        void **items = *(void ***)(o + rs_py.ob_size + 8);
        for (int64_t i = 0; i < n && items; i++)
            if (items[i])
                visit(items[i], arg);
        return 0;
    }
    case RS_PYKIND_TUPLE: {
        n = *(const int64_t *)(o + rs_py.ob_size);
        void **items = (void **)(o + rs_py.ob_size + 8);
        for (int64_t i = 0; i < n; i++)
            if (items[i])
                visit(items[i], arg);
        return 0;
    }
    default:
        if (!ti->traverse || !rs_capi.PyObject_IS_GC(obj))
            return 0;
        ti->traverse(obj, visit, arg);
        return 0;
    }
}

int rs_pyver_snap_is_tracked(void *obj)
{
    return rs_capi.PyObject_IS_GC(obj) && rs_capi.PyObject_GC_IsTracked(obj);
}

int rs_pyver_snap_is_str(void *obj)
{
    return (rs_py_type_flags(rs_py_type(obj)) & SNAP_TPFLAGS_UNICODE_SUB) != 0;
}

int rs_pyver_snap_name(void *obj, const struct rs_pyver_typeinfo *ti, char *buf, uint32_t cap)
{
    const char *s = NULL;
    switch (ti->kind) {
    case RS_PYKIND_STR:
    {
        int n = rs_py_str_utf8(obj, buf, cap);
        return n < 0 ? -1 : n;
    }
    case RS_PYKIND_CODE: {
        const void *q = rs_py_code_qualname(obj);
        int n = q ? rs_py_str_utf8(q, buf, cap) : -1;
        return n < 0 ? -1 : n;
    }
    case RS_PYKIND_TYPE:
        s = rs_py_type_name(obj);
        break;
    case RS_PYKIND_MODULE:
        if (!rs_capi.PyModule_GetName)
            return -1;
        s = rs_capi.PyModule_GetName(obj);
        if (!s)
            rs_capi.PyErr_Clear();
        break;
    default:
        return -1;
    }
    if (!s)
        return -1;
    uint32_t n = (uint32_t)strnlen(s, cap);
    memcpy(buf, s, n);
    return (int)n;
}

struct snap_visit_ctx {
    int (*fn)(void *obj, int generation, void *arg);
    void *arg;
    int rc;
};

static int snap_visit_ft(void *obj, void *arg)
{
    struct snap_visit_ctx *c = arg;
    c->rc = c->fn(obj, -1, c->arg);
    return c->rc < 0 ? 0 : 1; /* 1 = continue */
}

int rs_pyver_snap_foreach_tracked(int (*fn)(void *obj, int generation, void *arg), void *arg)
{
    if (rs_py.free_threaded) {
        struct snap_visit_ctx c = {fn, arg, 0};
        if (!rs_capi.PyUnstable_GC_VisitObjects)
            return -ENOTSUP;
        rs_capi.PyUnstable_GC_VisitObjects(snap_visit_ft, &c);
        return c.rc < 0 ? c.rc : 0;
    }
    char *gen0 = snap.gen0;
    if (!gen0)
        return -ENOTSUP;
    int *enabled = (int *)(gen0 - SNAP_GC_ENABLED);
    int was_enabled = *enabled;
    int rc = 0;
    *enabled = 0; /* no collection may reorder the lists under us (3.9-3.11 collect inside allocations) */
    for (int g = 0; g <= RS_PYVER_GEN_PERMANENT && rc >= 0; g++) {
        char *head = (char *)rs_py_gc_head(g);
        for (char *node = *(char **)head; node && node != head && rc >= 0;) {
            rc = fn(node + 16, g, arg);
            node = (char *)(*(uintptr_t *)node & ~(uintptr_t)7);
        }
    }
    *enabled = was_enabled;
    return rc < 0 ? rc : 0;
}

int rs_pyver_snap_foreach_garbage(int (*fn)(void *obj, void *arg), void *arg)
{
    static const size_t needs[] = {
        RS_CAPI(PySys_GetObject), RS_CAPI(PyDict_GetItemString), RS_CAPI(PyObject_GetAttrString),
        RS_CAPI(PyList_Size), RS_CAPI(PyList_GetItem),
    };
    if (rs_capi_missing(needs, RS_CAPI_COUNT(needs)))
        return -ENOTSUP;
    void *modules = rs_capi.PySys_GetObject("modules");              /* borrowed */
    void *gc = modules ? rs_capi.PyDict_GetItemString(modules, "gc") : NULL; /* borrowed */
    if (!gc) {
        rs_capi.PyErr_Clear();
        return 0; /* gc never imported: gc.garbage cannot have been filled by the program */
    }
    void *garbage = rs_capi.PyObject_GetAttrString(gc, "garbage");
    if (!garbage) {
        rs_capi.PyErr_Clear();
        return -ENOENT;
    }
    int64_t n = rs_capi.PyList_Size(garbage);
    for (int64_t i = 0; i < n; i++) {
        void *item = rs_capi.PyList_GetItem(garbage, i);
        if (item && fn(item, arg) < 0)
            break;
    }
    rs_capi.PyErr_Clear();
    rs_capi.Py_DecRef(garbage);
    return 0;
}

int rs_pyver_snap_gc_enabled(void)
{
    if (snap.gen0)
        return rs_py_gc_enabled();
    return rs_capi.PyGC_IsEnabled ? rs_capi.PyGC_IsEnabled() != 0 : 255;
}

void rs_pyver_snap_save_error(void *saved[3])
{
    saved[0] = saved[1] = saved[2] = NULL;
    rs_capi.PyErr_Fetch(&saved[0], &saved[1], &saved[2]);
}

void rs_pyver_snap_restore_error(void *saved[3])
{
    rs_capi.PyErr_Clear();
    rs_capi.PyErr_Restore(saved[0], saved[1], saved[2]);
}

static void (*snap_atexit_fn)(void);

static void *snap_atexit_trampoline(void *self, void *unused)
{
    (void)self;
    (void)unused;
    if (snap_atexit_fn)
        snap_atexit_fn();
    rs_capi.Py_IncRef((void *)rs_capi._Py_NoneStruct);
    return (void *)rs_capi._Py_NoneStruct;
}

static struct rs_py_methoddef snap_atexit_def = {
    "_refscope_snapshot_at_exit", (void *)snap_atexit_trampoline, RS_METH_NOARGS, NULL};

int rs_pyver_snap_atexit(void (*fn)(void))
{
    int rc = -EIO;
    void *atexit = NULL, *reg = NULL, *func = NULL, *res = NULL;
    static const size_t needs[] = {
        RS_CAPI(PyImport_ImportModule), RS_CAPI(PyCFunction_NewEx), RS_CAPI(PyObject_CallFunctionObjArgs),
        RS_CAPI(_Py_NoneStruct),
    };
    if (!rs_pyver_snap_ready() || rs_capi_missing(needs, RS_CAPI_COUNT(needs)))
        return -EIO;
    void *saved[3];
    rs_pyver_snap_save_error(saved);
    snap_atexit_fn = fn;
    atexit = rs_capi.PyImport_ImportModule("atexit");
    if (!atexit)
        goto out;
    reg = rs_capi.PyObject_GetAttrString(atexit, "register");
    if (!reg)
        goto out;
    func = rs_capi.PyCFunction_NewEx(&snap_atexit_def, NULL, NULL);
    if (!func)
        goto out;
    res = rs_capi.PyObject_CallFunctionObjArgs(reg, func, NULL);
    if (res)
        rc = 0;
out:
    if (res)
        rs_capi.Py_DecRef(res);
    if (func)
        rs_capi.Py_DecRef(func);
    if (reg)
        rs_capi.Py_DecRef(reg);
    if (atexit)
        rs_capi.Py_DecRef(atexit);
    rs_pyver_snap_restore_error(saved);
    return rc;
}

/* ---- gc census (issue 4) ---- */
/* The census walks the same lists as snapshots, found once by whichever
 * asks first (snap_find_gen0 above: the GC state's self-pointer signature)
 * and kept in snap.gen0. */
int rs_py_gc_lists_init(void)
{
    if (!rs_py.is_python || rs_py.free_threaded || rs_py.hex < 0x03090000u || rs_py.hex >= 0x030e0000u)
        return -ENOTSUP;
    if (snap.gen0)
        return 0;
    snap.gen0 = snap_find_gen0();
    return snap.gen0 ? 0 : -ENOENT;
}

const void *rs_py_gc_head(int generation)
{
    if (!snap.gen0 || generation < 0 || generation > RS_PYVER_GEN_PERMANENT)
        return NULL;
    return generation == RS_PYVER_GEN_PERMANENT ? snap.gen0 + SNAP_GEN_PERMANENT
                                                : snap.gen0 + generation * SNAP_GEN_STRIDE;
}

int rs_py_gc_threshold(int generation)
{
    if (!snap.gen0 || generation < 0 || generation > 2)
        return -1;
    return *(const int *)(snap.gen0 + generation * SNAP_GEN_STRIDE + 16);
}

int rs_py_gc_count(int generation)
{
    if (!snap.gen0 || generation < 0 || generation > 2)
        return -1;
    return *(const int *)(snap.gen0 + generation * SNAP_GEN_STRIDE + 20);
}

int rs_py_gc_enabled(void)
{
    return snap.gen0 ? *(const int *)(snap.gen0 - SNAP_GC_ENABLED) != 0 : -1;
}
