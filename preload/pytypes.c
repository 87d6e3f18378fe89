/*
 * The type table (pytypes.h): PyTypeObject pointers → small ids, each id
 * defined once per trace by an RS_EV_PY_TYPE record (layout in events.h).
 *
 * A fixed, statically allocated open-addressing table; slots are claimed with
 * a CAS on the type pointer, so concurrent hooks (free-threaded builds) need
 * no lock and nothing allocates. Heap types die and their addresses are
 * reused by other types, often with their tp_name buffer at a reused address
 * too (classes made in a loop): the OBJ-domain free of a type object marks
 * its slot dead (rs_pytype_note_obj_free), and the next type seen at that
 * address takes the slot over with a new id and definition. The tp_name
 * pointer stays part of the key, for a death that was not seen.
 * When rs_emit_epoch() changes (a fork child starts its own trace) the table
 * is cleared, so each trace defines every id it uses.
 */
#include <errno.h>
#include <string.h>
#include "backoff.h"
#include "capi.h"
#include "emit.h"
#include "pytypes.h"
#include "pyver.h"
#include "shim.h"

#define TYPE_SLOTS 16384u /* power of two */
#define MAX_PROBES 256u   /* a type not placed within this many slots gets id 0 */
#define NAME_MAX_BYTES 256u


enum { SLOT_EMPTY = 0, SLOT_CLAIMED = 1, SLOT_READY = 2, SLOT_DEAD = 3 };

struct type_slot {
    uint64_t type;       /* key part 1, claimed by CAS                    */
    uint64_t name_ptr;   /* key part 2                                    */
    uint32_t id;
    uint32_t state;      /* SLOT_*; READY published with release order    */
    uint32_t module_done;/* 1 once a definition with RS_TYPE_MODULE went out */
    uint32_t pad;
};

static struct type_slot table[TYPE_SLOTS];
static uint32_t next_id;
static uint32_t table_epoch;
uint32_t rs_pytype_deaths;
uint32_t rs_pytype_peek_below;
const void *rs_pytype_metas[RS_TYPE_METAS];
uint64_t rs_pytype_meta_bits;

static void pytypes_start(void)
{
    if (rs_pyver_init() == 0 && rs_py.ob_size && rs_capi.PyType_Type &&
        (rs_py.free_threaded ? 0 : 16) + rs_py.ob_type == RS_TYPE_PEEK_AT) {
        rs_pytype_metas[0] = rs_capi.PyType_Type; /* type deaths can be seen */
    }
}

__attribute__((constructor(RS_CTOR_FEATURE)))
static void pytypes_init(void)
{
    rs_pyver_when_found(pytypes_start);
}

static void check_epoch(void)
{
    uint32_t epoch = rs_emit_epoch();
    if (__atomic_load_n(&table_epoch, __ATOMIC_ACQUIRE) == epoch)
        return;
    /* Only a fork child sees a new epoch, with one thread: clearing is safe. */
    memset(table, 0, sizeof(table));
    __atomic_store_n(&next_id, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&table_epoch, epoch, __ATOMIC_RELEASE);
}

static uint32_t name_len(const char *s)
{
    uint32_t n = 0;
    while (n < NAME_MAX_BYTES && s[n])
        n++;
    return n;
}

static uint32_t type_flags(const void *type)
{
    uint64_t tp = rs_py_type_flags(type);
    uint32_t f = 0;
    if (tp & RS_PY_TPFLAGS_HAVE_GC)
        f |= RS_TYPE_GC;
    if (tp & RS_PY_TPFLAGS_HEAPTYPE)
        f |= RS_TYPE_HEAP;
    if (tp & RS_PY_TPFLAGS_TYPE_SUBCLASS)
        f |= RS_TYPE_METATYPE;
    return f;
}

/* Emit the RS_EV_PY_TYPE definition. `module` NULL: derived from tp_name
 * for static types ("collections.OrderedDict" → "collections", "dict" →
 * "builtins"), unknown ("") for heap types. */
static void emit_definition(const void *type, uint32_t id, const char *name, const char *module,
                            uint32_t module_len)
{
    uint8_t data[32 + 2 * (NAME_MAX_BYTES + 2)];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    uint32_t flags = type_flags(type);
    uint32_t nlen = name_len(name);
    const char *mod = "";
    uint32_t mlen = 0;

    if (module) {
        mod = module;
        mlen = module_len < NAME_MAX_BYTES ? module_len : NAME_MAX_BYTES;
        flags |= RS_TYPE_MODULE;
    } else if (!(flags & RS_TYPE_HEAP)) {
        const char *dot = NULL;
        for (uint32_t i = 0; i < nlen; i++)
            if (name[i] == '.')
                dot = name + i;
        if (dot) {
            mod = name;
            mlen = (uint32_t)(dot - name);
        } else {
            mod = "builtins";
            mlen = 8;
        }
        flags |= RS_TYPE_MODULE;
    }
    rs_buf_u64(&b, (uint64_t)(uintptr_t)type);
    rs_buf_u32(&b, id);
    rs_buf_u32(&b, flags);
    rs_buf_u64(&b, (uint64_t)rs_py_type_basicsize(type));
    rs_buf_str(&b, name, nlen);
    rs_buf_str(&b, mod, mlen);
    rs_emit_var(RS_EV_PY_TYPE, 0, (uint64_t)(uintptr_t)type, (uint64_t)id | (uint64_t)flags << 32,
                data, b.len);
}

static inline uint32_t hash_type(uint64_t key)
{
    return (uint32_t)((key >> 4) * 0x9E3779B97F4A7C15ull >> 40);
}

/* A metatype's instances are types: watch for their deaths (pytypes.h). Slots
 * are claimed by CAS, never given back (metatypes rarely die). */
static void watch_metatype(const void *type)
{
    for (uint32_t i = 0; i < RS_TYPE_METAS; i++) {
        const void *cur = __atomic_load_n(&rs_pytype_metas[i], __ATOMIC_ACQUIRE);
        if (!cur && __atomic_compare_exchange_n(&rs_pytype_metas[i], &cur, type, 0,
                                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            __atomic_or_fetch(&rs_pytype_meta_bits, rs_pytype_meta_bit(type), __ATOMIC_RELEASE);
            return;
        }
        if (cur == type) /* there already, or another thread was first with it */
            return;
    }
}

/* Gives a claimed slot its key and a new id, and publishes it. */
static struct type_slot *define_slot(struct type_slot *s, const void *type, uint64_t name_ptr,
                                     int *inserted)
{
    uint64_t tp_flags = rs_py_type_flags(type);
    int watching = rs_pytype_metas[0] != NULL; /* pytypes_init */
    if (watching && (tp_flags & RS_PY_TPFLAGS_TYPE_SUBCLASS))
        watch_metatype(type);
    /* only heap types die: frees are peeked at once the table has one */
    if (watching && (tp_flags & RS_PY_TPFLAGS_HEAPTYPE) &&
        !__atomic_load_n(&rs_pytype_peek_below, __ATOMIC_RELAXED))
        __atomic_store_n(&rs_pytype_peek_below, rs_py_peek_start(RS_TYPE_PEEK_AT),
                         __ATOMIC_RELAXED);
    s->name_ptr = name_ptr;
    s->id = __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&s->module_done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->state, SLOT_READY, __ATOMIC_RELEASE);
    *inserted = 1;
    return s;
}

/* Waits while slot s is being taken over (SLOT_CLAIMED: its type is about to
 * change, maybe to the one the caller looks for). Skipping it instead lets
 * two threads that meet a new type at once give it two ids. A claim that
 * outlasts RS_WAIT_CLAIM_NS is skipped after all. */
static void settle_claim(const struct type_slot *s)
{
    rs_wait_while_u32(&s->state, SLOT_CLAIMED, RS_WAIT_CLAIM_NS);
}

/* Finds or inserts (type, tp_name); returns the slot, or NULL with
 * *inserted = -1 when the table has no room for it within MAX_PROBES, or NULL
 * with *inserted = 0 when the type cannot be read. A new type takes the first
 * dead slot on its probe path, so types that die make room for new ones. */
static struct type_slot *lookup(const void *type, int *inserted)
{
    const char *name;
    uint64_t key = (uint64_t)(uintptr_t)type, name_ptr;
    uint32_t h;

    *inserted = 0;
    if (!type || !rs_emit_active())
        return NULL;
    name = rs_py_type_name(type);
    if (!name)
        return NULL;
    check_epoch();
    name_ptr = (uint64_t)(uintptr_t)name;
    h = hash_type(key);
    for (int attempt = 0; attempt < 4; attempt++) {
        struct type_slot *dead = NULL;
        for (uint32_t probe = 0; probe < MAX_PROBES; probe++) {
            struct type_slot *s = &table[(h + probe) & (TYPE_SLOTS - 1)];
            settle_claim(s);
            uint64_t cur = __atomic_load_n(&s->type, __ATOMIC_ACQUIRE);
            if (cur == 0) {
                if (dead)
                    break;
                uint64_t expected = 0;
                if (__atomic_compare_exchange_n(&s->type, &expected, key, 0, __ATOMIC_ACQ_REL,
                                                __ATOMIC_ACQUIRE))
                    return define_slot(s, type, name_ptr, inserted);
                cur = expected;
            }
            if (cur != key) {
                if (!dead && __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == SLOT_DEAD)
                    dead = s;
                continue;
            }
            /* Same address: wait (briefly) for the claimer to publish the key; a
             * dead type's slot is taken over by the type living there now. */
            struct rs_backoff b = RS_BACKOFF_INIT;
            for (;;) {
                uint32_t state = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
                if (state == SLOT_READY)
                    break;
                if (state == SLOT_DEAD &&
                    __atomic_compare_exchange_n(&s->state, &state, SLOT_CLAIMED, 0,
                                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                    return define_slot(s, type, name_ptr, inserted);
                if (!rs_backoff(&b, RS_WAIT_CLAIM_NS))
                    return NULL;
            }
            if (s->name_ptr == name_ptr)
                return s;
            /* A different type at a reused address, whose predecessor's death
             * was not seen: keep probing for its own slot. */
        }
        if (!dead) {
            *inserted = -1;
            return NULL;
        }
        /* Not in the table: take the dead slot over (another thread may have
         * been first: then look again). */
        uint32_t state = SLOT_DEAD;
        if (__atomic_compare_exchange_n(&dead->state, &state, SLOT_CLAIMED, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&dead->type, key, __ATOMIC_RELEASE);
            return define_slot(dead, type, name_ptr, inserted);
        }
    }
    return NULL;
}

void rs_pytype_maybe_died(const void *tp, const void *type)
{
    uint64_t key = (uint64_t)(uintptr_t)type;
    uint32_t h = hash_type(key), died = 0, meta = 0;

    for (uint32_t i = 0; i < RS_TYPE_METAS && !meta; i++) {
        const void *cur = __atomic_load_n(&rs_pytype_metas[i], __ATOMIC_ACQUIRE);
        if (!cur)
            break;
        meta = cur == tp;
    }
    if (!meta || __atomic_load_n(&table_epoch, __ATOMIC_ACQUIRE) != rs_emit_epoch())
        return; /* not a type, or a table about to be cleared */
    for (uint32_t probe = 0; probe < MAX_PROBES; probe++) {
        struct type_slot *s = &table[(h + probe) & (TYPE_SLOTS - 1)];
        uint64_t cur = __atomic_load_n(&s->type, __ATOMIC_ACQUIRE);
        if (cur == 0)
            break;
        uint32_t ready = SLOT_READY;
        if (cur == key && __atomic_compare_exchange_n(&s->state, &ready, SLOT_DEAD, 0,
                                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            died = 1;
    }
    if (died) /* every thread's memo forgets its ids */
        __atomic_add_fetch(&rs_pytype_deaths, 1, __ATOMIC_RELEASE);
}

__thread struct rs_type_memo rs_type_memo[RS_TYPE_MEMO_SLOTS]
    __attribute__((tls_model("initial-exec")));

uint32_t rs_pytype_id_slow(const void *type)
{
    int inserted;
    /* read before the lookup: a death after it makes the memo entry stale */
    uint32_t epoch = rs_emit_epoch();
    uint32_t deaths = __atomic_load_n(&rs_pytype_deaths, __ATOMIC_ACQUIRE);
    struct type_slot *s = lookup(type, &inserted);
    if (!s && inserted != -1)
        return 0;
    if (s && inserted)
        emit_definition(type, s->id, rs_py_type_name(type), NULL, 0);
    /* after the definition: a memo hit never precedes it in this thread; no
     * room is remembered too (id 0), until a type dies */
    struct rs_type_memo *m = rs_type_memo_of(type);
    m->type = type;
    m->id = s ? s->id : 0;
    m->epoch = epoch;
    m->deaths = deaths;
    return m->id;
}

uint32_t rs_pytype_id_safe(const void *type)
{
    int inserted;
    struct type_slot *s = lookup(type, &inserted);
    void *mod;
    const char *utf8;
    ssize_t len = 0;
    static const size_t needs[] = {
        RS_CAPI(PyObject_GetAttrString), RS_CAPI(PyUnicode_AsUTF8AndSize), RS_CAPI(PyErr_Clear),
        RS_CAPI(Py_DecRef),
    };

    if (!s)
        return 0;
    if (!(type_flags(type) & RS_TYPE_HEAP) || __atomic_load_n(&s->module_done, __ATOMIC_ACQUIRE)) {
        if (inserted)
            emit_definition(type, s->id, rs_py_type_name(type), NULL, 0);
        return s->id;
    }
    if (rs_capi_missing(needs, RS_CAPI_COUNT(needs)))
        goto plain;
    mod = rs_capi.PyObject_GetAttrString((void *)type, "__module__");
    if (!mod) {
        rs_capi.PyErr_Clear();
        goto plain;
    }
    utf8 = rs_capi.PyUnicode_AsUTF8AndSize(mod, &len);
    if (!utf8) {
        rs_capi.PyErr_Clear();
        rs_capi.Py_DecRef(mod);
        goto plain;
    }
    __atomic_store_n(&s->module_done, 1, __ATOMIC_RELEASE);
    emit_definition(type, s->id, rs_py_type_name(type), utf8, (uint32_t)len);
    rs_capi.Py_DecRef(mod);
    return s->id;
plain:
    if (inserted)
        emit_definition(type, s->id, rs_py_type_name(type), NULL, 0);
    return s->id;
}

uint32_t rs_pytype_of(const void *obj)
{
    if (!obj || !rs_py.is_python || !rs_py.ob_size)
        return 0;
    return rs_pytype_id(rs_py_type(obj));
}
