/*
 * Unit tests of /proc/<pid>/stat reading (common/proc.c): this process is
 * alive with its start time; a child is alive while it runs, not once it is
 * a zombie nor once it is reaped; a wrong start time (the pid reused by a
 * later process) is not alive; a thread-group leader that exited before its
 * other thread is still alive; a command name with spaces and parentheses
 * does not shift the fields; a socket names the process at its other end;
 * /proc/<pid>/maps names a memfd mapping while it exists (after a line
 * longer than the reader's buffer too), not after munmap, and nothing of a
 * zombie or a missing process; pids are written in decimal.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "refscope/proc.h"
#include "check_run.h"

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

START_TEST(self_is_alive)
{
    struct rs_proc_state st;
    ck_assert_int_eq(rs_proc_read((uint32_t)getpid(), &st), 0);
    ck_assert(st.state == 'R' || st.state == 'S');
    ck_assert_uint_ge(st.threads, 1);
    ck_assert_uint_gt(st.start_ticks, 0);
    ck_assert_int_eq(rs_proc_alive((uint32_t)getpid(), st.start_ticks), 1);
    ck_assert_int_eq(rs_proc_alive((uint32_t)getpid(), st.start_ticks + 1), 0);
    ck_assert_int_eq(rs_proc_read(0x3fffffff, &st), -ESRCH);
    ck_assert_int_eq(rs_proc_alive(0x3fffffff, 0), 0);
}
END_TEST

static void *linger(void *arg)
{
    int fd = *(int *)arg;
    char c;
    (void)!read(fd, &c, 1);
    return NULL;
}

/* A child that lives until *release is closed: on its main thread, or,
 * with leader_leaves, on a second thread after its main thread (the
 * thread-group leader) has called pthread_exit. Its start time goes to
 * *start. */
static pid_t gated_child(int leader_leaves, int *release, uint64_t *start)
{
    int gate[2];
    ck_assert_int_eq(pipe(gate), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        pthread_t t;
        close(gate[1]);
        if (!leader_leaves) {
            linger(&gate[0]);
            _exit(0);
        }
        if (pthread_create(&t, NULL, linger, &gate[0]) != 0)
            _exit(3);
        pthread_exit(NULL); /* the process lives on in t */
    }
    close(gate[0]);
    *release = gate[1];
    struct rs_proc_state st;
    ck_assert_int_eq(rs_proc_read((uint32_t)pid, &st), 0);
    *start = st.start_ticks;
    return pid;
}

/* Waits (up to a second) until pid's state is 'Z'; its stat line in *st. */
static void wait_zombie(pid_t pid, struct rs_proc_state *st)
{
    for (int i = 0; i < 500; i++) {
        ck_assert_int_eq(rs_proc_read((uint32_t)pid, st), 0);
        if (st->state == 'Z')
            return;
        sleep_ms(2);
    }
    ck_abort_msg("process %d never became a zombie", (int)pid);
}

START_TEST(child_alive_then_zombie_then_gone)
{
    int release;
    uint64_t start;
    pid_t pid = gated_child(0, &release, &start);
    struct rs_proc_state st;
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 1);
    close(release); /* the child exits: a zombie until reaped */
    wait_zombie(pid, &st);
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 0);
    ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 0);
}
END_TEST

START_TEST(leader_gone_before_its_thread)
{
    int release;
    uint64_t start;
    pid_t pid = gated_child(1, &release, &start);
    struct rs_proc_state st;
    wait_zombie(pid, &st); /* the leader's state; the process lives on */
    ck_assert_uint_ge(st.threads, 2);
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 1);
    close(release); /* the last thread returns: the process exits */
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 0);
}
END_TEST

START_TEST(odd_command_name)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_NAME, "a) b (c) 1 2", 0, 0, 0);
        pause();
        _exit(0);
    }
    struct rs_proc_state st, self;
    ck_assert_int_eq(rs_proc_read((uint32_t)getpid(), &self), 0);
    int named = 0;
    char path[64], comm[64] = "";
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    for (int i = 0; i < 500 && !named; i++) {
        FILE *f = fopen(path, "r");
        if (f) {
            named = fgets(comm, sizeof(comm), f) && comm[0] == 'a';
            fclose(f);
        }
        if (!named)
            sleep_ms(2);
    }
    ck_assert(named);
    ck_assert_int_eq(rs_proc_read((uint32_t)pid, &st), 0);
    ck_assert(st.state == 'S' || st.state == 'R');
    ck_assert_uint_eq(st.threads, 1);
    ck_assert_uint_ge(st.start_ticks, self.start_ticks);
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, st.start_ticks), 1);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}
END_TEST

START_TEST(socket_identifies_its_peer)
{
    int sv[2], pipe_fds[2];
    struct rs_proc_state st;
    struct rs_proc_id id;
    ck_assert_int_eq(rs_proc_read((uint32_t)getpid(), &st), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    /* socketpair: this process made the other end */
    rs_proc_identify(sv[0], &id);
    ck_assert_uint_eq(id.pid, (uint32_t)getpid());
    ck_assert_uint_eq(id.start_ticks, st.start_ticks);
    ck_assert_int_eq(rs_proc_id_alive(&id), 1);
    ck_assert_int_eq(pipe(pipe_fds), 0);
    rs_proc_identify(pipe_fds[0], &id); /* not a socket */
    ck_assert_uint_eq(id.pid, 0);
    ck_assert_uint_eq(id.start_ticks, 0);
    ck_assert_int_lt(rs_proc_id_alive(&id), 0); /* unknown, not "exited" */
    rs_proc_identify(-1, &id);
    ck_assert_uint_eq(id.pid, 0);
    close(sv[0]);
    close(sv[1]);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}
END_TEST

/* The end of a connection whose process has exited: identified while it
 * lived, then no longer alive, as the shim and the recorder see each other. */
START_TEST(identified_peer_that_exits_is_not_alive)
{
    int sv[2];
    char byte = 0;
    struct rs_proc_id id;
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* SO_PEERCRED of a socketpair names the process that made it,
         * so the child makes one and passes an end to the parent */
        int cv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, cv) < 0)
            _exit(1);
        char cbuf[CMSG_SPACE(sizeof(int))] = {0};
        struct iovec iov = { &byte, 1 };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                              .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &cv[0], sizeof(int));
        if (sendmsg(sv[1], &msg, 0) != 1)
            _exit(1);
        if (read(sv[1], &byte, 1) != 1) /* until the parent has identified us */
            _exit(1);
        _exit(0);
    }
    close(sv[1]);
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { &byte, 1 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
    ck_assert_int_eq(recvmsg(sv[0], &msg, 0), 1);
    int theirs;
    memcpy(&theirs, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
    rs_proc_identify(theirs, &id); /* the other end of the child's pair: the child */
    ck_assert_uint_eq(id.pid, (uint32_t)pid);
    ck_assert_uint_ne(id.start_ticks, 0);
    ck_assert_int_eq(rs_proc_id_alive(&id), 1);
    ck_assert_int_eq(write(sv[0], &byte, 1), 1);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_int_eq(rs_proc_id_alive(&id), 0);
    close(theirs);
    close(sv[0]);
}
END_TEST

/* The three ways to ask whether a process has a file mapped at an
 * address: rs_proc_maps_file (the kernel's look-up, else the scan) and each
 * alone. A kernel without PROCMAP_QUERY (before 6.11) answers -ENOTTY to
 * the look-up: that way is then left out. */
enum maps_way { MAPS_FILE, MAPS_QUERY, MAPS_SCAN, MAPS_WAYS };
static const char *const maps_way_name[MAPS_WAYS] = { "file", "query", "scan" };

static int maps_query_works(void)
{
    return rs_proc_maps_query((uint32_t)getpid(), 0, 0, 0) != -ENOTTY;
}

static int maps_has_way(enum maps_way way, pid_t pid, int fd, const void *addr)
{
    struct stat st;
    ck_assert_int_eq(fstat(fd, &st), 0);
    uint64_t a = (uint64_t)(uintptr_t)addr;
    switch (way) {
    case MAPS_QUERY: return rs_proc_maps_query((uint32_t)pid, a, st.st_dev, st.st_ino);
    case MAPS_SCAN: return rs_proc_maps_scan((uint32_t)pid, a, st.st_dev, st.st_ino);
    default: return rs_proc_maps_file((uint32_t)pid, a, st.st_dev, st.st_ino);
    }
}

/* Every way that works here gives `want`. */
#define ck_maps(pid, fd, addr, want)                                                        \
    do {                                                                                    \
        for (int way_ = 0; way_ < MAPS_WAYS; way_++) {                                      \
            if (way_ == MAPS_QUERY && !maps_query_works())                                  \
                continue;                                                                   \
            int got_ = maps_has_way((enum maps_way)way_, (pid), (fd), (addr));              \
            ck_assert_msg(got_ == (want), "%s: %d, not %d", maps_way_name[way_], got_, (want)); \
        }                                                                                   \
    } while (0)

START_TEST(maps_name_a_memfd_while_mapped)
{
    int fd = memfd_create("refscope-check", MFD_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, 1 << 16), 0);
    int other = memfd_create("refscope-check-other", MFD_CLOEXEC);
    ck_assert_int_ge(other, 0);
    ck_assert_int_eq(ftruncate(other, 1 << 16), 0);
    void *map = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ck_assert(map != MAP_FAILED);
    ck_maps(getpid(), fd, map, 1);
    ck_maps(getpid(), other, map, 0);                  /* another file there */
    ck_maps(getpid(), fd, (char *)map + 4096, 0);      /* not where it starts */
    ck_assert_int_eq(rs_proc_maps_file((uint32_t)getpid(), (uint64_t)(uintptr_t)map, 0, 0), 0);
    ck_assert_int_eq(munmap(map, 1 << 16), 0);
    ck_maps(getpid(), fd, map, 0);                     /* nothing there now */
    /* the same file mapped elsewhere is not the mapping asked about */
    void *again = mmap(NULL, 1 << 16, PROT_READ, MAP_SHARED, fd, 0);
    ck_assert(again != MAP_FAILED);
    if (again != map)
        ck_maps(getpid(), fd, map, 0);
    ck_maps(getpid(), fd, again, 1);
    munmap(again, 1 << 16);
    ck_maps(0x3fffffff, fd, map, -ESRCH);
    close(other);
    close(fd);
}
END_TEST

/* Tens of thousands of mappings in front of the one asked about: the scan
 * stops after RS_PROC_MAPS_SCAN_MAX bytes and says it cannot tell; the
 * kernel's look-up still finds it. */
START_TEST(maps_scan_gives_up_past_its_limit)
{
    int fd = memfd_create("refscope-check", MFD_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, 4096), 0);
    void *ring = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    ck_assert(ring != MAP_FAILED);
    /* maps lists mappings by address, and new ones go below older ones */
    size_t pages = 2 * 12000;
    char *many = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert(many != MAP_FAILED);
    ck_assert((uintptr_t)many < (uintptr_t)ring);
    for (size_t i = 0; i < pages; i += 2) /* 24,000 mappings of alternating rights */
        ck_assert_int_eq(mprotect(many + i * 4096, 4096, PROT_READ), 0);
    ck_assert_int_eq(maps_has_way(MAPS_SCAN, getpid(), fd, ring), -E2BIG);
    if (maps_query_works()) {
        ck_assert_int_eq(maps_has_way(MAPS_QUERY, getpid(), fd, ring), 1);
        ck_assert_int_eq(maps_has_way(MAPS_FILE, getpid(), fd, ring), 1);
    } else {
        ck_assert_int_eq(maps_has_way(MAPS_FILE, getpid(), fd, ring), -E2BIG);
    }
    munmap(many, pages * 4096);
    ck_maps(getpid(), fd, ring, 1); /* few mappings again: every way finds it */
    munmap(ring, 4096);
    close(fd);
}
END_TEST

START_TEST(maps_after_a_line_longer_than_the_buffer)
{
    char dir[] = "/tmp/refscope-check-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[4200];
    size_t n = (size_t)snprintf(path, sizeof(path), "%s", dir);
    char part[250];
    memset(part, 'd', sizeof(part) - 1);
    part[sizeof(part) - 1] = 0;
    int depth = 0;
    /* components of up to 249 bytes until the path is 4080 bytes long
     * (PATH_MAX is 4096); its maps line is ~4150 */
    while (n < 4080 - 3) {
        size_t len = 4080 - 3 - n - 1 < sizeof(part) - 1 ? 4080 - 3 - n - 1 : sizeof(part) - 1;
        n += (size_t)snprintf(path + n, sizeof(path) - n, "/%.*s", (int)len, part);
        ck_assert_int_eq(mkdir(path, 0700), 0);
        depth++;
    }
    n += (size_t)snprintf(path + n, sizeof(path) - n, "/f");
    ck_assert_uint_ge(n, 4070);
    int file = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ck_assert_int_ge(file, 0);
    ck_assert_int_eq(ftruncate(file, 4096), 0);
    /* map the long-named file below a memfd, so the memfd comes after it */
    void *low = mmap(NULL, 4096, PROT_READ, MAP_SHARED, file, 0);
    ck_assert(low != MAP_FAILED);
    int mfd = memfd_create("refscope-check", MFD_CLOEXEC);
    ck_assert_int_ge(mfd, 0);
    ck_assert_int_eq(ftruncate(mfd, 4096), 0);
    void *high = mmap((char *)low + (1 << 30), 4096, PROT_READ, MAP_SHARED, mfd, 0);
    ck_assert(high != MAP_FAILED);
    ck_maps(getpid(), file, low, 1);
    ck_maps(getpid(), mfd, high, 1);
    munmap(high, 4096);
    munmap(low, 4096);
    close(mfd);
    close(file);
    ck_assert_int_eq(unlink(path), 0);
    for (; depth >= 0; depth--) {
        char *slash = strrchr(path, '/');
        *slash = 0;
        ck_assert_int_eq(rmdir(path), 0);
    }
}
END_TEST

START_TEST(maps_of_a_zombie_name_nothing)
{
    int release;
    uint64_t start;
    pid_t pid = gated_child(0, &release, &start);
    int fd = memfd_create("refscope-check", MFD_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_maps(pid, fd, (void *)0x10000, 0); /* a live process that maps other things */
    struct rs_proc_state st;
    close(release);
    wait_zombie(pid, &st);
    ck_maps(pid, fd, (void *)0x10000, -ESRCH);
    ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
    close(fd);
}
END_TEST

START_TEST(pids_in_decimal)
{
    char out[12];
    ck_assert_uint_eq(rs_proc_decimal(out, 0), 1);
    ck_assert_str_eq(out, "0");
    ck_assert_uint_eq(rs_proc_decimal(out, 4194304), 7);
    ck_assert_str_eq(out, "4194304");
    ck_assert_uint_eq(rs_proc_decimal(out, UINT32_MAX), 10);
    ck_assert_str_eq(out, "4294967295");
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        self_is_alive,
        child_alive_then_zombie_then_gone,
        leader_gone_before_its_thread,
        odd_command_name,
        socket_identifies_its_peer,
        identified_peer_that_exits_is_not_alive,
        maps_name_a_memfd_while_mapped,
        maps_scan_gives_up_past_its_limit,
        maps_after_a_line_longer_than_the_buffer,
        maps_of_a_zombie_name_nothing,
        pids_in_decimal,
    };
    return rs_check_run("proc", 30, tests, sizeof(tests) / sizeof(tests[0]));
}
