/*
 * Writing a trace file (include/refscope/trace.h): the header from a
 * process's RS_EV_PROCESS payload, then records appended one by one and
 * framed into zstd chunks by the codec, then the trailer. Used by the
 * recorder (one writer per traced process) and by tests.
 */
#ifndef REFSCOPE_TRACE_WRITE_H
#define REFSCOPE_TRACE_WRITE_H

#include <stddef.h>
#include <stdint.h>
#include "refscope/events.h"
#include "refscope/trace.h"

struct rs_trace_writer;

struct rs_writer_opts {
    int force;           /* 1: truncate an existing file; 0: O_EXCL        */
    int zstd_level;      /* 0 = default (1)                                */
    unsigned time_shift; /* see the chunk body spec; 0 = exact times       */
};

/* Nonzero when `path` exists and is something a trace never replaces, even
 * with force: a device, FIFO, socket or directory (not a regular file or a
 * symbolic link). */
int rs_trace_path_is_special(const char *path);

/* Create `path` (mode 0600, O_EXCL unless opts->force) and write the file
 * header with `meta` (an RS_EV_PROCESS payload). Returns 0 or a negative
 * errno (-EEXIST when the file exists and force is 0, or when it exists and
 * is neither a regular file nor a symbolic link: force replaces only those). */
int rs_trace_create(const char *path, const struct rs_writer_opts *opts,
                    const void *meta, uint32_t meta_len, struct rs_trace_writer **out);

/* Append one record (VAR kinds: payload of len bytes, rec->stack == len).
 * Writes a chunk whenever the codec's chunk is full. Returns 0 or -errno. */
int rs_trace_append(struct rs_trace_writer *w, const struct rs_slot *rec,
                    const void *payload, uint32_t len);

/* Append n fixed records (no VAR kind among them: -EINVAL), the fast path
 * for batches. Returns 0 or -errno. */
int rs_trace_append_fixed(struct rs_trace_writer *w, const struct rs_slot *recs, size_t n);

/* Write the pending records as a chunk (no-op when none). */
int rs_trace_flush(struct rs_trace_writer *w);

/* A full chunk is compressed in steps: do up to `budget` bytes of that work
 * (0: all of it), writing the chunk when done. Appends and flushes finish
 * any such work themselves; calling this between them only spreads it out.
 * Returns 0 or -errno. */
int rs_trace_pump(struct rs_trace_writer *w, size_t budget);

/* Flush, write the trailer (its records/chunks fields are filled in here),
 * close and free w. Returns 0 or -errno; w is freed either way. */
int rs_trace_finish(struct rs_trace_writer *w, const struct rs_trailer *trailer);

/* Close and free without a trailer (error paths). */
void rs_trace_abandon(struct rs_trace_writer *w);

uint64_t rs_trace_writer_records(const struct rs_trace_writer *w);
uint64_t rs_trace_writer_bytes(const struct rs_trace_writer *w); /* on disk so far */

#endif
