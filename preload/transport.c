/*
 * Producer side of the recorder transport: makes this process's memfd ring,
 * hands it to the recorder over a unix socket (SCM_RIGHTS), waits at exit
 * for the recorder to have the trace on disk, and — in the direct form —
 * starts a detached recorder. Runs in the constructor, the destructor and
 * the atfork child handler: syscalls only, no allocation, no stdio. Writes
 * use MSG_NOSIGNAL so a dead recorder never raises SIGPIPE in the traced
 * program.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "refscope/clock.h"
#include "refscope/proc.h"
#include "transport.h"

#define RING_MIN_BYTES (64u << 10)

int rs_transport_ring_create(uint64_t slot_bytes, uint32_t ring_flags, uint32_t pid,
                             struct rs_ring *ring, int *memfd)
{
    uint64_t bytes = RING_MIN_BYTES;
    while (bytes * 2 <= slot_bytes && bytes < (1ull << 40))
        bytes *= 2;
    size_t map_bytes = RS_RING_HEADER_BYTES + bytes;
    void *map = MAP_FAILED;
    int rc;

    int fd = memfd_create("refscope-ring", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)map_bytes) < 0) {
        rc = -errno;
        goto fail;
    }
    map = mmap(NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    rc = rs_ring_format(ring, map, map_bytes, ring_flags, pid);
    if (rc < 0)
        goto fail;
    *memfd = fd;
    return 0;
fail:
    if (map != MAP_FAILED)
        munmap(map, map_bytes);
    close(fd);
    return rc;
}

void rs_transport_ring_destroy(struct rs_ring *ring, int memfd)
{
    if (ring->hdr)
        munmap(ring->hdr, ring->map_bytes);
    ring->hdr = NULL;
    ring->slots = NULL;
    if (memfd >= 0)
        close(memfd);
}

static int sock_address(const char *path, struct sockaddr_un *addr)
{
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(addr->sun_path))
        return -ENAMETOOLONG;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, n);
    return 0;
}

int rs_transport_connect(const char *path, int *sock)
{
    struct sockaddr_un addr;
    int rc = sock_address(path, &addr);
    if (rc < 0)
        return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    while (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        if (errno == EINTR)
            continue;
        rc = -errno;
        close(fd);
        return rc;
    }
    *sock = fd;
    return 0;
}

static uint64_t now_ms(void)
{
    return rs_clock_mono_ns() / 1000000;
}

/* Reads the recorder's ACK within timeout_ms. Returns 0, the reply's
 * negative status, or a negative errno. */
static int read_ack(int sock, int timeout_ms)
{
    struct rs_reply reply;
    size_t got = 0;
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    while (got < sizeof(reply)) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd pfd = { .fd = sock, .events = POLLIN };
        int n = poll(&pfd, 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -ETIMEDOUT;
        ssize_t r = recv(sock, (char *)&reply + got, sizeof(reply) - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -ECONNRESET;
        got += (size_t)r;
    }
    if (reply.msg != RS_MSG_ACK)
        return -EPROTO;
    return reply.status < 0 ? reply.status : 0;
}

int rs_transport_hello(int sock, int memfd, const struct rs_hello *hello, int timeout_ms)
{
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct iovec iov = { .iov_base = (void *)hello, .iov_len = sizeof(*hello) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &memfd, sizeof(int));

    ssize_t sent;
    do
        sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return -errno;
    if ((size_t)sent != sizeof(*hello))
        return -EIO;

    return read_ack(sock, timeout_ms);
}

#define DONE_CHECK_MS 100 /* how often a waiting exit looks whether the recorder died */

int rs_transport_wait_done(const struct rs_ring *ring, const struct rs_proc_id *recorder,
                           int timeout_ms)
{
    uint32_t *done = &ring->hdr->done;
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        uint32_t v = __atomic_load_n(done, __ATOMIC_ACQUIRE);
        if (v != 0)
            return v == RS_RING_DONE_OK ? 0 : -EIO;
        uint64_t now = now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        if (rs_proc_id_alive(recorder) == 0)
            return __atomic_load_n(done, __ATOMIC_ACQUIRE) ? 0 : -ECONNRESET;
        uint64_t wait = deadline - now < DONE_CHECK_MS ? deadline - now : DONE_CHECK_MS;
        struct timespec ts = { (time_t)(wait / 1000), (long)(wait % 1000) * 1000000L };
        /* a shared (not private) futex: the recorder wakes it from its process */
        syscall(SYS_futex, done, FUTEX_WAIT, 0, &ts, NULL, 0);
    }
}

/* ---- direct form: a detached recorder ------------------------------------------- */

static size_t append(char *dst, size_t pos, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (pos + n >= cap)
        n = pos < cap ? cap - pos - 1 : 0;
    memcpy(dst + pos, src, n);
    dst[pos + n] = 0;
    return pos + n;
}

/* The grandchild: own session (a ^C for the program must not kill the
 * recorder before it has written the trace), no inherited descriptors but
 * stderr, no preload (the recorder must not trace itself). */
static void exec_recorder(const char *recorder, const char *output, const char *sock_path,
                          int report_fd)
{
    setsid();
    int self = getpid();
    (void)!write(report_fd, &self, sizeof(self));
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, 0);
        dup2(devnull, 1);
        if (devnull > 2)
            close(devnull);
    }
    for (int fd = 3; fd < 1024; fd++)
        if (fd != report_fd)
            close(fd);
    unsetenv("LD_PRELOAD");
    unsetenv(RS_ENV_SOCK);
    signal(SIGPIPE, SIG_DFL);
    char *argv[] = { (char *)recorder, "record", "--serve", (char *)sock_path,
                     "-o", (char *)output, NULL };
    execv(recorder, argv);
    int err = errno;
    (void)!write(report_fd, &err, sizeof(err));
    _exit(127);
}

int rs_transport_spawn(const char *recorder, const char *output, char *sock_path,
                       size_t sock_path_len, int *sock, int timeout_ms)
{
    char dir[64];
    const char *tmp = "/tmp/refscope-XXXXXX";
    memcpy(dir, tmp, strlen(tmp) + 1);
    if (!mkdtemp(dir))
        return -errno;
    size_t n = append(sock_path, 0, sock_path_len, dir);
    if (append(sock_path, n, sock_path_len, "/sock") != n + 5) {
        rmdir(dir);
        return -ENAMETOOLONG;
    }

    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0) {
        int rc = -errno;
        rmdir(dir);
        return rc;
    }
    pid_t child = fork();
    if (child < 0) {
        int rc = -errno;
        close(report[0]);
        close(report[1]);
        rmdir(dir);
        return rc;
    }
    if (child == 0) {
        close(report[0]);
        pid_t grandchild = fork();
        if (grandchild == 0)
            exec_recorder(recorder, output, sock_path, report[1]);
        _exit(grandchild < 0 ? 1 : 0);
    }
    close(report[1]);
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;

    /* The grandchild reports its pid, then either nothing (exec worked: the
     * pipe closed on exec) or the exec errno. */
    int words[2] = { 0, 0 };
    size_t got = 0;
    while (got < sizeof(words)) {
        ssize_t r = read(report[0], (char *)words + got, sizeof(words) - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(report[0]);
    if (got < sizeof(int)) {
        rmdir(dir);
        return -ECHILD;
    }
    if (got == sizeof(words)) {
        rmdir(dir);
        return -words[1];
    }
    pid_t recorder_pid = words[0];

    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int rc = rs_transport_connect(sock_path, sock);
        if (rc == 0)
            return 0;
        if ((rc != -ENOENT && rc != -ECONNREFUSED) || now_ms() >= deadline ||
            (kill(recorder_pid, 0) < 0 && errno == ESRCH))
            return rc == -ENOENT ? -ECONNREFUSED : rc;
        struct timespec ts = { 0, 5 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}
