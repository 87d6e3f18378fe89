/*
 * Producer side of the recorder transport (include/refscope/transport.h):
 * the memfd ring, the unix-socket hello/ACK exchange, waiting for the
 * recorder to finish the trace at exit, and the direct form's detached
 * recorder. No allocation and no stdio, so the atfork
 * child handler can use all of it. Every function returns 0 or -errno.
 */
#ifndef REFSCOPE_PRELOAD_TRANSPORT_H
#define REFSCOPE_PRELOAD_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include "refscope/proc.h"
#include "refscope/ring.h"
#include "refscope/transport.h"

/* Create a memfd (MFD_CLOEXEC) of header + `slot_bytes` (rounded down to a
 * power of two, at least 64 KiB), map it shared and format it. */
int rs_transport_ring_create(uint64_t slot_bytes, uint32_t ring_flags, uint32_t pid,
                             struct rs_ring *ring, int *memfd);

/* Unmap a ring made by rs_transport_ring_create and close its memfd. */
void rs_transport_ring_destroy(struct rs_ring *ring, int memfd);

/* Connect to the recorder's socket (close-on-exec). */
int rs_transport_connect(const char *path, int *sock);

/* Send `hello` with `memfd` attached and wait up to timeout_ms for the ACK.
 * Returns 0, the recorder's negative status, -ETIMEDOUT or -ECONNRESET. */
int rs_transport_hello(int sock, int memfd, const struct rs_hello *hello, int timeout_ms);

/* After RS_EV_END and `closed`: wait until the recorder stores the ring's
 * `done` (ring.h), at most timeout_ms. Returns 0 (trace on disk), -EIO (the
 * recorder could not write it), -ECONNRESET (the recorder, identified by
 * rs_proc_identify on the connection, has certainly exited) or
 * -ETIMEDOUT. */
int rs_transport_wait_done(const struct rs_ring *ring, const struct rs_proc_id *recorder,
                           int timeout_ms);

/* Direct form: start `recorder record --serve SOCK -o output` detached
 * (double fork, own session), SOCK in a fresh 0700 directory; wait up to
 * timeout_ms until it accepts. The socket path goes to sock_path, the
 * connected socket to *sock. */
int rs_transport_spawn(const char *recorder, const char *output, char *sock_path,
                       size_t sock_path_len, int *sock, int timeout_ms);

#endif
