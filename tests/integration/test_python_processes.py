"""Python processes under refscope (issue 2): a target killed by SIGKILL
(or by the kernel's OOM killer) still yields a readable trace holding the
allocations it made, and fork and subprocess children produce their own
traces that name their parent."""
import json
import os
import tempfile
import time

import harness
from harness import expect, per_interpreter

KILLED = """
import os, signal, sys
keep = [bytearray(1000) for _ in range(5000)]
sys.stdout.write("built\\n"); sys.stdout.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""

FAMILY = """
import os, subprocess, sys
pid = os.fork()
if pid == 0:
    keep = [bytearray(2345) for _ in range(3000)]
    os._exit(0)
os.waitpid(pid, 0)
subprocess.run([sys.executable, "-c",
                "import os; keep = [bytearray(3456) for _ in range(2000)]; os._exit(0)"], check=True)
print("child", pid)
"""


DAEMON = """
import os, resource
fd = os.open(os.devnull, os.O_RDONLY)
print("first", fd)
# a daemon's clean-up: close every descriptor it did not open (closerange:
# close_range, closefrom or a close loop, by version), close the sockets it
# finds by hand, dup2 onto them, and close everything again
os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
fd = os.open(os.devnull, os.O_RDONLY)
sockets = [int(n) for n in os.listdir("/proc/self/fd")
           if os.path.exists("/proc/self/fd/" + n) and os.readlink("/proc/self/fd/" + n).startswith("socket:")]
print("sockets", len(sockets))
for n in sockets:
    os.close(n)
    os.dup2(fd, n)
os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
keep = [bytearray(1000) for _ in range(5000)]
print("built")
"""


def _allocs_of(trace, sizes):
    """Number of ALLOC records whose size is one of `sizes` (any domain)."""
    proc = harness.refscope("dump", "--json", "--kind", "alloc", trace)
    expect(proc.returncode == 0, "dump %s failed: %s" % (trace, proc.stderr.strip()))
    return sum(1 for line in proc.stdout.splitlines() if line and json.loads(line).get("size") in sizes)


SCRUBBED = """
import os, subprocess, sys
sub = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sub")
os.mkdir(sub)
env = {k: v for k, v in os.environ.items() if k.startswith("LD_")}  # as CPython's test suite does
out = subprocess.run([sys.executable, "-c",
                      "import os; keep = [bytearray(4321) for _ in range(700)]; "
                      "print(sorted(k for k in os.environ if k.startswith('REFSCOPE')))"],
                     env=env, cwd=sub, check=True, capture_output=True, text=True)
print("child saw", out.stdout.strip(), out.stderr.strip())
print("left in its directory", sorted(os.listdir(sub)))
"""


@per_interpreter
def test_child_with_an_environment_of_its_own_joins_the_run(py):
    """A child whose parent kept only LD_* in its environment still belongs
    to the run: its trace is one of the run's, it has the run's options
    (stacks or not), its environment shows nothing of refscope's, and it
    writes no refscope-<pid>.rfs of its own into its directory (it used to,
    by starting a recorder of its own)."""
    script = harness.write_script(SCRUBBED)
    for run_args, stacks in (((), True), (("--no-stacks",), False)):
        t = harness.run_traced([py.path, script], run_args=run_args, cwd=os.path.dirname(script))
        expect("child saw [] " in t.proc.stdout and "left in its directory []" in t.proc.stdout,
               "%s %s: %r %r" % (py, run_args, t.proc.stdout, t.proc.stderr[-800:]))
        children = [p for p in t.traces()[1:] if _allocs_of(p, (4321, 4322)) >= 700]
        expect(len(children) == 1, "%s %s: the child's trace among the run's: %r" % (py, run_args, t.traces()))
        kinds = harness.refscope("dump", "--json", "--kind", "py_stack", children[0]).stdout
        expect(bool(kinds.strip()) == stacks, "%s %s: Python stacks in the child's trace: %s"
               % (py, run_args, bool(kinds.strip())))
        os.rename(os.path.join(os.path.dirname(script), "sub"), t.trace + ".sub")


@per_interpreter
def test_python_sigkill_keeps_committed_allocations(py):
    script = harness.write_script(KILLED)
    t = harness.run_traced([py.path, script], expect_status=128 + 9)
    expect("built" in t.proc.stdout, "%s: the program did not run: %s" % (py, t.proc.stderr[-500:]))
    s = harness.refscope_json("summary", t.trace)
    expect(s["live_bytes_end"] >= 5000 * 1000,
           "%s: live bytes at the kill %d < 5,000,000" % (py, s["live_bytes_end"]))
    n = _allocs_of(t.trace, (1000, 1001))  # bytearray(1000) asks for 1001 bytes
    expect(n >= 5000, "%s: %d bytearray buffers in the trace of a killed process, expected 5000" % (py, n))


# Moves itself into a memory cgroup of 160 MiB, builds what must survive,
# then allocates until the kernel's OOM killer ends it.
OOM = """
import sys
with open(sys.argv[1], "w") as f:
    f.write("0\\n")  # this process
keep = [bytearray(1000) for _ in range(5000)]
print("built", flush=True)
hog = []
while True:
    hog.append(bytearray(16 << 20))  # zero-filled: every page is touched
"""


class MemoryCgroup:
    """A memory cgroup of its own (v2, or v1's memory hierarchy) limited to
    `limit` bytes without swap; None where this machine gives none (not
    root, no memory controller)."""

    @staticmethod
    def make(limit):
        root = "/sys/fs/cgroup"
        try:
            if os.path.exists(os.path.join(root, "cgroup.controllers")):  # v2
                for name, why in (("cgroup.controllers", "no memory controller"),
                                  ("cgroup.subtree_control",  # the machine's choice: left as it is
                                   "the root cgroup gives its children no memory controller")):
                    with open(os.path.join(root, name)) as f:
                        if "memory" not in f.read().split():
                            MemoryCgroup.why = why
                            return None
                parent, events = root, "memory.events"
                limits = (("memory.max", limit), ("memory.swap.max", 0))
            elif os.path.exists(os.path.join(root, "memory", "memory.limit_in_bytes")):  # v1
                parent, events = os.path.join(root, "memory"), "memory.oom_control"
                limits = (("memory.limit_in_bytes", limit), ("memory.memsw.limit_in_bytes", limit))
            else:
                MemoryCgroup.why = "no memory controller"
                return None
            cg = MemoryCgroup(tempfile.mkdtemp(prefix="refscope-test-oom-", dir=parent), events)
            for i, (name, value) in enumerate(limits):
                if i == 0 or os.path.exists(os.path.join(cg.path, name)):  # no swap accounting: no swap limit
                    cg._write(name, value)
            return cg
        except OSError as e:
            MemoryCgroup.why = str(e)
            return None

    why = "needs root and a memory controller"

    def __init__(self, path, events):
        self.path = path
        self.procs = os.path.join(path, "cgroup.procs")
        self.events = os.path.join(path, events)

    def _write(self, name, value):
        try:
            with open(os.path.join(self.path, name), "w") as f:
                f.write(str(value))
        except OSError:
            self.remove()
            raise

    def oom_kills(self):
        """How many processes the OOM killer ended here (kernel 4.13+)."""
        with open(self.events) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        return None

    def remove(self):
        """rmdir, retried: the kernel lets go of a cgroup a moment after its
        last process is reaped."""
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise AssertionError("cannot remove the cgroup %s: %s" % (self.path, e))
                time.sleep(0.05)


@per_interpreter
def test_python_oom_killed_keeps_committed_allocations(py):
    """The kernel's OOM killer (a memory cgroup's limit) ends the target:
    everything it committed is in the trace, the buffers it built first and
    the 16 MiB blocks it took until it was killed."""
    cg = MemoryCgroup.make(160 << 20)
    if cg is None:
        raise harness.Skip("no memory cgroup to make here: " + MemoryCgroup.why)
    try:
        script = harness.write_script(OOM)
        t = harness.run_traced([py.path, script, cg.procs], expect_status=128 + 9, timeout=120)
        kills = cg.oom_kills()
    finally:
        cg.remove()
    expect("built" in t.proc.stdout, "%s: the program did not run: %s" % (py, t.proc.stderr[-500:]))
    expect(kills is None or kills >= 1, "%s: killed, but not by the OOM killer (oom_kill %r)" % (py, kills))
    s = harness.refscope_json("summary", t.trace)
    expect(s["end"] == "abrupt", "%s: ended %r" % (py, s["end"]))
    n = _allocs_of(t.trace, (1000, 1001))
    hogs = _allocs_of(t.trace, ((16 << 20) + 1, 16 << 20))
    expect(n >= 5000 and hogs >= 4, "%s: %d of 5000 buffers and %d 16 MiB blocks in the trace" % (py, n, hogs))


@per_interpreter
def test_python_fork_and_subprocess_children(py):
    script = harness.write_script(FAMILY)
    t = harness.run_traced([py.path, script])
    main = harness.refscope_json("summary", t.trace)
    fork_pid = int(t.proc.stdout.split()[-1])
    by_pid = {}
    for path in t.traces()[1:]:
        s = harness.refscope_json("summary", path)
        by_pid.setdefault(s["pid"], []).append((path, s))
    expect(fork_pid in by_pid, "%s: no trace for the fork child %d: %s" % (py, fork_pid, sorted(by_pid)))
    fork_path, fork_sum = by_pid.pop(fork_pid)[-1]
    expect(fork_sum["ppid"] == main["pid"], "%s: fork child names parent %d, not %d"
           % (py, fork_sum["ppid"], main["pid"]))
    expect(_allocs_of(fork_path, (2345, 2346)) >= 3000, "%s: fork child's buffers missing" % py)
    # the subprocess: the Python program whose parent is the main process (on
    # versions that fork+exec, the pre-exec fork image has a trace of its own)
    subs = [(p, s) for lst in by_pid.values() for p, s in lst
            if s["ppid"] == main["pid"] and "bytearray(3456)" in s.get("command", "")]
    expect(subs, "%s: no trace for the subprocess: %s" % (py, [(s["pid"], s["ppid"], s["command"])
                                                          for lst in by_pid.values() for _, s in lst]))
    sub_path, _ = subs[-1]
    expect(_allocs_of(sub_path, (3456, 3457)) >= 2000, "%s: subprocess buffers missing" % py)
    # and the main trace has none of the children's allocations
    expect(_allocs_of(t.trace, (2345, 2346, 3456, 3457)) == 0, "%s: children's buffers in the main trace" % py)


GC_FORK = """
import gc, json, os
class N: pass
def garbage(n):
    for _ in range(n):
        a, b = N(), N(); a.b, b.a = b, a
garbage(2000)
pid = os.fork()
if pid == 0:
    garbage(5000)
    stats = [(d["collections"], d["collected"]) for d in gc.get_stats()]
    with open(os.environ["STATS_OUT"], "w") as f:
        json.dump(stats, f)
    os._exit(0)
os.waitpid(pid, 0)
print("child", pid)
"""


@per_interpreter
def test_fork_child_gc_report_matches_its_stats(py):
    script = harness.write_script(GC_FORK)
    stats_out = os.path.join(os.path.dirname(script), "stats.json")
    t = harness.run_traced([py.path, script], env={"STATS_OUT": stats_out})
    fork_pid = int(t.proc.stdout.split()[-1])
    child = [p for p in t.traces()[1:] if harness.refscope_json("summary", p)["pid"] == fork_pid]
    expect(child, "%s: no trace for the fork child" % py)
    report = harness.refscope_json("gc", child[-1])
    with open(stats_out) as f:
        expected = json.load(f)
    got = [(g["collections"], g["collected"]) for g in report["generations"]][:len(expected)]
    expect(got == [tuple(e) for e in expected],
           "%s: fork child's gc report %r, its gc.get_stats() %r" % (py, got, expected))


# Descendants that outlive the command: a fork child and a subprocess (through
# a shell) keep running after the main process exits; `run` (their subreaper)
# waits for them and their traces are complete.
ORPHANS = """
import os, subprocess, sys, time
if os.fork() == 0:
    time.sleep(0.5)
    keep = [bytearray(2222) for _ in range(1000)]
    os._exit(0)
subprocess.Popen(["/bin/sh", "-c", 'sleep 0.5; exec "$0" -c "keep = [bytearray(3333) for _ in range(1000)]"',
                  sys.executable])
print("parent done")
"""


@per_interpreter
def test_orphans_outliving_the_command_are_traced(py):
    script = harness.write_script(ORPHANS)
    t = harness.run_traced([py.path, script])
    expect("parent done" in t.proc.stdout, "%s: %s" % (py, t.proc.stderr[-500:]))
    found = {2222: 0, 3333: 0}
    for path in t.traces()[1:]:
        for size in found:
            found[size] += _allocs_of(path, (size, size + 1))
    expect(found[2222] >= 1000 and found[3333] >= 1000,
           "%s: buffers of the descendants that outlived the command: %r" % (py, found))


@per_interpreter
def test_daemon_closing_every_descriptor_stays_traced(py):
    """A program that closes every descriptor (and dup2s onto every socket
    it finds: the shim once kept one) stays traced to its end, and its own
    descriptors get the numbers they get untraced."""
    script = harness.write_script(DAEMON)
    t = harness.run_traced([py.path, script], timeout=120)
    expect("built" in t.proc.stdout, "%s: the program did not run: %s" % (py, t.proc.stderr[-500:]))
    expect("untraced" not in t.proc.stderr, "%s: tracing stopped: %s" % (py, t.proc.stderr[-500:]))
    s = harness.refscope_json("summary", t.trace)
    expect(s["lost_events"] == 0, "%s: %d events lost" % (py, s["lost_events"]))
    n = _allocs_of(t.trace, (1000, 1001))  # bytearray(1000) asks for 1001 bytes
    expect(n >= 5000, "%s: %d bytearray buffers made after the clean-up in the trace, expected 5000" % (py, n))
    plain = harness.run([py.path, script], timeout=120)
    first = [l for l in t.proc.stdout.splitlines() if l.startswith("first")]
    expect(first and first == [l for l in plain.stdout.splitlines() if l.startswith("first")],
           "%s: the program's first descriptor differs traced (%s) and untraced (%s)"
           % (py, first, plain.stdout.splitlines()[:1]))


# What a program sees of its own descriptors: in itself, in a fork child and
# in a subprocess. Each listing is taken while refscope traces that process.
DESCRIPTORS = """
import json, os, subprocess, sys
def fds():
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))
mine = fds()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, json.dumps(fds()).encode())
    os._exit(0)
os.close(w)
child = json.loads(os.read(r, 65536).decode())
os.waitpid(pid, 0)
os.close(r)
sub = subprocess.run([sys.executable, "-c", "import os; print(sorted(int(n) for n in os.listdir('/proc/self/fd')))"],
                     capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps({"self": mine, "fork": child, "sub": sub}))
"""


@per_interpreter
def test_program_sees_no_descriptor_of_refscope(py):
    """A traced program, its fork child and its subprocess list exactly the
    descriptors they list untraced: the shim keeps none (it once kept its
    recorder socket at 900, which two of CPython's test_subprocess checks
    saw), and all three are traced."""
    script = harness.write_script(DESCRIPTORS)
    plain = harness.run([py.path, script], timeout=60)
    expect(plain.returncode == 0, "%s: untraced run failed: %s" % (py, plain.stderr[-500:]))
    t = harness.run_traced([py.path, script], timeout=120)
    expect("untraced" not in t.proc.stderr, "%s: tracing failed: %s" % (py, t.proc.stderr[-500:]))
    expect(json.loads(t.proc.stdout) == json.loads(plain.stdout),
           "%s: descriptors traced %s, untraced %s" % (py, t.proc.stdout.strip(), plain.stdout.strip()))
    pids = {harness.refscope_json("summary", p)["pid"] for p in t.traces()}
    expect(len(pids) >= 3, "%s: expected traces of the program, its fork child and its subprocess, got pids %s"
           % (py, sorted(pids)))


# A program that execs: the first image's trace ends as "exec" with what it
# allocated, the second image's (the same pid) as "exit"; a third image that
# is killed ends as "abrupt".
EXEC = """
import os, signal, sys
step = sys.argv[1] if len(sys.argv) > 1 else "first"
if step == "first":
    keep = [bytearray(2222) for _ in range(1000)]
    os.execv(sys.executable, [sys.executable, __file__, "second"])
if step == "second":
    keep = [bytearray(3333) for _ in range(1000)]
    print("second", os.getpid(), flush=True)
    pid = os.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, __file__, "third"])
    os.waitpid(pid, 0)
    sys.exit(0)
keep = [bytearray(4444) for _ in range(1000)]
os.kill(os.getpid(), signal.SIGKILL)
"""


@per_interpreter
def test_exec_ends_the_old_image_trace(py):
    script = harness.write_script(EXEC)
    t = harness.run_traced([py.path, script], timeout=120)
    expect("second" in t.proc.stdout, "%s: %s" % (py, t.proc.stderr[-500:]))
    pid = int(t.proc.stdout.split()[1])
    by_size = {}
    for path in t.traces():
        s = harness.refscope_json("summary", path)
        for size in (2222, 3333, 4444):
            if _allocs_of(path, (size, size + 1)) >= 1000:
                by_size.setdefault(size, []).append(s)
    expect(sorted(by_size) == [2222, 3333, 4444] and all(len(v) == 1 for v in by_size.values()),
           "%s: one trace per image expected: %r" % (py, {k: [s["pid"] for s in v] for k, v in by_size.items()}))
    first, second, third = by_size[2222][0], by_size[3333][0], by_size[4444][0]
    expect(first["pid"] == second["pid"] == pid, "%s: pids %d %d %d" % (py, first["pid"], second["pid"], pid))
    got = (first["end"], second["end"], third["end"])
    expect(got == ("exec", "exit", "abrupt"), "%s: the images ended as %r" % (py, got))
    expect(all(s["complete"] for s in (first, second, third)), "%s: a trace is incomplete" % py)


# The first image exec's into a program that is not traced (LD_PRELOAD
# removed, as a launcher may do): that program watches the first image's
# trace and reports how it stood while it was still running.
EXEC_UNTRACED = """
import os, sys
keep = [bytearray(2718) for _ in range(1000)]
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
os.execve(sys.executable, [sys.executable, "-c", WATCH, sys.argv[1], sys.argv[2]], env)
"""
WATCH = r'''
import json, subprocess, sys, time
refscope, trace = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 15
state = "never read"
while time.monotonic() < deadline:
    p = subprocess.run([refscope, "summary", "--json", trace], capture_output=True, text=True)
    if p.returncode == 0:
        s = json.loads(p.stdout)
        state = "%s complete=%s" % (s["end"], s["complete"])
        if s["complete"]:
            break
    else:
        state = p.stderr.strip()
    time.sleep(0.05)
print("while the new program ran:", state, flush=True)
'''

# Quiet for a second (long enough for several looks at its maps), then busy:
# a process that merely stays quiet keeps its trace open and complete.
QUIET = """
import time
time.sleep(1.2)
keep = [bytearray(1618) for _ in range(3000)]
print("built")
"""


@per_interpreter
def test_exec_into_an_untraced_program_ends_the_trace_at_once(py):
    """The trace of an image that exec'd into a program refscope does not
    trace is finished while that program still runs (it used to stay open
    until the process ended), with the image's allocations and `exec`."""
    script = harness.write_script(EXEC_UNTRACED.replace("WATCH", repr(WATCH)))
    # run_traced writes trace.rfs in the directory the program runs in
    t = harness.run_traced([py.path, script, harness.refscope_bin(), "trace.rfs"], timeout=60)
    expect("while the new program ran: exec complete=True" in t.proc.stdout,
           "%s: %r %r" % (py, t.proc.stdout[-500:], t.proc.stderr[-800:]))
    expect(_allocs_of(t.trace, (2718, 2719)) >= 1000, "%s: the first image's buffers are missing" % py)


@per_interpreter
def test_a_quiet_process_keeps_its_trace_open(py):
    script = harness.write_script(QUIET)
    t = harness.run_traced([py.path, script])
    s = harness.refscope_json("summary", t.trace)
    expect("built" in t.proc.stdout and s["end"] == "exit" and s["complete"],
           "%s: ended %r complete %r: %s" % (py, s["end"], s["complete"], t.proc.stderr[-500:]))
    expect(_allocs_of(t.trace, (1618, 1619)) >= 3000, "%s: the buffers made after the quiet second are missing" % py)


BAD_GREETINGS = """
import os, socket, struct, sys
MAGIC, VERSION = 0x4f4c454853464552, 3   # include/refscope/transport.h
HELLO = "<QIIIIQQ"                       # magic version pid ppid flags map_bytes map_addr
pid = os.getpid()


def memfd(size):
    fd = os.memfd_create("not-a-ring")
    os.ftruncate(fd, size)
    return fd


def greet(data, fd=None, close_early=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(os.environ["REFSCOPE_SOCK"])
    if fd is None:
        s.sendall(data)
    else:
        socket.send_fds(s, [data], [fd])
        os.close(fd)
    if close_early:
        s.close()
        return "closed"
    reply = s.recv(8)
    s.close()
    return struct.unpack("<Ii", reply)[1] if len(reply) == 8 else "no reply"


results = [
    greet(struct.pack(HELLO, MAGIC, 2, pid, 0, 0, 8192, 0), memfd(8192)),          # another version
    greet(struct.pack(HELLO, MAGIC, VERSION, pid, 0, 0, 8192, 0)),                 # no ring attached
    greet(bytes(range(40))),                                                       # not a greeting
    greet(struct.pack(HELLO, MAGIC, VERSION, pid, 0, 0, 8192, 0), memfd(8192)),    # not a ring inside
    greet(struct.pack(HELLO, MAGIC, VERSION, pid, 0, 0, 1 << 40, 0), memfd(8192)), # bigger than its file
    greet(struct.pack(HELLO, MAGIC, VERSION, pid, 0, 0, 4096, 0), memfd(4096)),    # a header, no slots
    greet(b"REFSHELO1234", close_early=True),                                      # half a greeting
    greet(b"", close_early=True),                                                  # nothing
]
keep = [bytearray(1414) for _ in range(5000)]
print("refused" if all(r == "closed" or (isinstance(r, int) and r < 0) for r in results) else "accepted",
      results)
"""


def test_bad_greetings_leave_the_recorder_serving():
    """A program that greets the recorder wrongly (another protocol version,
    no ring, a ring that is none, sizes that lie, garbage, half a greeting)
    is refused each time with a negative status and does not disturb it: the
    program's own trace goes on, is complete and ends `exit`, with the
    buffers it made afterwards."""
    py = harness.first_interpreter()
    script = harness.write_script(BAD_GREETINGS)
    t = harness.run_traced([py.path, script], timeout=60)
    expect(t.proc.stdout.startswith("refused"), "%s: %r %r" % (py, t.proc.stdout, t.proc.stderr[-500:]))
    s = harness.refscope_json("summary", t.trace)
    expect(s["end"] == "exit" and s["complete"], "%s: ended %r complete %r" % (py, s["end"], s["complete"]))
    expect(_allocs_of(t.trace, (1414, 1415)) >= 5000, "%s: the buffers made after the greetings are missing" % py)
    expect(t.traces() == [t.trace], "%s: refused greetings left traces %r" % (py, t.traces()[1:]))
