/*
 * Growable arrays of u64 for the shim's safe-point work (gc census,
 * snapshots): backed by anonymous mappings, never by malloc, which we trace.
 * Not thread-safe; each array belongs to one caller.
 */
#ifndef REFSCOPE_U64VEC_H
#define REFSCOPE_U64VEC_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

struct rs_u64vec {
    uint64_t *v;
    size_t n, cap;    /* elements used / mapped */
};

/* Room for at least `want` elements (contents kept). Returns 0 or -ENOMEM. */
int rs_u64vec_reserve(struct rs_u64vec *a, size_t want);

/* Unmaps the array and resets it to empty. */
void rs_u64vec_release(struct rs_u64vec *a);

/* Appends x. Returns 0 or -ENOMEM. Inline: the census pushes every object. */
static inline int rs_u64vec_push(struct rs_u64vec *a, uint64_t x)
{
    if (a->n == a->cap && rs_u64vec_reserve(a, a->n + 1) != 0)
        return -ENOMEM;
    a->v[a->n++] = x;
    return 0;
}

#endif
