/*
 * Unit tests of /proc/<pid>/stat reading (common/proc.c): this process is
 * alive with its start time; a child is alive while it runs, not once it is
 * a zombie nor once it is reaped; a wrong start time (the pid reused by a
 * later process) is not alive; a thread-group leader that exited before its
 * other thread is still alive; a command name with spaces and parentheses
 * does not shift the fields; a socket names the process at its other end.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
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

START_TEST(socket_names_its_peer)
{
    int sv[2], pipe_fds[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    /* socketpair: this process made the other end */
    ck_assert_uint_eq(rs_proc_peer(sv[0]), (uint32_t)getpid());
    ck_assert_int_eq(pipe(pipe_fds), 0);
    ck_assert_uint_eq(rs_proc_peer(pipe_fds[0]), 0); /* not a socket */
    ck_assert_uint_eq(rs_proc_peer(-1), 0);
    close(sv[0]);
    close(sv[1]);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {
        self_is_alive,
        child_alive_then_zombie_then_gone,
        leader_gone_before_its_thread,
        odd_command_name,
        socket_names_its_peer,
    };
    return rs_check_run("proc", 30, tests, sizeof(tests) / sizeof(tests[0]));
}
