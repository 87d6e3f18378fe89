/*
 * The libc allocator hooks: malloc and its nine relatives, interposed by
 * LD_PRELOAD. Each calls the real function (found with dlsym(RTLD_NEXT)) and
 * records the event in the RS_DOMAIN_LIBC domain: a free before the real
 * free, an allocation after the real allocation, so a reused address never
 * appears out of order. dlsym itself may allocate; those calls, made while
 * resolving, are served from a static bootstrap pool whose blocks are never
 * freed. The recursion guard (guard.h) keeps nested calls — our own, a PyMem
 * wrapper forwarding to libc — from being recorded twice.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "emit.h"
#include "guard.h"
#include "pysafe.h"
#include "shim.h"
#include "stack.h"

__thread int rs_guard_depth __attribute__((tls_model("initial-exec")));
__thread int rs_guard_own __attribute__((tls_model("initial-exec")));

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void *(*real_reallocarray)(void *, size_t, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void *(*real_valloc)(size_t);
static void *(*real_pvalloc)(size_t);

/* ---- bootstrap pool --------------------------------------------------------------- */

#define POOL_BYTES (256u << 10)
static _Alignas(4096) unsigned char pool[POOL_BYTES];
static size_t pool_used;
static __thread int resolving __attribute__((tls_model("initial-exec")));

static inline int pool_owns(const void *p)
{
    return (const unsigned char *)p >= pool && (const unsigned char *)p < pool + POOL_BYTES;
}

/* Blocks carry their size in the 16 bytes before them (for realloc). */
static void *pool_alloc(size_t size, size_t align)
{
    if (align < 16)
        align = 16;
    if (size > POOL_BYTES)
        return NULL;
    size_t used = __atomic_load_n(&pool_used, __ATOMIC_RELAXED);
    for (;;) {
        size_t start = (used + 16 + align - 1) & ~(align - 1);
        size_t end = start + ((size + 15) & ~(size_t)15);
        if (end > POOL_BYTES)
            return NULL;
        if (__atomic_compare_exchange_n(&pool_used, &used, end, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            memcpy(pool + start - 16, &size, sizeof(size));
            return pool + start; /* static memory: already zeroed */
        }
    }
}

static size_t pool_size(const void *p)
{
    size_t size;
    memcpy(&size, (const unsigned char *)p - 16, sizeof(size));
    return size;
}

int rs_libc_resolve(void)
{
    if (__atomic_load_n(&real_free, __ATOMIC_ACQUIRE))
        return 1;
    if (resolving)
        return 0;
    resolving = 1;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_reallocarray = dlsym(RTLD_NEXT, "reallocarray");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_valloc = dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = dlsym(RTLD_NEXT, "pvalloc");
    void (*f)(void *) = dlsym(RTLD_NEXT, "free");
    resolving = 0;
    if (!real_malloc || !real_calloc || !real_realloc || !real_posix_memalign || !f) {
        static const char msg[] = "refscope: cannot find the real malloc; aborting\n";
        (void)!write(2, msg, sizeof(msg) - 1);
        _exit(127);
    }
    __atomic_store_n(&real_free, f, __ATOMIC_RELEASE);
    return 1;
}

#define READY(fn) (__builtin_expect((fn) != NULL, 1) || rs_libc_resolve())

/* ---- recording ---------------------------------------------------------------------- */

/* `flags` includes rs_guard_enter_hook's RS_F_OWN for refscope's own requests,
 * which have no stack. */
static inline void record_alloc(uint8_t flags, const void *p, size_t size)
{
    int own = flags & RS_F_OWN;
    if (rs_emit_on)
        rs_emit_alloc(RS_DOMAIN_LIBC | flags, (uint64_t)(uintptr_t)p, size, own ? 0 : rs_stack_current(0));
    if (!own)
        rs_pysafe_poll();
}

static inline void record_free(uint8_t flags, const void *p)
{
    if (rs_emit_on)
        rs_emit_free(RS_DOMAIN_LIBC | flags, (uint64_t)(uintptr_t)p);
}

/* ---- the hooks ---------------------------------------------------------------------- */

RS_EXPORT void *malloc(size_t size)
{
    if (!READY(real_malloc))
        return pool_alloc(size, 16);
    int rec = rs_guard_enter_hook();
    void *p = real_malloc(size);
    if (rec != RS_GUARD_PASS && p)
        record_alloc((uint8_t)rec, p, size);
    rs_guard_leave();
    return p;
}

RS_EXPORT void *calloc(size_t count, size_t size)
{
    if (!READY(real_calloc)) {
        size_t total;
        if (__builtin_mul_overflow(count, size, &total))
            return NULL;
        return pool_alloc(total, 16);
    }
    int rec = rs_guard_enter_hook();
    void *p = real_calloc(count, size);
    if (rec != RS_GUARD_PASS && p)
        record_alloc(RS_F_ZEROED | rec, p, count * size);
    rs_guard_leave();
    return p;
}

RS_EXPORT void free(void *p)
{
    if (!p || pool_owns(p))
        return;
    if (!READY(real_free))
        return;
    int rec = rs_guard_enter_hook();
    if (rec != RS_GUARD_PASS)
        record_free((uint8_t)rec, p);
    real_free(p);
    rs_guard_leave();
}

/* realloc of a bootstrap block: move it to the real heap, recorded as new. */
static void *pool_realloc(void *old, size_t size)
{
    void *p = malloc(size);
    if (p) {
        size_t n = pool_size(old);
        memcpy(p, old, n < size ? n : size);
    }
    return p;
}

/* realloc and reallocarray share this: `call` performs the real resize. */
static inline void *resize(void *old, size_t size, void *(*call)(void *, size_t, size_t),
                           size_t count, size_t elem)
{
    int rec = rs_guard_enter_hook();
    if (rec == RS_GUARD_PASS) {
        void *p = call(old, count, elem);
        rs_guard_leave();
        return p;
    }
    uint8_t own = (uint8_t)rec;
    void *p;
    if (!old) {
        p = call(old, count, elem);
        if (p)
            record_alloc(own, p, size);
    } else if (size == 0) {
        /* glibc frees the block and returns NULL */
        record_free(own, old);
        p = call(old, count, elem);
        if (p)
            record_alloc(own, p, 0);
    } else {
        record_free(RS_F_REALLOC | own, old);
        p = call(old, count, elem);
        if (p)
            record_alloc(RS_F_REALLOC | own, p, size);
        else
            record_alloc(RS_F_REALLOC | RS_F_RESTORE | own, old, 0);
    }
    rs_guard_leave();
    return p;
}

static void *call_realloc(void *old, size_t count, size_t elem)
{
    (void)elem;
    return real_realloc(old, count);
}

static void *call_reallocarray(void *old, size_t count, size_t elem)
{
    return real_reallocarray(old, count, elem);
}

RS_EXPORT void *realloc(void *old, size_t size)
{
    if (!READY(real_realloc)) {
        void *p = pool_alloc(size, 16);
        if (p && old)
            memcpy(p, old, pool_size(old) < size ? pool_size(old) : size);
        return p;
    }
    if (old && pool_owns(old))
        return pool_realloc(old, size);
    return resize(old, size, call_realloc, size, 1);
}

RS_EXPORT void *reallocarray(void *old, size_t count, size_t elem)
{
    size_t size;
    if (__builtin_mul_overflow(count, elem, &size)) {
        errno = ENOMEM;
        return NULL;
    }
    if (!READY(real_reallocarray) || !real_reallocarray || (old && pool_owns(old)))
        return realloc(old, size);
    return resize(old, size, call_reallocarray, count, elem);
}

RS_EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    if (!READY(real_posix_memalign)) {
        *out = pool_alloc(size, align);
        return *out ? 0 : ENOMEM;
    }
    int rec = rs_guard_enter_hook();
    int rc = real_posix_memalign(out, align, size);
    if (rec != RS_GUARD_PASS && rc == 0 && *out)
        record_alloc(RS_F_ALIGNED | rec, *out, size);
    rs_guard_leave();
    return rc;
}

/* aligned_alloc, memalign, valloc, pvalloc: (alignment, size) → pointer. */
static inline void *aligned(void *(*call)(size_t, size_t), size_t align, size_t size)
{
    int rec = rs_guard_enter_hook();
    void *p = call(align, size);
    if (rec != RS_GUARD_PASS && p)
        record_alloc(RS_F_ALIGNED | rec, p, size);
    rs_guard_leave();
    return p;
}

static void *call_valloc(size_t align, size_t size) { (void)align; return real_valloc(size); }
static void *call_pvalloc(size_t align, size_t size) { (void)align; return real_pvalloc(size); }

RS_EXPORT void *aligned_alloc(size_t align, size_t size)
{
    if (!READY(real_aligned_alloc) || !real_aligned_alloc)
        return pool_alloc(size, align);
    return aligned(real_aligned_alloc, align, size);
}

RS_EXPORT void *memalign(size_t align, size_t size)
{
    if (!READY(real_memalign) || !real_memalign)
        return pool_alloc(size, align);
    return aligned(real_memalign, align, size);
}

RS_EXPORT void *valloc(size_t size)
{
    if (!READY(real_valloc) || !real_valloc)
        return pool_alloc(size, 4096);
    return aligned(call_valloc, 4096, size);
}

RS_EXPORT void *pvalloc(size_t size)
{
    if (!READY(real_pvalloc) || !real_pvalloc)
        return pool_alloc((size + 4095) & ~(size_t)4095, 4096);
    return aligned(call_pvalloc, 4096, size);
}
