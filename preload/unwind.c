/*
 * Native stacks for allocation records (REFSCOPE_NATIVE=1, `run --native`).
 *
 * rs_native_stack_current() unwinds the caller with libunwind's fast path
 * (unw_backtrace: per-IP frame cache, no malloc of its own once warm; any
 * allocation it does make passes through the recursion guard unrecorded),
 * hashes the return addresses, and looks the stack up in a lock-free
 * open-addressing table so each distinct stack is written once per trace as
 * an RS_EV_NATIVE_STACK record (payload in include/refscope/events.h).
 *
 * The module map (RS_EV_MODULE_MAP) says which object each address belongs
 * to. It is written for every loaded object when tracing starts, and again
 * for each object that appears or disappears. Changes are noticed through the
 * loader's dlpi_adds/dlpi_subs counters, checked by the dlopen/dlclose
 * wrappers, before a new stack is defined when one of its addresses is in
 * no object the map knows (so a stack never refers to an object the trace
 * has not described) and every MODULES_RECHECK captures of a thread (an
 * object the loader unloads and replaces by itself, outside dlclose, such as
 * an NSS module, is noticed then). Asking the loader on every capture cost
 * about a tenth of the capture. dlopen is forwarded by a tail call so that the real
 * dlopen still sees the program's return address (its $ORIGIN / RUNPATH
 * search uses the caller's object, not ours).
 *
 * Both tables forget what they wrote when rs_emit_epoch() changes (a fork
 * child starts a new trace). Nothing here mallocs or uses stdio; the only
 * lock is a spin lock around module scans that a fork child steals (it is
 * tagged with the epoch of its holder).
 */
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define UNW_LOCAL_ONLY
#include <libunwind.h>

#include "refscope/events.h"
#include "refscope/transport.h"
#include "emit.h"
#include "guard.h"
#include "shim.h"
#include "stack.h"

/* ---- state ----------------------------------------------------------------- */

static int native_enabled;
static uintptr_t shim_start, shim_end;   /* our own text, to drop our frames */

/* ---- native stack table ------------------------------------------------------
 * Entry key = 64-bit hash of (epoch, ips) with the low bit set (0 = empty);
 * check = an independent 64-bit hash, so a false match needs a 128-bit
 * collision. The inserting thread claims the key with a CAS, writes the
 * definition record, then publishes the id (release). A reader that finds a
 * claimed but unpublished key spins briefly, then gives up and defines the
 * stack again under a fresh id (harmless: two ids, same frames). */
struct nstack_entry {
    uint64_t key;
    uint64_t check;
    uint32_t id;
    uint32_t reserved;
};

#define NSTACK_TABLE_BITS 20
#define NSTACK_TABLE_SIZE (1u << NSTACK_TABLE_BITS)
#define NSTACK_PROBES     64
#define NSTACK_SPINS      4096

static struct nstack_entry *nstack_table;
static uint32_t nstack_next_id = 1;
static uint64_t hash_keys[2][RS_NSTACK_MAX_FRAMES];

/* per-thread direct-mapped cache of recently seen stacks */
#define RECENT_SLOTS 256
struct nstack_recent {
    uint64_t key, check;
    uint32_t id, epoch;
};
static __thread struct nstack_recent recent[RECENT_SLOTS] __attribute__((tls_model("initial-exec")));

/* ---- module table ----------------------------------------------------------- */
#define MODULES_MAX   1024
#define MODULE_PATH   464

struct module_entry {
    uint64_t bias, start, size;
    uint64_t name_hash;
    uint32_t epoch;      /* trace the entry belongs to; other epochs are free */
    uint32_t seen_gen;   /* last scan that saw it */
    uint32_t live;
    uint8_t build_id_len;
    uint8_t build_id[64];
    char path[MODULE_PATH];
};

static struct module_entry modules[MODULES_MAX];
static uint64_t modules_lock;          /* 0 free, else (epoch << 1) | 1 */
static uint32_t modules_epoch;         /* epoch whose map has been written (+1; 0 none) */
static uint64_t modules_adds, modules_subs; /* loader counters at last scan */
static uint32_t modules_gen;
static int modules_initial;            /* the scan in progress writes RS_MODULE_INITIAL */
static uint32_t modules_used;          /* entries [0, modules_used) have ever been filled */
static uint64_t modules_seq = 2;       /* odd while a scan changes modules[] (seqlock) */

#define MODULES_RECHECK 4096u
#define KNOWN_SLOTS 4
/* Ranges of live modules this thread's captures hit, valid while
 * modules_seq is what it was when they were filled (size 0 = empty). */
static __thread struct {
    uint64_t lo[KNOWN_SLOTS], size[KNOWN_SLOTS];
    uint64_t seq;
    uint32_t next, captures;
} known __attribute__((tls_model("initial-exec")));

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static uint64_t hash_bytes(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* ---- module scan -------------------------------------------------------------- */

static void module_lock(uint32_t epoch)
{
    uint64_t mine = ((uint64_t)epoch << 1) | 1;
    for (unsigned spins = 0;; spins++) {
        uint64_t cur = __atomic_load_n(&modules_lock, __ATOMIC_RELAXED);
        /* free, or held by the parent of this fork child (different epoch) */
        if ((cur == 0 || (cur >> 1) != epoch) &&
            __atomic_compare_exchange_n(&modules_lock, &cur, mine, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
        if (spins > 64)
            sched_yield();
    }
}

static void module_unlock(void)
{
    __atomic_store_n(&modules_lock, 0, __ATOMIC_RELEASE);
}

/* Copies the NT_GNU_BUILD_ID of a mapped object out of its PT_NOTE segments. */
static uint8_t module_build_id(const struct dl_phdr_info *info, uint8_t *out)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        const uint8_t *p = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
        const uint8_t *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
            const uint8_t *name = p + sizeof(*nh);
            const uint8_t *desc = name + ((nh->n_namesz + 3) & ~3u);
            const uint8_t *next = desc + ((nh->n_descsz + 3) & ~3u);
            if (next > end)
                break;
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 &&
                !memcmp(name, "GNU", 4) && nh->n_descsz <= 64) {
                memcpy(out, desc, nh->n_descsz);
                return (uint8_t)nh->n_descsz;
            }
            p = next;
        }
    }
    return 0;
}

static void module_emit(const struct module_entry *m, uint8_t event)
{
    uint8_t data[64 + 32 + MODULE_PATH + 8];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    uint32_t path_len = (uint32_t)strnlen(m->path, MODULE_PATH - 1);

    rs_buf_u8(&b, event);
    rs_buf_u8(&b, m->build_id_len);
    rs_buf_u16(&b, 0);
    rs_buf_u32(&b, 0);
    rs_buf_u64(&b, m->bias);
    rs_buf_u64(&b, m->start);
    rs_buf_u64(&b, m->size);
    rs_buf_bytes(&b, m->build_id, m->build_id_len);
    rs_buf_str(&b, m->path, path_len);
    rs_emit_var(RS_EV_MODULE_MAP, 0, m->start, m->size, b.data, b.len);
}

static void module_path(const struct dl_phdr_info *info, char *out)
{
    const char *name = info->dlpi_name;
    if (name && name[0]) {
        size_t n = strnlen(name, MODULE_PATH - 1);
        memcpy(out, name, n);
        out[n] = 0;
        if (!strncmp(name, "linux-vdso", 10) || !strncmp(name, "linux-gate", 10))
            memcpy(out, "[vdso]", 7);
        return;
    }
    /* the main program has an empty name */
    ssize_t n = readlink("/proc/self/exe", out, MODULE_PATH - 1);
    out[n > 0 ? n : 0] = 0;
}

static int module_scan_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    uint32_t epoch = *(const uint32_t *)arg;
    uint64_t lo = UINT64_MAX, hi = 0;

    modules_adds = info->dlpi_adds;
    modules_subs = info->dlpi_subs;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uint64_t s = info->dlpi_addr + ph->p_vaddr, e = s + ph->p_memsz;
        lo = s < lo ? s : lo;
        hi = e > hi ? e : hi;
    }
    if (hi <= lo)
        return 0;

    uintptr_t self = (uintptr_t)&rs_native_stack_current;
    if (self >= lo && self < hi) {
        shim_start = lo;
        shim_end = hi;
    }

    char path[MODULE_PATH];
    module_path(info, path);
    uint64_t name_hash = hash_bytes(path);
    struct module_entry *free_slot = NULL;
    for (int i = 0; i < MODULES_MAX; i++) {
        struct module_entry *m = &modules[i];
        if (m->epoch != epoch || !m->live) {
            if (!free_slot)
                free_slot = m;
            continue;
        }
        if (m->start == lo && m->size == hi - lo && m->bias == info->dlpi_addr &&
            m->name_hash == name_hash) {
            m->seen_gen = modules_gen;
            return 0;
        }
    }
    if (!free_slot)
        return 0; /* more than MODULES_MAX objects: the rest stay unnamed */
    struct module_entry *m = free_slot;
    if ((uint32_t)(m - modules) >= modules_used)
        modules_used = (uint32_t)(m - modules) + 1;
    m->bias = info->dlpi_addr;
    m->start = lo;
    m->size = hi - lo;
    m->name_hash = name_hash;
    memcpy(m->path, path, sizeof(path));
    m->build_id_len = module_build_id(info, m->build_id);
    m->epoch = epoch;
    m->seen_gen = modules_gen;
    m->live = 1;
    module_emit(m, modules_initial ? RS_MODULE_INITIAL : RS_MODULE_DLOPEN);
    return 0;
}

/* Writes MODULE_MAP records for every object that appeared or went away since
 * the last scan of this epoch (all of them on the first scan of an epoch). */
static void modules_sync(uint32_t epoch)
{
    module_lock(epoch);
    __atomic_add_fetch(&modules_seq, 1, __ATOMIC_ACQ_REL); /* odd: changing */
    modules_initial = modules_epoch != epoch + 1;
    modules_gen++;
    dl_iterate_phdr(module_scan_cb, &epoch);
    for (int i = 0; i < MODULES_MAX; i++) {
        struct module_entry *m = &modules[i];
        if (m->epoch == epoch && m->live && m->seen_gen != modules_gen) {
            m->live = 0;
            module_emit(m, RS_MODULE_DLCLOSE);
        }
    }
    __atomic_store_n(&modules_epoch, epoch + 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&modules_seq, 1, __ATOMIC_RELEASE);
    module_unlock();
}

static int loader_counters_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    uint64_t *c = arg;
    c[0] = info->dlpi_adds;
    c[1] = info->dlpi_subs;
    return 1; /* the counters are global: the first object is enough */
}

/* Rescans when the trace is new or the loader's object list changed. */
static void modules_check(uint32_t epoch)
{
    uint64_t c[2] = {0, 0};
    if (__atomic_load_n(&modules_epoch, __ATOMIC_ACQUIRE) == epoch + 1) {
        dl_iterate_phdr(loader_counters_cb, c);
        if (c[0] == __atomic_load_n(&modules_adds, __ATOMIC_RELAXED) &&
            c[1] == __atomic_load_n(&modules_subs, __ATOMIC_RELAXED))
            return;
    }
    modules_sync(epoch);
}

/* Is every address in a live module of this trace's map? Per-thread cache
 * first, then the table, read under the seqlock (a scan in progress, or a
 * new trace, answers no: the caller then asks the loader). */
static int modules_cover(void *const *ips, int n, uint32_t epoch)
{
    uint64_t seq = __atomic_load_n(&modules_seq, __ATOMIC_ACQUIRE);
    if ((seq & 1) || __atomic_load_n(&modules_epoch, __ATOMIC_ACQUIRE) != epoch + 1)
        return 0;
    if (known.seq != seq) {
        memset(&known, 0, sizeof(known.lo) + sizeof(known.size));
        known.seq = seq;
    }
    for (int i = 0; i < n; i++) {
        uint64_t ip = (uint64_t)(uintptr_t)ips[i];
        /* no branch per slot: which slot an address hits is unpredictable */
        int hit = 0;
        for (int k = 0; k < KNOWN_SLOTS; k++)
            hit |= ip - known.lo[k] < known.size[k];
        if (__builtin_expect(hit, 1))
            continue;
        uint32_t used = __atomic_load_n(&modules_used, __ATOMIC_ACQUIRE);
        uint64_t lo = 0, hi = 0;
        for (uint32_t j = 0; j < used && !hi; j++) {
            const struct module_entry *m = &modules[j];
            if (m->epoch == epoch && m->live && ip >= m->start && ip - m->start < m->size) {
                lo = m->start;
                hi = m->start + m->size;
            }
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE); /* the table reads above, before the re-check */
        if (!hi || __atomic_load_n(&modules_seq, __ATOMIC_RELAXED) != seq)
            return 0;
        int k = (int)(known.next++ % KNOWN_SLOTS);
        known.lo[k] = lo;
        known.size[k] = hi - lo;
    }
    return 1;
}

/* ---- capture ------------------------------------------------------------------ */

static int in_shim(uintptr_t ip)
{
    return ip >= shim_start && ip < shim_end;
}

static uint32_t nstack_lookup(uint64_t h1, uint64_t h2, void *const *frames, int n, uint16_t flags);

static void nstack_emit(uint32_t id, void *const *ips, int n, uint16_t flags)
{
    uint8_t data[8 + RS_NSTACK_MAX_FRAMES * 8];
    struct rs_buf b = {data, 0, sizeof(data), 0};
    uint32_t epoch = rs_emit_epoch();

    if (!modules_cover(ips, n, epoch))
        modules_check(epoch); /* its objects go into the map first */

    rs_buf_u32(&b, id);
    rs_buf_u16(&b, (uint16_t)n);
    rs_buf_u16(&b, flags);
    rs_buf_bytes(&b, ips, (uint32_t)n * 8u);
    rs_emit_var(RS_EV_NATIVE_STACK, 0, id, 0, b.data, b.len);
}

__attribute__((noinline))
uint32_t rs_native_stack_current(int skip)
{
    void *ips[RS_NSTACK_MAX_FRAMES + 24];
    int n, first = -1;
    uint16_t flags = 0;

    if (!native_enabled || !rs_emit_active())
        return 0;
    uint32_t epoch = rs_emit_epoch();

    n = unw_backtrace(ips, (int)(sizeof(ips) / sizeof(ips[0])));
    if (n <= 0)
        return 0;
    /* Leading frames: unw_backtrace itself, then the shim. Keep the shim's
     * outermost frame (the interposed malloc/calloc/... or the PyMem wrapper)
     * so reports can name the allocator that was called. */
    for (int i = 0; i < n && i < 4; i++)
        if (in_shim((uintptr_t)ips[i])) {
            first = i;
            break;
        }
    if (first < 0)
        first = skip + 1 < n ? skip + 1 : n - 1;
    while (first + 1 < n && in_shim((uintptr_t)ips[first + 1]))
        first++;
    n -= first;
    if (n > RS_NSTACK_MAX_FRAMES) {
        n = RS_NSTACK_MAX_FRAMES;
        flags |= RS_NSTACK_TRUNCATED;
    }
    void **frames = ips + first;
    if (__builtin_expect(++known.captures % MODULES_RECHECK == 0, 0))
        modules_check(epoch);

    /* Two independent sums of ip * per-position random constant: the
     * multiplies do not depend on each other, so this runs at about a cycle
     * per frame (a mixer chained per frame was a visible share of the
     * capture). Fully mixed at the end; 128 bits decide equality. */
    uint64_t h1 = 0x9e3779b97f4a7c15ull ^ epoch, h2 = 0x2545f4914f6cdd1dull + epoch;
    for (int i = 0; i < n; i++) {
        uint64_t ip = (uint64_t)(uintptr_t)frames[i];
        h1 += ip * hash_keys[0][i];
        h2 += ip * hash_keys[1][i];
    }
    h1 = mix64(h1 ^ (uint64_t)n) | 1;
    h2 = mix64(h2 + (uint64_t)n);

    /* this thread's recent stacks first: no miss into the big table */
    struct nstack_recent *r = &recent[h1 & (RECENT_SLOTS - 1)];
    if (r->key == h1 && r->check == h2 && r->epoch == epoch)
        return r->id;
    uint32_t id = nstack_lookup(h1, h2, frames, n, flags);
    r->key = h1;
    r->check = h2;
    r->epoch = epoch;
    r->id = id;
    return id;
}

/* The shared table: id of the stack with hashes (h1, h2), defining it on
 * first sight in this trace. */
static uint32_t nstack_lookup(uint64_t h1, uint64_t h2, void *const *frames, int n, uint16_t flags)
{
    struct nstack_entry *table = nstack_table;
    if (table) {
        uint32_t slot = (uint32_t)(h1 >> (64 - NSTACK_TABLE_BITS));
        for (int probe = 0; probe < NSTACK_PROBES; probe++, slot = (slot + 1) & (NSTACK_TABLE_SIZE - 1)) {
            struct nstack_entry *e = &table[slot];
            uint64_t key = __atomic_load_n(&e->key, __ATOMIC_ACQUIRE);
            if (key == 0) {
                if (!__atomic_compare_exchange_n(&e->key, &key, h1, 0,
                                                 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                    if (key != h1)
                        continue;   /* another stack took the slot */
                } else {
                    uint32_t id = __atomic_fetch_add(&nstack_next_id, 1, __ATOMIC_RELAXED);
                    e->check = h2;
                    nstack_emit(id, frames, n, flags);
                    __atomic_store_n(&e->id, id, __ATOMIC_RELEASE);
                    return id;
                }
            }
            if (key != h1)
                continue;
            /* same key: wait for the inserting thread to publish */
            for (int spin = 0; spin < NSTACK_SPINS; spin++) {
                uint32_t id = __atomic_load_n(&e->id, __ATOMIC_ACQUIRE);
                if (id) {
                    if (e->check == h2)
                        return id;
                    break;          /* 64-bit collision: keep probing */
                }
                __builtin_ia32_pause();
            }
            if (!__atomic_load_n(&e->id, __ATOMIC_ACQUIRE))
                break;              /* inserter stalled: define it again below */
        }
    }
    uint32_t id = __atomic_fetch_add(&nstack_next_id, 1, __ATOMIC_RELAXED);
    nstack_emit(id, frames, n, flags);
    return id;
}

/* ---- dlopen / dlclose ----------------------------------------------------------- */

typedef void *(*dlopen_fn)(const char *, int);
typedef int (*dlclose_fn)(void *);
static dlopen_fn real_dlopen;
static dlclose_fn real_dlclose;

static void resolve_real(void)
{
    if (!real_dlopen)
        real_dlopen = (dlopen_fn)dlsym(RTLD_NEXT, "dlopen");
    if (!real_dlclose)
        real_dlclose = (dlclose_fn)dlsym(RTLD_NEXT, "dlclose");
}

/* The new objects are written by the next capture or module check (the
 * loader's counters changed). A tail call keeps the caller's return address
 * for the real dlopen. */
RS_EXPORT void *dlopen(const char *file, int mode)
{
    if (!real_dlopen)
        resolve_real();
    return real_dlopen(file, mode);
}

RS_EXPORT int dlclose(void *handle)
{
    if (!real_dlclose)
        resolve_real();
    int ret = real_dlclose(handle);
    if (native_enabled && rs_emit_active()) {
        if (rs_guard_enter())
            modules_check(rs_emit_epoch());
        rs_guard_leave();
    }
    return ret;
}

/* ---- set-up --------------------------------------------------------------------- */

__attribute__((constructor(RS_CTOR_FEATURE)))
static void unwind_init(void)
{
    const char *env = getenv(RS_ENV_NATIVE);
    resolve_real();
    if (!env || strcmp(env, "1") || !rs_emit_active())
        return;
    void *map = mmap(NULL, sizeof(struct nstack_entry) * NSTACK_TABLE_SIZE,
                     PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        rs_warn("native stacks: cannot map the stack table; stacks are not deduplicated");
        map = NULL;
    }
    nstack_table = map;
    uint64_t seed = 0x243f6a8885a308d3ull;  /* splitmix64: fixed odd constants */
    for (int lane = 0; lane < 2; lane++)
        for (int i = 0; i < RS_NSTACK_MAX_FRAMES; i++) {
            seed += 0x9e3779b97f4a7c15ull;
            hash_keys[lane][i] = mix64(seed) | 1;
        }
    unw_set_caching_policy(unw_local_addr_space, UNW_CACHE_PER_THREAD);
    rs_guard_enter();
    modules_sync(rs_emit_epoch());
    rs_guard_leave();
    native_enabled = 1;
}
