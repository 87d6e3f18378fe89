/*
 * A C program with an exact, documented number of allocator calls, for
 * tests/integration/test_pipeline_c.py. Every block it allocates has a
 * "marker" size in [7000, 7100) so a test can tell them from libc's own
 * allocations; the counts below are what the trace must show.
 *
 * Parent process (pid P), main thread:
 *   malloc(7001)                x 10, each freed              10 alloc  10 free
 *   calloc(1, 7002)             x 5,  each freed               5 alloc   5 free (ZEROED)
 *   malloc(7003) + realloc(p, 7004) + free                   1 alloc + 1 realloc pair + 1 free
 *   realloc(NULL, 7005) (plain alloc) + realloc(p, 0) (frees) 1 alloc   1 free
 *   reallocarray(NULL, 7, 1001) = 7007 bytes + free            1 alloc   1 free
 *   posix_memalign 7008, aligned_alloc(64, 7040), memalign 7009,
 *   valloc 7010, pvalloc 7011, each freed                      5 alloc   5 free (ALIGNED)
 * Two threads, each:
 *   malloc(7020) x 1000, each freed                         1000 alloc 1000 free
 * One fork child (its own trace, parent P), before exit(0):
 *   malloc(7030) x 100, each freed                           100 alloc  100 free
 *
 * Parent totals (marker sizes, realloc halves excluded): 2023 allocations,
 * 2023 frees, plus one realloc (FREE|REALLOC of the 7003 block, ALLOC|REALLOC
 * of 7004). Child totals: 100 and 100.
 *
 * `known_mallocs kill N` instead allocates N blocks of 7050 bytes, keeps
 * them, and kills itself with SIGKILL.
 */
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SINK(p) __asm__ volatile("" : : "r"(p) : "memory") /* keep calls from being elided */

static void *thread_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++) {
        void *p = malloc(7020);
        SINK(p);
        free(p);
    }
    return NULL;
}

static int killed(int n)
{
    for (int i = 0; i < n; i++) {
        void *p = malloc(7050);
        SINK(p);
        memset(p, 1, 16);
    }
    kill(getpid(), SIGKILL);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "kill") == 0)
        return killed(atoi(argv[2]));

    void *p, *q;
    for (int i = 0; i < 10; i++) {
        p = malloc(7001);
        SINK(p);
        free(p);
    }
    for (int i = 0; i < 5; i++) {
        p = calloc(1, 7002);
        SINK(p);
        free(p);
    }
    p = malloc(7003);
    SINK(p);
    q = realloc(p, 7004);
    SINK(q);
    free(q);

    p = realloc(NULL, 7005);
    SINK(p);
    q = realloc(p, 0);
    SINK(q);

    p = reallocarray(NULL, 7, 1001);
    SINK(p);
    free(p);

    if (posix_memalign(&p, 64, 7008) != 0)
        return 2;
    free(p);
    p = aligned_alloc(64, 7040);
    SINK(p);
    free(p);
    p = memalign(64, 7009);
    SINK(p);
    free(p);
    p = valloc(7010);
    SINK(p);
    free(p);
    p = pvalloc(7011);
    SINK(p);
    free(p);

    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&threads[i], NULL, thread_main, NULL) != 0)
            return 3;
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);

    pid_t child = fork();
    if (child < 0)
        return 4;
    if (child == 0) {
        for (int i = 0; i < 100; i++) {
            p = malloc(7030);
            SINK(p);
            free(p);
        }
        exit(0);
    }
    int status = 0;
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 5;
    printf("known_mallocs: done, child %d\n", (int)child);
    return 0;
}
