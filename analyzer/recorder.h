/*
 * The recorder: the consumer side of include/refscope/transport.h. It
 * listens on a unix socket, accepts any number of traced processes (the
 * command, its fork children, programs they exec), maps each one's ring,
 * drains every ring from one thread and writes one trace file per process
 * (analyzer/trace_write.h). Used by `refscope run` (socket in a private 0700
 * temp directory, recorder on a background thread) and `refscope record
 * --serve` (the shim's direct form, recorder in the foreground).
 */
#ifndef REFSCOPE_RECORDER_H
#define REFSCOPE_RECORDER_H

#include <stddef.h>
#include <stdint.h>

/* The `thread` value of the RS_EV_CLOCK records the recorder itself writes. */
#define RS_RECORDER_THREAD 0xffffu

/* Event times are stored to this resolution or better (the codec drops the
 * low clock bits below it: timestamps are informational, never ordering). */
#define RS_RECORDER_TIME_RES_NS 16

struct rs_recorder_config {
    const char *output;       /* the first process's trace; later ones <stem>.<pid>.rfs;
                                 NULL until rs_recorder_set_output() */
    int force;                /* overwrite `output` if it exists                         */
    const char *socket_path;  /* NULL: <mkdtemp 0700 dir>/sock                           */
    int zstd_level;           /* 0 = default                                             */
    int exact_times;          /* 1: keep every clock tick; 0: RS_RECORDER_TIME_RES_NS    */
    int quiet;                /* no per-file warnings on stderr                          */
};

struct rs_recorder_file {
    char *path;
    uint32_t pid;
    uint64_t records;
    uint64_t bytes;
    int complete;             /* trailer written */
};

struct rs_recorder;

/* Bind the socket and start draining on a background thread. Returns 0 or
 * a negative errno with a one-line message in err. */
int rs_recorder_start(const struct rs_recorder_config *cfg, struct rs_recorder **out,
                      char *err, size_t errlen);

/* Set the first process's trace name (before any process connected).
 * Returns 0 or -ENOMEM. */
int rs_recorder_set_output(struct rs_recorder *r, const char *output);

/* Absolute path of the socket (for REFSCOPE_SOCK). */
const char *rs_recorder_socket(const struct rs_recorder *r);

/* Stop accepting the idea of more work: returns once no process is
 * connected and none connected for `idle_ms` (and, when none ever connected,
 * after `first_wait_ms`), or at once when no process is connected and
 * `may_connect` (optional, called from the recorder thread) says that none
 * can connect any more. Every connected process is drained and its file
 * finished before that. Joins the thread; returns 0 or the first write error. */
int rs_recorder_finish(struct rs_recorder *r, unsigned idle_ms, unsigned first_wait_ms,
                       int (*may_connect)(void));

/* Files written so far (stable after rs_recorder_finish). */
size_t rs_recorder_files(const struct rs_recorder *r, const struct rs_recorder_file **files);

/* Index (into the files above) of the trace that has the output name: the
 * first process, followed through exec to the program it finally ran. */
size_t rs_recorder_main_file(const struct rs_recorder *r);

/* CPU time the recorder thread used (valid after rs_recorder_finish). */
double rs_recorder_cpu_seconds(const struct rs_recorder *r);

/* Remove the socket (and the private directory) and free everything. */
void rs_recorder_free(struct rs_recorder *r);

#endif
