/*
 * GC events (all versions): a C function registered in gc.callbacks at the
 * init safe point records each collection's start and stop (generation,
 * collected, uncollectable, counts at start, pause in monotonic ns), the
 * interpreter's own gc.get_stats() at registration (collections before
 * refscope could register stay counted), configuration changes, and the
 * census that lets the analyzer derive exact promotions. Layouts: events.h,
 * "issue 4" section.
 *
 * Configuration changes are seen two ways: gc.set_threshold, disable, enable,
 * freeze and unfreeze are replaced in the gc module by wrappers that call the
 * original and then record the new state (exact time of the change); and the
 * state is compared at every collection start and at exit, which catches
 * changes made through the C API (PyGC_Disable) or through a reference to a
 * gc function taken before refscope registered.
 *
 * Census: at a collection of generation g, gc.get_objects(generation=i) for
 * every i <= g (the objects about to be examined), as (address, type id)
 * pairs; after a generation-0 collection also gc.get_objects(generation=1),
 * which makes the promotions of the frequent young collections exact even
 * for tuples the collector untracks. Cost: one Python list of the examined
 * objects plus 12 bytes per object in the trace, i.e. of the same order as
 * the collection's own traversal; REFSCOPE_GC_CENSUS=off turns it off.
 * The census is off on free-threaded builds (whole-heap collections) and on
 * 3.14.0-3.14.4 (incremental collector); a note says so.
 *
 * Everything here runs at safe points (GIL held) with the recursion guard
 * held, so refscope's own temporary objects are not recorded.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "refscope/clock.h"
#include "emit.h"
#include "guard.h"
#include "objtrace.h"
#include "pysafe.h"
#include "pytypes.h"
#include "pyver.h"
#include "shim.h"

typedef void pyobj;

/* PyMethodDef, identical on every supported version. */
struct py_methoddef {
    const char *name;
    void *meth;
    int flags;
    const char *doc;
};
#define METH_VARARGS 0x1
#define METH_KEYWORDS 0x2
#define METH_NOARGS 0x4

static struct {
    pyobj *(*import)(const char *);
    pyobj *(*getattr)(pyobj *, const char *);
    int (*setattr)(pyobj *, const char *, pyobj *);
    pyobj *(*call)(pyobj *, pyobj *, pyobj *);
    int (*list_append)(pyobj *, pyobj *);
    long (*list_size)(pyobj *);
    pyobj *(*list_get)(pyobj *, long);
    pyobj *(*tuple_new)(long);
    long (*tuple_size)(pyobj *);
    pyobj *(*tuple_get)(pyobj *, long);
    int (*tuple_set)(pyobj *, long, pyobj *);
    pyobj *(*long_from)(long);
    long long (*long_as)(pyobj *);
    pyobj *(*dict_get)(pyobj *, const char *);
    const char *(*utf8)(pyobj *);
    pyobj *(*str_from)(const char *);
    int (*is_true)(pyobj *);
    pyobj *(*cfunc_new)(struct py_methoddef *, pyobj *, pyobj *);
    void (*err_clear)(void);
    void (*incref)(pyobj *);
    void (*decref)(pyobj *);
    pyobj *none;
} api;

struct api_entry {
    const char *name;
    void **slot;
};

static const struct api_entry api_entries[] = {
    {"PyImport_ImportModule", (void **)&api.import},
    {"PyObject_GetAttrString", (void **)&api.getattr},
    {"PyObject_SetAttrString", (void **)&api.setattr},
    {"PyObject_Call", (void **)&api.call},
    {"PyList_Append", (void **)&api.list_append},
    {"PyList_Size", (void **)&api.list_size},
    {"PyList_GetItem", (void **)&api.list_get},
    {"PyTuple_New", (void **)&api.tuple_new},
    {"PyTuple_Size", (void **)&api.tuple_size},
    {"PyTuple_GetItem", (void **)&api.tuple_get},
    {"PyTuple_SetItem", (void **)&api.tuple_set},
    {"PyLong_FromLong", (void **)&api.long_from},
    {"PyLong_AsLongLong", (void **)&api.long_as},
    {"PyDict_GetItemString", (void **)&api.dict_get},
    {"PyUnicode_AsUTF8", (void **)&api.utf8},
    {"PyUnicode_FromString", (void **)&api.str_from},
    {"PyObject_IsTrue", (void **)&api.is_true},
    {"PyCFunction_NewEx", (void **)&api.cfunc_new},
    {"PyErr_Clear", (void **)&api.err_clear},
    {"Py_IncRef", (void **)&api.incref},
    {"Py_DecRef", (void **)&api.decref},
    {"_Py_NoneStruct", (void **)&api.none},
};

/* gc module functions refscope calls (the originals, never our wrappers). */
static struct {
    pyobj *get_count, *get_threshold, *isenabled, *get_freeze_count, *get_objects, *get_stats;
    pyobj *gen_args[3]; /* (0,), (1,), (2,) */
} gcf;

struct gc_config {
    uint8_t enabled, nthresh;
    uint64_t thresh[3];
    uint64_t freeze_count;
};

static struct {
    int census;            /* census on                                   */
    int generational;      /* 0 on free-threaded and incremental builds   */
    int in_collection;
    int start_gen;
    uint8_t start_flags;
    uint64_t start_mono;
    uint32_t seq;
    struct gc_config config; /* last recorded                             */
    int have_config;
} st;

static uint8_t census_buf[16 + RS_GC_CENSUS_MAX * 12];

/* ---- small helpers ---------------------------------------------------------- */

static void emit_note(uint16_t code, const char *text)
{
    uint8_t data[512];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    rs_buf_u16(&b, code);
    rs_buf_str(&b, text, (uint32_t)strlen(text));
    rs_emit_var(RS_EV_NOTE, 0, 0, 0, data, b.len);
}

static pyobj *call0(pyobj *fn)
{
    pyobj *args, *res;
    if (!fn)
        return NULL;
    args = api.tuple_new(0);
    if (!args)
        return NULL;
    res = api.call(fn, args, NULL);
    api.decref(args);
    if (!res)
        api.err_clear();
    return res;
}

static long long int_item(pyobj *tuple, long i)
{
    pyobj *it = api.tuple_get(tuple, i);
    long long v;
    if (!it) {
        api.err_clear();
        return 0;
    }
    v = api.long_as(it);
    if (v == -1)
        api.err_clear();
    return v;
}

static long long dict_int(pyobj *dict, const char *key)
{
    pyobj *it = api.dict_get(dict, key);
    long long v;
    if (!it)
        return 0;
    v = api.long_as(it);
    if (v == -1)
        api.err_clear();
    return v;
}

static uint32_t sat32(long long v)
{
    return v < 0 ? 0 : v > 0xffffffffll ? 0xffffffffu : (uint32_t)v;
}

/* ---- configuration ---------------------------------------------------------- */

static int read_config(struct gc_config *c)
{
    pyobj *t, *e, *f;
    memset(c, 0, sizeof(*c));
    t = call0(gcf.get_threshold);
    if (!t)
        return -EIO;
    c->nthresh = (uint8_t)(api.tuple_size(t) > 3 ? 3 : api.tuple_size(t));
    for (int i = 0; i < c->nthresh; i++)
        c->thresh[i] = (uint64_t)int_item(t, i);
    api.decref(t);
    e = call0(gcf.isenabled);
    if (e) {
        c->enabled = api.is_true(e) > 0;
        api.decref(e);
    }
    c->freeze_count = UINT64_MAX;
    f = call0(gcf.get_freeze_count);
    if (f) {
        c->freeze_count = (uint64_t)api.long_as(f);
        api.decref(f);
    }
    return 0;
}

static void emit_config(const struct gc_config *c, uint8_t reason, const char *fn_name)
{
    uint8_t data[128];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    rs_buf_u8(&b, RS_GC_INFO_CONFIG);
    rs_buf_u8(&b, reason);
    rs_buf_u8(&b, c->enabled);
    rs_buf_u8(&b, c->nthresh);
    rs_buf_u32(&b, 0);
    for (int i = 0; i < c->nthresh; i++)
        rs_buf_u64(&b, c->thresh[i]);
    rs_buf_u64(&b, c->freeze_count);
    rs_buf_str(&b, fn_name ? fn_name : "", fn_name ? (uint32_t)strlen(fn_name) : 0);
    rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, data, b.len);
}

/* Records the configuration when a call changed it (always, reason CALL) or
 * when it differs from the last recorded one. */
static void check_config(uint8_t reason, const char *fn_name)
{
    struct gc_config c;
    if (read_config(&c) != 0)
        return;
    if (reason == RS_GC_CFG_CALL || reason == RS_GC_CFG_INITIAL || !st.have_config ||
        memcmp(&c, &st.config, sizeof(c)) != 0) {
        emit_config(&c, reason, fn_name);
        st.config = c;
        st.have_config = 1;
    }
}

/* ---- census ----------------------------------------------------------------- */

static void census(uint8_t phase, int generation)
{
    pyobj *list;
    long n;
    uint32_t count = 0, last_id = 0;
    const void *last_type = NULL;
    struct rs_buf b;

    if (generation < 0 || generation > 2)
        return;
    list = api.call(gcf.get_objects, gcf.gen_args[generation], NULL);
    if (!list) {
        api.err_clear();
        return;
    }
    n = api.list_size(list);
    for (long i = 0; i <= n; i++) {
        if (count == RS_GC_CENSUS_MAX || (i == n)) {
            b = (struct rs_buf){census_buf, 0, sizeof(census_buf), 0};
            rs_buf_u8(&b, RS_GC_INFO_CENSUS);
            rs_buf_u8(&b, phase);
            rs_buf_u8(&b, (uint8_t)generation);
            rs_buf_u8(&b, i == n ? RS_GC_CENSUS_LAST : 0);
            rs_buf_u32(&b, count);
            b.len += count * 12;
            rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, census_buf, b.len);
            count = 0;
            if (i == n)
                break;
        }
        pyobj *obj = api.list_get(list, i);
        uint8_t *p = census_buf + 8 + count * 12;
        uint64_t addr = (uint64_t)(uintptr_t)obj;
        const void *tp = obj ? rs_py_type(obj) : NULL;
        if (tp != last_type) { /* neighbours in a generation often share a type */
            last_type = tp;
            last_id = tp ? rs_pytype_id_safe(tp) : 0;
        }
        uint32_t type = last_id;
        memcpy(p, &addr, 8);
        memcpy(p + 8, &type, 4);
        count++;
    }
    api.decref(list);
}

/* ---- the gc.callbacks entry ---------------------------------------------------- */

static void on_start(pyobj *info)
{
    pyobj *counts;
    struct rs_slot rec;
    long long c[3] = {0, 0, 0};
    int gen = (int)dict_int(info, "generation");

    rs_objtrace_check();
    check_config(RS_GC_CFG_NOTICED, NULL);
    counts = call0(gcf.get_count);
    if (counts) {
        for (long i = 0; i < 3 && i < api.tuple_size(counts); i++)
            c[i] = int_item(counts, i);
        api.decref(counts);
    }
    st.start_gen = gen;
    st.start_flags = (uint8_t)(gen >= 0 && gen < 15 ? (unsigned)gen : RS_GC_GEN_MASK);
    if (rs_py.Py_IsInitialized && !rs_py.Py_IsInitialized())
        st.start_flags |= RS_GC_F_SHUTDOWN;
    if (!st.generational)
        st.start_flags |= RS_GC_F_WHOLEHEAP;
    if (st.census && st.generational)
        for (int i = 0; i <= gen && i <= 2; i++)
            census(0, i);
    memset(&rec, 0, sizeof(rec));
    rec.kind = RS_EV_GC_START;
    rec.flags = st.start_flags;
    rec.addr = (uint64_t)(c[0] < 0 ? 0 : c[0]);
    rec.size = (uint64_t)sat32(c[1]) | (uint64_t)sat32(c[2]) << 32;
    rec.stack = ++st.seq;
    st.in_collection = 1;
    st.start_mono = rs_clock_mono_ns();
    rs_emit_fixed(&rec);
}

static void on_stop(pyobj *info)
{
    uint64_t pause = rs_clock_mono_ns() - st.start_mono;
    struct rs_slot rec;

    memset(&rec, 0, sizeof(rec));
    rec.kind = RS_EV_GC_STOP;
    rec.flags = st.start_flags;
    rec.addr = (uint64_t)dict_int(info, "collected");
    rec.size = (uint64_t)dict_int(info, "uncollectable");
    rec.stack = pause >= 0xffffffffull ? 0xffffffffu : (uint32_t)pause;
    if (!st.in_collection)
        return;
    st.in_collection = 0;
    rs_emit_fixed(&rec);
    if (st.census && st.generational && st.start_gen == 0)
        census(1, 1);
}

static pyobj *gc_callback(pyobj *self, pyobj *args)
{
    pyobj *phase, *info;
    const char *p;

    rs_guard_depth++;
    if (!rs_emit_active() || api.tuple_size(args) != 2)
        goto out;
    phase = api.tuple_get(args, 0);
    info = api.tuple_get(args, 1);
    p = phase ? api.utf8(phase) : NULL;
    if (!p || !info) {
        api.err_clear();
        goto out;
    }
    if (!strcmp(p, "start"))
        on_start(info);
    else if (!strcmp(p, "stop"))
        on_stop(info);
out:
    rs_guard_depth--;
    api.incref(api.none);
    return api.none;
}

/* ---- wrappers of the gc functions that change the configuration ------------- */

/* self = (original function, name) */
static pyobj *gc_wrapper(pyobj *self, pyobj *args, pyobj *kwargs)
{
    pyobj *orig = api.tuple_get(self, 0);
    pyobj *res = api.call(orig, args, kwargs);
    if (res && rs_emit_active()) {
        rs_guard_depth++;
        check_config(RS_GC_CFG_CALL, api.utf8(api.tuple_get(self, 1)));
        rs_guard_depth--;
    }
    return res;
}

static struct py_methoddef wrapper_defs[] = {
    {"set_threshold", (void *)gc_wrapper, METH_VARARGS | METH_KEYWORDS, "gc.set_threshold (traced by refscope)"},
    {"disable", (void *)gc_wrapper, METH_VARARGS | METH_KEYWORDS, "gc.disable (traced by refscope)"},
    {"enable", (void *)gc_wrapper, METH_VARARGS | METH_KEYWORDS, "gc.enable (traced by refscope)"},
    {"freeze", (void *)gc_wrapper, METH_VARARGS | METH_KEYWORDS, "gc.freeze (traced by refscope)"},
    {"unfreeze", (void *)gc_wrapper, METH_VARARGS | METH_KEYWORDS, "gc.unfreeze (traced by refscope)"},
};

static void wrap_gc_functions(pyobj *gc)
{
    for (size_t i = 0; i < sizeof(wrapper_defs) / sizeof(wrapper_defs[0]); i++) {
        pyobj *orig = api.getattr(gc, wrapper_defs[i].name), *self, *name, *fn;
        if (!orig) {
            api.err_clear();
            continue;
        }
        self = api.tuple_new(2);
        name = api.str_from(wrapper_defs[i].name);
        if (!self || !name) {
            api.err_clear();
            api.decref(orig);
            continue;
        }
        api.tuple_set(self, 0, orig); /* steals */
        api.tuple_set(self, 1, name);
        fn = api.cfunc_new(&wrapper_defs[i], self, NULL);
        api.decref(self);
        if (!fn || api.setattr(gc, wrapper_defs[i].name, fn) != 0)
            api.err_clear();
        if (fn)
            api.decref(fn);
    }
}

/* ---- registration ---------------------------------------------------------- */

static pyobj *at_exit(pyobj *self, pyobj *unused)
{
    rs_guard_depth++;
    if (rs_emit_active()) {
        rs_objtrace_check();
        check_config(RS_GC_CFG_EXIT, NULL);
    }
    rs_guard_depth--;
    api.incref(api.none);
    return api.none;
}

static struct py_methoddef callback_def = {"refscope_gc_callback", (void *)gc_callback, METH_VARARGS,
                                           "refscope: records gc collections"};
static struct py_methoddef exit_def = {"refscope_gc_at_exit", (void *)at_exit, METH_NOARGS,
                                       "refscope: records the final gc configuration"};

static void emit_baseline(void)
{
    pyobj *stats = call0(gcf.get_stats);
    uint8_t data[8 + 3 * 24];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    long n;

    if (!stats)
        return;
    n = api.list_size(stats);
    if (n > 3)
        n = 3;
    rs_buf_u8(&b, RS_GC_INFO_BASELINE);
    rs_buf_u8(&b, (uint8_t)(n < 0 ? 0 : n));
    rs_buf_u16(&b, 0);
    rs_buf_u32(&b, 0);
    for (long i = 0; i < n; i++) {
        pyobj *d = api.list_get(stats, i);
        rs_buf_u64(&b, (uint64_t)dict_int(d, "collections"));
        rs_buf_u64(&b, (uint64_t)dict_int(d, "collected"));
        rs_buf_u64(&b, (uint64_t)dict_int(d, "uncollectable"));
    }
    api.decref(stats);
    rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, data, b.len);
}

static void emit_mode(void)
{
    uint8_t data[4] = {RS_GC_INFO_MODE, (uint8_t)st.census, (uint8_t)(st.generational ? 3 : 0),
                       (uint8_t)rs_py_gc_incremental()};
    rs_emit_var(RS_EV_GC_INFO, 0, 0, 0, data, sizeof(data));
}

static int register_callbacks(void)
{
    pyobj *gc = NULL, *callbacks = NULL, *cb = NULL, *atexit_mod = NULL, *reg = NULL, *fn = NULL, *res;
    int ret = -EIO;

    gc = api.import("gc");
    if (!gc)
        goto out;
    gcf.get_count = api.getattr(gc, "get_count");
    gcf.get_threshold = api.getattr(gc, "get_threshold");
    gcf.isenabled = api.getattr(gc, "isenabled");
    gcf.get_objects = api.getattr(gc, "get_objects");
    gcf.get_stats = api.getattr(gc, "get_stats");
    gcf.get_freeze_count = api.getattr(gc, "get_freeze_count");
    api.err_clear();
    if (!gcf.get_count || !gcf.get_threshold || !gcf.isenabled || !gcf.get_objects)
        goto out;
    for (long i = 0; i < 3; i++) {
        gcf.gen_args[i] = api.tuple_new(1);
        if (!gcf.gen_args[i])
            goto out;
        api.tuple_set(gcf.gen_args[i], 0, api.long_from(i));
    }
    callbacks = api.getattr(gc, "callbacks");
    cb = callbacks ? api.cfunc_new(&callback_def, NULL, NULL) : NULL;
    if (!cb || api.list_append(callbacks, cb) != 0)
        goto out;

    emit_mode();
    emit_baseline();
    check_config(RS_GC_CFG_INITIAL, NULL);
    wrap_gc_functions(gc);

    /* At exit (the last Python atexit handler, registered first): catches
     * configuration changes made without the wrappers. Optional. */
    atexit_mod = api.import("atexit");
    reg = atexit_mod ? api.getattr(atexit_mod, "register") : NULL;
    fn = reg ? api.cfunc_new(&exit_def, NULL, NULL) : NULL;
    if (fn) {
        pyobj *args = api.tuple_new(1);
        if (args) {
            api.incref(fn);
            api.tuple_set(args, 0, fn);
            res = api.call(reg, args, NULL);
            if (res)
                api.decref(res);
            api.decref(args);
        }
    }
    ret = 0;
out:
    api.err_clear();
    if (fn)
        api.decref(fn);
    if (reg)
        api.decref(reg);
    if (atexit_mod)
        api.decref(atexit_mod);
    if (cb)
        api.decref(cb);
    if (callbacks)
        api.decref(callbacks);
    if (gc)
        api.decref(gc);
    return ret;
}

static void gcwatch_at_init(void *arg)
{
    if (!rs_emit_active())
        return;
    rs_guard_depth++;
    if (!st.generational)
        emit_note(rs_py.free_threaded ? RS_NOTE_GC_FREETHREADED : RS_NOTE_GC_INCREMENTAL,
                  rs_py.free_threaded
                      ? "free-threaded build: every collection examines the whole heap; there are "
                        "no generations, so no promotions (census off)"
                      : "CPython 3.14.0-3.14.4 incremental collector: generation numbers are not "
                        "generational, automatic runs are reported as generation 1; no promotions "
                        "(census off)");
    if (register_callbacks() != 0)
        emit_note(RS_NOTE_GC_UNAVAILABLE,
                  "could not register a gc.callbacks entry: no collection events in this trace");
    else if (!st.census && st.generational)
        emit_note(RS_NOTE_GC_CENSUS_OFF,
                  "gc census off (REFSCOPE_GC_CENSUS=off): promotions and tenured garbage unknown");
    rs_guard_depth--;
}

static int census_wanted(void)
{
    const char *v = getenv("REFSCOPE_GC_CENSUS");
    return !(v && (!strcmp(v, "off") || !strcmp(v, "0") || !strcmp(v, "no")));
}

__attribute__((constructor(RS_CTOR_FEATURE)))
static void gcwatch_init(void)
{
    rs_pyver_init();
    if (!rs_emit_active() || !rs_py.is_python || !rs_py.ob_size)
        return;
    for (size_t i = 0; i < sizeof(api_entries) / sizeof(api_entries[0]); i++) {
        *api_entries[i].slot = dlsym(RTLD_DEFAULT, api_entries[i].name);
        if (!*api_entries[i].slot)
            return; /* not an interpreter this file can drive */
    }
    st.generational = !rs_py.free_threaded && !rs_py_gc_incremental();
    st.census = census_wanted();
    if (rs_pysafe_on_init(gcwatch_at_init, NULL) != 0)
        rs_warn("gc events: no safe point slot left; gc events are off");
}
