/*
 * Growable u64 arrays in anonymous mappings (u64vec.h): they grow by
 * doubling with mremap, so the gc census and snapshots never call malloc.
 */
#include <string.h>
#include <sys/mman.h>
#include "u64vec.h"

int rs_u64vec_reserve(struct rs_u64vec *a, size_t want)
{
    if (want <= a->cap)
        return 0;
    size_t cap = a->cap ? a->cap : 4096;
    while (cap < want)
        cap *= 2;
    void *p = a->v ? mremap(a->v, a->cap * 8, cap * 8, MREMAP_MAYMOVE)
                   : mmap(NULL, cap * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -ENOMEM;
    a->v = p;
    a->cap = cap;
    return 0;
}

void rs_u64vec_release(struct rs_u64vec *a)
{
    if (a->v)
        munmap(a->v, a->cap * 8);
    memset(a, 0, sizeof(*a));
}
