/*
 * Native stacks for allocation records (REFSCOPE_NATIVE=1, `run --native`).
 *
 * rs_native_stack_current() unwinds the caller, hashes the return addresses,
 * and looks the stack up in a lock-free open-addressing table so each
 * distinct stack is written once per trace as an RS_EV_NATIVE_STACK record
 * (payload in include/refscope/events.h).
 *
 * Unwinding. On x86-64 the shim walks the stack itself with frame rules read
 * from each object's .eh_frame (common/cfi.c), one rule cached per return
 * address. It also keeps, per thread, the previous walk: every frame's
 * (ip, rsp, rbp) and the stack slots its unwinding read. Unwinding from a
 * frame state is a function of that state and of the slots it reads, so once
 * the new walk reaches a state the previous walk had, and every slot the
 * previous walk read from there on still holds the value it read, the rest
 * of the stack is the previous one: exact, checked with independent loads
 * instead of a chain of dependent ones. In Python programs allocations come
 * one after another from the same eval-loop activation, so only the few
 * frames below it are unwound rule by rule. A frame no rule describes (signal
 * trampolines, DWARF expressions, code without unwind tables such as JIT
 * code) sends the whole capture to libunwind's unw_backtrace instead (the
 * only unwinder elsewhere than x86-64). REFSCOPE_UNWIND_CHECK=1 (tests) runs
 * both on every capture and reports differences on stderr at exit.
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
 * child starts a new trace); the rule cache forgets every rule when an
 * object goes away. Nothing here mallocs or uses stdio (but the check
 * report at exit); the locks are spin locks, around module scans and rule
 * inserts, that a fork child steals (each is tagged with its holder's epoch);
 * a rule insert only tries its lock and skips caching when it is busy.
 */
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define UNW_LOCAL_ONLY
#include <libunwind.h>

#include "refscope/cfi.h"
#include "refscope/events.h"
#include "refscope/transport.h"
#include "backoff.h"
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

static struct nstack_entry *nstack_table;
static uint32_t nstack_next_id = 1;
/* per-position multipliers of stack_hash(), position counted from the
 * outermost frame (so the outer part of a stack keeps its terms when only
 * its inner frames change) */
static uint64_t hash_keys[2][RS_NSTACK_MAX_FRAMES + 24];

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
    uint64_t eh_frame_hdr;  /* runtime address of its .eh_frame_hdr; 0 none */
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

/* Takes *lock (0 free, else (epoch << 1) | 1); a lock tagged with another
 * epoch was held by the parent of this fork child and is free here. Only
 * one attempt when `try_only`; returns whether it is held now. */
static int epoch_lock(uint64_t *lock, uint32_t epoch, int try_only)
{
    uint64_t mine = ((uint64_t)epoch << 1) | 1;
    for (unsigned spins = 0;; spins++) {
        uint64_t cur = __atomic_load_n(lock, __ATOMIC_RELAXED);
        if ((cur == 0 || (cur >> 1) != epoch) &&
            __atomic_compare_exchange_n(lock, &cur, mine, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return 1;
        if (try_only)
            return 0;
        if (spins > 64)
            sched_yield();
    }
}

static void epoch_unlock(uint64_t *lock)
{
    __atomic_store_n(lock, 0, __ATOMIC_RELEASE);
}

static void module_lock(uint32_t epoch)
{
    epoch_lock(&modules_lock, epoch, 0);
}

static void module_unlock(void)
{
    epoch_unlock(&modules_lock);
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

static void module_path(const struct dl_phdr_info *info, int is_shim, char *out)
{
    const char *name = info->dlpi_name;
    if (is_shim && rs_env_shim_file())
        name = rs_env_shim_file(); /* not `run`'s symlink to it, gone after the run */
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
    uint64_t lo = UINT64_MAX, hi = 0, eh_frame_hdr = 0;

    modules_adds = info->dlpi_adds;
    modules_subs = info->dlpi_subs;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_GNU_EH_FRAME)
            eh_frame_hdr = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type != PT_LOAD)
            continue;
        uint64_t s = info->dlpi_addr + ph->p_vaddr, e = s + ph->p_memsz;
        lo = s < lo ? s : lo;
        hi = e > hi ? e : hi;
    }
    if (hi <= lo)
        return 0;

    uintptr_t self = (uintptr_t)&rs_native_stack_current;
    int is_shim = self >= lo && self < hi;
    if (is_shim) {
        shim_start = lo;
        shim_end = hi;
    }

    char path[MODULE_PATH];
    module_path(info, is_shim, path);
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
    m->eh_frame_hdr = eh_frame_hdr;
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
static void rules_forget(uint32_t epoch);

static void modules_sync(uint32_t epoch)
{
    int removed = 0;
    module_lock(epoch);
    __atomic_add_fetch(&modules_seq, 1, __ATOMIC_ACQ_REL); /* odd: changing */
    modules_initial = modules_epoch != epoch + 1;
    modules_gen++;
    dl_iterate_phdr(module_scan_cb, &epoch);
    for (int i = 0; i < MODULES_MAX; i++) {
        struct module_entry *m = &modules[i];
        if (m->epoch == epoch && m->live && m->seen_gen != modules_gen) {
            m->live = 0;
            removed = 1;
            module_emit(m, RS_MODULE_DLCLOSE);
        }
    }
    if (removed)
        rules_forget(epoch);
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

/* The live module of this trace's map that holds ip, or NULL. The caller
 * reads under the seqlock (modules_seq). */
static const struct module_entry *module_holding(uint64_t ip, uint32_t epoch)
{
    uint32_t used = __atomic_load_n(&modules_used, __ATOMIC_ACQUIRE);
    for (uint32_t j = 0; j < used; j++) {
        const struct module_entry *m = &modules[j];
        if (m->epoch == epoch && m->live && ip - m->start < m->size)
            return m;
    }
    return NULL;
}

/* Is every address in a live module of this trace's map? Per-thread cache
 * first, then the table, read under the seqlock (a scan in progress, or a
 * new trace, answers no: the caller then asks the loader). */
static int modules_cover(const uint64_t *ips, int n, uint32_t epoch)
{
    uint64_t seq = __atomic_load_n(&modules_seq, __ATOMIC_ACQUIRE);
    if ((seq & 1) || __atomic_load_n(&modules_epoch, __ATOMIC_ACQUIRE) != epoch + 1)
        return 0;
    if (known.seq != seq) {
        memset(&known, 0, sizeof(known.lo) + sizeof(known.size));
        known.seq = seq;
    }
    for (int i = 0; i < n; i++) {
        uint64_t ip = ips[i];
        /* no branch per slot: which slot an address hits is unpredictable */
        int hit = 0;
        for (int k = 0; k < KNOWN_SLOTS; k++)
            hit |= ip - known.lo[k] < known.size[k];
        if (__builtin_expect(hit, 1))
            continue;
        const struct module_entry *m = module_holding(ip, epoch);
        uint64_t lo = m ? m->start : 0, hi = m ? m->start + m->size : 0;
        __atomic_thread_fence(__ATOMIC_ACQUIRE); /* the table reads above, before the re-check */
        if (!hi || __atomic_load_n(&modules_seq, __ATOMIC_RELAXED) != seq)
            return 0;
        int k = (int)(known.next++ % KNOWN_SLOTS);
        known.lo[k] = lo;
        known.size[k] = hi - lo;
    }
    return 1;
}

/* ---- frame rules ------------------------------------------------------------------
 * One rule (include/refscope/cfi.h) per looked-up address, in a direct-mapped
 * table shared by all threads. A slot is {key, rule}: an insert (under
 * rules_lock, tried, never waited for) clears the key, writes the rule, then
 * publishes the key; a reader takes the rule only if the key it read before
 * and after the rule is its address (seqlock style: a rule rewritten
 * meanwhile for another address shows as a changed key; rewritten for the
 * same address, it is the same rule). Only definite answers from a known
 * object are cached. */
#define RULE_BITS 14
#define RULE_SLOTS (1u << RULE_BITS)

/* packed rule: bits 0-1 kind, bit 2 CFA from rbp, bit 3 rbp saved,
 * bits 16-31 rbp slot offset from the CFA, bits 32-63 CFA offset */
#define RULE_KIND(r)   ((unsigned)((r) & 3))
#define RULE_CFA_BP    (1ull << 2)
#define RULE_BP_SAVED  (1ull << 3)
#define RULE_BP_OFF(r) ((int64_t)(int16_t)((r) >> 16))
#define RULE_CFA_OFF(r) ((int64_t)(int32_t)((r) >> 32))

struct rule_slot {
    uint64_t key;
    uint64_t rule;
};

static struct rule_slot *rule_table;
static uint64_t rules_lock;
static uint32_t rules_gen = 1;     /* bumped when rules are forgotten; never 0 */

static uint64_t rule_pack(const struct rs_cfi_rule *c)
{
    if (c->kind != RS_CFI_OK)
        return c->kind;
    if (c->bp_saved && (c->bp_off < INT16_MIN || c->bp_off > INT16_MAX))
        return RS_CFI_UNSUPPORTED;
    return RS_CFI_OK | (c->cfa_reg == RS_CFI_REG_BP ? RULE_CFA_BP : 0) |
           (c->bp_saved ? RULE_BP_SAVED | (uint64_t)(uint16_t)c->bp_off << 16 : 0) |
           (uint64_t)(uint32_t)c->cfa_off << 32;
}

static struct rule_slot *rule_slot_of(uint64_t pc)
{
    return &rule_table[(pc * 0x9e3779b97f4a7c15ull) >> (64 - RULE_BITS)];
}

/* Every object that went away takes its rules with it (called under the
 * module lock). Walks filled with older rules are no longer reused. */
static void rules_forget(uint32_t epoch)
{
    if (!rule_table)
        return;
    epoch_lock(&rules_lock, epoch, 0);
    for (uint32_t i = 0; i < RULE_SLOTS; i++)
        __atomic_store_n(&rule_table[i].key, 0, __ATOMIC_RELAXED);
    uint32_t gen = rules_gen + 1;
    __atomic_store_n(&rules_gen, gen ? gen : 1, __ATOMIC_RELEASE);
    epoch_unlock(&rules_lock);
    /* libunwind's caches (the fallback's) are as stale: without this its
     * walks through a library loaded where another was end early */
    unw_flush_cache(unw_local_addr_space, 0, 0);
}

/* The rule for pc from its object's tables; RS_CFI_NONE when no known
 * object holds pc. Asks the loader once when the map does not know it. */
static __attribute__((noinline)) uint64_t rule_fill(uint64_t pc, uint32_t epoch)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        uint64_t seq = __atomic_load_n(&modules_seq, __ATOMIC_ACQUIRE);
        if (!(seq & 1) && __atomic_load_n(&modules_epoch, __ATOMIC_ACQUIRE) == epoch + 1) {
            const struct module_entry *hit = module_holding(pc, epoch);
            uint64_t hdr = hit ? hit->eh_frame_hdr : 0;
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (hit && __atomic_load_n(&modules_seq, __ATOMIC_RELAXED) == seq) {
                struct rs_cfi_rule c = {0};
                if (hdr)
                    rs_cfi_rule_at((const uint8_t *)(uintptr_t)hdr, pc, &c);
                uint64_t rule = rule_pack(&c);
                if (rule_table && epoch_lock(&rules_lock, epoch, 1)) {
                    /* not if the object went away since it was found */
                    if (__atomic_load_n(&modules_seq, __ATOMIC_ACQUIRE) == seq) {
                        struct rule_slot *s = rule_slot_of(pc);
                        __atomic_store_n(&s->key, 0, __ATOMIC_RELAXED);
                        __atomic_thread_fence(__ATOMIC_RELEASE);
                        __atomic_store_n(&s->rule, rule, __ATOMIC_RELAXED);
                        __atomic_store_n(&s->key, pc, __ATOMIC_RELEASE);
                    }
                    epoch_unlock(&rules_lock);
                }
                return rule;
            }
        }
        if (attempt == 0)
            modules_check(epoch);
    }
    return RS_CFI_NONE;
}

static inline uint64_t rule_for(uint64_t pc, uint32_t epoch)
{
    struct rule_slot *s = rule_slot_of(pc);
    if (__atomic_load_n(&s->key, __ATOMIC_ACQUIRE) == pc) {
        uint64_t rule = __atomic_load_n(&s->rule, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->key, __ATOMIC_RELAXED) == pc)
            return rule;
    }
    return rule_fill(pc, epoch);
}

/* ---- the walk -----------------------------------------------------------------------
 * Frame i of a walk: ip[i] (exact for frame 0, a return address above),
 * the stack pointer and rbp in that frame, and the rule that unwound it.
 * Unwinding it read the return address at f[i + 1].sp - 8 (the CFA minus 8)
 * and, when the rule saves rbp, the caller's rbp at the CFA plus the rule's
 * offset. A walk is reusable while rules_gen is its gen. */
#define WALK_MAX (RS_NSTACK_MAX_FRAMES + 24)

struct frame_regs {
    uint64_t sp, bp;
    uint64_t rule;              /* the packed rule that unwound the frame */
    uint64_t h1, h2;            /* sums of the stack hash's terms for frames i..n-1 */
};

struct walk {
    uint64_t ip[WALK_MAX];      /* the stack, as reported */
    struct frame_regs f[WALK_MAX];
    uint32_t n;
    uint32_t gen;       /* 0: not reusable */
    uint32_t full;      /* stopped at WALK_MAX frames, the last one not unwound */
    uint32_t hashed;    /* f[].h1 and f[].h2 are filled (see rs_native_stack_current) */
};

static __thread struct walk walks[2] __attribute__((tls_model("initial-exec")));
static __thread uint32_t walk_cur __attribute__((tls_model("initial-exec")));

/* Do the frames of `old` from k outward still unwind the same way? Each
 * slot its unwinding read must still hold what it read then. */
static inline int suffix_holds(const struct walk *old, uint32_t k)
{
    uint64_t diff = 0;
    for (uint32_t i = k; i + 1 < old->n; i++) {
        uint64_t cfa = old->f[i + 1].sp;
        diff |= *(const volatile uint64_t *)(uintptr_t)(cfa - 8) ^ old->ip[i + 1];
        uint64_t rule = old->f[i].rule;
        if (rule & RULE_BP_SAVED)
            diff |= *(const volatile uint64_t *)(uintptr_t)(cfa + (uint64_t)RULE_BP_OFF(rule)) ^
                    old->f[i + 1].bp;
    }
    return diff == 0;
}

/* Unwinds the caller's stack into this thread's next walk buffer; returns
 * it, or NULL when some frame has no usable rule (use libunwind). */
static __attribute__((noinline, optimize("no-tree-loop-distribute-patterns")))
const struct walk *walk_stack(uint32_t epoch)
{
#if defined(__x86_64__)
    struct walk *old = &walks[walk_cur], *w = &walks[walk_cur ^ 1];
    uint32_t gen = __atomic_load_n(&rules_gen, __ATOMIC_ACQUIRE);
    uint32_t on = old->gen == gen ? old->n : 0, k = 0, j = 0;
    uint32_t old_n = on;        /* `on` drops to 0 when a join fails */
    int joined = 0;             /* frames from j on came from `old`, hash terms too */
    uint64_t ip, sp, bp;

    if (!rule_table)
        return NULL;
    __asm__ volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2"
                     : "=r"(ip), "=r"(sp), "=r"(bp));
    w->gen = gen;
    w->full = 0;
    for (;;) {
        while (k < on && old->f[k].sp < sp)
            k++;
        if (k < on && old->f[k].sp == sp && old->ip[k] == ip && old->f[k].bp == bp &&
            (k == 0) == (j == 0) && (!old->full || j >= k)) {
            if (suffix_holds(old, k)) {
                uint32_t m = on - k;
                w->full = old->full;
                if (j + m > WALK_MAX) {
                    m = WALK_MAX - j;
                    w->full = 1;
                }
                /* a plain loop: short copies, no call (see the attribute) */
                for (uint32_t i = 0; i < m; i++) {
                    w->ip[j + i] = old->ip[k + i];
                    w->f[j + i] = old->f[k + i];
                }
                w->n = j + m;
                joined = old->hashed && !w->full;
                break;
            }
            on = 0;     /* changed: no other frame of it will do */
        }
        if (j == WALK_MAX) {
            w->n = j;
            w->full = 1;
            break;
        }
        struct frame_regs *fr = &w->f[j];
        w->ip[j] = ip;
        fr->sp = sp;
        fr->bp = bp;
        /* the same return address at the same depth as last time (the
         * shim's frames, the allocator's): its rule without a table lookup */
        uint64_t rule = j < old_n && old->ip[j] == ip ? old->f[j].rule
                                                      : rule_for(j ? ip - 1 : ip, epoch);
        fr->rule = rule;
        if (RULE_KIND(rule) == RS_CFI_END) {
            w->n = j + 1;
            break;
        }
        if (RULE_KIND(rule) != RS_CFI_OK)
            return NULL;
        uint64_t cfa = ((rule & RULE_CFA_BP) ? bp : sp) + (uint64_t)RULE_CFA_OFF(rule);
        if (cfa <= sp || cfa - sp > (1u << 24) || (cfa & 7))
            return NULL;
        ip = *(const uint64_t *)(uintptr_t)(cfa - 8);
        if (rule & RULE_BP_SAVED)
            bp = *(const uint64_t *)(uintptr_t)(cfa + (uint64_t)RULE_BP_OFF(rule));
        sp = cfa;
        j++;
        if (ip == 0) {          /* a zero return address ends the stack too */
            w->n = j;
            w->gen = 0;         /* that read is not recorded: do not reuse */
            break;
        }
    }
    /* hash terms of the frames unwound here; the rest came with their own */
    w->hashed = !w->full;
    if (w->hashed) {
        uint64_t h1 = joined ? w->f[j].h1 : 0, h2 = joined ? w->f[j].h2 : 0;
        for (uint32_t t = joined ? j : w->n; t-- > 0;) {
            h1 += w->ip[t] * hash_keys[0][w->n - 1 - t];
            h2 += w->ip[t] * hash_keys[1][w->n - 1 - t];
            w->f[t].h1 = h1;
            w->f[t].h2 = h2;
        }
    }
    walk_cur ^= 1;
    return w;
#else
    (void)epoch;
    return NULL;
#endif
}

/* ---- capture ------------------------------------------------------------------ */

static int in_shim(uintptr_t ip)
{
    return ip >= shim_start && ip < shim_end;
}

static uint32_t nstack_lookup(uint64_t h1, uint64_t h2, const uint64_t *frames, int n, uint16_t flags);

static void nstack_emit(uint32_t id, const uint64_t *ips, int n, uint16_t flags)
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

/* The whole capture by libunwind, into this thread's next walk buffer. */
static __attribute__((noinline)) const struct walk *walk_libunwind(void)
{
    struct walk *w = &walks[walk_cur ^ 1];
    void *ips[WALK_MAX];
    int n = unw_backtrace(ips, WALK_MAX);
    if (n < 0)
        n = 0;
    for (int i = 0; i < n; i++)
        w->ip[i] = (uint64_t)(uintptr_t)ips[i];
    w->n = (uint32_t)n;
    w->gen = 0;
    w->full = n == WALK_MAX;
    w->hashed = 0;
    walk_cur ^= 1;
    return w;
}

/* REFSCOPE_UNWIND_CHECK=1: every capture is unwound by libunwind too and
 * the frames past the shim compared; totals and the first difference are
 * reported at exit. */
static int check_mode;
static uint64_t check_captures, check_fast, check_differ;
static struct {
    int frame, n_fast, n_lib;
    uint64_t fast, lib;
} check_first;

static int first_outside_shim(const uint64_t *ips, int n)
{
    int i = 0;
    while (i < n && !in_shim((uintptr_t)ips[i]))
        i++;                    /* libunwind's own frame */
    while (i < n && in_shim((uintptr_t)ips[i]))
        i++;
    return i;
}

static __attribute__((noinline)) void check_walk(const struct walk *fast)
{
    uint64_t lib[WALK_MAX];
    void *ips[WALK_MAX];
    int n = unw_backtrace(ips, WALK_MAX);
    for (int i = 0; i < n; i++)
        lib[i] = (uint64_t)(uintptr_t)ips[i];
    __atomic_add_fetch(&check_captures, 1, __ATOMIC_RELAXED);
    if (!fast)
        return;
    __atomic_add_fetch(&check_fast, 1, __ATOMIC_RELAXED);
    int fi = first_outside_shim(fast->ip, (int)fast->n), li = first_outside_shim(lib, n);
    int nf = (int)fast->n - fi, nl = n - li;
    /* compare what both saw (a capped walk may start a frame apart) */
    int common = nf < nl ? nf : nl;
    int diff = -1;
    for (int i = 0; i < common && diff < 0; i++)
        if (fast->ip[fi + i] != lib[li + i])
            diff = i;
    if (diff < 0 && nf != nl && !fast->full && n != WALK_MAX)
        diff = common;
    if (diff < 0)
        return;
    if (__atomic_add_fetch(&check_differ, 1, __ATOMIC_RELAXED) == 1) {
        check_first.frame = diff;
        check_first.n_fast = nf;
        check_first.n_lib = nl;
        check_first.fast = diff < nf ? fast->ip[fi + diff] : 0;
        check_first.lib = diff < nl ? lib[li + diff] : 0;
    }
}

__attribute__((destructor)) static void check_report(void)
{
    char line[256];
    if (!check_mode)
        return;
    snprintf(line, sizeof(line),
             "unwind check: %llu captures, %llu by frame rules, %llu differ from libunwind",
             (unsigned long long)check_captures, (unsigned long long)check_fast,
             (unsigned long long)check_differ);
    rs_warn(line);
    snprintf(line, sizeof(line), "unwind check: frame rules forgotten %u times (objects unloaded)",
             __atomic_load_n(&rules_gen, __ATOMIC_RELAXED) - 1);
    rs_warn(line);
    if (check_differ) {
        snprintf(line, sizeof(line),
                 "unwind check: first difference at frame %d: %#llx (of %d) vs libunwind %#llx (of %d)",
                 check_first.frame, (unsigned long long)check_first.fast, check_first.n_fast,
                 (unsigned long long)check_first.lib, check_first.n_lib);
        rs_warn(line);
    }
}

__attribute__((noinline))
uint32_t rs_native_stack_current(int skip)
{
    int n, first = -1;
    uint16_t flags = 0;

    if (!native_enabled || !rs_emit_active())
        return 0;
    uint32_t epoch = rs_emit_epoch();

    const struct walk *w = walk_stack(epoch);
    if (__builtin_expect(check_mode, 0))
        check_walk(w);
    if (!w)
        w = walk_libunwind();
    const uint64_t *ips = w->ip;
    n = (int)w->n;
    if (n <= 0)
        return 0;
    /* Leading frames: the unwinder (libunwind's own frame, or the shim's),
     * then the shim. Keep the shim's outermost frame (the interposed
     * malloc/calloc/... or the PyMem wrapper) so reports can name the
     * allocator that was called. */
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
    const uint64_t *frames = ips + first;
    if (__builtin_expect(++known.captures % MODULES_RECHECK == 0, 0))
        modules_check(epoch);

    /* Two independent sums of ip * random constant of its position from
     * the outermost frame: the multiplies do not depend on each other (a
     * mixer chained per frame was a visible share of the capture), and a
     * walk that reused the outer part of the previous one has those terms
     * summed already. Fully mixed at the end; 128 bits decide equality. */
    uint64_t h1, h2;
    if (w->hashed && !(flags & RS_NSTACK_TRUNCATED)) {
        h1 = w->f[first].h1;
        h2 = w->f[first].h2;
    } else {
        h1 = h2 = 0;
        for (int i = 0; i < n; i++) {
            h1 += frames[i] * hash_keys[0][n - 1 - i];
            h2 += frames[i] * hash_keys[1][n - 1 - i];
        }
    }
    h1 = mix64((h1 + 0x9e3779b97f4a7c15ull) ^ epoch ^ (uint64_t)n) | 1;
    h2 = mix64(h2 + 0x2545f4914f6cdd1dull + epoch + (uint64_t)n);

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
static uint32_t nstack_lookup(uint64_t h1, uint64_t h2, const uint64_t *frames, int n, uint16_t flags)
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
            uint32_t id = rs_wait_while_u32(&e->id, 0, RS_WAIT_DEFINE_NS);
            if (!id)
                break;              /* inserter stalled: define it again below */
            if (e->check == h2)
                return id;
            /* a 64-bit collision: keep probing */
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
    resolve_real();
    if (!rs_env_flag(RS_ENV_NATIVE, 0) || !rs_emit_active())
        return;
    void *map = mmap(NULL, sizeof(struct nstack_entry) * NSTACK_TABLE_SIZE,
                     PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        rs_warn("native stacks: cannot map the stack table; stacks are not deduplicated");
        map = NULL;
    }
    nstack_table = map;
    map = mmap(NULL, sizeof(struct rule_slot) * RULE_SLOTS, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    rule_table = map == MAP_FAILED ? NULL : map;   /* NULL: libunwind for every capture */
    check_mode = rs_env_flag(RS_ENV_UNWIND_CHECK, 0);
    uint64_t seed = 0x243f6a8885a308d3ull;  /* splitmix64: fixed odd constants */
    for (int lane = 0; lane < 2; lane++)
        for (int i = 0; i < RS_NSTACK_MAX_FRAMES + 24; i++) {
            seed += 0x9e3779b97f4a7c15ull;
            hash_keys[lane][i] = mix64(seed) | 1;
        }
    unw_set_caching_policy(unw_local_addr_space, UNW_CACHE_PER_THREAD);
    rs_guard_enter();
    modules_sync(rs_emit_epoch());
    rs_guard_leave();
    native_enabled = 1;
}
