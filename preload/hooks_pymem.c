/*
 * The PyMem domain wrappers: RAW, MEM and OBJ (PyMemAllocatorEx) and the
 * pymalloc arena allocator, each recording into its own domain.
 *
 * Each installation takes a fresh wrapper cell holding the allocator it
 * replaced; the wrappers chain to it through ctx. Cells are never reused, so
 * an allocator someone else stacked on top of an older wrapper (tracemalloc,
 * a pre-initialization swap) keeps working. The recursion guard makes one
 * request one record: the outermost wrapper records, anything it causes
 * (MEM/OBJ forwarding to RAW, RAW to libc, a nested wrapper of ours) passes
 * through. Arena blocks are the exception: they are recorded even inside an
 * OBJ call, in their own domain that totals never add. Requests made by
 * refscope's own Python work are recorded too, flagged RS_F_OWN (guard.h).
 *
 * Pre-initialization replaces all three domains when PYTHONMALLOC is set or
 * under -X dev, so the wrappers are checked again in setlocale() (CPython calls
 * it right after) and at the init safe point. setlocale() is also where a
 * libpython loaded later with dlopen shows itself (pyver.h, rs_pyver_late).
 * Free-threaded builds: the wrappers are pure pass-throughs plus recording.
 */
#include <dlfcn.h>
#include <errno.h>
#include <locale.h>
#include <stdint.h>

#include "capi.h"
#include "emit.h"
#include "guard.h"
#include "pysafe.h"
#include "pytypes.h"
#include "pyver.h"
#include "shim.h"
#include "stack.h"
#include "refscope/events.h"

#define CELLS_PER_DOMAIN 8

enum { WRAP_CTOR = 0, WRAP_SETLOCALE = 1, WRAP_LAZY = 2, WRAP_LOADED = 3 }; /* events.h */

struct mem_cell {
    struct rs_pymem_allocator orig;
};
struct arena_cell {
    struct rs_pyarena_allocator orig;
};

static struct mem_cell mem_cells[3][CELLS_PER_DOMAIN];
static int mem_used[3];
static struct arena_cell arena_cells[CELLS_PER_DOMAIN];
static int arena_used;
static char *(*real_setlocale)(int, const char *);

/* ---- wrappers ---------------------------------------------------------------- */
/* Each domain has its own four hooks (DOMAIN_WRAPPERS below), which take the
 * common case themselves, with the domain a constant, and leave everything
 * else (nested and refscope's own requests, stack capture, peeking at freed
 * blocks, a record the solo lane declines, realloc) to the general wrappers
 * here, which take the domain as an argument. */

/* MEM and OBJ calls hold the GIL (the C API's contract; free-threaded builds
 * have per-thread states anyway); RAW calls may not. */
#define GIL_HELD(domain) ((domain) != RS_DOMAIN_RAW)

/* A new block (malloc, calloc): its record, and for OBJ the block an object
 * created next may take its stack from (stack.h). `flags` includes
 * rs_guard_enter_hook's RS_F_OWN for refscope's own requests, which have no
 * stack (and make no object the program sees). */
__attribute__((always_inline))
static inline void record_new_block(uint8_t domain, uint8_t flags, void *p, uint64_t size)
{
    int own = flags & RS_F_OWN;
    uint32_t stack = own ? 0 : rs_stack_current(GIL_HELD(domain));
    rs_emit_alloc(domain | flags, (uint64_t)(uintptr_t)p, size, stack);
    if (domain == RS_DOMAIN_OBJ && !own)
        rs_stack_note_obj_block((uint64_t)(uintptr_t)p, size, stack);
}

__attribute__((noinline))
static void *wrap_malloc(void *ctx, size_t size, uint8_t domain)
{
    struct mem_cell *c = ctx;
    int rec = rs_guard_enter_hook();
    void *p = c->orig.malloc(c->orig.ctx, size);
    if (rec != RS_GUARD_PASS && p) {
        record_new_block(domain, (uint8_t)rec, p, size);
        if (rec == 0)
            rs_pysafe_poll();
    }
    rs_guard_leave();
    return p;
}

__attribute__((noinline))
static void *wrap_calloc(void *ctx, size_t nelem, size_t elsize, uint8_t domain)
{
    struct mem_cell *c = ctx;
    int rec = rs_guard_enter_hook();
    void *p = c->orig.calloc(c->orig.ctx, nelem, elsize);
    if (rec != RS_GUARD_PASS && p)
        record_new_block(domain, RS_F_ZEROED | rec, p, (uint64_t)nelem * elsize);
    rs_guard_leave();
    return p;
}

__attribute__((always_inline))
static inline void *wrap_realloc(void *ctx, void *ptr, size_t size, uint8_t domain)
{
    struct mem_cell *c = ctx;
    int rec = rs_guard_enter_hook();
    if (rec != RS_GUARD_PASS && ptr)
        rs_emit_free(domain | RS_F_REALLOC | rec, (uint64_t)(uintptr_t)ptr);
    void *p = c->orig.realloc(c->orig.ctx, ptr, size);
    if (rec != RS_GUARD_PASS) {
        if (p)
            rs_emit_alloc(domain | (ptr ? RS_F_REALLOC : 0) | rec, (uint64_t)(uintptr_t)p, size,
                          rec ? 0 : rs_stack_current(GIL_HELD(domain)));
        else if (ptr)
            rs_emit_alloc(domain | RS_F_REALLOC | RS_F_RESTORE | rec, (uint64_t)(uintptr_t)ptr, 0, 0);
    }
    rs_guard_leave();
    return p;
}

__attribute__((noinline))
static void wrap_free(void *ctx, void *ptr, uint8_t domain)
{
    struct mem_cell *c = ctx;
    int rec = rs_guard_enter_hook();
    if (rec != RS_GUARD_PASS && ptr) {
        if (domain == RS_DOMAIN_OBJ && __builtin_expect(rs_py_peeking, 0)) {
            rs_stack_note_obj_free((uint64_t)(uintptr_t)ptr);
            rs_pytype_note_obj_free((uint64_t)(uintptr_t)ptr);
        }
        rs_emit_free(domain | rec, (uint64_t)(uintptr_t)ptr);
    }
    c->orig.free(c->orig.ctx, ptr);
    rs_guard_leave();
}

/* The common case, "plain": the program's own request (guard depth 0), no
 * stack to capture, the init safe point asked for, and the record taken by
 * the solo lane (emit.h). Its record needs no call, and a plain hook calls
 * nothing but the allocator, so it saves one register at most: about 20
 * instructions less per event than the general wrappers above, which take
 * everything else. Each hook CPython calls only picks one or the other and
 * jumps there, with no stack frame of its own (a frame set up for the plain
 * case would cost the general one as much). */
__attribute__((always_inline))
static inline int plain_alloc(void)
{
    return __builtin_expect(rs_guard_depth == 0, 1) && __builtin_expect(!rs_stack_capturing, 1) &&
           __builtin_expect(rs_pysafe_init_asked(), 1);
}

__attribute__((always_inline))
static inline int plain_free(void *ptr, uint8_t domain)
{
    return __builtin_expect(rs_guard_depth == 0, 1) && __builtin_expect(ptr != NULL, 1) &&
           !(domain == RS_DOMAIN_OBJ && __builtin_expect(rs_py_peeking, 0));
}

__attribute__((always_inline))
static inline void *plain_malloc(void *ctx, size_t size, uint8_t domain)
{
    struct mem_cell *c = ctx;
    rs_guard_depth = 1;
    void *p = c->orig.malloc(c->orig.ctx, size);
    rs_guard_depth = 0;
    if (p)
        rs_emit_alloc(domain, (uint64_t)(uintptr_t)p, size, 0);
    return p;
}

__attribute__((always_inline))
static inline void *plain_calloc(void *ctx, size_t nelem, size_t elsize, uint8_t domain)
{
    struct mem_cell *c = ctx;
    rs_guard_depth = 1;
    void *p = c->orig.calloc(c->orig.ctx, nelem, elsize);
    rs_guard_depth = 0;
    if (p)
        rs_emit_alloc(domain | RS_F_ZEROED, (uint64_t)(uintptr_t)p, (uint64_t)nelem * elsize, 0);
    return p;
}

/* A free is recorded before the real free: the lane's record first, then
 * the call under the guard; a record the lane declines is the general
 * wrapper's. */
__attribute__((always_inline))
static inline void plain_free_block(void *ctx, void *ptr, uint8_t domain)
{
    struct mem_cell *c = ctx;
    if (__builtin_expect(!rs_emit_lane(RS_EV_FREE, domain, (uint64_t)(uintptr_t)ptr, 0, 0), 0)) {
        wrap_free(ctx, ptr, domain);
        return;
    }
    rs_guard_depth = 1;
    c->orig.free(c->orig.ctx, ptr);
    rs_guard_depth = 0;
}

/* The four hooks of one domain, `name`_malloc and so on, and their plain
 * bodies (out of line, with the domain a constant). */
#define DOMAIN_WRAPPERS(name, domain)                                                              \
    __attribute__((noinline)) static void *name##_plain_malloc(void *ctx, size_t size)             \
    {                                                                                              \
        return plain_malloc(ctx, size, domain);                                                    \
    }                                                                                              \
    __attribute__((noinline)) static void *name##_plain_calloc(void *ctx, size_t nelem,            \
                                                               size_t elsize)                      \
    {                                                                                              \
        return plain_calloc(ctx, nelem, elsize, domain);                                           \
    }                                                                                              \
    __attribute__((noinline)) static void name##_plain_free(void *ctx, void *ptr)                  \
    {                                                                                              \
        plain_free_block(ctx, ptr, domain);                                                        \
    }                                                                                              \
    static void *name##_malloc(void *ctx, size_t size)                                             \
    {                                                                                              \
        return plain_alloc() ? name##_plain_malloc(ctx, size) : wrap_malloc(ctx, size, domain);    \
    }                                                                                              \
    static void *name##_calloc(void *ctx, size_t nelem, size_t elsize)                             \
    {                                                                                              \
        return plain_alloc() ? name##_plain_calloc(ctx, nelem, elsize)                             \
                             : wrap_calloc(ctx, nelem, elsize, domain);                            \
    }                                                                                              \
    static void *name##_realloc(void *ctx, void *ptr, size_t size)                                 \
    {                                                                                              \
        return wrap_realloc(ctx, ptr, size, domain);                                               \
    }                                                                                              \
    static void name##_free(void *ctx, void *ptr)                                                  \
    {                                                                                              \
        if (plain_free(ptr, domain))                                                               \
            name##_plain_free(ctx, ptr);                                                           \
        else                                                                                       \
            wrap_free(ctx, ptr, domain);                                                           \
    }
DOMAIN_WRAPPERS(raw, RS_DOMAIN_RAW)
DOMAIN_WRAPPERS(mem, RS_DOMAIN_MEM)
DOMAIN_WRAPPERS(obj, RS_DOMAIN_OBJ)

/* By PyMem domain (RS_PYMEM_RAW, _MEM, _OBJ); ctx is the installation's cell. */
static const struct rs_pymem_allocator wrappers[3] = {
    { NULL, raw_malloc, raw_calloc, raw_realloc, raw_free },
    { NULL, mem_malloc, mem_calloc, mem_realloc, mem_free },
    { NULL, obj_malloc, obj_calloc, obj_realloc, obj_free },
};

/* Arena blocks are recorded whatever the guard says: they are the backing
 * store of the OBJ call that is usually in progress. */
static void *wrap_arena_alloc(void *ctx, size_t size)
{
    struct arena_cell *c = ctx;
    rs_guard_depth++;
    void *p = c->orig.alloc(c->orig.ctx, size);
    if (p)
        rs_emit_alloc(RS_DOMAIN_ARENA, (uint64_t)(uintptr_t)p, size, rs_stack_current(1));
    rs_guard_depth--;
    return p;
}

static void wrap_arena_free(void *ctx, void *ptr, size_t size)
{
    struct arena_cell *c = ctx;
    rs_guard_depth++;
    if (ptr)
        rs_emit_free(RS_DOMAIN_ARENA, (uint64_t)(uintptr_t)ptr);
    c->orig.free(c->orig.ctx, ptr, size);
    rs_guard_depth--;
}

/* ---- installation ------------------------------------------------------------ */

static const uint8_t rs_domain_of[3] = { RS_DOMAIN_RAW, RS_DOMAIN_MEM, RS_DOMAIN_OBJ };

/* Wrap every domain not currently topped by our wrapper. Returns the mask of
 * domains (1 << enum rs_domain) now wrapped and sets *changed when any was
 * (re)installed. Not for concurrent use: constructor, pre-init setlocale, or
 * the init safe point (GIL held). */
static uint32_t pymem_wrap(int *changed)
{
    uint32_t mask = 0;
    for (int d = 0; d < 3; d++) {
        struct rs_pymem_allocator cur;
        rs_py.PyMem_GetAllocator(d, &cur);
        if (cur.malloc == wrappers[d].malloc) {
            mask |= 1u << rs_domain_of[d];
            continue;
        }
        if (mem_used[d] == CELLS_PER_DOMAIN || !cur.malloc)
            continue;
        struct mem_cell *c = &mem_cells[d][mem_used[d]++];
        c->orig = cur;
        struct rs_pymem_allocator w = wrappers[d];
        w.ctx = c;
        rs_py.PyMem_SetAllocator(d, &w);
        mask |= 1u << rs_domain_of[d];
        *changed = 1;
    }
    if (rs_py.PyObject_GetArenaAllocator && rs_py.PyObject_SetArenaAllocator) {
        struct rs_pyarena_allocator cur;
        rs_py.PyObject_GetArenaAllocator(&cur);
        if (cur.alloc == wrap_arena_alloc) {
            mask |= 1u << RS_DOMAIN_ARENA;
        } else if (arena_used < CELLS_PER_DOMAIN && cur.alloc) {
            struct arena_cell *c = &arena_cells[arena_used++];
            c->orig = cur;
            struct rs_pyarena_allocator w = { c, wrap_arena_alloc, wrap_arena_free };
            rs_py.PyObject_SetArenaAllocator(&w);
            mask |= 1u << RS_DOMAIN_ARENA;
            *changed = 1;
        }
    }
    return mask;
}

static void pymem_check(int reason)
{
    if (!rs_py.is_python || !rs_emit_active())
        return;
    int changed = 0;
    rs_guard_depth++; /* nothing we do here is the program's allocation */
    uint32_t mask = pymem_wrap(&changed);
    rs_guard_depth--;
    if (changed || reason == WRAP_CTOR || reason == WRAP_LOADED) {
        struct rs_slot rec = { .kind = RS_EV_ALLOCATOR_WRAPPED, .addr = mask, .size = (uint64_t)reason };
        rs_emit_fixed(&rec);
    }
}

/* ---- sys._debugmallocstats ------------------------------------------------ */
/* CPython prints pymalloc's (or mimalloc's) statistics only when the OBJ
 * domain's allocator is that allocator itself: _PyMem_PymallocEnabled
 * compares function pointers, so with our wrapper on top the program's
 * sys._debugmallocstats() would leave them out. At the init safe point it is
 * replaced by a function that, for the call, puts back the allocator our
 * wrapper replaced and re-installs the wrapper after it; the statistics code
 * writes to stderr and makes no PyMem request, so nothing goes unrecorded.
 * Only with the GIL keeping every other thread out of the OBJ domain: a GIL
 * build with one interpreter (a 3.12+ interpreter with a GIL of its own
 * would not be kept out). Otherwise, or when something else has stacked
 * itself on our wrapper (tracemalloc), the call is the original's, as is. */
static void *debugmallocstats(void *orig, void *unused)
{
    (void)unused;
    struct rs_pymem_allocator top;
    rs_py.PyMem_GetAllocator(RS_PYMEM_OBJ, &top);
    int swap = top.malloc == wrappers[RS_PYMEM_OBJ].malloc &&
               rs_capi.PyInterpreterState_Next(rs_capi.PyInterpreterState_Head()) == NULL;
    if (swap)
        rs_py.PyMem_SetAllocator(RS_PYMEM_OBJ, &((struct mem_cell *)top.ctx)->orig);
    void *res = rs_capi.PyObject_CallObject(orig, NULL);
    if (swap)
        rs_py.PyMem_SetAllocator(RS_PYMEM_OBJ, &top);
    return res;
}

static struct rs_py_methoddef debugmallocstats_def = {
    "_debugmallocstats", (void *)debugmallocstats, RS_METH_NOARGS,
    "sys._debugmallocstats (pymalloc's statistics under refscope's allocator wrapper)"};

/* Free-threaded builds always print mimalloc's statistics: nothing to do. */
static void wrap_debugmallocstats(void)
{
    void *orig, *module = NULL, *fn = NULL;
    static const size_t needs[] = {
        RS_CAPI(PySys_GetObject), RS_CAPI(PySys_SetObject), RS_CAPI(PyCFunction_NewEx),
        RS_CAPI(PyUnicode_FromString), RS_CAPI(PyObject_CallObject), RS_CAPI(PyInterpreterState_Head),
        RS_CAPI(PyInterpreterState_Next), RS_CAPI(Py_DecRef), RS_CAPI(PyErr_Clear),
    };
    if (rs_py.free_threaded || rs_capi_missing(needs, RS_CAPI_COUNT(needs)))
        return;
    orig = rs_capi.PySys_GetObject("_debugmallocstats");
    if (!orig)
        goto out;
    module = rs_capi.PyUnicode_FromString("sys");
    fn = module ? rs_capi.PyCFunction_NewEx(&debugmallocstats_def, orig, module) : NULL;
    if (fn)
        rs_capi.PySys_SetObject("_debugmallocstats", fn);
out:
    if (fn)
        rs_capi.Py_DecRef(fn);
    if (module)
        rs_capi.Py_DecRef(module);
    rs_capi.PyErr_Clear();
}

/* At the init safe point (pysafe.h: GIL held, refscope's own work). */
static void pymem_at_init(void *arg)
{
    (void)arg;
    pymem_check(WRAP_LAZY);
    if (rs_emit_active())
        wrap_debugmallocstats();
}

/* Interposed: CPython calls setlocale right after pre-initialization has
 * replaced the allocators (PYTHONMALLOC, -X dev). */
RS_EXPORT char *setlocale(int category, const char *locale)
{
    if (!real_setlocale)
        real_setlocale = (char *(*)(int, const char *))dlsym(RTLD_NEXT, "setlocale");
    char *r = real_setlocale ? real_setlocale(category, locale) : NULL;
    if (rs_guard_depth == 0) {
        if (rs_py.is_python)
            pymem_check(WRAP_SETLOCALE);
        else if (rs_emit_active())
            rs_pyver_late(__builtin_return_address(0)); /* wraps, through pymem_start */
    }
    return r;
}

static void pymem_start(void)
{
    pymem_check(rs_py.loaded_late ? WRAP_LOADED : WRAP_CTOR);
    rs_pysafe_on_init(pymem_at_init, NULL);
}

__attribute__((constructor(RS_CTOR_PYTHON))) static void pymem_ctor(void)
{
    real_setlocale = (char *(*)(int, const char *))dlsym(RTLD_NEXT, "setlocale");
    rs_pyver_when_found(pymem_start);
}
