/*
 * A signal the shim catches for itself (SIGUSR2: a heap snapshot on request)
 * while the program leaves it at its default, without the program seeing a
 * handler (preload/sigkeep.c, which interposes sigaction and the signal()
 * family).
 */
#ifndef REFSCOPE_SIGKEEP_H
#define REFSCOPE_SIGKEEP_H

#include <signal.h>

typedef void (*rs_sigkeep_fn)(int sig, siginfo_t *info, void *uc);

/* Resolve the real sigaction and signal functions. Core constructor. */
void rs_sigkeep_resolve(void);

/* Catch `sig` with `fn` whenever the program's disposition of it is the
 * default: now, if it is, and again each time the program sets it back to
 * SIG_DFL. Meanwhile the program's sigaction/signal calls on `sig` report
 * and record the default it believes is installed; a handler or SIG_IGN of
 * its own goes to the kernel as asked and `fn` stops being called. One
 * signal per process; a second claim fails. Returns 0, -EBUSY, -ENOSYS (no
 * real sigaction) or sigaction's -errno. Call it from a constructor or a
 * late Python start (pyver.h). `fn` runs as an SA_SIGINFO | SA_RESTART
 * handler with no other signal masked. */
int rs_sigkeep_claim(int sig, rs_sigkeep_fn fn);

#endif
