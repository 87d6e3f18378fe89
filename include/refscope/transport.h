/*
 * How a traced process (shim) and the recorder meet: a unix stream socket
 * at $REFSCOPE_SOCK (in a 0700 directory the recorder made), used once per
 * process image, at its start. The ring travels as a file descriptor;
 * everything after the greeting goes through the ring's shared memory, so
 * the traced program keeps no descriptor of refscope's: a program that
 * lists, closes or dup2s over its descriptors sees and touches only its own.
 *
 *   shim → recorder  struct rs_hello, with SCM_RIGHTS carrying the ring memfd
 *   recorder → shim  struct rs_reply {RS_MSG_ACK, status}: 0 = mapped and
 *                    being drained; negative errno = refused (shim runs
 *                    untraced, one line on stderr)
 *   both close the connection. The shim keeps the recorder's pid (the
 *   socket's SO_PEERCRED) and start time (include/refscope/proc.h) to tell,
 *   while its ring stays full, whether the recorder is still there.
 *   ...process runs; records flow through the ring...
 *   exit             the shim writes RS_EV_END, sets the ring's `closed` and
 *                    waits (at most REFSCOPE_EXIT_WAIT_MS, default 30000 ms,
 *                    less if the recorder dies) for the ring's `done` futex:
 *                    the recorder sets it once every record is drained and
 *                    the trace file is complete on disk (ring.h).
 *   death            the recorder watches each process through a pidfd (the
 *                    SO_PEERCRED pid, opened before the ACK, while the
 *                    process waits for it; /proc/<pid>/stat where the kernel
 *                    has no pidfd_open): when it ends, even by SIGKILL, the
 *                    ring is drained with RS_RING_PRODUCER_DEAD from the
 *                    mapping the recorder holds, and the file finished.
 *   exec             the old image's trace has no RS_EV_END. The new image,
 *                    if it is traced, greets from the same pid: the recorder
 *                    then finishes the old trace (reason 1, exec) before it
 *                    takes the new one. An image that is not traced never
 *                    greets: the recorder finishes the old trace the same way
 *                    once the process no longer has the ring at map_addr
 *                    (refscope/proc.h, rs_proc_maps_file; looked at while
 *                    the ring is quiet, less and less often).
 *
 * The memfd and the connection are close-on-exec; a fork child unmaps the
 * parent's ring and greets with a ring of its own (pthread_atfork handler).
 */
#ifndef REFSCOPE_TRANSPORT_H
#define REFSCOPE_TRANSPORT_H

#include <stdint.h>

#define RS_HELLO_MAGIC   0x4f4c454853464552ull /* "REFSHELO" */
#define RS_PROTO_VERSION 3u

enum rs_msg { RS_MSG_ACK = 1 };

struct rs_hello {
    uint64_t magic;       /* RS_HELLO_MAGIC */
    uint32_t version;     /* RS_PROTO_VERSION */
    uint32_t pid;
    uint32_t ppid;
    uint32_t flags;       /* RS_PROC_* as known at hello time */
    uint64_t map_bytes;   /* size of the memfd mapping (header + slots) */
    uint64_t map_addr;    /* where the process mapped it: once that address
                             no longer holds the ring, the image exec'd */
};

struct rs_reply {
    uint32_t msg;         /* enum rs_msg */
    int32_t  status;      /* 0 or negative errno */
};

/* Environment the shim reads (set by `refscope run`, or by hand): */
#define RS_ENV_SOCK      "REFSCOPE_SOCK"       /* recorder socket path                 */
#define RS_ENV_OUTPUT    "REFSCOPE_OUTPUT"     /* direct form: trace path (default refscope-<pid>.rfs) */
#define RS_ENV_RECORDER  "REFSCOPE_RECORDER"   /* direct form: refscope binary (default: next to the .so) */
#define RS_ENV_RING_MB   "REFSCOPE_RING_MB"    /* ring size in MiB (default 16)        */
#define RS_ENV_LOSSY     "REFSCOPE_LOSSY"      /* 1 = drop and count instead of waiting */
#define RS_ENV_NATIVE    "REFSCOPE_NATIVE"     /* 1 = native stacks (run --native)      */
#define RS_ENV_PYSTACKS  "REFSCOPE_PYSTACKS"   /* 0 = no Python stacks                  */
#define RS_ENV_GC        "REFSCOPE_GC"         /* off = no gc callback, no census (run --no-gc) */
#define RS_ENV_GC_CENSUS "REFSCOPE_GC_CENSUS"  /* off = no census of collected generations */
#define RS_ENV_UNWIND_CHECK "REFSCOPE_UNWIND_CHECK" /* 1 = tests: compare native walks with libunwind */
#define RS_ENV_STACK_CHECK  "REFSCOPE_STACK_CHECK"  /* 1 = tests: walk anyway where a block's stack is reused */
#define RS_ENV_TEST_STACK_SLOTS "REFSCOPE_TEST_STACK_SLOTS" /* tests: Python stack table slots (256..262144) */
#define RS_ENV_SNAPSHOTS "REFSCOPE_SNAPSHOTS"  /* 0 = no heap snapshots (at exit, SIGUSR2) */
#define RS_ENV_SNAPSHOT_INTERVAL "REFSCOPE_SNAPSHOT_INTERVAL" /* a snapshot every N seconds (run --snapshot-interval) */
#define RS_ENV_EXIT_WAIT "REFSCOPE_EXIT_WAIT_MS"
/* Read by the recorder: tests: watch processes through /proc, as on kernels
 * without pidfd_open. */
#define RS_ENV_TEST_NO_PIDFD "REFSCOPE_TEST_NO_PIDFD"
/* The run directory. `refscope run`'s recorder socket lives in a private
 * directory (mode 0700) named refscope-XXXXXX, which also holds the shim as
 * RS_RUN_SHIM_NAME (a symlink: LD_PRELOAD names it there) and the run's
 * REFSCOPE_* settings as RS_RUN_ENV_NAME ("NAME=value" lines, at most
 * RS_RUN_ENV_MAX bytes). A shim loaded from such a directory whose
 * environment lacks REFSCOPE_SOCK (a program gave its child an environment
 * of its own but kept LD_PRELOAD, as CPython's test suite does) takes every
 * REFSCOPE_* setting its environment does not have from that file, and so
 * joins the run instead of starting a recorder of its own. */
#define RS_RUN_DIR_PREFIX "refscope-"
#define RS_RUN_SHIM_NAME  "librefscope.so"
#define RS_RUN_ENV_NAME   "env"
#define RS_RUN_ENV_MAX    4096

/* Set to 1 by the shim after its set-up failed (the one warning line is
 * printed): programs it execs then run untraced without repeating it. */
#define RS_ENV_UNTRACED  "REFSCOPE_UNTRACED"

#endif
