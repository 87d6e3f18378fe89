/*
 * The live heap, replayed from a trace: which blocks are live at the current
 * point of the record stream, with where and when they were allocated.
 * summary, top, leaks and lifetimes all build on this one replay.
 *
 * Leaf domains (libc, raw, mem, obj) and the arena domain are kept apart:
 * arena blocks back OBJ blocks, so "live bytes" never adds the two.
 * A free of a block never seen allocated (allocated before tracing started,
 * or while the allocator hooks were being re-installed) is counted, not fatal.
 * A realloc is a FREE|REALLOC followed by an ALLOC|REALLOC (see events.h);
 * ALLOC|REALLOC|RESTORE revives the block the FREE half removed.
 *
 * Blocks ALLOCated with RS_F_OWN (refscope's own Python work, events.h) are
 * kept in a third map that no query sees and no figure of the program's
 * counts; a FREE of one, whoever makes it, is counted in `own` only.
 */
#ifndef REFSCOPE_HEAP_H
#define REFSCOPE_HEAP_H

#include <stdint.h>
#include "trace_read.h"

struct rs_block {
    uint64_t addr;
    uint64_t size;
    uint64_t alloc_ns;      /* time of the allocation (ns since start)  */
    uint64_t alloc_ordinal; /* ordinal of the ALLOC record              */
    uint32_t stack;         /* stack id of the allocation (0 = none)    */
    uint16_t thread;
    uint8_t  domain;        /* enum rs_domain                           */
    uint8_t  own;           /* allocated by refscope's own Python work  */
};

struct rs_heap_stats {
    uint64_t allocations[RS_DOMAIN_COUNT];
    uint64_t frees[RS_DOMAIN_COUNT];
    uint64_t alloc_bytes[RS_DOMAIN_COUNT];   /* bytes allocated in total  */
    uint64_t live_bytes[RS_DOMAIN_COUNT];
    uint64_t live_blocks[RS_DOMAIN_COUNT];
    uint64_t peak_live_bytes;                /* leaf domains summed       */
    uint64_t peak_ns;                        /* when the peak was reached */
    uint64_t peak_ordinal;
    uint64_t unknown_frees;                  /* frees of blocks never seen */
    struct {                                 /* refscope's own blocks (RS_F_OWN) */
        uint64_t allocations, frees, bytes, live_bytes, live_blocks;
    } own;
};

struct rs_heap;

struct rs_heap *rs_heap_new(void);
void rs_heap_free(struct rs_heap *h);

/* Apply one record. ALLOC/FREE change the heap; other kinds are ignored.
 * For a FREE of a known block of the program's, *freed (if not NULL)
 * receives the block and 1 is returned; 0 otherwise (refscope's own blocks
 * too). Returns -ENOMEM on allocation failure. */
int rs_heap_apply(struct rs_heap *h, const struct rs_event *ev, struct rs_block *freed);

/* The live block starting at addr in a leaf domain, or NULL. */
const struct rs_block *rs_heap_find(const struct rs_heap *h, uint64_t addr);

/* Calls fn for every live leaf block (arena blocks when arena != 0) until fn
 * returns nonzero; returns that value or 0. */
int rs_heap_foreach(const struct rs_heap *h, int arena,
                    int (*fn)(const struct rs_block *b, void *arg), void *arg);

const struct rs_heap_stats *rs_heap_stats(const struct rs_heap *h);

#endif
