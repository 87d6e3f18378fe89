/*
 * Allocations made inside a signal handler, for the native unwinder tests
 * (tests/integration/test_native.py). The stack of such an allocation runs
 * through the kernel's signal frame (glibc's __restore_rt, described by a
 * DWARF expression): the shim's own unwinder hands those to libunwind.
 *
 *   signal_alloc N   raises SIGUSR1 N times; the handler keeps one
 *                    malloc(9001) each time (in_handler); main keeps N
 *                    malloc(9002) of its own (in_main). Everything stays
 *                    live until exit.
 *
 * The handler runs synchronously (raise() from main, never inside malloc),
 * so calling malloc there is safe in this program.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_BLOCKS 100000

void *kept[2 * MAX_BLOCKS];     /* external: the stores must stay */
static volatile int nkept;

__attribute__((noinline)) static void in_handler(int sig)
{
    (void)sig;
    kept[nkept++] = malloc(9001);
}

__attribute__((noinline)) static void in_main(void)
{
    kept[nkept++] = malloc(9002);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 100;
    if (n < 0 || n > MAX_BLOCKS) {
        fprintf(stderr, "signal_alloc: N must be 0..%d\n", MAX_BLOCKS);
        return 2;
    }
    signal(SIGUSR1, in_handler);
    for (int i = 0; i < n; i++) {
        raise(SIGUSR1);
        in_main();
    }
    printf("%d\n", nkept);
    return 0;
}
