/*
 * fork and exec. A fork child gets its own trace: the atfork child handler
 * drops the parent's ring mapping (the parent keeps writing to the same
 * memfd), starts a new emit epoch, and runs the core set-up again, naming
 * the parent as ppid. Between the prepare handler and the end of the
 * child/parent handler the forking thread records nothing, so no record of
 * the child lands in the parent's ring. exec needs nothing here: the ring's
 * mapping goes with the old image, the new image's constructor greets the
 * recorder from the same pid, and the recorder finishes the old trace then
 * (include/refscope/transport.h).
 */
#include <errno.h>
#include <pthread.h>

#include "emit.h"
#include "guard.h"
#include "shim.h"

static void fork_prepare(void)
{
    rs_guard_depth++;
}

static void fork_parent(void)
{
    rs_guard_depth--;
}

static void fork_child(void)
{
    int traced = rs_shim_traced();
    rs_emit_fork_child();
    rs_shim_forget_parent();
    if (traced)
        rs_shim_start(1);
    rs_guard_depth--;
}

int rs_forkexec_init(void)
{
    int rc = pthread_atfork(fork_prepare, fork_parent, fork_child);
    return rc ? -rc : 0;
}
