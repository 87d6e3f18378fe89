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
                             0 constructor, 1 setlocale, 2 lazy check           */
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
    RS_EV_KIND_MAX    = 0x7f
};

#define RS_EV_IS_VAR(kind) ((kind) >= 0x40)

/* ---- fixed part: one 32-byte slot ------------------------------------------- */
struct rs_slot {
    uint8_t  kind;   /* enum rs_event_kind; written last, with release order  */
    uint8_t  flags;  /* per kind (domain and RS_F_* for ALLOC/FREE)           */
    uint16_t thread; /* shim thread index; bound to an OS tid by RS_EV_THREAD  */
    uint32_t stack;  /* stack id for ALLOC (0 = none); payload length for VAR */
    uint64_t time;   /* clock ticks (see clock.h); converted to ns by readers */
    uint64_t addr;
    uint64_t size;
};
_Static_assert(sizeof(struct rs_slot) == 32, "ring slot must be 32 bytes");

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

/* ---- RS_EV_END payload --------------------------------------------------------- */
struct rs_end_info {
    uint64_t producer_waits; /* times a producer found the ring full and waited  */
    uint64_t lost_events;    /* events dropped (lossy mode, or after set-up failed) */
    uint64_t end_mono_ns;
    uint32_t reason;         /* 0 exit (destructor), 1 exec, 2 recorder saw death  */
    uint32_t reserved;
};

/* Sections below are owned by the feature that introduces them; each feature
 * documents its payloads here, next to its kinds, before using them. */

/* ---- issue 3: python and native stacks (preload/pystack.c, preload/unwind.c) ----- */
/* (layouts documented by the stack feature) */

/* ---- issue 4: objects and gc (preload/objtrace.c, preload/gcwatch.c) ------------- */
/* (layouts documented by the gc feature) */

/* ---- issue 5: snapshots (preload/snapshot.c) -------------------------------------- */
/* (layouts documented by the snapshot feature) */

#endif
