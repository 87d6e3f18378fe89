/*
 * Growing arrays for the analyzer: the capacity doubles until `need`
 * elements fit, so appending one at a time costs amortized O(1).
 */
#ifndef REFSCOPE_GROW_H
#define REFSCOPE_GROW_H

#include <errno.h>
#include <stdlib.h>

/* *pp (an array of *cap elements of elsize bytes) gets room for at least
 * `need`. Returns 0, or -ENOMEM leaving the array as it was. */
static inline int rs_grow(void *pp, size_t *cap, size_t need, size_t elsize)
{
    void **p = pp;
    if (need <= *cap)
        return 0;
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

#endif
