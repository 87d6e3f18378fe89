/*
 * Allocation sites as reports print and group them (leaks, cycles, diff,
 * lifetimes): the innermost `depth` frames of a stack — its Python frames
 * when it has any, else all — as one text, "f (file:line) <- g (file:line)".
 * Stacks differ in what a report does not show (bytecode offsets, native
 * frames, outer callers), and the shim may define one stack under several
 * ids (events.h, RS_EV_PY_STACK), so reports group by site, never by stack
 * id: two rows never print the same. Texts are interned (one id per
 * distinct text) and each stack id is looked up once: reports ask for
 * millions of objects over a few thousand stacks.
 */
#ifndef REFSCOPE_SITEINDEX_H
#define REFSCOPE_SITEINDEX_H

#include <stddef.h>
#include <stdint.h>
#include "stacks.h"

struct rs_site_index;

/* Sites `depth` frames deep (0 = the whole stack) over `stacks`, which must
 * outlive the index. NULL when out of memory. */
struct rs_site_index *rs_site_index_new(struct rs_stacks *stacks, int depth);
void rs_site_index_free(struct rs_site_index *x);

/* The site of stack id `stack` into *site; stack 0 and stacks without
 * frames are site 0, "(unknown site)". Returns 0 or -ENOMEM. */
int rs_site_of(struct rs_site_index *x, uint32_t stack, uint32_t *site);

/* The text of a site id from rs_site_of. */
const char *rs_site_name(const struct rs_site_index *x, uint32_t site);

/* The first stack id found at `site` (0 for site 0): its frames stand for
 * the site's in JSON output. */
uint32_t rs_site_stack(const struct rs_site_index *x, uint32_t site);

/* "innermost Python frame", "2 innermost frames", "whole stack": what a
 * site is at `depth`, for report headers. Returns buf. */
const char *rs_site_depth_text(int depth, char *buf, size_t len);

/* The frames sites are made of: the stack's Python frames when it has any,
 * else all of them, innermost first, at most cap pointers into `stacks`'
 * storage. Returns the count (0 for stack 0). */
int rs_site_frames(struct rs_stacks *stacks, uint32_t stack, const struct rs_frame **out, int cap);

#endif
