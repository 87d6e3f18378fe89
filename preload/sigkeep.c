/*
 * The shim's own signal (SIGUSR2, a heap snapshot on request: snapshot.c),
 * caught without the program seeing a handler. Programs read dispositions:
 * CPython's signal module reads every one at start-up, and a handler it did
 * not install makes signal.getsignal() return None, which signal.signal()
 * refuses when a program restores it (save, replace, restore is the common
 * pattern; CPython's test_signal fails on it). So while the program leaves
 * the signal at its default, the kernel runs the shim's handler, and the
 * program's sigaction()/signal() calls on it report and record the default
 * it believes it has. A handler or SIG_IGN of the program's own goes to the
 * kernel as asked, and the shim stops catching the signal until the program
 * sets it back to SIG_DFL.
 *
 * Interposes sigaction, signal, bsd_signal, sysv_signal and __sysv_signal.
 * Other signals pass straight through. The claimed one takes a lock with
 * every signal blocked, so a program's handler that calls sigaction cannot
 * deadlock against its own thread; a fork child starts with it unlocked.
 * No allocation. sigset() and a raw rt_sigaction system call are not seen.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include "backoff.h"
#include "shim.h"
#include "sigkeep.h"

typedef void (*handler_fn)(int);
typedef handler_fn (*signal_fn)(int, handler_fn);

static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static signal_fn real_signal, real_bsd_signal, real_sysv_signal, real___sysv_signal;

static int claimed;              /* the claimed signal; 0 = none (read unlocked) */
static int catching;             /* the kernel runs `ours` for it                */
static struct sigaction ours;    /* the shim's disposition                       */
static struct sigaction view;    /* the program's (a default) while catching     */
static int lock_word;

void rs_sigkeep_resolve(void)
{
    real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    real_signal = (signal_fn)dlsym(RTLD_NEXT, "signal");
    real_bsd_signal = (signal_fn)dlsym(RTLD_NEXT, "bsd_signal");
    real_sysv_signal = (signal_fn)dlsym(RTLD_NEXT, "sysv_signal");
    real___sysv_signal = (signal_fn)dlsym(RTLD_NEXT, "__sysv_signal");
}

/* A program that calls these before the core constructor (another preloaded
 * library's constructor) resolves them first. */
static void resolve_once(void)
{
    if (!__atomic_load_n(&real_sigaction, __ATOMIC_ACQUIRE))
        rs_sigkeep_resolve();
}

static void lock(sigset_t *saved)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, saved);
    struct rs_backoff b = RS_BACKOFF_INIT;
    while (__atomic_exchange_n(&lock_word, 1, __ATOMIC_ACQUIRE))
        rs_backoff(&b, UINT64_MAX);
}

static void unlock(const sigset_t *saved)
{
    __atomic_store_n(&lock_word, 0, __ATOMIC_RELEASE);
    pthread_sigmask(SIG_SETMASK, saved, NULL);
}

static void fork_child(void)
{
    __atomic_store_n(&lock_word, 0, __ATOMIC_RELAXED);
}

/* SIG_DFL, as the kernel reads it (sa_handler and sa_sigaction share it). */
static int is_default(const struct sigaction *act)
{
    return act->sa_handler == SIG_DFL;
}

/* sigaction on the claimed signal, under the lock; -1 with errno set. */
static int claimed_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    struct sigaction prev;
    if (catching) {
        prev = view;
        if (act && !is_default(act)) {
            if (real_sigaction(sig, act, NULL) < 0)
                return -1;
            catching = 0;
        } else if (act) {
            view = *act;
        }
    } else if (act && is_default(act)) {
        if (real_sigaction(sig, &ours, &prev) < 0)
            return -1;
        view = *act;
        catching = 1;
    } else {
        return real_sigaction(sig, act, old);
    }
    if (old)
        *old = prev;
    return 0;
}

int rs_sigkeep_claim(int sig, rs_sigkeep_fn fn)
{
    struct sigaction cur;
    if (__atomic_load_n(&claimed, __ATOMIC_ACQUIRE))
        return -EBUSY;
    resolve_once();
    if (!real_sigaction)
        return -ENOSYS;
    /* under the lock: a libpython loaded later claims with threads running */
    sigset_t saved;
    int rc = 0;
    lock(&saved);
    memset(&ours, 0, sizeof(ours));
    ours.sa_sigaction = fn;
    ours.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&ours.sa_mask);
    if (real_sigaction(sig, NULL, &cur) < 0) {
        rc = -errno;
    } else if (is_default(&cur)) {
        if (real_sigaction(sig, &ours, NULL) < 0) {
            rc = -errno;
        } else {
            view = cur;
            catching = 1;
        }
    }
    if (rc == 0)
        __atomic_store_n(&claimed, sig, __ATOMIC_RELEASE);
    unlock(&saved);
    if (rc == 0)
        pthread_atfork(NULL, NULL, fork_child);
    return rc;
}

/* ---- the interposed functions ---------------------------------------------------- */

RS_EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    resolve_once();
    if (!real_sigaction) {
        errno = ENOSYS;
        return -1;
    }
    if (sig == 0 || sig != __atomic_load_n(&claimed, __ATOMIC_ACQUIRE))
        return real_sigaction(sig, act, old);
    sigset_t saved;
    lock(&saved);
    int rc = claimed_sigaction(sig, act, old);
    int err = errno;
    unlock(&saved);
    errno = err;
    return rc;
}

/* The signal() family on the claimed signal, as glibc builds them on
 * sigaction: `flags` and whether the signal masks itself in its handler. */
static handler_fn keep_signal(int sig, handler_fn h, signal_fn *real, int flags, int self_mask)
{
    resolve_once();
    if (sig == 0 || sig != __atomic_load_n(&claimed, __ATOMIC_ACQUIRE)) {
        if (!*real) {
            errno = ENOSYS;
            return SIG_ERR;
        }
        return (*real)(sig, h);
    }
    if (h == SIG_ERR) {
        errno = EINVAL;
        return SIG_ERR;
    }
    struct sigaction act, old;
    memset(&act, 0, sizeof(act));
    act.sa_handler = h;
    act.sa_flags = flags;
    sigemptyset(&act.sa_mask);
    if (self_mask)
        sigaddset(&act.sa_mask, sig);
    if (sigaction(sig, &act, &old) < 0)
        return SIG_ERR;
    return old.sa_handler;
}

RS_EXPORT handler_fn signal(int sig, handler_fn h)
{
    return keep_signal(sig, h, &real_signal, SA_RESTART, 1);
}

RS_EXPORT handler_fn bsd_signal(int sig, handler_fn h)
{
    return keep_signal(sig, h, &real_bsd_signal, SA_RESTART, 1);
}

RS_EXPORT handler_fn sysv_signal(int sig, handler_fn h)
{
    return keep_signal(sig, h, &real_sysv_signal, SA_RESETHAND | SA_NODEFER, 0);
}

RS_EXPORT handler_fn __sysv_signal(int sig, handler_fn h)
{
    return keep_signal(sig, h, &real___sysv_signal, SA_RESETHAND | SA_NODEFER, 0);
}
