/*
 * The shim's life cycle. The constructor (priority RS_CTOR_CORE, before every
 * feature) reads the configuration (env.c), picks the clock,
 * creates this process's ring, connects to the recorder (starting one in the
 * direct form), and writes RS_EV_PROCESS and RS_EV_CLOCK; the destructor
 * writes RS_EV_CLOCK and RS_EV_END, closes the ring and waits (bounded) until
 * the recorder has the trace on disk. The process keeps no descriptor of
 * ours: the recorder socket is closed once the recorder has the ring. A fork
 * child runs the same set-up from the atfork handler (forkexec.c). Any
 * failure prints one line and leaves every hook a pass-through.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "refscope/clock.h"
#include "refscope/proc.h"
#include "emit.h"
#include "guard.h"
#include "pyver.h"
#include "shim.h"
#include "sigkeep.h"
#include "transport.h"

#define HELLO_TIMEOUT_MS 15000
#define SPAWN_TIMEOUT_MS 15000

/* Configuration, read once in the constructor. */
static struct {
    uint64_t ring_bytes;
    uint32_t ring_flags;
    uint32_t proc_flags;
    uint32_t py_version;
    uint32_t clock_kind;
    int exit_wait_ms;
    char sock_path[108];
} config;

/* This process's trace: ring, memfd and socket (until the recorder has the ring). */
static struct {
    struct rs_ring ring;
    int memfd;
    int sock;
    struct rs_proc_id recorder; /* who accepted the ring (all 0 before that) */
    int active;        /* set-up succeeded and END not yet written */
    int failed;        /* set-up failed: this process and its fork children run untraced */
    int in_setup;      /* forks made by the set-up itself (the recorder) are not traced */
    uint32_t pid;
    uint64_t start_mono_ns;
} trace = { .memfd = -1, .sock = -1 };

void rs_warn(const char *msg)
{
    struct iovec iov[3] = {
        { (void *)"refscope: ", 10 },
        { (void *)msg, strlen(msg) },
        { (void *)"\n", 1 },
    };
    (void)!writev(2, iov, 3);
}

/* "<what>: <strerror><tail>" without stdio. */
static void warn_error(const char *what, int err, const char *tail)
{
    char line[512];
    size_t n = 0;
    const char *parts[] = { what, err ? ": " : "", err ? strerrordesc_np(-err) : "",
                            tail };
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        const char *p = parts[i] ? parts[i] : "unknown error";
        size_t k = strlen(p);
        if (n + k >= sizeof(line))
            k = sizeof(line) - 1 - n;
        memcpy(line + n, p, k);
        n += k;
    }
    line[n] = 0;
    rs_warn(line);
}

static void warn_failure(const char *what, int err)
{
    warn_error(what, err, "; running untraced");
}

/* The interpreter in this process, if any, into config: its PY_VERSION_HEX
 * (0 if not CPython) and RS_PROC_* flags. */
static void config_python(void)
{
    if (rs_pyver_init() == -ENOENT)
        return;
    config.py_version = rs_py.hex;
    config.proc_flags |= RS_PROC_PYTHON;
    if (rs_py.shared)
        config.proc_flags |= RS_PROC_PY_SHARED;
    if (rs_py.free_threaded)
        config.proc_flags |= RS_PROC_PY_FREETHREAD;
    if (rs_env_flag(RS_ENV_PYSTACKS, 1))
        config.proc_flags |= RS_PROC_PY_STACKS;
}

/* A libpython loaded later showed itself (pyver.h): from now on this
 * process is that interpreter, for its trace (RS_EV_PYTHON) and for the
 * PROCESS records of its fork children. */
static void python_loaded(void)
{
    uint8_t data[sizeof(struct rs_python_info) + 2 + PATH_MAX];
    struct rs_buf b = { data, 0, sizeof(data), 0 };
    Dl_info where;
    config_python();
    struct rs_python_info info = { .py_version = config.py_version, .flags = config.proc_flags };
    const char *path = dladdr((void *)rs_py.Py_IsInitialized, &where) && where.dli_fname ? where.dli_fname : "";
    rs_buf_bytes(&b, &info, sizeof(info));
    rs_buf_str(&b, path, (uint32_t)strnlen(path, PATH_MAX));
    rs_emit_var(RS_EV_PYTHON, 0, 0, 0, data, b.len);
}

static void read_config(void)
{
    const char *mb = rs_env(RS_ENV_RING_MB);
    unsigned long v = mb ? strtoul(mb, NULL, 10) : 0;
    config.ring_bytes = v ? (uint64_t)v << 20 : RS_RING_DEFAULT_BYTES;
    if (rs_env_flag(RS_ENV_LOSSY, 0)) {
        config.ring_flags |= RS_RING_LOSSY;
        config.proc_flags |= RS_PROC_LOSSY;
    }
    if (rs_env_flag(RS_ENV_NATIVE, 0))
        config.proc_flags |= RS_PROC_NATIVE_STACKS;
    config_python();
    if (!config.py_version)
        rs_pyver_when_found(python_loaded); /* first of the starts: its record leads */
    const char *wait = rs_env(RS_ENV_EXIT_WAIT);
    config.exit_wait_ms = wait && *wait ? atoi(wait) : 30000;
    config.clock_kind = rs_clock_pick();
}

/* Read a /proc file into buf; returns bytes read (0 on failure). */
static size_t read_proc(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t got = 0;
    while (got < cap) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    return got;
}

/* RS_EV_PROCESS, the first record of the ring. */
static void put_process_record(uint32_t ppid, uint64_t start_ticks, uint64_t mono, uint64_t real)
{
    uint8_t data[sizeof(struct rs_process_info) + 2 + PATH_MAX + 2 + 8192];
    char exe[PATH_MAX];
    char cmdline[8192];
    struct rs_buf b = { data, 0, sizeof(data), 0 };
    struct rs_process_info info = {
        .pid = trace.pid, .ppid = ppid, .py_version = config.py_version,
        .flags = config.proc_flags, .clock_kind = config.clock_kind,
        .start_mono_ns = mono, .start_real_ns = real, .start_ticks = start_ticks,
        .ring_bytes = (trace.ring.mask + 1) * sizeof(struct rs_slot),
    };
    ssize_t exe_len = readlink("/proc/self/exe", exe, sizeof(exe));
    size_t cmd_len = read_proc("/proc/self/cmdline", cmdline, sizeof(cmdline));
    if (cmd_len && cmdline[cmd_len - 1] == 0)
        cmd_len--; /* arguments joined by NUL: drop the terminator of the last */
    rs_buf_bytes(&b, &info, sizeof(info));
    rs_buf_str(&b, exe, exe_len > 0 ? (uint32_t)exe_len : 0);
    rs_buf_str(&b, cmdline, (uint32_t)cmd_len);
    struct rs_slot rec = { .kind = RS_EV_PROCESS, .thread = 0, .time = start_ticks };
    rs_ring_put_var(&trace.ring, &rec, data, b.len);
}

static void put_clock_record(void)
{
    struct rs_slot rec = { .kind = RS_EV_CLOCK };
    rec.time = rs_clock_ticks(config.clock_kind);
    rec.addr = rs_clock_mono_ns();
    rec.size = rs_clock_real_ns();
    rs_emit_fixed(&rec);
}

/* Ring stall callback: give up when the recorder has gone away, or has
 * finished this trace (it took this image for one that exec'd: nothing
 * reads the ring any more). */
static int ring_stalled(void *ctx)
{
    (void)ctx;
    if (!__atomic_load_n(&trace.ring.hdr->done, __ATOMIC_ACQUIRE) &&
        rs_proc_id_alive(&trace.recorder) != 0)
        return 0;
    if (__atomic_exchange_n(&trace.active, 0, __ATOMIC_ACQ_REL)) {
        rs_emit_stop();
        __atomic_store_n(&trace.ring.hdr->closed, 1, __ATOMIC_RELEASE);
        rs_warn("the recorder stopped reading the ring; running untraced");
    }
    return 1;
}

/* Copy src into dst[cap]; -ENAMETOOLONG when it does not fit. */
static int copy_path(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        return -ENAMETOOLONG;
    memcpy(dst, src, n + 1);
    return 0;
}

/* Direct form: start `refscope record --serve` (from $REFSCOPE_RECORDER or
 * next to this library) and connect to it; *what says which step failed. */
static int connect_direct(const char **what)
{
    char recorder[PATH_MAX], output[PATH_MAX];
    const char *bin = rs_env(RS_ENV_RECORDER);
    const char *out = rs_env(RS_ENV_OUTPUT);
    Dl_info info;
    int rc;

    *what = "cannot find the refscope binary next to librefscope.so";
    if (bin && *bin) {
        if ((rc = copy_path(recorder, sizeof(recorder), bin)) < 0)
            return rc;
    } else {
        if (!dladdr((void *)connect_direct, &info) || !info.dli_fname)
            return -ENOENT;
        const char *slash = strrchr(info.dli_fname, '/');
        size_t dir = slash ? (size_t)(slash - info.dli_fname) + 1 : 0;
        if (dir + sizeof("refscope") > sizeof(recorder))
            return -ENAMETOOLONG;
        memcpy(recorder, info.dli_fname, dir);
        memcpy(recorder + dir, "refscope", sizeof("refscope"));
    }

    *what = "bad $" RS_ENV_OUTPUT;
    if (out && *out) {
        if ((rc = copy_path(output, sizeof(output), out)) < 0)
            return rc;
    } else { /* refscope-<pid>.rfs */
        size_t n = 9;
        memcpy(output, "refscope-", n);
        n += rs_proc_decimal(output + n, trace.pid);
        memcpy(output + n, ".rfs", 5);
    }

    *what = "cannot start the recorder";
    trace.in_setup = 1;
    rc = rs_transport_spawn(recorder, output, config.sock_path, sizeof(config.sock_path),
                            &trace.sock, SPAWN_TIMEOUT_MS);
    trace.in_setup = 0;
    if (rc == 0)
        setenv(RS_ENV_SOCK, config.sock_path, 1); /* children use the same recorder */
    return rc;
}

/* Connect to the recorder: $REFSCOPE_SOCK, the parent's socket path in a
 * fork child, or a recorder of our own. */
static int connect_recorder(int fork_child, const char **what)
{
    if (fork_child) {
        *what = "fork child: cannot connect to the recorder";
        return rs_transport_connect(config.sock_path, &trace.sock);
    }
    const char *sock = rs_env(RS_ENV_SOCK);
    if (!sock || !*sock)
        return connect_direct(what);
    *what = "cannot connect to the recorder ($" RS_ENV_SOCK ")";
    int rc = copy_path(config.sock_path, sizeof(config.sock_path), sock);
    return rc < 0 ? rc : rs_transport_connect(config.sock_path, &trace.sock);
}

int rs_shim_start(int fork_child)
{
    const char *what;
    int rc;
    uint32_t ppid = (uint32_t)getppid();
    trace.pid = (uint32_t)getpid();
    uint64_t ticks = rs_clock_ticks(config.clock_kind);
    trace.start_mono_ns = rs_clock_mono_ns();
    uint64_t real = rs_clock_real_ns();

    what = "cannot create the shared-memory ring";
    rc = rs_transport_ring_create(config.ring_bytes, config.ring_flags, trace.pid,
                                  &trace.ring, &trace.memfd);
    if (rc < 0)
        goto fail;
    trace.ring.stalled = ring_stalled;
    put_process_record(ppid, ticks, trace.start_mono_ns, real);

    rc = connect_recorder(fork_child, &what);
    if (rc < 0)
        goto fail;

    struct rs_hello hello = {
        .magic = RS_HELLO_MAGIC, .version = RS_PROTO_VERSION, .pid = trace.pid,
        .ppid = ppid, .flags = config.proc_flags, .map_bytes = trace.ring.map_bytes,
        .map_addr = (uint64_t)(uintptr_t)trace.ring.hdr,
    };
    what = "the recorder did not accept the trace";
    rc = rs_transport_hello(trace.sock, trace.memfd, &hello, HELLO_TIMEOUT_MS);
    if (rc < 0)
        goto fail;
    /* the recorder has its own copy of the ring, and the mapping outlives
     * the memfd; it watches this process by its pid from now on */
    rs_proc_identify(trace.sock, &trace.recorder);
    close(trace.memfd);
    trace.memfd = -1;
    close(trace.sock);
    trace.sock = -1;

    rs_emit_start(&trace.ring, config.clock_kind);
    trace.active = 1;
    put_clock_record();
    rs_emit_thread();
    return 0;

fail:
    warn_failure(what, rc);
    rs_shim_forget_parent();
    trace.failed = 1;
    return rc;
}

void rs_shim_forget_parent(void)
{
    rs_emit_stop();
    trace.active = 0;
    if (trace.sock >= 0)
        close(trace.sock);
    trace.sock = -1;
    rs_transport_ring_destroy(&trace.ring, trace.memfd);
    trace.memfd = -1;
}

int rs_shim_traced(void) { return !trace.failed && !trace.in_setup && trace.pid != 0; }

__attribute__((constructor(RS_CTOR_CORE))) static void shim_init(void)
{
    rs_guard_depth++; /* nothing the set-up allocates is recorded */
    rs_env_load();
    rs_libc_resolve();
    rs_sigkeep_resolve();
    read_config();
    int rc = rs_emit_init();
    if (rc == 0)
        rc = rs_forkexec_init();
    if (rs_env_flag(RS_ENV_UNTRACED, 0)) {
        trace.failed = 1; /* an ancestor already said why */
    } else if (rc < 0) {
        warn_failure("cannot set up thread and fork handling", rc);
        trace.failed = 1;
    } else {
        rc = rs_shim_start(0);
    }
    if (trace.failed)
        setenv(RS_ENV_UNTRACED, "1", 1);
    rs_guard_depth--;
}

__attribute__((destructor(RS_CTOR_CORE))) static void shim_fini(void)
{
    /* a vfork child that calls exit() runs this in its parent's memory:
     * the ring is the parent's, and stays open */
    if ((uint32_t)getpid() != trace.pid)
        return;
    if (!__atomic_exchange_n(&trace.active, 0, __ATOMIC_ACQ_REL))
        return;
    rs_guard_depth++;
    put_clock_record();
    rs_emit_stop();
    struct rs_end_info end = {
        .producer_waits = __atomic_load_n(&trace.ring.hdr->waits, __ATOMIC_RELAXED),
        .lost_events = __atomic_load_n(&trace.ring.hdr->dropped, __ATOMIC_RELAXED),
        .end_mono_ns = rs_clock_mono_ns(),
        .reason = RS_END_EXIT,
    };
    struct rs_slot rec = { .kind = RS_EV_END, .thread = rs_emit_thread(),
                           .time = rs_clock_ticks(config.clock_kind) };
    rs_emit_claim();
    rs_ring_put_var(&trace.ring, &rec, &end, sizeof(end));
    __atomic_store_n(&trace.ring.hdr->closed, 1, __ATOMIC_RELEASE);
    int rc = rs_transport_wait_done(&trace.ring, &trace.recorder, config.exit_wait_ms);
    if (rc < 0)
        warn_error("the recorder did not confirm the trace was written", rc, "");
    rs_guard_depth--;
}
