/*
 * `refscope run` and `refscope record`: the two ways a recorder is started.
 *
 *   run [-o OUT] [-f] [--native | --no-stacks] [--no-gc] [--lossy] [--ring-mb N] [--snapshot-interval N] [--] CMD ARGS...
 *       recorder on a background thread, CMD spawned with the shim preloaded
 *       and REFSCOPE_SOCK set; waits for CMD and every traced descendant,
 *       then exits with CMD's status (128+signal when CMD was killed).
 *   record --serve SOCK -o OUT [-f]
 *       the same recorder for the shim's direct form: listens on SOCK and
 *       exits once its last process is gone and no new one came for ~1 s.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cli.h"
#include "commands.h"
#include "recorder.h"
#include "refscope/transport.h"
#include "trace_write.h"

#define RUN_IDLE_MS 150      /* after CMD exits: wait for late descendants
                                that are not ours to wait for (see below) */
#define SERVE_IDLE_MS 1000
#define SERVE_FIRST_WAIT_MS 30000

/* Path of librefscope.so next to this executable. */
static int shim_path(char *out, size_t len)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return -errno;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash)
        return -ENOENT;
    *slash = 0;
    if ((size_t)snprintf(out, len, "%s/librefscope.so", exe) >= len)
        return -ENAMETOOLONG;
    return access(out, R_OK) == 0 ? 0 : -errno;
}

/* The directory that will hold `path` exists and is writable. */
static int check_writable_dir(const char *path)
{
    char dir[PATH_MAX];
    struct stat st;
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    if (stat(dir, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    return access(dir, W_OK) == 0 ? 0 : -errno;
}

/* One line: the main trace in full, the others (fork children, programs
 * they ran, earlier images of the main process) as a count and a pattern. */
static void print_files(struct rs_recorder *r, const char *output)
{
    const struct rs_recorder_file *f;
    size_t n = rs_recorder_files(r, &f), main = rs_recorder_main_file(r);
    if (n == 0) {
        fprintf(stderr, "refscope: no traced process connected; no trace written\n");
        return;
    }
    if (main >= n)
        main = 0;
    fprintf(stderr, "refscope: wrote %s (pid %u, %llu records, %llu bytes%s)", f[main].path, f[main].pid,
            (unsigned long long)f[main].records, (unsigned long long)f[main].bytes,
            f[main].complete ? "" : ", incomplete");
    if (n > 1) {
        size_t stem = strlen(output);
        if (stem > 4 && !strcmp(output + stem - 4, ".rfs"))
            stem -= 4;
        fprintf(stderr, " and %zu more for other processes (%.*s.*.rfs)", n - 1, (int)stem, output);
    }
    fprintf(stderr, "; recorder CPU %.2f s\n", rs_recorder_cpu_seconds(r));
}

/* setenv for CMD's environment, saying why when it fails. Returns 0 or -1. */
static int env_set(const char *name, const char *value)
{
    if (setenv(name, value, 1) == 0)
        return 0;
    fprintf(stderr, "refscope run: cannot set the environment: %s\n", strerror(errno));
    return -1;
}

static int env_set_int(const char *name, long v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%ld", v);
    return env_set(name, buf);
}

/* The recorder holds a descriptor (a pidfd) per traced process alive, so
 * refscope raises its own descriptor limit as far as it may; CMD gets the
 * limit refscope was given (fd_limit_orig), as it would untraced. */
static struct rlimit fd_limit_orig;
static int fd_limit_raised;

static void raise_fd_limit(void)
{
    if (getrlimit(RLIMIT_NOFILE, &fd_limit_orig) < 0 || fd_limit_orig.rlim_cur >= fd_limit_orig.rlim_max)
        return;
    struct rlimit raised = fd_limit_orig;
    raised.rlim_cur = raised.rlim_max;
    fd_limit_raised = setrlimit(RLIMIT_NOFILE, &raised) == 0;
}

/* The child: wait for the go byte, then exec. Never returns. */
static void child_exec(int gate, char **argv)
{
    char go;
    if (fd_limit_raised)
        setrlimit(RLIMIT_NOFILE, &fd_limit_orig);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    if (read(gate, &go, 1) != 1)
        _exit(127);
    close(gate);
    execvp(argv[0], argv);
    fprintf(stderr, "refscope run: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

/* SIGTERM/SIGHUP sent to refscope go to the command; we stay to finish
 * its traces and report its status. */
static volatile sig_atomic_t child_pid;

static void forward_signal(int sig)
{
    if (child_pid > 0)
        kill((pid_t)child_pid, sig);
}

/* Waits for CMD and returns its exit status. Orphans of CMD's tree that
 * exit meanwhile (we are their subreaper) are reaped as init would reap
 * them, so a long-running service that leaves children behind does not
 * fill the process table with zombies while it is traced. */
static int wait_child(pid_t pid)
{
    int st;
    for (;;) {
        pid_t p = waitpid(-1, &st, 0);
        if (p == pid)
            break;
        if (p < 0 && errno != EINTR)
            return 1;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return 1;
}

/* `run` is the child subreaper of CMD's process tree: a descendant whose
 * parent exits becomes our child. So once CMD has exited, no process is
 * connected and we have no child left, no traced process can appear any
 * more and the traces are finished without waiting RUN_IDLE_MS. Reaps the
 * orphans that exited (recorder thread). */
static int descendants_alive(void)
{
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0)
        ;
    return !(p < 0 && errno == ECHILD);
}

/* "<directory of sock>/<name>" into buf[PATH_MAX]; -ENAMETOOLONG. */
static int run_dir_path(const char *sock, const char *name, char *buf)
{
    const char *slash = strrchr(sock, '/');
    if (!slash || (size_t)snprintf(buf, PATH_MAX, "%.*s/%s", (int)(slash - sock), sock, name) >= PATH_MAX)
        return -ENAMETOOLONG;
    return 0;
}

/* The run directory (refscope/transport.h): the shim as a symlink beside
 * the socket, and the run's REFSCOPE_* settings (what CMD's environment
 * has) in a file, so that a descendant given an environment of its own that
 * still preloads the shim joins this run with its options. `preload` gets
 * the path LD_PRELOAD is to name: the symlink, or the shim itself when the
 * directory cannot take them (such a descendant then records on its own,
 * as the direct form does). */
static void publish_run_dir(const char *sock, const char *shim, char *preload, size_t len)
{
    extern char **environ;
    char env_path[PATH_MAX], link_path[PATH_MAX], text[RS_RUN_ENV_MAX];
    size_t n = 0;
    snprintf(preload, len, "%s", shim);
    if (run_dir_path(sock, RS_RUN_ENV_NAME, env_path) < 0 || run_dir_path(sock, RS_RUN_SHIM_NAME, link_path) < 0 ||
        strlen(link_path) >= len)
        return;
    for (char **e = environ; *e; e++) {
        size_t k = strlen(*e);
        if (strncmp(*e, "REFSCOPE_", 9) || !strncmp(*e, RS_ENV_UNTRACED "=", sizeof(RS_ENV_UNTRACED)) ||
            strchr(*e, '\n') || n + k + 1 > sizeof(text))
            continue;
        memcpy(text + n, *e, k);
        text[n + k] = '\n';
        n += k + 1;
    }
    int fd = open(env_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    int ok = write(fd, text, n) == (ssize_t)n;
    if (close(fd) < 0 || !ok || symlink(shim, link_path) < 0) {
        unlink(env_path);
        return;
    }
    snprintf(preload, len, "%s", link_path);
}

static void unpublish_run_dir(const char *sock)
{
    char path[PATH_MAX];
    if (run_dir_path(sock, RS_RUN_SHIM_NAME, path) == 0)
        unlink(path);
    if (run_dir_path(sock, RS_RUN_ENV_NAME, path) == 0)
        unlink(path);
}

int cmd_run(int argc, char **argv)
{
    const char *output = NULL;
    int force = 0, native = 0, lossy = 0, no_stacks = 0, no_gc = 0, census = -1, ring_mb = 0, interval = 0;
    char shim[PATH_MAX], preload_shim[PATH_MAX], out_buf[64], err[512];
    char *preload = NULL;
    struct rs_recorder *r = NULL;
    int gate[2] = {-1, -1}, status = 1, ret;
    pid_t pid = -1;

    static const char *const on_off[] = {"off", "on", NULL};
    const struct rs_opt opts[] = {
        {"output", 'o', RS_OPT_STR, &output, 0, 0, NULL},
        {"force", 'f', RS_OPT_FLAG, &force, 0, 0, NULL},
        {"native", 0, RS_OPT_FLAG, &native, 0, 0, NULL},
        {"no-stacks", 0, RS_OPT_FLAG, &no_stacks, 0, 0, NULL}, /* allocation records without Python stacks */
        {"lossy", 0, RS_OPT_FLAG, &lossy, 0, 0, NULL},
        {"ring-mb", 0, RS_OPT_INT, &ring_mb, 1, 65536, NULL},
        {"no-gc", 0, RS_OPT_FLAG, &no_gc, 0, 0, NULL},                /* no gc callback: allocation records only */
        {"gc-census", 0, RS_OPT_CHOICE, &census, 0, 0, on_off},       /* issue 4: census of collected generations */
        {"snapshot-interval", 0, RS_OPT_INT, &interval, 1, 86399, NULL}, /* issue 5: heap snapshot every N s */
        RS_OPT_END,
    };
    const struct rs_cli cli = { "run", opts, "a command to run", 1, INT_MAX, 1 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    if (no_gc && census == 1) {
        fprintf(stderr, "refscope run: --no-gc records no collections, so no census: drop one of "
                        "--no-gc and --gc-census=on (see 'refscope run --help')\n");
        return 2;
    }
    if ((no_stacks && env_set(RS_ENV_PYSTACKS, "0")) || (no_gc && env_set(RS_ENV_GC, "off")) ||
        (census >= 0 && env_set(RS_ENV_GC_CENSUS, on_off[census])) ||
        (interval && env_set_int(RS_ENV_SNAPSHOT_INTERVAL, interval)))
        return 1;
    if (output && rs_trace_path_is_special(output)) {
        fprintf(stderr, "refscope run: %s is not a regular file (a trace is written as a new file)\n", output);
        return 1;
    }
    if (output && !force && access(output, F_OK) == 0) {
        fprintf(stderr, "refscope run: %s exists (use -f to overwrite)\n", output);
        return 1;
    }
    if (output && (ret = check_writable_dir(output)) < 0) {
        fprintf(stderr, "refscope run: cannot write %s: %s\n", output, strerror(-ret));
        return 1;
    }
    if ((ret = shim_path(shim, sizeof(shim))) < 0) {
        fprintf(stderr, "refscope run: cannot find librefscope.so next to refscope: %s\n", strerror(-ret));
        return 1;
    }
    /* The recorder learns the default output name (it has the command's pid)
     * before the command runs: the gate pipe holds the child until then. */
    struct rs_recorder_config cfg = {
        .output = output, .force = force,
    };
    raise_fd_limit();
    if (rs_recorder_start(&cfg, &r, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope run: %s\n", err);
        return 1;
    }
    unsetenv(RS_ENV_UNTRACED); /* left by an earlier failed set-up; this run starts afresh */
    if (env_set(RS_ENV_SOCK, rs_recorder_socket(r)) || (ring_mb && env_set_int(RS_ENV_RING_MB, ring_mb)) ||
        (lossy && env_set(RS_ENV_LOSSY, "1")) || (native && env_set(RS_ENV_NATIVE, "1")))
        goto out;
    publish_run_dir(rs_recorder_socket(r), shim, preload_shim, sizeof(preload_shim));
    const char *old = getenv("LD_PRELOAD");
    if (!(preload = malloc(strlen(preload_shim) + (old ? strlen(old) : 0) + 2))) {
        fprintf(stderr, "refscope run: out of memory\n");
        goto out;
    }
    sprintf(preload, "%s%s%s", preload_shim, old && *old ? ":" : "", old && *old ? old : "");
    if (env_set("LD_PRELOAD", preload))
        goto out;
    if (pipe2(gate, O_CLOEXEC) < 0) {
        fprintf(stderr, "refscope run: pipe: %s\n", strerror(errno));
        goto out;
    }
    signal(SIGINT, SIG_IGN); /* the terminal's ^C reaches CMD; we stay to finish the traces */
    signal(SIGQUIT, SIG_IGN);
    int reaper = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "refscope run: fork: %s\n", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        close(gate[1]);
        child_exec(gate[0], argv + 1);
    }
    close(gate[0]);
    gate[0] = -1;
    child_pid = pid;
    struct sigaction sa = {.sa_handler = forward_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    if (!output) {
        snprintf(out_buf, sizeof(out_buf), "refscope-%d.rfs", (int)pid);
        if (!force && access(out_buf, F_OK) == 0) {
            fprintf(stderr, "refscope run: %s exists (use -f to overwrite)\n", out_buf);
            goto out; /* closing the gate makes the child exit unrun */
        }
        if ((ret = rs_recorder_set_output(r, out_buf)) < 0) {
            fprintf(stderr, "refscope run: %s: %s\n", out_buf, strerror(-ret));
            goto out;
        }
    }
    if (write(gate[1], "g", 1) != 1) {
        fprintf(stderr, "refscope run: cannot start %s\n", argv[1]);
        goto out;
    }
    close(gate[1]);
    gate[1] = -1;
    status = wait_child(pid);
    pid = -1;
    if (rs_recorder_finish(r, RUN_IDLE_MS, RUN_IDLE_MS, reaper ? descendants_alive : NULL) < 0)
        fprintf(stderr, "refscope run: some trace data could not be written (see above)\n");
    print_files(r, output ? output : out_buf);
out:
    if (gate[1] >= 0)
        close(gate[1]);
    if (pid > 0)
        wait_child(pid);
    free(preload);
    if (r)
        unpublish_run_dir(rs_recorder_socket(r));
    rs_recorder_free(r);
    return status;
}

/* The shim's direct form puts the socket in a private mkdtemp directory
 * named refscope-XXXXXX; once the socket is gone, remove it (rmdir only
 * removes it when empty, so nothing else can be lost). */
static void remove_shim_socket_dir(const char *sock)
{
    const char *slash = sock ? strrchr(sock, '/') : NULL;
    char dir[4096];
    if (!slash || slash == sock || (size_t)(slash - sock) >= sizeof(dir))
        return;
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - sock), sock);
    const char *base = strrchr(dir, '/');
    if (!strncmp(base ? base + 1 : dir, "refscope-", 9))
        rmdir(dir);
}

int cmd_record(int argc, char **argv)
{
    const char *sock = NULL, *output = NULL;
    int force = 0;
    char err[512];
    struct rs_recorder *r = NULL;
    const struct rs_opt opts[] = {
        {"serve", 0, RS_OPT_STR, &sock, 0, 0, NULL},
        {"output", 'o', RS_OPT_STR, &output, 0, 0, NULL},
        {"force", 'f', RS_OPT_FLAG, &force, 0, 0, NULL},
        RS_OPT_END,
    };
    const struct rs_cli cli = { "record", opts, "no arguments", 0, 0, 0 };
    if (rs_cli_parse(&cli, argc, argv) < 0)
        return 2;
    if (!sock || !output) {
        fprintf(stderr, "refscope record: needs --serve SOCK and -o OUT (see 'refscope record --help')\n");
        return 2;
    }
    struct rs_recorder_config cfg = {
        .output = output, .force = force, .socket_path = sock,
    };
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    if (rs_recorder_start(&cfg, &r, err, sizeof(err)) < 0) {
        fprintf(stderr, "refscope record: %s\n", err);
        return 1;
    }
    int ret = rs_recorder_finish(r, SERVE_IDLE_MS, SERVE_FIRST_WAIT_MS, NULL);
    rs_recorder_free(r);
    remove_shim_socket_dir(sock);
    return ret < 0 ? 1 : 0;
}
