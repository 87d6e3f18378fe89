/*
 * The shim's type table: interns Python type objects into small ids and
 * defines each id once per trace with an RS_EV_PY_TYPE record (name, module,
 * flags such as GC-tracked). Used by object events (objtrace.c), gc census
 * (gcwatch.c) and snapshots (snapshot.c). Safe inside hooks: no allocation,
 * no C API calls; reads type fields through pyver.
 */
#ifndef REFSCOPE_PYTYPES_H
#define REFSCOPE_PYTYPES_H

#include <stdint.h>
#include "emit.h"
#include "pyver.h"

/* Id of the type object `type` (a PyTypeObject *), emitting its definition
 * on first sight in this trace; 0 when it cannot be read. Inline, below: a
 * per-thread memo answers the object-creation hot path (3.13+) without
 * probing the table. */
static inline uint32_t rs_pytype_id(const void *type);

/* Same, for callers at a safe point (GIL held, `type` known alive, C API
 * usable): also fills in the module of heap types (their `__module__`, not
 * readable from a hook) and re-emits the definition once with RS_TYPE_MODULE.
 * Never raises: a failing lookup leaves the module unknown. */
uint32_t rs_pytype_id_safe(const void *type);

/* Id of the type of object `obj` (rs_pytype_id of its ob_type); 0 if unknown. */
uint32_t rs_pytype_of(const void *obj);

/* An OBJ-domain block is about to be freed (hooks_pymem.c, before the real
 * free): if it holds a type object, its id must not be given to the next type
 * at its address. Inline, below: a look at the block's object header. */
static inline void rs_pytype_note_obj_free(uint64_t addr);

/* ---- inline parts (state owned by pytypes.c) ----------------------------------- */
/* The memo: direct-mapped by type address; an entry is valid in the trace
 * (epoch) it was filled in, until any type in the table dies (deaths).
 * Thread-local: nothing to synchronize on free-threaded builds. */
#define RS_TYPE_MEMO_SLOTS 32u
struct rs_type_memo {
    const void *type;
    uint32_t id;
    uint32_t epoch;
    uint32_t deaths;
};
extern __thread struct rs_type_memo rs_type_memo[RS_TYPE_MEMO_SLOTS]
    __attribute__((tls_model("initial-exec")));
extern uint32_t rs_pytype_deaths;     /* types in the table seen dying, so far     */
/* Type deaths are watched in a Python process whose object header puts a
 * type object's ob_type RS_TYPE_PEEK_AT bytes into its block (16-byte GC
 * header + 8 on default builds, no GC header + 24 on free-threaded ones),
 * from the first heap type in the table on: blocks are peeked at when their
 * offset in their page is below rs_pytype_peek_below, 0 until then, else
 * where the peeked word would cross into the next page. */
#define RS_TYPE_PEEK_AT 24u
extern uint32_t rs_pytype_peek_below;
/* The metatypes whose instances' deaths are watched: &PyType_Type, then every
 * interned type with RS_TYPE_METATYPE (ABCMeta, EnumType, ...), in order;
 * NULL ends the list, and an empty list means deaths cannot be seen (not
 * Python, or another object header). Past &PyType_Type, a block's would-be type is first
 * tested against rs_pytype_meta_bits (a bit per metatype). A type whose
 * metatype is not here dies unseen (the table's tp_name check is then all
 * that tells its successor apart). */
#define RS_TYPE_METAS 16u
extern const void *rs_pytype_metas[RS_TYPE_METAS];
extern uint64_t rs_pytype_meta_bits;

/* The table lookup behind the memo; fills the memo entry. */
uint32_t rs_pytype_id_slow(const void *type);
/* `obj`, whose ob_type is `tp`, is dying: if tp is a watched metatype, obj
 * is a type and its slot is marked dead (pytypes.c). */
void rs_pytype_maybe_died(const void *tp, const void *obj);

static inline struct rs_type_memo *rs_type_memo_of(const void *type)
{
    uint64_t h = ((uint64_t)(uintptr_t)type >> 4) * 0x9E3779B97F4A7C15ull;
    return &rs_type_memo[h >> 59];
}

static inline uint32_t rs_pytype_id(const void *type)
{
    const struct rs_type_memo *m = rs_type_memo_of(type);
    if (__builtin_expect(m->type == type && type && m->epoch == rs_emit_epoch() &&
                         m->deaths == __atomic_load_n(&rs_pytype_deaths, __ATOMIC_ACQUIRE), 1))
        return m->id;
    return rs_pytype_id_slow(type);
}

static inline uint64_t rs_pytype_meta_bit(const void *tp)
{
    return 1ull << (((uint64_t)(uintptr_t)tp >> 4) & 63);
}

static inline void rs_pytype_note_obj_free(uint64_t addr)
{
    /* The block may hold anything: its would-be ob_type (the word at
     * RS_TYPE_PEEK_AT) is only compared with known metatypes, never followed.
     * A block ending a page is not peeked at (the next page may be unmapped);
     * type objects are far larger. */
    if ((addr & 4095) >= rs_pytype_peek_below)
        return;
    const void *tp = *(const void *const *)(uintptr_t)(addr + RS_TYPE_PEEK_AT);
    if (__builtin_expect(tp == rs_pytype_metas[0], 0) ||
        __builtin_expect((rs_pytype_meta_bits & rs_pytype_meta_bit(tp)) != 0, 0))
        rs_pytype_maybe_died(tp, (const void *)(uintptr_t)(addr + RS_TYPE_PEEK_AT - rs_py.ob_type));
}

#endif
