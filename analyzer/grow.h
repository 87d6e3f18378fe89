/*
 * Arrays for the analyzer: growing (the capacity doubles until `need`
 * elements fit, so appending one at a time costs amortized O(1)) and
 * sorting. Counts may come from a damaged trace: a size that cannot be
 * allocated fails cleanly.
 */
#ifndef REFSCOPE_GROW_H
#define REFSCOPE_GROW_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

/* *pp (an array of *cap elements of elsize bytes) gets room for at least
 * `need`. Returns 0, or -ENOMEM leaving the array as it was. */
static inline int rs_grow(void *pp, size_t *cap, size_t need, size_t elsize)
{
    void **p = pp;
    if (need <= *cap)
        return 0;
    if (need > SIZE_MAX / 2 / elsize)
        return -ENOMEM;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *n = realloc(*p, c * elsize);
    if (!n)
        return -ENOMEM;
    *p = n;
    *cap = c;
    return 0;
}

/* qsort, for any n: an empty array may have no storage at all (NULL),
 * which qsort itself does not accept. */
static inline void rs_sort(void *base, size_t n, size_t elsize, int (*cmp)(const void *, const void *))
{
    if (n > 1)
        qsort(base, n, elsize, cmp);
}

#endif
