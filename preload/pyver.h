/*
 * The CPython version layer: the one place in the shim that knows how
 * CPython's structures and C API differ between versions. Everything else
 * (PyMem wrappers, stacks, gc, object events) reads interpreter state through
 * `rs_py` and the accessors below, and calls the C API through rs_capi
 * (capi.h, filled when the interpreter is found).
 *
 * Model. At constructor time rs_pyver_init() looks the C API up with
 * dlsym(RTLD_DEFAULT) (finds Debian's static python3.11 executable and
 * pyenv's shared libpython alike; a libpython loaded later is found by
 * rs_pyver_late, below, and looked up through its own handle), reads the
 * version (Py_Version on 3.11+, Py_GetVersion() before), and fills `rs_py`:
 * function pointers for the C API the allocator hooks and stack walks use
 * and the offsets of the fields they read. 3.9-3.12 offsets come
 * from built-in tables; 3.13+ offsets come from the interpreter's own
 * _Py_DebugOffsets at the start of _PyRuntime (cookie "xdebugpy"), so later
 * versions work without a new table.
 *
 * Every reader here is safe inside an allocation hook: no allocation, no
 * locks, no C API call that creates objects. Readers only follow pointers the
 * interpreter keeps valid for the current thread (its own frames, live code
 * objects).
 */
#ifndef REFSCOPE_PYVER_H
#define REFSCOPE_PYVER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* PyMemAllocatorEx / PyObjectArenaAllocator as CPython declares them
 * (identical layout on every supported version). */
struct rs_pymem_allocator {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
};
struct rs_pyarena_allocator {
    void *ctx;
    void *(*alloc)(void *ctx, size_t size);
    void (*free)(void *ctx, void *ptr, size_t size);
};
/* PyMethodDef as CPython declares it (the same on every version): the C
 * functions the shim hands to Python (gc wrappers and callbacks, at-exit
 * hooks, sys._debugmallocstats) are described by one of these. */
struct rs_py_methoddef {
    const char *name;
    void *meth;
    int flags;
    const char *doc;
};
enum { RS_METH_VARARGS = 0x1, RS_METH_KEYWORDS = 0x2, RS_METH_NOARGS = 0x4 };

/* PyMemAllocatorDomain values */
enum { RS_PYMEM_RAW = 0, RS_PYMEM_MEM = 1, RS_PYMEM_OBJ = 2 };

/* How frames are chained (selected by version). */
enum rs_pyframe_model {
    RS_PYFRAMES_NONE = 0,     /* unknown layout: no Python stacks            */
    RS_PYFRAMES_OBJECT,       /* 3.9/3.10: PyFrameObject chain from tstate->frame */
    RS_PYFRAMES_INTERP_311,   /* 3.11: _PyInterpreterFrame via tstate->cframe, is_entry */
    RS_PYFRAMES_INTERP_312,   /* 3.12: via tstate->cframe, entry frames owned by the C stack */
    RS_PYFRAMES_INTERP_313,   /* 3.13+: via tstate->current_frame (debug offsets),
                                 f_executable may be a non-code object (3.14: tagged) */
};

struct rs_pyver {
    int      is_python;      /* the C API was found: this process is CPython     */
    int      loaded_late;    /* ... in a libpython loaded later (rs_pyver_late)  */
    int      shared;         /* libpython is a shared library                     */
    int      free_threaded;  /* Py_GIL_DISABLED build                             */
    int      minor;          /* 9, 10, ...                                        */
    uint32_t hex;            /* PY_VERSION_HEX                                    */
    const void *runtime;     /* &_PyRuntime, or NULL                              */

    /* C API (NULL when the version lacks it) */
    int   (*Py_IsInitialized)(void);
    int   (*Py_AddPendingCall)(int (*fn)(void *), void *arg);
    void  (*PyMem_GetAllocator)(int domain, struct rs_pymem_allocator *a);
    void  (*PyMem_SetAllocator)(int domain, struct rs_pymem_allocator *a);
    void  (*PyObject_GetArenaAllocator)(struct rs_pyarena_allocator *a);
    void  (*PyObject_SetArenaAllocator)(struct rs_pyarena_allocator *a);
    void *(*get_tstate_detached)(void); /* GILState slot: this thread's state even with the GIL released */
    void *(*get_tstate)(void);  /* this OS thread's PyThreadState, or NULL; never
                                   the GIL holder's (per-version getter)         */
    uint32_t rt_tstate_current; /* 3.9-3.11: offset of gilstate.tstate_current (the
                                   GIL holder's state) in _PyRuntime; 0 = none   */
    const void *const *gil_tstate; /* &_PyRuntime.gilstate.tstate_current once the
                                   init safe point saw it hold its own state; NULL
                                   until then and on other versions            */
    int   (*PyCode_Addr2Line)(void *code, int byte_offset);
    const void *code_type;      /* &PyCode_Type                                   */

    /* object header */
    uint32_t ob_refcnt;      /* ob_refcnt (default) / ob_ref_local (FT)           */
    uint32_t ob_ref_shared;  /* FT only                                           */
    uint32_t ob_type;
    uint32_t ob_size;        /* PyVarObject.ob_size                               */

    /* frames */
    enum rs_pyframe_model frames;
    uint32_t ts_frame;       /* tstate->frame / ->cframe / ->current_frame         */
    uint32_t cframe_current; /* _PyCFrame.current_frame (3.11/3.12)               */
    uint32_t fr_previous;    /* f_back / previous                                 */
    uint32_t fr_code;        /* f_code / f_executable                             */
    uint32_t fr_instr;       /* f_lasti (int) / prev_instr / instr_ptr            */
    uint32_t fr_owner;       /* owner (char), 3.11+                               */
    uint32_t fr_is_entry;    /* is_entry (bool), 3.11 only                        */
    uint32_t lasti_scale;    /* 3.9/3.10: bytes per f_lasti unit (1 or 2)         */
    uint64_t raw_instr_mask; /* raw frames: width of the fr_instr field           */
    uint32_t raw_bits;       /* raw frames: offset of the owner (and is_entry) bytes */
    uint32_t raw_bits_mask;  /* ... and which of the 16 bits there are fields      */

    /* code objects */
    uint32_t co_filename, co_name, co_qualname, co_firstlineno;
    uint32_t co_code_adaptive;   /* 3.11+: first code unit                        */
    uint32_t co_firsttraceable;  /* 3.11/3.12 (int); 0 = unknown                  */

    /* str objects */
    uint32_t str_length, str_state, str_ascii_size, str_compact_size;
    uint32_t str_kind_shift;     /* bit of `kind` in state; compact/ascii follow  */
};

extern struct rs_pyver rs_py;

/* Detect CPython and fill rs_py. Idempotent; called from constructors at
 * RS_CTOR_CORE (shim.c: the PROCESS record's version and flags) and
 * RS_CTOR_PYTHON, single-threaded. Returns 0 (Python found), -ENOENT (not
 * Python) or -ENOTSUP (Python with a layout this shim cannot read: then
 * rs_py.frames is RS_PYFRAMES_NONE but the allocator API is still usable). */
int rs_pyver_init(void);

/* A symbol of the interpreter's C API (dlsym where rs_pyver_init looked),
 * or NULL. The C API that features call is looked up once, in capi.h's
 * table, which this fills. */
void *rs_py_sym(const char *name);

/* A libpython loaded with dlopen after start-up (embedding programs,
 * PyInstaller's bootloader, uwsgi and mod_wsgi plugins) is found when it
 * first calls setlocale(), which CPython's pre-initialization always does,
 * before the interpreter starts. Features register what they do for Python
 * with rs_pyver_when_found: `start` runs now when CPython is already in the
 * process (from a constructor), else when such a libpython shows itself,
 * in registration order. Constructors only. Returns 0 or -ENOSPC. */
int rs_pyver_when_found(void (*start)(void));

/* The setlocale hook's check: `caller` is the address setlocale returns to.
 * When no CPython was found yet and it lies in an object that exports the
 * C API, that object becomes the interpreter: rs_py is filled from it and
 * every registered start runs. Returns 1 then, else 0. Not from allocation
 * hooks (it takes the loader's lock). */
int rs_pyver_late(const void *caller);

/* ---- object header -------------------------------------------------------- */

/* A block about to be freed may be peeked at for the word `at` bytes into it
 * (a would-be ob_type: compared, never followed) when its offset in its page
 * is below rs_py_peek_start(at): the word then ends in the block's page, which
 * is mapped whatever the block's size. A layer that peeks at freed OBJ
 * blocks (stack.h, pytypes.h) gets its bound there, which also sets
 * rs_py_peeking: until some layer does, the OBJ free wrapper looks at none
 * of them (one load per free instead of a test per layer). */
extern uint32_t rs_py_peeking;
static inline uint32_t rs_py_peek_start(uint32_t at)
{
    __atomic_store_n(&rs_py_peeking, 1, __ATOMIC_RELAXED);
    return 4096 - at - 8 + 1;
}

static inline const void *rs_py_type(const void *obj)
{
    return *(const void *const *)((const char *)obj + rs_py.ob_type);
}

/* Refcount of obj; -1 when immortal (3.12+ immortal objects, FT local
 * refcount saturated). */
int64_t rs_py_refcnt(const void *obj);

/* ---- str objects ---------------------------------------------------------- */

/* UTF-8 of a str object into buf (not NUL-terminated), at most cap bytes,
 * without allocating. Returns the byte count, or -EINVAL when obj is not a
 * compact str this layer can read. Truncates at a character boundary. */
int rs_py_str_utf8(const void *obj, char *buf, uint32_t cap);

/* ---- frames --------------------------------------------------------------- */

struct rs_pyframe {
    const void *code;    /* code object                                        */
    int32_t  offset;     /* byte offset of the instruction being executed       */
    uint32_t flags;      /* RS_PYFRAME_* (events.h)                            */
};

/* A frame's offset and flags as one 64-bit word (offset in the low half, as
 * laid out above). The walkers write that word with one store and the stack
 * layer reads it with one load: a frame is read right after the walk, while
 * its stores are still in the store buffer, and an 8-byte load of two 4-byte
 * stores cannot be forwarded from it (it waits for both to reach the cache). */
static inline uint64_t rs_pyframe_word(const struct rs_pyframe *f)
{
    uint64_t w;
    memcpy(&w, (const char *)f + offsetof(struct rs_pyframe, offset), sizeof w);
    return w;
}

static inline void rs_pyframe_set(struct rs_pyframe *f, const void *code, int32_t offset,
                                  uint32_t flags)
{
    uint64_t w = (uint64_t)(uint32_t)offset | (uint64_t)flags << 32;
    f->code = code;
    memcpy((char *)f + offsetof(struct rs_pyframe, offset), &w, sizeof w);
}

static inline void rs_pyframe_add_flags(struct rs_pyframe *f, uint32_t flags)
{
    uint64_t w = rs_pyframe_word(f) | (uint64_t)flags << 32;
    memcpy((char *)f + offsetof(struct rs_pyframe, offset), &w, sizeof w);
}

/* The current thread's Python frames, innermost first, into out[0..max).
 * Frames owned by the C stack and frames not running a code object are
 * skipped. *truncated is set when more frames existed. Returns the count
 * (0 when the thread runs no Python code or the layout is unknown).
 * `gil_held`: the caller holds the GIL (a MEM or OBJ domain call), so the
 * thread's state is the GIL holder's, one load away before 3.12 instead of
 * a thread-specific-data lookup. */
int rs_py_frames(struct rs_pyframe *out, int max, int *truncated, int gil_held);

/* The same frames raw, as the interpreter stores them: every frame of the
 * chain (those rs_py_frames skips too), each as its code (executable)
 * reference and a word of its instruction field, masked to its width, with
 * its owner (and is_entry) bytes in the top 16 bits. What rs_py_frames makes
 * of a walk is a function of its raw frames and of the code objects they
 * name, so while no code object dies (rs_py_code_freed) equal raw walks are
 * equal walks; reading them takes no decision per frame. Same contract as
 * rs_py_frames otherwise. */
int rs_py_raw_frames(struct rs_pyframe *out, int max, int *truncated, int gil_held);

/* The raw walk compared, as it is read, with an expected one: `expect` holds
 * its frames but the innermost, outermost first (expect_n of them). Returns
 * expect_n + 1, with the innermost raw frame in *inner, when every other
 * frame equals expect[] and there are no more; 0 when the thread runs no
 * Python code; -1 as soon as the walk differs. Consecutive allocations mostly
 * differ in their innermost frame only: this reads each frame once and
 * writes none. */
int rs_py_raw_match(struct rs_pyframe *inner, const struct rs_pyframe *expect, int expect_n,
                    int gil_held);

/* A code object is being freed (its address may come back as another one):
 * drops what rs_py_frames remembers about code objects. */
void rs_py_code_freed(void);

/* Line being executed at byte `offset` of code object `code` (0 = unknown). */
uint32_t rs_py_code_line(const void *code, int32_t offset);

/* co_firstlineno */
uint32_t rs_py_code_firstline(const void *code);

/* Name fields of a code object (str objects): file name, qualified name
 * (co_qualname on 3.11+, co_name before). */
const void *rs_py_code_filename(const void *code);
const void *rs_py_code_qualname(const void *code);

/* ---- gc / object layout (appended by the gc and object features) ---------- */

/* ---- gc (issue 4) ---- */
/* PyTypeObject fields the type table reads. Their order has not changed since
 * 3.0: tp_name right after the PyVarObject head (ob_size), then tp_basicsize,
 * and tp_flags 18 pointer-sized fields after tp_name. Deriving them from
 * rs_py.ob_size keeps the default and free-threaded headers both right.
 * NULL / 0 when the layout is unknown (rs_py.ob_size == 0). */
static inline const char *rs_py_type_name(const void *type)
{
    if (!type || !rs_py.ob_size)
        return NULL;
    return *(const char *const *)((const char *)type + rs_py.ob_size + 8);
}

static inline int64_t rs_py_type_basicsize(const void *type)
{
    if (!type || !rs_py.ob_size)
        return 0;
    return *(const int64_t *)((const char *)type + rs_py.ob_size + 16);
}

/* tp_flags bits read by the shim (unchanged since 3.0). */
#define RS_PY_TPFLAGS_HEAPTYPE      (1ul << 9)
#define RS_PY_TPFLAGS_HAVE_GC       (1ul << 14)
#define RS_PY_TPFLAGS_TYPE_SUBCLASS (1ul << 31)

static inline uint64_t rs_py_type_flags(const void *type)
{
    if (!type || !rs_py.ob_size)
        return 0;
    return *(const uint64_t *)((const char *)type + rs_py.ob_size + 8 + 18 * 8);
}

/* 3.14.0-3.14.4 run the incremental collector (young + two old spaces;
 * generation numbers in callbacks/get_objects are not generational); 3.14.5+
 * went back to the 3.13 design (gh-148726). */
static inline int rs_py_gc_incremental(void)
{
    return rs_py.hex >= 0x030e0000u && rs_py.hex < 0x030e0500u;
}

/* 3.13.0-3.13.2 miss PyRefTracer DESTROY events for Py_DECREF inside the eval
 * loop (CPython gh-130382, fixed in 3.13.3). */
static inline int rs_py_reftracer_misses_destroy(void)
{
    return rs_py.hex >= 0x030d0000u && rs_py.hex < 0x030d0300u;
}

/* ---- snapshots (issue 5) ---- */
/* What heap snapshots (preload/snapshot.c) need to read and call. These run
 * only at a safe point or in an atexit handler (GIL held, main thread); they
 * may call the C API but never run Python code, never leave an exception set
 * and never change a refcount. */

enum rs_pykind {
    RS_PYKIND_OTHER = 0, RS_PYKIND_DICT, RS_PYKIND_LIST, RS_PYKIND_TUPLE,
    RS_PYKIND_MODULE, RS_PYKIND_STR, RS_PYKIND_TYPE, RS_PYKIND_CODE
};

typedef int (*rs_py_visitproc)(void *obj, void *arg);

struct rs_pyver_typeinfo {
    const char *name;          /* tp_name ("?" when unreadable)                     */
    uint64_t tp_flags;
    int64_t basicsize, itemsize;
    int (*traverse)(void *obj, rs_py_visitproc visit, void *arg); /* or NULL      */
    void *(*sizeof_meth)(void *self, void *unused); /* a C __sizeof__ other than
                                  object.__sizeof__ (METH_NOARGS), or NULL         */
    uint32_t preheader_extra;  /* managed dict/weakref bytes (3.11+)               */
    int kind;                  /* enum rs_pykind (exact dict/list/tuple only)       */
};

#define RS_PYVER_GEN_PERMANENT 3

/* Checks what snapshots need (first call only; says in one line on stderr
 * when this CPython cannot have them). 1 when it can, else 0. */
int rs_pyver_snap_supported(void);

/* 1 when a snapshot can be taken now (supported, interpreter initialized,
 * GC lists found), else 0. */
int rs_pyver_snap_ready(void);

/* Facts about a type object, for caching by the caller. */
void rs_pyver_snap_typeinfo(const void *type, struct rs_pyver_typeinfo *out);

/* Size as sys.getsizeof reports it. Calls a C __sizeof__ when may_call, else
 * (or when none) basicsize + |ob_size| * itemsize; plus the pre-header. */
uint64_t rs_pyver_snap_sizeof(void *obj, const struct rs_pyver_typeinfo *ti, int may_call);

/* Bytes between the start of obj's memory block and obj (GC header, managed
 * dict/weakref pre-header). */
uint32_t rs_pyver_snap_preheader(void *obj, const struct rs_pyver_typeinfo *ti);

/* Outgoing references: dicts through visit_item(key, value) in PyDict_Next
 * order, lists and tuples item by item in index order, other GC objects
 * through tp_traverse. Returns 0, or -ENOTSUP when they cannot be read. */
int rs_pyver_snap_refs(void *obj, const struct rs_pyver_typeinfo *ti, rs_py_visitproc visit,
                       int (*visit_item)(void *key, void *value, void *arg), void *arg);

int rs_pyver_snap_is_tracked(void *obj); /* GC object and currently tracked */
int rs_pyver_snap_is_str(void *obj);     /* instance of str (or a subclass) */

/* A readable name for modules (__name__), str (prefix), types (tp_name) and
 * code objects (qualified name) into buf (not NUL-terminated). Returns the
 * byte count, or -1 for other objects. */
int rs_pyver_snap_name(void *obj, const struct rs_pyver_typeinfo *ti, char *buf, uint32_t cap);

/* Calls fn(obj, generation, arg) for every GC-tracked object: generations
 * 0..2 then the permanent one (RS_PYVER_GEN_PERMANENT); -1 as generation on
 * free-threaded builds (PyUnstable_GC_VisitObjects, world stopped). Automatic
 * collection is held off meanwhile. Stops when fn returns < 0. Returns 0,
 * fn's negative value, or -ENOTSUP. */
int rs_pyver_snap_foreach_tracked(int (*fn)(void *obj, int generation, void *arg), void *arg);

/* Calls fn(obj, arg) for every object in gc.garbage (when gc was imported). */
int rs_pyver_snap_foreach_garbage(int (*fn)(void *obj, void *arg), void *arg);

int rs_pyver_snap_gc_enabled(void);      /* 1, 0, or 255 when unknown */

/* Saves and clears / restores the pending exception (PyErr_Fetch/Restore). */
void rs_pyver_snap_save_error(void *saved[3]);
void rs_pyver_snap_restore_error(void *saved[3]);

/* Registers fn with atexit.register (through a C function object), so it
 * runs after every Python atexit handler registered later. Returns 0 or -EIO. */
int rs_pyver_snap_atexit(void (*fn)(void));

/* ---- gc census (issue 4) ---- */
/* The generation lists the gc census walks (preload/gcwatch.c). Default
 * builds 3.9-3.13 only: the lists are found the way snapshots find them
 * (the GC state's signature, see pyver.c). Each list is circular through a
 * PyGC_Head {uintptr_t _gc_next, _gc_prev} that sits right before its
 * object; the low 2 bits of _gc_prev are collector flags. Read with the GIL
 * held, outside a collection's own work (gc callbacks, wrappers). */

/* Locates the lists (first call; needs an initialized interpreter). 0, or
 * -ENOTSUP (free-threaded build, 3.14+: no census there) or -ENOENT (the GC
 * state was not found). */
int rs_py_gc_lists_init(void);

/* Head of generation 0..2, or of the permanent generation
 * (RS_PYVER_GEN_PERMANENT); NULL until rs_py_gc_lists_init() or a snapshot
 * found the GC state. */
const void *rs_py_gc_head(int generation);

/* The collection threshold of generation 0..2, its count (gc.get_count())
 * and whether collection is enabled, as the GC state holds them; -1 until
 * the GC state was found (as above). */
int rs_py_gc_threshold(int generation);
int rs_py_gc_count(int generation);
int rs_py_gc_enabled(void);

static inline const void *rs_py_gc_next(const void *node)
{
    return (const void *)(*(const uintptr_t *)node & ~(uintptr_t)3);
}

static inline const void *rs_py_gc_prev(const void *node)
{
    return (const void *)(((const uintptr_t *)node)[1] & ~(uintptr_t)3);
}

/* The object whose GC header is `node`. */
static inline const void *rs_py_gc_object(const void *node)
{
    return (const char *)node + 16;
}

#endif
