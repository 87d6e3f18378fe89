/*
 * refscope event records: what the shim writes into the ring and what the
 * trace file carries after decoding. This header is the single source of
 * truth for record kinds and their fields; the shim (writer), the recorder
 * (encoder) and every analysis (reader) include it.
 *
 * Model. A traced process produces one totally ordered stream of records.
 * The order is the order in which producers reserved their ring slots
 * (include/refscope/ring.h); it is the order of reality for every address:
 * a free is reserved before the real free, an allocation after the real
 * allocation returned, so a reused address never appears out of order.
 * Timestamps are informational (lifetimes, pauses), never used for ordering.
 * They are exact to within X for ALLOC, FREE and OBJ_CREATE/DESTROY records
 * (a thread's cached clock reading: at most 64 of its records or one
 * recorder loop turn old, never later than the event) and exact for every
 * other kind: include/refscope/clock.h, "Resolution".
 *
 * Every record starts with the same 32-byte fixed part (struct rs_slot).
 * Fixed records use only that. Variable records ("VAR" kinds, kind >= 0x40)
 * put their payload length in `stack` (named `len` then), the first 16 payload
 * bytes in addr/size, and continue in further slots whose first byte is
 * RS_EV_CONT followed by 31 payload bytes each (see ring.h: rs_var_slots()).
 * All integers are little-endian; strings in payloads are UTF-8, prefixed
 * by their length as a u16, not NUL-terminated.
 */
#ifndef REFSCOPE_EVENTS_H
#define REFSCOPE_EVENTS_H

#include <stdint.h>

/* ---- allocator domains (low 3 bits of flags for ALLOC/FREE) ---------------- */
enum rs_domain {
    RS_DOMAIN_LIBC  = 0, /* malloc family called by anything outside a PyMem wrapper */
    RS_DOMAIN_RAW   = 1, /* PyMem_RawMalloc & co */
    RS_DOMAIN_MEM   = 2, /* PyMem_Malloc & co */
    RS_DOMAIN_OBJ   = 3, /* PyObject_Malloc & co (objects live here) */
    RS_DOMAIN_ARENA = 4, /* pymalloc arenas / data-stack chunks: backing store of OBJ
                            (and MEM on 3.13+), counted apart, never added to totals */
    RS_DOMAIN_COUNT = 5
};
#define RS_DOMAIN_MASK 0x07u

/* ---- flags for ALLOC/FREE --------------------------------------------------- */
#define RS_F_REALLOC  0x08u /* this FREE/ALLOC is one half of a realloc            */
#define RS_F_RESTORE  0x10u /* ALLOC|REALLOC|RESTORE: realloc failed, `addr` is live
                               again with the size it had before the FREE half      */
#define RS_F_ZEROED   0x20u /* calloc */
#define RS_F_ALIGNED  0x40u /* memalign family */
#define RS_F_OWN      0x80u /* format 2.2: made by refscope's own Python work at a
                               safe point (the gc layer's module, callbacks and
                               census), not by the program; no stack. Readers keep
                               blocks ALLOCated with it out of every figure of the
                               program's, and take a later FREE of them, whoever
                               makes it, as theirs. On a FREE it only says who freed:
                               the block is gone either way. */

/* ---- record kinds ----------------------------------------------------------- */
enum rs_event_kind {
    RS_EV_EMPTY   = 0x00, /* never in a trace: an uncommitted ring slot           */

    /* fixed records (one slot) */
    RS_EV_ALLOC   = 0x01, /* addr, size (bytes requested), stack, domain in flags  */
    RS_EV_FREE    = 0x02, /* addr, domain in flags; size is 0 (unknown to the shim) */
    RS_EV_THREAD_EXIT = 0x03, /* thread index in `thread` becomes free for reuse   */
    RS_EV_CLOCK   = 0x04, /* clock sync: time = ticks, addr = CLOCK_MONOTONIC ns at
                             the same instant; size = CLOCK_REALTIME ns            */
    RS_EV_ALLOCATOR_WRAPPED = 0x05, /* PyMem wrappers (re)installed: addr = bitmask
                             of domains wrapped (1 << domain), size = reason:
                             0 constructor, 1 setlocale, 2 lazy check,
                             3 a libpython loaded later (RS_EV_PYTHON)           */
    RS_EV_OBJ_CREATE  = 0x06, /* issue 4: addr = object, size = type id, stack   */
    RS_EV_OBJ_DESTROY = 0x07, /* issue 4: addr = object                          */
    RS_EV_GC_START    = 0x08, /* issue 4: see gc section below                   */
    RS_EV_GC_STOP     = 0x09, /* issue 4                                         */
    RS_EV_LOST        = 0x0a, /* addr = events dropped (lossy mode) since last LOST */
    RS_EV_CONT        = 0x3f, /* continuation slot of a VAR record (ring only)    */

    /* variable records (payload, see each layout) */
    RS_EV_PROCESS     = 0x40, /* first record of every ring; struct rs_process_info + strings */
    RS_EV_THREAD      = 0x41, /* thread index `thread` is OS thread: u32 tid, str name */
    RS_EV_END         = 0x42, /* last record: struct rs_end_info                   */
    RS_EV_PY_CODE     = 0x43, /* issue 3: python code object (see pystack section)  */
    RS_EV_PY_STACK    = 0x44, /* issue 3: python stack definition                  */
    RS_EV_NATIVE_STACK= 0x45, /* issue 3: native stack definition                  */
    RS_EV_MODULE_MAP  = 0x46, /* issue 3: a loaded module (path, base, build-id)    */
    RS_EV_PY_TYPE     = 0x47, /* issue 4: type table entry                         */
    RS_EV_GC_INFO     = 0x48, /* issue 4: gc config / counters / census            */
    RS_EV_SNAPSHOT    = 0x49, /* issue 5: heap snapshot records                    */
    RS_EV_NOTE        = 0x4a, /* a warning or fact for reports: u16 code, str text  */
    RS_EV_PYTHON      = 0x4b, /* format 2.1: the process became CPython after its
                                 PROCESS record; struct rs_python_info + str path */
    RS_EV_KIND_MAX    = 0x7f
};

#define RS_EV_IS_VAR(kind) ((kind) >= 0x40)

/* No block is bigger than an address space: an ALLOC's size is below this
 * (x86-64 and AArch64 have at most 57 bits). Readers take a bigger one for
 * damage, so that sums of sizes never overflow. */
#define RS_ALLOC_SIZE_LIMIT (1ull << 57)

/* ---- fixed part: one 32-byte slot ------------------------------------------- */
struct rs_slot {
    uint8_t  kind;   /* enum rs_event_kind; written last, with release order  */
    uint8_t  flags;  /* per kind (domain and RS_F_* for ALLOC/FREE)           */
    uint16_t thread; /* shim thread index; bound to an OS tid by RS_EV_THREAD  */
    uint32_t stack;  /* stack id for ALLOC (0 = none); payload length for VAR */
    uint64_t time;   /* clock ticks (see clock.h, "Resolution"); ns for readers */
    uint64_t addr;
    uint64_t size;
};
_Static_assert(sizeof(struct rs_slot) == 32, "ring slot must be 32 bytes");

/* A record no shim writes (an ALLOC of RS_ALLOC_SIZE_LIMIT bytes or more):
 * damage. The recorder ends a trace before one (the ring is the traced
 * program's memory too); readers refuse one in a file. */
static inline int rs_slot_impossible(const struct rs_slot *rec)
{
    return rec->kind == RS_EV_ALLOC && rec->size >= RS_ALLOC_SIZE_LIMIT;
}

/* ---- RS_EV_PROCESS payload ---------------------------------------------------- */
enum rs_clock_kind { RS_CLOCK_MONOTONIC_NS = 0, RS_CLOCK_TSC = 1 };
#define RS_PROC_PYTHON        0x01u /* the process is a CPython interpreter        */
#define RS_PROC_PY_SHARED     0x02u /* libpython is a shared library               */
#define RS_PROC_PY_FREETHREAD 0x04u /* free-threaded (Py_GIL_DISABLED) build        */
#define RS_PROC_LOSSY         0x08u /* ring in lossy mode                           */
#define RS_PROC_NATIVE_STACKS 0x10u /* --native                                     */
#define RS_PROC_PY_STACKS     0x20u /* python stacks captured                       */
struct rs_process_info {
    uint32_t pid;
    uint32_t ppid;
    uint32_t py_version;  /* PY_VERSION_HEX, 0 when not Python                    */
    uint32_t flags;       /* RS_PROC_*                                           */
    uint32_t clock_kind;  /* enum rs_clock_kind                                   */
    uint32_t reserved;
    uint64_t start_mono_ns; /* CLOCK_MONOTONIC at shim start                      */
    uint64_t start_real_ns; /* CLOCK_REALTIME at shim start                       */
    uint64_t start_ticks;   /* clock ticks at the same instant                     */
    uint64_t ring_bytes;    /* ring capacity                                       */
    /* then: str exe, str cmdline (arguments joined by NUL bytes) */
};

/* ---- RS_EV_PYTHON payload (format 2.1) ------------------------------------------ */
/* A libpython loaded with dlopen after the process started (an embedding
 * program: PyInstaller's bootloader, uwsgi, mod_wsgi) was found when CPython
 * began to pre-initialize. At most one per trace, before the first record
 * of the PyMem domains. Readers take the process as this interpreter from
 * the start: its fields replace the PROCESS record's. */
struct rs_python_info {
    uint32_t py_version;  /* PY_VERSION_HEX                                      */
    uint32_t flags;       /* RS_PROC_*, all of them, as PROCESS would have had them */
    /* then: str path of the library */
};

/* ---- RS_EV_END payload --------------------------------------------------------- */
struct rs_end_info {
    uint64_t producer_waits; /* times a producer found the ring full and waited  */
    uint64_t lost_events;    /* events dropped (lossy mode, or after set-up failed) */
    uint64_t end_mono_ns;
    uint32_t reason;         /* enum rs_end_reason                                 */
    uint32_t reserved;
};

/* How a process image's trace ended: RS_EV_END's reason, and the trailer's
 * (trace.h), which the recorder fills in when there was no RS_EV_END. */
enum rs_end_reason {
    RS_END_EXIT = 0,   /* the shim's exit handler wrote RS_EV_END                     */
    RS_END_EXEC = 1,   /* recorder: the same pid greeted again, as its next image, or
                          no longer has the ring where it mapped it                  */
    RS_END_ABRUPT = 2, /* recorder: the process ended without RS_EV_END (a signal,
                          a crash, _exit)                                            */
};

/* Sections below are owned by the feature that introduces them; each feature
 * documents its payloads here, next to its kinds, before using them. */

/* ---- issue 3: python and native stacks (preload/pystack.c, preload/unwind.c) ----- */
/*
 * Python stacks (preload/pystack.c). An ALLOC record's `stack` names a stack
 * id defined earlier in the same trace by exactly one RS_EV_PY_STACK record;
 * each code id a stack uses is defined earlier by one RS_EV_PY_CODE record.
 * Ids are nonzero, unique within one trace (a fork child's trace defines its
 * own), and never reused within a trace: when a code object dies and another
 * one is created at the same address, the new one gets a new code id. One
 * stack may be defined more than once, under different ids (the shim's
 * table forgets stacks not seen for a while when it fills up; native
 * stacks likewise): readers that group by call site compare frames, not
 * stack ids.
 * Offsets below are from the start of the payload (the first 16 payload
 * bytes travel in the slot's addr/size fields, see the top of this file;
 * rs_event.payload always starts at offset 0). The fixed part's `flags` is 0.
 *
 * RS_EV_PY_CODE payload (one code object):
 *   0   u32  code id
 *   4   u32  first line (co_firstlineno)
 *   8   u64  address of the code object in the traced process (informational)
 *   16  str  file name (co_filename): u16 length + UTF-8 bytes
 *   ..  str  function name: co_qualname on 3.11+ ("Cls.method", "f.<locals>.g"),
 *            co_name before 3.11 ("method")
 *
 * RS_EV_PY_STACK payload (one deduplicated stack):
 *   0   u32  stack id
 *   4   u32  native stack id (RS_EV_NATIVE_STACK), 0 = none (--native off)
 *   8   u16  frame count n (0: no Python frame, e.g. before the interpreter
 *            runs bytecode or on a thread not running Python; the native
 *            stack id may still be set)
 *   10  u16  stack flags: RS_PYSTACK_TRUNCATED = outer frames beyond
 *            RS_PYSTACK_MAX_FRAMES were dropped
 *   12  n * 12 bytes, innermost (the allocating frame) first:
 *         +0 u32 code id  (RS_EV_PY_CODE)
 *         +4 u32 line     (exact line being executed, resolved in the shim
 *                          from the code object's line table; 0 = unknown)
 *         +8 u32 frame flags (RS_PYFRAME_*)
 * Total length = 12 + 12 * n.
 */
#define RS_PYSTACK_MAX_FRAMES 128
#define RS_PYSTACK_TRUNCATED  0x0001u
#define RS_PYFRAME_ENTRY      0x01u /* first frame run by one C-level call of the eval
                                       loop (Python called from C here); native-stack
                                       splicing maps one eval-loop C frame to the run of
                                       Python frames ending at an ENTRY frame; on
                                       3.9/3.10 every frame is an ENTRY frame          */
#define RS_PYFRAME_GENERATOR  0x02u /* frame of a generator/coroutine (owned by it)   */

/* -- native stacks and module map (preload/unwind.c; analyzer/stacks.c) --
 * RS_EV_NATIVE_STACK: one deduplicated native call stack, defined once per
 * trace before (in reservation order) any record that references it. Only
 * written when REFSCOPE_NATIVE=1 (RS_PROC_NATIVE_STACKS). Payload:
 *   u32 id          native stack id (nonzero; its own namespace, referenced
 *                   from RS_EV_PY_STACK)
 *   u16 nframes     number of return addresses that follow (<= 128)
 *   u16 flags       RS_NSTACK_TRUNCATED when the stack was deeper
 *   u64 ip[nframes] return addresses, innermost first, the shim's own frames
 *                   dropped; readers symbolize ip - 1 (the call instruction)
 * The fixed part's addr repeats the id; readers use the payload.
 *
 * RS_EV_MODULE_MAP: an object mapped into (or unmapped from) the process.
 * Written for every object at trace start (dl_iterate_phdr), then for objects
 * that appeared (dlopen, RS_MODULE_DLOPEN) or went away (RS_MODULE_DLCLOSE),
 * noticed through the loader's counters before the next native capture and
 * after every dlclose. A DLCLOSE record repeats the object's fields. Payload:
 *   u8  event       RS_MODULE_INITIAL, RS_MODULE_DLOPEN or RS_MODULE_DLCLOSE
 *   u8  build_id_len  0..64 (0: the object has no NT_GNU_BUILD_ID note)
 *   u16 reserved
 *   u32 reserved
 *   u64 bias        load bias (dlpi_addr): runtime address = ELF vaddr + bias
 *   u64 start       lowest runtime address of its PT_LOAD segments
 *   u64 size        span of its PT_LOAD segments in bytes
 *   build_id[build_id_len] bytes
 *   str path        absolute file path ("" when it has none, e.g. the vDSO
 *                   is written as "[vdso]")
 * An address belongs to the module whose [start, start + size) holds it at
 * the time of the stack definition (objects loaded by a dlopen may allocate
 * from their constructors just before their MODULE_MAP record: readers look
 * forward too). */
#define RS_NSTACK_MAX_FRAMES 128
#define RS_NSTACK_TRUNCATED  0x1u
enum rs_module_event { RS_MODULE_INITIAL = 0, RS_MODULE_DLOPEN = 1, RS_MODULE_DLCLOSE = 2 };

/* ---- issue 4: objects and gc (preload/objtrace.c, preload/gcwatch.c) ------------- */
/*
 * Type table (preload/pytypes.c). RS_EV_PY_TYPE (VAR) defines a type id once
 * per trace; a later record with the same id replaces the definition (used to
 * add the module of a heap type, which is only readable at a safe point).
 * Ids are never reused, addresses are: a heap type that dies leaves its
 * address to the next type there, which is defined under a new id.
 *   payload  u64 type address (PyTypeObject *)   [= slot addr]
 *            u32 type id (1..)                   [= low half of slot size]
 *            u32 RS_TYPE_* flags                 [= high half of slot size]
 *            u64 tp_basicsize
 *            str name    tp_name as the interpreter has it ("dict", "mod.Cls")
 *            str module  "" when unknown
 */
#define RS_TYPE_GC       0x01u /* Py_TPFLAGS_HAVE_GC: instances can be GC-tracked  */
#define RS_TYPE_HEAP     0x02u /* Py_TPFLAGS_HEAPTYPE (classes, PyType_FromSpec)    */
#define RS_TYPE_METATYPE 0x04u /* Py_TPFLAGS_TYPE_SUBCLASS: instances are types     */
#define RS_TYPE_MODULE   0x08u /* the module string is final (else "" = not yet known) */

/*
 * Object events (3.13+, PyRefTracer; preload/objtrace.c). Fixed records.
 *   RS_EV_OBJ_CREATE   addr = object (PyObject *), size = type id, stack = stack
 *                      id of the creating code (0 = none). Fired by
 *                      _Py_NewReference (freelist reuse included).
 *   RS_EV_OBJ_DESTROY  addr = object, size = 0. Fired at the start of
 *                      _Py_Dealloc, i.e. before the FREE of the object's block.
 * Objects are identified by address; their OBJ-domain block starts 0, 16 or
 * 32 bytes before it (GC header, managed dict/weakref pre-header).
 *
 * GC collections (all versions; preload/gcwatch.c, from a gc.callbacks entry).
 *   RS_EV_GC_START  flags = generation (RS_GC_GEN_MASK) | RS_GC_F_*;
 *                   addr = generation-0 count at start (gc.get_count()[0]);
 *                   size = count[1] | count[2] << 32 (each saturated to u32);
 *                   stack = collection sequence number (1, 2, ... per trace);
 *                   time = end of the start callback (after the census), so
 *                   the pause below excludes refscope's own census work.
 *   RS_EV_GC_STOP   flags as START; addr = objects collected; size =
 *                   uncollectable; stack = pause in CLOCK_MONOTONIC ns (end of
 *                   the start callback to the stop callback), UINT32_MAX when
 *                   longer than 4.29 s (then use the record times).
 * Thresholds and enabled state in force at a START are the latest GC_INFO
 * CONFIG before it (gcwatch emits one whenever they differ from the last).
 */
#define RS_GC_GEN_MASK    0x0fu /* generation; 0x0f = unknown                          */
#define RS_GC_F_SHUTDOWN  0x80u /* collection during finalization (Py_IsInitialized()=0):
                                   after the program's last chance to call gc.get_stats() */
#define RS_GC_F_WHOLEHEAP 0x40u /* free-threaded build: whole heap, no generations     */

/*
 * RS_EV_GC_INFO (VAR): payload starts with u8 info kind (enum rs_gc_info).
 *  RS_GC_INFO_BASELINE  (once, at registration) the interpreter's own
 *      gc.get_stats(), so collections before refscope registered are counted:
 *      u8 kind, u8 ngen, u16 0, u32 0, then per generation
 *      u64 collections, u64 collected, u64 uncollectable.
 *  RS_GC_INFO_CONFIG    thresholds / enabled / frozen changed, or first seen:
 *      u8 kind, u8 reason (enum rs_gc_cfg_reason), u8 enabled, u8 nthresh,
 *      u32 0, then nthresh x u64 threshold, then u64 gc.get_freeze_count()
 *      (UINT64_MAX when the interpreter has none), then str function name
 *      ("set_threshold", ...; "" when noticed rather than called).
 *  RS_GC_INFO_CENSUS    census format 1 (per-object lists of whole
 *      generations): no longer written; readers ignore it (see MODE).
 *  RS_GC_INFO_SURVIVAL  census format 2: what one collection examined and
 *      promoted. One per collection (generational builds, census on), right
 *      after its RS_EV_GC_STOP; none when the STOP callback never ran.
 *        0  u8  kind
 *        1  u8  generation collected, g (0..2)
 *        2  u8  flags: RS_GC_SURVIVAL_FAILED = the census could not be taken
 *               (out of memory): the counts below are 0 and mean "unknown"
 *        3  u8  0
 *        4  u32 collection sequence number (its RS_EV_GC_START's stack)
 *        8  varint examined[0], ..., examined[g]: tracked objects in
 *               generation i at START (gc.get_objects(i) at that moment;
 *               objects that gc callbacks run after refscope's track are
 *               not counted, though the collector sees them)
 *        .  varint promoted: examined objects that are in generation g + 1
 *               (generation 2 when g = 2) at STOP, i.e. survived and are
 *               still tracked. Exact: atomic tuples (and, when g = 2, dicts)
 *               the collector untracked are not promoted, nor are objects it
 *               moved to the permanent generation (3.12+: immortal ones),
 *               nor weakrefs it moved into generation g + 1 from another.
 *        .  varint tenured: objects the RS_GC_INFO_TENURED records of this
 *               collection list (0 when g = 0)
 *      varint: LEB128 (7 bits a byte, least significant first, high bit set
 *      on every byte but the last).
 *  RS_GC_INFO_TENURED   census format 2: objects that have just reached the
 *      oldest generation (generation 2), so that readers can tell which
 *      objects were "tenured" when they die: the promoted objects of a
 *      generation-1 collection, the survivors that came from generations 0-1
 *      of a generation-2 collection, every object in generation 2 when
 *      refscope registered, and the objects gc.unfreeze() moved there. A
 *      collection's records follow its SURVIVAL record; each payload is at
 *      most RS_GC_TENURED_MAX_PAYLOAD bytes, lists at most
 *      RS_GC_TENURED_MAX_ENTRIES objects (readers drop records with more)
 *      and decodes on its own.
 *        0  u8  kind
 *        1  u8  flags: RS_GC_TENURED_TYPES (a type stream follows the
 *               addresses), RS_GC_TENURED_BYTES (addresses are in units of
 *               1 byte instead of 16: some object was not 16-byte aligned)
 *        2  u16 0
 *        4  u32 collection sequence number; 0 = not a collection (at
 *               registration, or gc.unfreeze())
 *        8  varint n: objects in this record (>= 1)
 *        .  address stream: the n object addresses (PyObject *), strictly
 *               ascending, each as the delta from the previous one (the
 *               first from 0) divided by the unit (16 bytes: objects are
 *               16-byte aligned). Tokens, until n deltas are decoded:
 *               varint t; t even: one delta, t >> 1; t odd: the delta t >> 1
 *               repeated k times, k >= 2 given by the varint that follows.
 *               (Objects allocated one after another in a pymalloc pool
 *               are a few runs.)
 *        .  type stream (RS_GC_TENURED_TYPES only: CPython < 3.13, whose
 *               objects have no RS_EV_OBJ_CREATE to carry their type): runs
 *               of { varint type id (RS_EV_PY_TYPE, 0 = unknown), varint
 *               count >= 1 } covering the n objects in address order.
 *  RS_GC_INFO_MODE      u8 kind, u8 census (0 off or unavailable, 1 census
 *      format 1 = RS_GC_INFO_CENSUS records, written by refscope before
 *      format 2; 2 = format 2: SURVIVAL and TENURED records), u8 generations
 *      (3; 0 = free-threaded whole heap), u8 incremental (3.14.0-3.14.4).
 *      Readers handle the format they know (RS_GC_CENSUS_FORMAT) and treat
 *      others as "no census", saying so.
 */
enum rs_gc_info {
    RS_GC_INFO_BASELINE = 1,
    RS_GC_INFO_CONFIG   = 2,
    RS_GC_INFO_CENSUS   = 3, /* format 1, retired */
    RS_GC_INFO_MODE     = 4,
    RS_GC_INFO_SURVIVAL = 5,
    RS_GC_INFO_TENURED  = 6,
};
enum rs_gc_cfg_reason {
    RS_GC_CFG_INITIAL  = 0, /* at registration                                  */
    RS_GC_CFG_CALL     = 1, /* the program called a wrapped gc function          */
    RS_GC_CFG_NOTICED  = 2, /* differs at a collection start (C API, or a
                               reference to the gc function taken before wrap)   */
    RS_GC_CFG_EXIT     = 3, /* differs at exit                                   */
};
#define RS_GC_CENSUS_FORMAT        2u     /* MODE census value of the records above */
#define RS_GC_SURVIVAL_FAILED      0x01u
#define RS_GC_TENURED_TYPES        0x01u
#define RS_GC_TENURED_BYTES        0x02u
#define RS_GC_TENURED_MAX_PAYLOAD  16384u
#define RS_GC_TENURED_MAX_ENTRIES  65536u

/* RS_EV_NOTE codes of the gc/object feature (payload: u16 code, str text). */
enum rs_note_gc {
    RS_NOTE_REFTRACER_TAKEN   = 0x0401, /* another tool (tracemalloc) took the ref
                                           tracer slot: object events stop here  */
    RS_NOTE_REFTRACER_BACK    = 0x0402, /* slot free again; object events resume  */
    RS_NOTE_DESTROY_MISSED    = 0x0403, /* 3.13.0-3.13.2: DESTROY missed in the
                                           eval loop (CPython gh-130382)          */
    RS_NOTE_NO_REFTRACER      = 0x0404, /* < 3.13: no object events (block lifetimes used) */
    RS_NOTE_GC_INCREMENTAL    = 0x0405, /* 3.14.0-3.14.4 incremental GC: generation
                                           numbers are not generational, no census */
    RS_NOTE_GC_FREETHREADED   = 0x0406, /* free-threaded: whole-heap collections  */
    RS_NOTE_GC_UNAVAILABLE    = 0x0407, /* gc callbacks could not be registered   */
    RS_NOTE_GC_CENSUS_OFF     = 0x0408, /* REFSCOPE_GC_CENSUS=off                 */
    RS_NOTE_GC_CENSUS_UNAVAILABLE = 0x0409, /* the generation lists of this CPython
                                           were not found (3.14+, unknown layout) */
    RS_NOTE_GC_OFF            = 0x040a, /* REFSCOPE_GC=off (run --no-gc): no gc
                                           callback, so no collections in the trace */
};

/* ---- issue 5: snapshots (preload/snapshot.c) -------------------------------------- */
/*
 * A heap snapshot is a run of RS_EV_SNAPSHOT records from one thread (the
 * Python main thread, GIL held): BEGIN, then TYPE / OBJECTS / MORE_REFS /
 * LABELS records in any order, then END. A snapshot without END was cut
 * short (process died): readers drop it. Every payload starts with the same
 * 8 bytes; the slot's flags repeat the subkind.
 *   0  u8  subkind (enum rs_snap_subkind)
 *   1  u8  reserved, 2 u16 reserved
 *   4  u32 snapshot number (1, 2, ... per process)
 *   8  ... subkind body:
 *
 * BEGIN     u8 reason (enum rs_snap_reason), u8 gc enabled (0/1, 255 unknown),
 *           u8 free-threaded build (0/1), u8 reserved, u32 PY_VERSION_HEX.
 * TYPE      one type used by this snapshot's objects (defined before its first
 *           use): u32 type ref (the snapshot's own small number, used by
 *           OBJECTS), u32 type id (RS_EV_PY_TYPE, 0 = not in the type table),
 *           u64 type object address, u32 tp_flags (low 32 bits), str tp_name.
 * OBJECTS   repeated to the end of the payload, one entry per object:
 *             +0  u64 object address (PyObject *)
 *             +8  u32 type ref (TYPE)
 *             +12 u32 size in bytes as sys.getsizeof reports it (GC header
 *                 and pre-header included; saturated)
 *             +16 u64 refcount (0 when RS_SNAP_OBJ_IMMORTAL)
 *             +24 u8  RS_SNAP_OBJ_* flags (generation in bits 6-7)
 *             +25 u8  pre-header bytes: its memory block starts this many
 *                 bytes before the object (GC header, managed dict/weakref)
 *             +26 u16 reserved
 *             +28 u32 n, then n u64 addresses of referenced objects, in
 *                 tp_traverse order; list and tuple: item order (edge i is
 *                 "index i"); dict: key0, value0, key1, value1, ...
 *           Total entry size: RS_SNAP_OBJ_FIXED + 8 n.
 * MORE_REFS u64 object address, u32 n, n u64 addresses: further references
 *           of an entry flagged RS_SNAP_OBJ_MORE_REFS (records stay < 64 KiB).
 * LABELS    repeated: u64 object address, u8 kind (enum rs_snap_label), u32
 *           edge index (KEY: index of the labelled reference of that object;
 *           0 otherwise), str text (at most RS_SNAP_LABEL_MAX bytes, UTF-8,
 *           may be cut mid-character).
 * END       u32 status (bit 0: the walk failed, out of memory; bit 1: some
 *           objects could not be read), u64 objects, u64 references,
 *           u64 duration in ns (the walk, as the program saw it).
 * References point at objects recorded in the same snapshot (every
 * GC-tracked object and everything they reference is recorded).
 */
enum rs_snap_subkind {
    RS_SNAP_BEGIN = 0, RS_SNAP_TYPE = 1, RS_SNAP_OBJECTS = 2,
    RS_SNAP_MORE_REFS = 3, RS_SNAP_LABELS = 4, RS_SNAP_END = 5
};
enum rs_snap_reason {
    RS_SNAP_REASON_EXIT = 0,     /* atexit, after the program's own handlers */
    RS_SNAP_REASON_SIGNAL = 1,   /* SIGUSR2                                   */
    RS_SNAP_REASON_INTERVAL = 2  /* REFSCOPE_SNAPSHOT_INTERVAL / --snapshot-interval */
};
#define RS_SNAP_OBJ_TRACKED   0x01u /* GC-tracked (else: only referenced)          */
#define RS_SNAP_OBJ_IMMORTAL  0x02u /* immortal (3.12+): refcount not meaningful   */
#define RS_SNAP_OBJ_GARBAGE   0x04u /* in gc.garbage                               */
#define RS_SNAP_OBJ_FROZEN    0x08u /* in the permanent generation (gc.freeze())   */
#define RS_SNAP_OBJ_MORE_REFS 0x10u /* references continue in MORE_REFS records    */
#define RS_SNAP_OBJ_NOREFS    0x20u /* references could not be read                */
#define RS_SNAP_OBJ_GEN_SHIFT 6     /* generation 0..2 of a tracked, unfrozen object
                                       (always 0 on free-threaded builds)          */
#define RS_SNAP_OBJ_FIXED     32u   /* bytes of an OBJECTS entry before its refs   */
#define RS_SNAP_LABEL_MAX     64u
enum rs_snap_label {
    RS_SNAP_LABEL_MODULE = 1, /* a module object: its __name__                  */
    RS_SNAP_LABEL_STR = 2,    /* a str object: its first characters             */
    RS_SNAP_LABEL_TYPE = 3,   /* a type object: its tp_name                     */
    RS_SNAP_LABEL_NAME = 4,   /* a function or code object: its qualified name  */
    RS_SNAP_LABEL_KEY = 5     /* reference `edge` of a dict is the value of the
                                 str key `text`                                 */
};
/* Environment: REFSCOPE_SNAPSHOT_INTERVAL=N (seconds) adds a snapshot every N
 * seconds; REFSCOPE_SNAPSHOTS=0 turns snapshots (atexit, SIGUSR2) off. */

#endif
