/*
 * Recorder (analyzer/recorder.h): one thread polls the listening socket,
 * the connections still greeting and a pidfd of every traced process,
 * drains every mapped ring into its trace writer, and sleeps a few hundred
 * microseconds only when all rings are empty (include/refscope/transport.h
 * has the protocol). A process that closed its ring is drained to the last
 * record and told through the ring's `done` futex; a process that ended
 * (even by SIGKILL) or exec'd (its next image greets from the same pid) is
 * drained with RS_RING_PRODUCER_DEAD from the mapping we still hold. An
 * image that exec'd into a program that is not traced never greets again:
 * a ring that stays quiet has its process's maps asked now and then
 * (backing off to once a second), and a process that no longer has the ring
 * where it mapped it has exec'd.
 * About once a second each open trace gets an RS_EV_CLOCK pair so readers
 * can convert ticks.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include "recorder.h"
#include "refscope/clock.h"
#include "refscope/proc.h"
#include "refscope/ring.h"
#include "refscope/transport.h"
#include "grow.h"
#include "trace_write.h"

#define PAYLOAD_CAP (1u << 20)
#define DRAIN_BUDGET 65536u          /* records per ring per loop turn (fairness) */
#define RECORD_RUN 256u              /* fixed records handed to the writer at once */
#define PUMP_BYTES (1u << 20)        /* chunk compression per ring per loop turn:
                                        ~1 ms, a chunk in a few turns */
#define IDLE_SLEEP_NS 300000L        /* when the rings gave (almost) nothing      */
#define BUSY_SLEEP_NS 100000L        /* when they gave a medium batch             */
#define CLOCK_EVERY_NS 1000000000ull
#define CLOSED_DRAIN_LIMIT_NS 2000000000ull /* a closed ring still not empty: stop waiting */
#define PROC_CHECK_NS 20000000ull    /* without a pidfd: how often /proc is asked */
#define MAPS_FIRST_NS 50000000ull    /* a ring quiet this long: does its image still map it? */
#define MAPS_LAST_NS 1000000000ull   /* ... asked again after twice as long, up to this */

/* HELLO: connected, greeting not yet taken. ACTIVE: tracing. CLOSED: the
 * process closed its ring (exit); drained until empty, then `done`. */
enum conn_state { CONN_HELLO, CONN_ACTIVE, CONN_CLOSED };

/* One traced process image (and, while it greets, its connection). */
struct conn {
    int fd;                  /* the greeting's connection; -1 once answered */
    int memfd;
    int pidfd;               /* the process; -1 before the greeting, or where
                                the kernel has no pidfd_open (then /proc)     */
    struct rs_proc_id peer;  /* the process (refscope/proc.h)                */
    uint64_t proc_check_ns;  /* next /proc check, without a pidfd             */
    uint64_t maps_check_ns;  /* next look for the ring in /proc/<pid>/maps      */
    uint64_t maps_every_ns;  /* the wait before that look (doubles while quiet) */
    uint64_t ring_dev, ring_ino; /* the ring's file (fstat), as maps names it;
                                    the process has it at hello.map_addr     */
    int gone;                /* ended (or exec'd: `exec`): finish, dead       */
    int exec;                /* the same pid greeted again: this image exec'd */
    enum conn_state state;
    uint8_t in[sizeof(struct rs_hello)]; /* the greeting, as it arrives */
    size_t in_len;
    struct rs_hello hello;
    void *map;
    size_t map_bytes;
    struct rs_ring ring;
    struct rs_trace_writer *w;
    size_t file;             /* index in r->files once the file exists */
    int failed;              /* write error: keep draining, discard */
    int damaged;             /* the ring held what no shim writes: nothing more is taken */
    int seen_end;
    uint32_t end_reason;
    uint32_t clock_kind;
    uint64_t last_clock_ns;
    uint64_t closed_ns;
};

struct rs_recorder {
    struct rs_recorder_config cfg;
    char *output;
    char dir[64];            /* private temp dir ("" when the caller gave the socket) */
    char sock[108];
    int listen_fd;
    int spare_fd;            /* given up to accept (and refuse) a process when
                                we are out of descriptors                   */
    pthread_t thread;
    int thread_started;
    struct conn **conns;
    size_t nconns, conns_cap;
    struct pollfd *pfd;      /* the loop's poll set: listener, then 1 per conn */
    size_t pfd_cap;
    struct rs_recorder_file *files;
    size_t nfiles, files_cap;
    int first_file_done;
    uint32_t root_pid;       /* pid of the first process: the output name follows it */
    size_t root_file;        /* index of the file that has the output name */
    int error;
    uint8_t *payload;
    struct rs_slot run[RECORD_RUN]; /* fixed records on their way to a writer */
    /* control, written by the caller thread */
    int stop;                /* atomic */
    unsigned idle_ms, first_wait_ms;
    int (*may_connect)(void);  /* rs_recorder_finish's: 0 = nobody can connect any more */
    uint64_t start_ns, last_activity_ns;
    int ever_connected;
    double cpu_seconds;      /* of the recorder thread, set when it ends */
    double tsc_per_ns;       /* measured at start; 0 when unknown */
    int maps_name_memfds;    /* /proc/<pid>/maps shows a ring as fstat does
                                (watch_process's exec check works): 1, 0, or
                                -1 not known yet                              */
};

/* TSC ticks per ns, measured over ~2 ms (the processes' clocks are the same
 * invariant TSC; their exact conversion comes from RS_EV_CLOCK pairs). */
static double measure_tsc_rate(void)
{
    uint64_t t0 = rs_clock_ticks(RS_CLOCK_TSC), m0 = rs_clock_mono_ns(), m1;
    while ((m1 = rs_clock_mono_ns()) - m0 < 2000000)
        ;
    uint64_t t1 = rs_clock_ticks(RS_CLOCK_TSC);
    return t1 > t0 ? (double)(t1 - t0) / (double)(m1 - m0) : 0;
}

static void warnf(struct rs_recorder *r, const char *fmt, const char *a, const char *b)
{
    if (r->cfg.quiet)
        return;
    fprintf(stderr, "refscope: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
}

/* ---- files ----------------------------------------------------------------------- */

static int add_file(struct rs_recorder *r, const char *path, uint32_t pid, size_t *index)
{
    if (r->nfiles == r->files_cap) {
        size_t cap = r->files_cap ? 2 * r->files_cap : 8;
        struct rs_recorder_file *f = realloc(r->files, cap * sizeof(*f));
        if (!f)
            return -ENOMEM;
        r->files = f;
        r->files_cap = cap;
    }
    struct rs_recorder_file *f = &r->files[r->nfiles];
    memset(f, 0, sizeof(*f));
    if (!(f->path = strdup(path)))
        return -ENOMEM;
    f->pid = pid;
    *index = r->nfiles++;
    return 0;
}

/* Create the trace for a process: the first one gets the output name, later
 * ones <stem>.<pid>.rfs, never overwriting (-N suffix when taken). */
/* The codec's time_shift for a process: the coarsest power of two of ticks
 * that still resolves RS_RECORDER_TIME_RES_NS. The tick rate comes from the
 * process's start pair and now (TSC), or is 1 per ns (CLOCK_MONOTONIC). */
static unsigned pick_time_shift(const struct rs_recorder *r, const struct rs_process_info *pi)
{
    double ticks_per_ns = 1.0;
    unsigned shift = 0;
    if (r->cfg.exact_times)
        return 0;
    if (pi && pi->clock_kind == RS_CLOCK_TSC) {
        if (r->tsc_per_ns <= 0)
            return 0; /* rate unknown: keep every tick */
        ticks_per_ns = r->tsc_per_ns;
    }
    while (shift < 16 && (double)(2u << shift) <= ticks_per_ns * RS_RECORDER_TIME_RES_NS)
        shift++;
    return shift;
}

/* Move the trace that has the output name (an earlier image of the root
 * process, before it exec'd) to <stem>.<pid>-N.rfs, never replacing a file.
 * Writing continues through the open descriptor. Returns 0 or -errno. */
static int give_up_output_name(struct rs_recorder *r, size_t stem_len)
{
    struct rs_recorder_file *f = &r->files[r->root_file];
    char path[4096];
    if (r->root_file >= r->nfiles || strcmp(f->path, r->output))
        return -ENOENT;
    for (int n = 1; n < 1000; n++) {
        snprintf(path, sizeof(path), "%.*s.%u-%d.rfs", (int)stem_len, r->output, f->pid, n);
        if (renameat2(AT_FDCWD, r->output, AT_FDCWD, path, RENAME_NOREPLACE) == 0) {
            char *moved = strdup(path);
            if (!moved)
                return -ENOMEM;
            free(f->path);
            f->path = moved;
            return 0;
        }
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

static int open_trace(struct rs_recorder *r, struct conn *c, const void *meta, uint32_t meta_len)
{
    struct rs_process_info pi;
    memcpy(&pi, meta, sizeof(pi));
    struct rs_writer_opts opts = {
        .force = 0, .zstd_level = r->cfg.zstd_level, .time_shift = pick_time_shift(r, &pi),
    };
    char path[4096], fallback[64];
    int ret = -EEXIST;
    if (!r->output) {
        snprintf(fallback, sizeof(fallback), "refscope-%u.rfs", c->hello.pid);
        if (!(r->output = strdup(fallback)))
            return -ENOMEM;
    }
    size_t stem_len = strlen(r->output);
    if (stem_len > 4 && !strcmp(r->output + stem_len - 4, ".rfs"))
        stem_len -= 4;
    int root = 0;
    if (!r->first_file_done) {
        r->first_file_done = 1;
        r->root_pid = c->hello.pid;
        root = 1;
        opts.force = r->cfg.force;
        ret = rs_trace_create(r->output, &opts, meta, meta_len, &c->w);
        snprintf(path, sizeof(path), "%s", r->output);
        opts.force = 0;
    } else if (c->hello.pid == r->root_pid && give_up_output_name(r, stem_len) == 0) {
        /* The first process exec'd (env, a launcher script, pyenv's shim...):
         * the output name follows it to the program that finally runs. */
        root = 1;
        ret = rs_trace_create(r->output, &opts, meta, meta_len, &c->w);
        snprintf(path, sizeof(path), "%s", r->output);
    }
    for (int n = 0; ret == -EEXIST && n < 1000; n++) {
        if (n == 0)
            snprintf(path, sizeof(path), "%.*s.%u.rfs", (int)stem_len, r->output, c->hello.pid);
        else
            snprintf(path, sizeof(path), "%.*s.%u-%d.rfs", (int)stem_len, r->output, c->hello.pid, n);
        ret = rs_trace_create(path, &opts, meta, meta_len, &c->w);
    }
    if (ret < 0) {
        warnf(r, "cannot create trace %s: %s", path, strerror(-ret));
        return ret;
    }
    ret = add_file(r, path, c->hello.pid, &c->file);
    if (ret < 0) {
        rs_trace_abandon(c->w);
        c->w = NULL;
    } else if (root) {
        r->root_file = c->file;
    }
    return ret;
}

/* A process whose first record is not RS_EV_PROCESS (or that died before
 * writing one) still gets a file, with what its hello said. */
static int open_trace_from_hello(struct rs_recorder *r, struct conn *c)
{
    uint8_t meta[sizeof(struct rs_process_info) + 4] = {0};
    struct rs_process_info pi = {
        .pid = c->hello.pid, .ppid = c->hello.ppid, .flags = c->hello.flags,
        .clock_kind = RS_CLOCK_MONOTONIC_NS, .start_mono_ns = rs_clock_mono_ns(),
        .start_real_ns = rs_clock_real_ns(), .ring_bytes = c->map_bytes,
    };
    pi.start_ticks = pi.start_mono_ns;
    memcpy(meta, &pi, sizeof(pi));
    return open_trace(r, c, meta, sizeof(meta));
}

static void conn_fail(struct rs_recorder *r, struct conn *c, int err)
{
    if (!c->failed && c->w) {
        warnf(r, "writing %s failed: %s", r->files[c->file].path, strerror(-err));
        rs_trace_abandon(c->w);
        c->w = NULL;
    }
    if (!r->error)
        r->error = err;
    c->failed = 1;
}

static void write_clock(struct rs_recorder *r, struct conn *c, uint64_t now)
{
    struct rs_slot rec = {
        .kind = RS_EV_CLOCK, .thread = RS_RECORDER_THREAD,
        .time = rs_clock_ticks(c->clock_kind), .addr = rs_clock_mono_ns(), .size = rs_clock_real_ns(),
    };
    int ret;
    c->last_clock_ns = now;
    if (c->w && !c->failed && (ret = rs_trace_append(c->w, &rec, NULL, 0)) < 0)
        conn_fail(r, c, ret);
}

static void finish_trace(struct rs_recorder *r, struct conn *c)
{
    if (!c->w && !c->failed) {
        if (open_trace_from_hello(r, c) < 0)
            c->failed = 1;
    }
    if (!c->w)
        return;
    write_clock(r, c, rs_clock_mono_ns());
    if (!c->w)
        return;
    struct rs_trailer t = {
        .producer_waits = __atomic_load_n(&c->ring.hdr->waits, __ATOMIC_RELAXED),
        .lost_events = __atomic_load_n(&c->ring.hdr->dropped, __ATOMIC_RELAXED),
        .end_reason = c->seen_end ? c->end_reason : c->exec ? RS_END_EXEC : RS_END_ABRUPT,
    };
    struct rs_recorder_file *f = &r->files[c->file];
    f->records = rs_trace_writer_records(c->w);
    int ret = rs_trace_finish(c->w, &t);
    c->w = NULL;
    if (ret < 0) {
        c->failed = 0;
        warnf(r, "writing %s failed: %s", f->path, strerror(-ret));
        if (!r->error)
            r->error = ret;
        return;
    }
    struct stat st;
    if (stat(f->path, &st) == 0)
        f->bytes = (uint64_t)st.st_size;
    f->complete = 1;
}

/* ---- draining ---------------------------------------------------------------------- */

static int handle_record(struct rs_recorder *r, struct conn *c, const struct rs_slot *rec, uint32_t len)
{
    int ret;
    if (len > PAYLOAD_CAP)
        len = PAYLOAD_CAP; /* longer than any record we know: keep its head */
    if (!c->w && !c->failed) {
        if (rec->kind == RS_EV_PROCESS && len >= sizeof(struct rs_process_info)) {
            struct rs_process_info pi;
            memcpy(&pi, r->payload, sizeof(pi));
            c->clock_kind = pi.clock_kind;
            ret = open_trace(r, c, r->payload, len);
        } else {
            ret = open_trace_from_hello(r, c);
        }
        if (ret < 0) {
            c->failed = 1;
            if (!r->error)
                r->error = ret;
            return 0;
        }
    }
    if (rec->kind == RS_EV_END && len >= sizeof(struct rs_end_info)) {
        struct rs_end_info e;
        memcpy(&e, r->payload, sizeof(e));
        c->seen_end = 1;
        c->end_reason = e.reason;
    }
    if (c->failed)
        return 0;
    ret = rs_trace_append(c->w, rec, RS_EV_IS_VAR(rec->kind) ? r->payload : NULL,
                          RS_EV_IS_VAR(rec->kind) ? len : 0);
    if (ret < 0)
        conn_fail(r, c, ret);
    else if (rec->kind == RS_EV_PROCESS)
        write_clock(r, c, rs_clock_mono_ns());
    return 0;
}

/* The ring is the traced program's memory too: a wild write there can
 * commit records no shim wrote. Those the readers would take for damage
 * (rs_slot_impossible) end the trace here instead, so that everything
 * before them stays readable. Returns how many of recs[0..n) come before
 * the first such record. */
static size_t possible_records(const struct rs_slot *recs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (__builtin_expect(rs_slot_impossible(&recs[i]), 0))
            return i;
    return n;
}

/* Fixed records go to the writer in runs (its fast path); VAR records,
 * everything before the trace exists and everything unusual go through
 * rs_ring_consume one by one. Ring order is kept.
 * Returns records drained, or -EPROTO for a corrupt ring. */
static long drain(struct rs_recorder *r, struct conn *c, unsigned flags, unsigned budget)
{
    struct rs_slot rec;
    uint32_t len;
    long n = 0;
    if (c->damaged)
        return -EPROTO;
    while ((unsigned long)n < budget) {
        if (c->w && !c->failed) {
            unsigned long left = budget - (unsigned long)n;
            size_t got = rs_ring_consume_fixed(&c->ring, r->run, left < RECORD_RUN ? left : RECORD_RUN);
            if (got) {
                size_t ok = possible_records(r->run, got);
                int ret = ok ? rs_trace_append_fixed(c->w, r->run, ok) : 0;
                if (ret < 0)
                    conn_fail(r, c, ret);
                if (ok < got) {
                    c->damaged = 1;
                    return -EPROTO;
                }
                n += (long)got;
                continue;
            }
        }
        int got = rs_ring_consume(&c->ring, &rec, r->payload, PAYLOAD_CAP, &len, flags);
        if (got < 0)
            return got;
        if (got == 0)
            break;
        if (rec.kind == RS_EV_CONT || rec.kind == RS_EV_EMPTY)
            continue;
        if (!possible_records(&rec, 1)) {
            c->damaged = 1;
            return -EPROTO;
        }
        handle_record(r, c, &rec, RS_EV_IS_VAR(rec.kind) ? len : 0);
        n++;
    }
    return n;
}

static int ring_empty(const struct conn *c)
{
    return __atomic_load_n(&c->ring.hdr->tail, __ATOMIC_ACQUIRE) ==
           __atomic_load_n(&c->ring.hdr->head, __ATOMIC_ACQUIRE);
}

/* ---- connections ---------------------------------------------------------------------- */

static void conn_close(struct rs_recorder *r, size_t i)
{
    struct conn *c = r->conns[i];
    if (c->map)
        munmap(c->map, c->map_bytes);
    if (c->memfd >= 0)
        close(c->memfd);
    if (c->fd >= 0)
        close(c->fd);
    if (c->pidfd >= 0)
        close(c->pidfd);
    rs_trace_abandon(c->w);
    free(c);
    r->conns[i] = r->conns[--r->nconns];
    r->last_activity_ns = rs_clock_mono_ns();
}

static void send_reply(struct conn *c, uint32_t msg, int32_t status)
{
    struct rs_reply rep = {msg, status};
    if (send(c->fd, &rep, sizeof(rep), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* the process is gone; its pidfd says so */
    }
}

static int open_pidfd(uint32_t pid)
{
#ifdef SYS_pidfd_open
    if (!getenv(RS_ENV_TEST_NO_PIDFD))
        return (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
#endif
    errno = ENOSYS;
    return -1;
}

/* Start watching the greeting process: its pid and start time (SO_PEERCRED,
 * /proc), and a pidfd (without pidfd_open or beyond our descriptor limit,
 * the start time serves for /proc checks). Called before the ACK, while the
 * process waits for it with the connection open: if the connection has
 * already reached EOF the process died meanwhile and its pid may be
 * another's, so it counts as gone. Returns 0 or a negative errno for the
 * ACK. */
static int conn_watch(struct conn *c)
{
    rs_proc_identify(c->fd, &c->peer);
    if (!c->peer.pid)
        return -ESRCH; /* a process we cannot see (another pid namespace) */
    c->pidfd = open_pidfd(c->peer.pid); /* close-on-exec by definition */
    if (c->pidfd < 0 && !c->peer.start_ticks)
        return -ESRCH; /* nothing would tell us when it ends */
    char byte;
    if (recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
        c->gone = 1;
    return 0;
}

/* An earlier image of the same process, still open: it exec'd. */
static void mark_exec(struct rs_recorder *r, const struct conn *c)
{
    for (size_t i = 0; i < r->nconns; i++) {
        struct conn *o = r->conns[i];
        if (o != c && o->state != CONN_HELLO && o->peer.pid == c->peer.pid && !o->gone) {
            o->gone = 1;
            o->exec = 1;
        }
    }
}

static int conn_hello(struct rs_recorder *r, struct conn *c)
{
    struct stat st;
    memcpy(&c->hello, c->in, sizeof(c->hello));
    c->in_len = 0; /* nothing follows a greeting */
    int status = 0;
    if (c->hello.magic != RS_HELLO_MAGIC || c->hello.version != RS_PROTO_VERSION)
        status = -EPROTO;
    else if (c->memfd < 0 || fstat(c->memfd, &st) < 0 || (uint64_t)st.st_size < c->hello.map_bytes ||
             c->hello.map_bytes <= RS_RING_HEADER_BYTES)
        status = -EBADF;
    else {
        c->ring_dev = st.st_dev;
        c->ring_ino = st.st_ino;
    }
    if (status == 0) {
        c->map_bytes = (size_t)c->hello.map_bytes;
        c->map = mmap(NULL, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, c->memfd, 0);
        if (c->map == MAP_FAILED) {
            c->map = NULL;
            status = -errno;
        } else if (rs_ring_attach(&c->ring, c->map, c->map_bytes) < 0) {
            status = -EPROTO;
        }
    }
    if (status == 0)
        status = conn_watch(c);
    if (status == 0 && r->maps_name_memfds < 0) /* our own mapping of it must be there */
        r->maps_name_memfds = rs_proc_maps_file((uint32_t)getpid(), (uint64_t)(uintptr_t)c->map,
                                                c->ring_dev, c->ring_ino) == 1;
    send_reply(c, RS_MSG_ACK, status);
    if (status < 0)
        return status;
    close(c->memfd);
    c->memfd = -1;
    close(c->fd); /* the process keeps no descriptor of ours */
    c->fd = -1;
    c->state = CONN_ACTIVE;
    mark_exec(r, c);
    r->ever_connected = 1;
    return 0;
}

/* Read the greeting. Returns 1 when the connection is over without one
 * (EOF, error, garbage), 0 otherwise. */
static int conn_read(struct rs_recorder *r, struct conn *c)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    while (c->state == CONN_HELLO) {
        struct iovec iov = {c->in + c->in_len, sizeof(struct rs_hello) - c->in_len};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
        ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : 1;
        }
        if (n == 0)
            return 1;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm), sizeof(fd));
                if (c->memfd < 0)
                    c->memfd = fd;
                else
                    close(fd);
            }
        }
        c->in_len += (size_t)n;
        if (c->in_len == sizeof(struct rs_hello) && conn_hello(r, c) < 0)
            return 1;
    }
    return 0;
}

static void accept_all(struct rs_recorder *r)
{
    for (;;) {
        int fd = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0 && (errno == EMFILE || errno == ENFILE) && r->spare_fd >= 0) {
            /* refuse the process (it runs untraced, saying so) rather than
             * leave it waiting in the backlog while poll spins on it */
            close(r->spare_fd);
            fd = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                close(fd);
            r->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            continue;
        }
        if (fd < 0)
            return;
        struct conn *c = NULL;
        if (rs_grow(&r->conns, &r->conns_cap, r->nconns + 1, sizeof(*r->conns)) < 0 ||
            rs_grow(&r->pfd, &r->pfd_cap, r->nconns + 2, sizeof(*r->pfd)) < 0 ||
            !(c = calloc(1, sizeof(*c)))) {
            close(fd); /* the process's greeting fails: it runs untraced, saying so */
            continue;
        }
        c->fd = fd;
        c->memfd = -1;
        c->pidfd = -1;
        c->state = CONN_HELLO;
        r->conns[r->nconns++] = c;
        r->last_activity_ns = rs_clock_mono_ns();
    }
}

/* After a loop turn that drained `drained` records from c: whether its
 * process is still there. Without a pidfd, /proc tells when it ends. And
 * once its ring has been quiet for a while, then less and less often,
 * whether its image still maps the ring: one that exec'd into a program we
 * do not trace (a static binary, LD_PRELOAD removed) never greets again,
 * and its trace would otherwise stay open until the process ends. A
 * process that maps nothing at all is exiting (its pidfd says so soon);
 * one whose maps we cannot read tells nothing; and where maps does not name
 * a memfd as fstat does (maps_name_memfds), nothing is asked. Sets c->gone
 * (and c->exec) when the image is over. */
static void watch_process(const struct rs_recorder *r, struct conn *c, long drained, uint64_t now)
{
    if (c->pidfd < 0 && now >= c->proc_check_ns) {
        c->proc_check_ns = now + PROC_CHECK_NS;
        if (rs_proc_id_alive(&c->peer) == 0)
            c->gone = 1;
    }
    if (drained > 0 || !c->maps_every_ns) { /* busy, or just greeted */
        c->maps_every_ns = MAPS_FIRST_NS;
        c->maps_check_ns = now + MAPS_FIRST_NS;
        return;
    }
    if (c->gone || c->state != CONN_ACTIVE || now < c->maps_check_ns || r->maps_name_memfds != 1)
        return;
    if (rs_proc_maps_file(c->peer.pid, c->hello.map_addr, c->ring_dev, c->ring_ino) == 0) {
        c->gone = 1;
        c->exec = 1;
        return;
    }
    if (c->maps_every_ns < MAPS_LAST_NS)
        c->maps_every_ns *= 2;
    c->maps_check_ns = now + c->maps_every_ns;
}

/* Tell a process waiting at exit that its trace is on disk (ring.h). */
static void set_done(struct conn *c)
{
    __atomic_store_n(&c->ring.hdr->done, c->failed ? RS_RING_DONE_FAILED : RS_RING_DONE_OK,
                     __ATOMIC_RELEASE);
    syscall(SYS_futex, &c->ring.hdr->done, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* The process is gone (drain_flags = RS_RING_PRODUCER_DEAD) or done (its
 * ring closed and empty): drain what is left, finish its file, say `done`. */
static void conn_finish(struct rs_recorder *r, size_t i, unsigned drain_flags)
{
    struct conn *c = r->conns[i];
    if (c->state != CONN_HELLO) {
        long n;
        while ((n = drain(r, c, drain_flags, DRAIN_BUDGET)) > 0)
            ;
        if (n < 0 && c->w)
            warnf(r, "the ring of %s is damaged; the trace ends early%s", r->files[c->file].path, "");
        finish_trace(r, c);
        set_done(c);
    }
    conn_close(r, i);
}

/* Finish every trace whose process ended, and every closed ring that is
 * empty (or has not emptied for CLOSED_DRAIN_LIMIT_NS). */
static void finish_ended(struct rs_recorder *r, uint64_t now)
{
    for (size_t i = 0; i < r->nconns;) {
        struct conn *c = r->conns[i];
        if (c->gone)
            conn_finish(r, i, RS_RING_PRODUCER_DEAD);
        else if (c->state == CONN_CLOSED && (ring_empty(c) || now - c->closed_ns > CLOSED_DRAIN_LIMIT_NS))
            conn_finish(r, i, ring_empty(c) ? 0 : RS_RING_PRODUCER_DEAD);
        else
            i++;
    }
}

static void *recorder_loop(void *arg)
{
    struct rs_recorder *r = arg;
    for (;;) {
        uint64_t now = rs_clock_mono_ns();
        long work = 0;
        int closing = 0;
        finish_ended(r, now);
        for (size_t i = 0; i < r->nconns; i++) {
            struct conn *c = r->conns[i];
            if (c->state == CONN_HELLO || c->gone)
                continue;
            long n = drain(r, c, 0, DRAIN_BUDGET);
            /* the ring's coarse "now": producers re-read their clock when it
             * changes, so a cached reading is at most one loop turn old */
            __atomic_store_n(&c->ring.hdr->now, rs_clock_ticks(c->clock_kind), __ATOMIC_RELAXED);
            int ret;
            if (c->w && !c->failed && (ret = rs_trace_pump(c->w, PUMP_BYTES)) < 0)
                conn_fail(r, c, ret);
            if (n < 0) {
                c->state = CONN_CLOSED; /* corrupt ring: finish with what we have */
                c->closed_ns = 0;
                closing = 1;
            } else {
                work += n;
            }
            if (c->state == CONN_ACTIVE && __atomic_load_n(&c->ring.hdr->closed, __ATOMIC_ACQUIRE)) {
                c->state = CONN_CLOSED; /* RS_EV_END is written: the process exits */
                c->closed_ns = now;
                closing = 1;
            }
            watch_process(r, c, n, now);
            closing |= c->gone;
            if (c->w && (int64_t)(now - c->last_clock_ns) >= (int64_t)CLOCK_EVERY_NS)
                write_clock(r, c, now);
        }
        struct pollfd *pfd = r->pfd;
        pfd[0].fd = r->listen_fd;
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        for (size_t i = 0; i < r->nconns; i++) {
            struct conn *c = r->conns[i];
            pfd[i + 1].fd = c->fd >= 0 ? c->fd : c->gone ? -1 : c->pidfd;
            pfd[i + 1].events = POLLIN;
            pfd[i + 1].revents = 0;
        }
        /* Batches keep the per-record cost low: a ring that gave little gets
         * time to fill (the ring holds seconds of records), a busy one none. */
        struct timespec ts = {0, closing || work >= DRAIN_BUDGET / 2 ? 0
                                 : work >= 4096                       ? BUSY_SLEEP_NS
                                                                      : IDLE_SLEEP_NS};
        size_t npfd = r->nconns + 1;
        int pr = ppoll(pfd, npfd, &ts, NULL);
        if (pr > 0) {
            /* connections first (indices shift when one closes), then accept */
            for (size_t i = npfd - 1; i >= 1; i--) {
                if (!pfd[i].revents)
                    continue;
                struct conn *c = r->conns[i - 1];
                if (c->state != CONN_HELLO)
                    c->gone = 1; /* its pidfd: the process ended */
                else if (conn_read(r, c))
                    conn_close(r, i - 1);
            }
            if (pfd[0].revents)
                accept_all(r);
        }
        if (__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE) && r->nconns == 0) {
            if (r->ever_connected && r->may_connect && !r->may_connect())
                break;
            uint64_t t = rs_clock_mono_ns();
            if (r->ever_connected ? t - r->last_activity_ns >= r->idle_ms * 1000000ull
                                  : t - r->start_ns >= r->first_wait_ms * 1000000ull)
                break;
        }
    }
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) == 0)
        r->cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                         ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
    return NULL;
}

/* ---- API ------------------------------------------------------------------------------ */

int rs_recorder_start(const struct rs_recorder_config *cfg, struct rs_recorder **out,
                      char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int ret;
    struct rs_recorder *r = calloc(1, sizeof(*r));
    if (r) {
        r->listen_fd = -1;
        r->maps_name_memfds = -1;
        r->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    if (!r || (cfg->output && !(r->output = strdup(cfg->output))) || !(r->payload = malloc(PAYLOAD_CAP)) ||
        rs_grow(&r->pfd, &r->pfd_cap, 1, sizeof(*r->pfd)) < 0) {
        snprintf(err, errlen, "out of memory");
        ret = -ENOMEM;
        goto fail;
    }
    r->cfg = *cfg;
    if (cfg->socket_path) {
        if (strlen(cfg->socket_path) >= sizeof(r->sock)) {
            snprintf(err, errlen, "socket path too long: %s", cfg->socket_path);
            ret = -ENAMETOOLONG;
            goto fail;
        }
        strcpy(r->sock, cfg->socket_path);
    } else {
        const char *tmp = getenv("TMPDIR");
        if (!tmp || strlen(tmp) > 30)
            tmp = "/tmp";
        snprintf(r->dir, sizeof(r->dir), "%s/refscope-XXXXXX", tmp);
        if (!mkdtemp(r->dir)) { /* mkdtemp makes it 0700 */
            ret = -errno;
            snprintf(err, errlen, "cannot create a private directory in %s: %s", tmp, strerror(errno));
            r->dir[0] = 0;
            goto fail;
        }
        snprintf(r->sock, sizeof(r->sock), "%s/sock", r->dir);
    }
    strcpy(sa.sun_path, r->sock);
    r->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (r->listen_fd < 0 || bind(r->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(r->listen_fd, 64) < 0) {
        ret = -errno;
        snprintf(err, errlen, "cannot listen on %s: %s", r->sock, strerror(errno));
        goto fail;
    }
    r->tsc_per_ns = measure_tsc_rate();
    r->start_ns = r->last_activity_ns = rs_clock_mono_ns();
    if ((ret = -pthread_create(&r->thread, NULL, recorder_loop, r)) < 0) {
        snprintf(err, errlen, "cannot start the recorder thread: %s", strerror(-ret));
        goto fail;
    }
    r->thread_started = 1;
    *out = r;
    return 0;
fail:
    if (r && r->listen_fd >= 0)
        unlink(r->sock);
    rs_recorder_free(r);
    return ret;
}

const char *rs_recorder_socket(const struct rs_recorder *r) { return r->sock; }

int rs_recorder_set_output(struct rs_recorder *r, const char *output)
{
    char *copy = strdup(output);
    if (!copy)
        return -ENOMEM;
    free(r->output);
    r->output = copy; /* the recorder thread reads it only once a process connected */
    return 0;
}

int rs_recorder_finish(struct rs_recorder *r, unsigned idle_ms, unsigned first_wait_ms,
                       int (*may_connect)(void))
{
    if (!r->thread_started)
        return r->error;
    r->idle_ms = idle_ms;
    r->first_wait_ms = first_wait_ms;
    r->may_connect = may_connect;
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
    pthread_join(r->thread, NULL);
    r->thread_started = 0;
    return r->error;
}

size_t rs_recorder_main_file(const struct rs_recorder *r) { return r->root_file; }

double rs_recorder_cpu_seconds(const struct rs_recorder *r) { return r->cpu_seconds; }

size_t rs_recorder_files(const struct rs_recorder *r, const struct rs_recorder_file **files)
{
    *files = r->files;
    return r->nfiles;
}

void rs_recorder_free(struct rs_recorder *r)
{
    if (!r)
        return;
    if (r->thread_started)
        rs_recorder_finish(r, 0, 0, NULL);
    while (r->nconns)
        conn_close(r, r->nconns - 1);
    if (r->spare_fd >= 0)
        close(r->spare_fd);
    if (r->listen_fd >= 0) {
        close(r->listen_fd);
        unlink(r->sock);
    }
    if (r->dir[0])
        rmdir(r->dir);
    for (size_t i = 0; i < r->nfiles; i++)
        free(r->files[i].path);
    free(r->files);
    free(r->conns);
    free(r->pfd);
    free(r->payload);
    free(r->output);
    free(r);
}
