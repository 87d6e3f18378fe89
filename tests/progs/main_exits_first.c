/*
 * A C program whose main thread leaves first, for
 * tests/integration/test_pipeline_c.py: main starts a thread and calls
 * pthread_exit. The process lives on in that thread, which waits 0.3 s,
 * allocates 300 blocks of 6161 bytes (kept), prints "done" and returns;
 * the process then exits with status 0 as if by exit(0). The recorder must
 * not take the exited thread-group leader for the end of the process.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void *keep[300]; /* kept live to the end (global: the compiler keeps the calls) */

static void *worker(void *arg)
{
    (void)arg;
    usleep(300000);
    for (int i = 0; i < 300; i++)
        keep[i] = malloc(6161);
    printf("done\n");
    fflush(stdout);
    return NULL;
}

int main(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0) {
        fprintf(stderr, "main_exits_first: pthread_create failed\n");
        return 1;
    }
    pthread_exit(NULL);
}
