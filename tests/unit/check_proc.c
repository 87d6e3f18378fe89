/*
 * Unit tests of /proc/<pid>/stat reading (common/proc.c): this process is
 * alive with its start time; a child is alive while it runs, not once it is
 * a zombie nor once it is reaped; a wrong start time (the pid reused by a
 * later process) is not alive; a thread-group leader that exited before its
 * other thread is still alive; a command name with spaces and parentheses
 * does not shift the fields.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
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

START_TEST(child_alive_then_zombie_then_gone)
{
    int gate[2];
    ck_assert_int_eq(pipe(gate), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char c;
        close(gate[1]);
        (void)!read(gate[0], &c, 1);
        _exit(0);
    }
    close(gate[0]);
    struct rs_proc_state st;
    ck_assert_int_eq(rs_proc_read((uint32_t)pid, &st), 0);
    uint64_t start = st.start_ticks;
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 1);
    close(gate[1]); /* the child exits: a zombie until reaped */
    int zombie = 0;
    for (int i = 0; i < 500 && !zombie; i++) {
        ck_assert_int_eq(rs_proc_read((uint32_t)pid, &st), 0);
        zombie = st.state == 'Z';
        if (!zombie)
            sleep_ms(2);
    }
    ck_assert(zombie);
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 0);
    ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 0);
}
END_TEST

static void *linger(void *arg)
{
    int fd = *(int *)arg;
    char c;
    (void)!read(fd, &c, 1);
    return NULL;
}

START_TEST(leader_gone_before_its_thread)
{
    int gate[2];
    ck_assert_int_eq(pipe(gate), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        pthread_t t;
        close(gate[1]);
        if (pthread_create(&t, NULL, linger, &gate[0]) != 0)
            _exit(3);
        pthread_exit(NULL); /* the leader leaves; the process lives in t */
    }
    close(gate[0]);
    struct rs_proc_state st;
    ck_assert_int_eq(rs_proc_read((uint32_t)pid, &st), 0);
    uint64_t start = st.start_ticks;
    int zombie_leader = 0;
    for (int i = 0; i < 500 && !zombie_leader; i++) {
        ck_assert_int_eq(rs_proc_read((uint32_t)pid, &st), 0);
        zombie_leader = st.state == 'Z';
        if (!zombie_leader)
            sleep_ms(2);
    }
    ck_assert(zombie_leader);
    ck_assert_uint_ge(st.threads, 2);
    ck_assert_int_eq(rs_proc_alive((uint32_t)pid, start), 1);
    close(gate[1]); /* the last thread returns: the process exits */
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

int main(void)
{
    const TTest *tests[] = {
        self_is_alive,
        child_alive_then_zombie_then_gone,
        leader_gone_before_its_thread,
        odd_command_name,
    };
    return rs_check_run("proc", 30, tests, sizeof(tests) / sizeof(tests[0]));
}
