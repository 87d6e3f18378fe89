/*
 * Test program for native symbolization (tests/integration/test_native.py):
 * a static inline function that mallocs, forced inline, called from a
 * noinline function. Under `refscope run --native` the allocation's stack
 * must read make_buffer [inlined] (inline_alloc.c:ALLOC_LINE) <- fill_buffers
 * <- main. The test finds ALLOC_LINE by searching this file for its marker.
 * Usage: inline_alloc [COUNT]  (default 100 allocations of 4096 bytes, leaked)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink[1024];

static inline __attribute__((always_inline)) char *make_buffer(size_t n)
{
    char *p = malloc(n); /* ALLOC_LINE */
    if (p)
        memset(p, 'x', n);
    return p;
}

__attribute__((noinline)) static void fill_buffers(int count)
{
    for (int i = 0; i < count; i++)
        sink[i % 1024] = make_buffer(4096);
}

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 100;
    fill_buffers(count);
    printf("done %d\n", count);
    return 0;
}
