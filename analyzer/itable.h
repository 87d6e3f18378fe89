/*
 * itable: a hash index over an array the caller owns, to find an element by
 * its content (a site's text, a flame graph node's parent and label, a
 * native address's module). Slots hold element index + 1 (0 = empty), with
 * linear probing over a power-of-two table kept at most half full. The
 * caller hashes (rs_hash_bytes, below, or a mix of its own), probes and
 * compares; the table only stores positions. For a map from a 64-bit key,
 * use u64map instead.
 *
 *     if (rs_itable_reserve(&t, n + 1, hash_of, ctx)) return -ENOMEM;
 *     size_t j = rs_itable_start(&t, h);
 *     for (uint32_t k; (k = t.slots[j]); j = rs_itable_next(&t, j))
 *         if (same(arr[k - 1], key)) return k - 1;
 *     arr[n] = key; t.slots[j] = (uint32_t)n + 1;   (n++)
 */
#ifndef REFSCOPE_ITABLE_H
#define REFSCOPE_ITABLE_H

#include <stddef.h>
#include <stdint.h>

struct rs_itable {
    uint32_t *slots; /* index + 1, 0 = empty */
    size_t cap;      /* a power of two; 0 until the first reserve */
};

/* The hash of element `index` (the same the caller probes with). */
typedef uint64_t (*rs_itable_hash_fn)(const void *ctx, uint32_t index);

/* Room for `count` elements: grows the table when they would fill more than
 * half of it, putting every element it holds back by hash_of. Call before
 * probing for an element that may be added. Returns 0 or -ENOMEM (the
 * table is unchanged then). */
int rs_itable_reserve(struct rs_itable *t, size_t count, rs_itable_hash_fn hash_of, const void *ctx);

void rs_itable_free(struct rs_itable *t);

static inline size_t rs_itable_start(const struct rs_itable *t, uint64_t hash)
{
    return (size_t)hash & (t->cap - 1);
}

static inline size_t rs_itable_next(const struct rs_itable *t, size_t pos)
{
    return (pos + 1) & (t->cap - 1);
}

/* FNV-1a over n bytes, continuing from h (start with RS_HASH_INIT). */
#define RS_HASH_INIT 0xcbf29ce484222325ull
static inline uint64_t rs_hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

/* The same over a NUL-terminated string. */
static inline uint64_t rs_hash_str(uint64_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

#endif
