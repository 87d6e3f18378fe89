"""The tracing pipeline end to end on a C program with known allocator calls
(tests/progs/known_mallocs.c documents the counts): exact counts under
`refscope run` and in the direct LD_PRELOAD form, the fork child's own trace
naming its parent, a SIGKILLed target, and a set-up failure that leaves the
program running untraced with one line on stderr."""
import os
import shutil
import subprocess

import harness
from harness import expect

MARKER = range(7000, 7100)
F_REALLOC, F_RESTORE = 0x08, 0x10

# tests/progs/known_mallocs.c: (size, flags) -> allocations, for the parent and the child
PARENT_ALLOCS = {(7001, 0): 10, (7002, 0x20): 5, (7003, 0): 1, (7005, 0): 1, (7007, 0): 1,
                 (7008, 0x40): 1, (7040, 0x40): 1, (7009, 0x40): 1, (7010, 0x40): 1,
                 (7011, 0x40): 1, (7020, 0): 2000}
CHILD_ALLOCS = {(7030, 0): 100}


records = harness.dump_records


def marker_counts(recs):
    """Allocations of marker-size blocks by (size, flags), frees of them, and realloc halves."""
    live = {}
    out = {"allocs": {}, "frees": 0, "realloc_free": 0, "realloc_alloc": 0, "restore": 0,
           "unmatched_frees": 0}
    for r in recs:
        kind, flags = r["kind"], r["flags"] & ~0x07
        if kind == "alloc":
            if flags & F_RESTORE:
                out["restore"] += 1
            elif flags & F_REALLOC:
                if r["size"] in MARKER:
                    out["realloc_alloc"] += 1
                    live[r["addr"]] = r["size"]
            elif r["size"] in MARKER:
                key = (r["size"], flags)
                out["allocs"][key] = out["allocs"].get(key, 0) + 1
                live[r["addr"]] = r["size"]
        elif kind == "free" and r["addr"] in live:
            del live[r["addr"]]
            out["realloc_free" if flags & F_REALLOC else "frees"] += 1
    out["live"] = live
    return out


def process_of(recs):
    expect(recs and recs[0]["kind"] == "process", "first record is not RS_EV_PROCESS")
    kinds = [r["kind"] for r in recs]
    return kinds


def check_parent(trace):
    recs = records(trace)
    kinds = process_of(recs)
    c = marker_counts(recs)
    expect(c["allocs"] == PARENT_ALLOCS, "parent allocations %r != %r" % (c["allocs"], PARENT_ALLOCS))
    expect(c["frees"] == 2023, "parent frees %d != 2023" % c["frees"])
    expect(c["realloc_free"] == 1 and c["realloc_alloc"] == 1 and c["restore"] == 0,
           "realloc halves wrong: %r" % c)
    expect(not c["live"], "marker blocks left live: %r" % c["live"])
    expect(kinds.count("thread") >= 3, "expected RS_EV_THREAD for main + 2 threads: %r" % kinds.count("thread"))
    expect(kinds.count("thread_exit") == 2, "expected 2 RS_EV_THREAD_EXIT, got %d" % kinds.count("thread_exit"))
    expect(kinds[-1] == "end" or "end" in kinds, "no RS_EV_END record")
    expect(kinds.count("clock") >= 2, "expected RS_EV_CLOCK at start and end")
    # every ALLOC/FREE names a thread announced before it
    announced = set()
    for r in recs:
        if r["kind"] == "thread":
            announced.add(r["thread"])
        elif r["kind"] in ("alloc", "free") and r["thread"] != 0xffff:
            expect(r["thread"] in announced, "record from unannounced thread %d" % r["thread"])
    return harness.refscope_json("summary", trace)


def check_child(trace, parent_pid):
    summary = harness.refscope_json("summary", trace)
    expect(summary["ppid"] == parent_pid, "child trace names parent %r, expected %r" % (summary["ppid"], parent_pid))
    c = marker_counts(records(trace))
    expect(c["allocs"] == CHILD_ALLOCS, "child allocations %r != %r" % (c["allocs"], CHILD_ALLOCS))
    expect(c["frees"] == 100, "child frees %d != 100" % c["frees"])
    expect(not any(k[0] != 7030 for k in c["allocs"]), "parent's blocks in the child's trace")


def test_known_mallocs_run():
    t = harness.run_traced([harness.prog("known_mallocs")], timeout=120)
    parent = check_parent(t.trace)
    traces = t.traces()
    expect(len(traces) == 2, "expected the parent's and the fork child's trace, got %r" % traces)
    check_child(traces[1], parent["pid"])


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFSCOPE_") and k != "LD_PRELOAD"}
    env.update(extra)
    return env


def test_known_mallocs_direct_form():
    d = harness.workdir()
    out = os.path.join(d, "direct.rfs")
    env = clean_env(LD_PRELOAD=harness.shim_path(), REFSCOPE_OUTPUT=out)
    proc = subprocess.run([harness.prog("known_mallocs")], env=env, cwd=d, capture_output=True,
                          text=True, timeout=120)
    expect(proc.returncode == 0, "exit %d: %s" % (proc.returncode, proc.stderr))
    expect("refscope:" not in proc.stderr, "unexpected warning: %s" % proc.stderr)
    # The destructor waited for DONE: the trace is complete when the program exits.
    parent = check_parent(out)
    child_pid = int(proc.stdout.split()[-1])
    check_child(os.path.join(d, "direct.%d.rfs" % child_pid), parent["pid"])


def test_direct_form_from_a_directory_named_like_a_run_directory():
    """Only a run directory of this user's (0700, settings file 0600) lends
    its settings: a shim installed in an ordinary directory that happens to
    be called refscope-1.0, beside a file called env, is the direct form."""
    d = harness.workdir()
    inst = os.path.join(d, "refscope-1.0")
    os.mkdir(inst, 0o755)
    os.chmod(inst, 0o755)
    for name in ("librefscope.so", "refscope"):
        os.symlink(os.path.join(os.path.dirname(harness.shim_path()), name), os.path.join(inst, name))
    with open(os.path.join(inst, "env"), "w") as f:
        f.write("REFSCOPE_SOCK=%s\nREFSCOPE_RING_MB=abc\n" % os.path.join(d, "nowhere", "sock"))
    os.chmod(os.path.join(inst, "env"), 0o600)
    out = os.path.join(d, "direct.rfs")
    env = clean_env(LD_PRELOAD=os.path.join(inst, "librefscope.so"), REFSCOPE_OUTPUT=out)
    proc = subprocess.run([harness.prog("known_mallocs")], env=env, cwd=d, capture_output=True,
                          text=True, timeout=120)
    expect(proc.returncode == 0 and "refscope:" not in proc.stderr, "exit %d: %s" % (proc.returncode, proc.stderr))
    check_parent(out)


def test_sigkill_keeps_committed_records():
    t = harness.run_traced([harness.prog("known_mallocs"), "kill", "500"], expect_status=137, timeout=120)
    recs = records(t.trace)
    process_of(recs)
    c = marker_counts(recs)
    expect(c["allocs"] == {(7050, 0): 500}, "SIGKILLed target: %r" % c["allocs"])
    expect(len(c["live"]) == 500, "expected 500 live blocks, got %d" % len(c["live"]))
    summary = harness.refscope_json("summary", t.trace)
    expect(summary["live_bytes_end"] >= 500 * 7050, "live_bytes_end %r" % summary["live_bytes_end"])


def test_setup_failure_runs_untraced():
    d = harness.workdir()
    env = clean_env(LD_PRELOAD=harness.shim_path(), REFSCOPE_SOCK=os.path.join(d, "nowhere", "sock"))
    proc = subprocess.run([harness.prog("known_mallocs")], env=env, cwd=d, capture_output=True,
                          text=True, timeout=60)
    expect(proc.returncode == 0, "exit %d: %s" % (proc.returncode, proc.stderr))
    lines = proc.stderr.splitlines()
    expect(len(lines) == 1 and lines[0].startswith("refscope: ") and lines[0].endswith("; running untraced"),
           "expected one warning line, got %r" % proc.stderr)
    expect("known_mallocs: done" in proc.stdout, "program did not finish: %r" % proc.stdout)
    expect(not [f for f in os.listdir(d) if f.endswith(".rfs")], "a trace was written")


def test_missing_recorder_runs_untraced():
    d = harness.workdir()
    env = clean_env(LD_PRELOAD=harness.shim_path(), REFSCOPE_RECORDER=os.path.join(d, "no-such-refscope"),
                    REFSCOPE_OUTPUT=os.path.join(d, "x.rfs"))
    proc = subprocess.run(["/bin/sh", "-c", "ls / >/dev/null; echo ok"], env=env, cwd=d,
                          capture_output=True, text=True, timeout=60)
    expect(proc.returncode == 0 and proc.stdout.strip() == "ok", "exit %d: %r" % (proc.returncode, proc.stdout))
    lines = proc.stderr.splitlines()
    # one line for the whole process tree: exec'd children inherit the verdict
    expect(len(lines) == 1 and lines[0].endswith("; running untraced"), "expected one line, got %r" % proc.stderr)


@harness.per_interpreter
def test_direct_form_python(py):
    d = harness.workdir()
    out = os.path.join(d, "py.rfs")
    env = clean_env(LD_PRELOAD=harness.shim_path(), REFSCOPE_OUTPUT=out)
    code = "import sys; keep = [bytearray(7060) for _ in range(300)]; print(sys.hexversion)"
    proc = subprocess.run([py.path, "-c", code], env=env, cwd=d, capture_output=True, text=True, timeout=120)
    expect(proc.returncode == 0, "exit %d: %s" % (proc.returncode, proc.stderr))
    hexversion = int(proc.stdout.split()[-1])
    summary = harness.refscope_json("summary", out)
    expect(summary["pid"] > 0 and summary["allocations"] > 300, "summary: %r" % summary)
    recs = records(out)
    expect(recs[0]["kind"] == "process", "first record is not RS_EV_PROCESS")
    info = harness.refscope("summary", out)
    expect(info.returncode == 0, info.stderr)
    version = summary.get("python_version")
    want = "%d.%d.%d" % py.version
    expect(str(version) == want or version == hexversion,
           "python_version %r, expected %s" % (version, want))


RECORDER_KILLED = """
import os, signal
sock = os.environ["REFSCOPE_SOCK"].encode()
def cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""
recorders = [int(p) for p in os.listdir("/proc") if p.isdigit() and sock in cmdline(p)]
for pid in recorders:
    os.kill(pid, signal.SIGKILL)
keep = None
for i in range(300 if os.environ.get("FILL") else 0):
    keep = [bytearray(100) for _ in range(10000)]  # millions of records through a 1 MiB ring
print("done", len(recorders), os.path.dirname(sock.decode()))
"""


def test_recorder_killed_mid_run():
    """The recorder dies (SIGKILL) while the program runs, in the direct
    form. A program filling its 1 MiB ring learns that the recorder is gone
    (it keeps no socket to it any more: /proc tells), says so in one line,
    runs to its end untraced and exits as it would; one that just exits
    (with room left in its 16 MiB ring) does not wait for a recorder that
    is gone (its exit wait is 10 minutes here) and says in one line that
    its trace was not confirmed."""
    py = harness.first_interpreter()
    d = harness.workdir()
    script = os.path.join(d, "prog.py")
    with open(script, "w") as f:
        f.write(RECORDER_KILLED)
    for fill, want in (("1", "the recorder stopped reading the ring; running untraced"),
                       ("", "the recorder did not confirm the trace was written: ")):
        env = clean_env(LD_PRELOAD=harness.shim_path(), REFSCOPE_OUTPUT=os.path.join(d, "k%s.rfs" % fill),
                        REFSCOPE_RING_MB="1" if fill else "16", REFSCOPE_EXIT_WAIT_MS="600000", FILL=fill)
        proc = subprocess.run([py.path, script], env=env, cwd=d, capture_output=True, text=True, timeout=60)
        words = proc.stdout.split()
        if len(words) == 3 and os.path.basename(words[2]).startswith("refscope-"):
            shutil.rmtree(words[2], ignore_errors=True)  # the killed recorder's directory
        expect(proc.returncode == 0 and words[:2] == ["done", "1"],
               "fill=%r: exit %d, printed %r: %s" % (fill, proc.returncode, proc.stdout, proc.stderr[-500:]))
        lines = proc.stderr.splitlines()
        expect(len(lines) == 1 and lines[0].startswith("refscope: " + want),
               "fill=%r: expected one line on the recorder's death, got %r" % (fill, lines))


def test_descriptor_cleanup_keeps_the_trace():
    """closefrom, close, dup2, dup3 and close_range over every descriptor
    (tests/progs/fd_cleanup.c; the shim once kept a socket among them): the
    100 blocks allocated afterwards are in the trace, and the program's
    output is the same as untraced."""
    t = harness.run_traced([harness.prog("fd_cleanup")], timeout=120)
    expect(t.proc.stdout.strip() == "done 1", "fd_cleanup printed %r: %s" % (t.proc.stdout, t.proc.stderr[-500:]))
    expect("untraced" not in t.proc.stderr, "tracing stopped: %s" % t.proc.stderr[-500:])
    n = sum(1 for r in records(t.trace) if r["kind"] == "alloc" and r["size"] == 7777)
    expect(n == 100, "%d of the 100 blocks allocated after the clean-up are in the trace" % n)


def test_descriptors_of_a_program_without_python_are_its_own():
    """A traced shell lists the descriptors it lists untraced: the shim keeps
    none open in the process."""
    cmd = ["/bin/sh", "-c", "ls /proc/$$/fd"]
    plain = harness.run(cmd, timeout=30)
    expect(plain.returncode == 0 and plain.stdout.strip(), "untraced: %r %r" % (plain.stdout, plain.stderr))
    t = harness.run_traced(cmd, timeout=60)
    expect(t.proc.stdout == plain.stdout, "traced %r, untraced %r" % (t.proc.stdout, plain.stdout))


def test_process_ends_seen_with_and_without_pidfd():
    """The recorder learns that a process ended from a pidfd, or from
    /proc/<pid>/stat where the kernel has none (forced here with
    REFSCOPE_TEST_NO_PIDFD): either way a SIGKILLed program's blocks are all
    in its finished trace ("abrupt"), and a program whose main thread leaves
    first (tests/progs/main_exits_first.c) is traced to its real end
    ("exit"), not to its main thread's."""
    for env in ({}, {"REFSCOPE_TEST_NO_PIDFD": "1"}):
        t = harness.run_traced([harness.prog("known_mallocs"), "kill", "500"], env=env,
                               expect_status=137, timeout=120)
        c = marker_counts(records(t.trace))
        expect(c["allocs"] == {(7050, 0): 500}, "%r: SIGKILLed target: %r" % (env, c["allocs"]))
        s = harness.refscope_json("summary", t.trace)
        expect(s["complete"] and s["end"] == "abrupt", "%r: SIGKILLed target ended %r" % (env, s["end"]))
        t = harness.run_traced([harness.prog("main_exits_first")], env=env, timeout=60)
        expect(t.proc.stdout.strip() == "done", "%r: printed %r: %s" % (env, t.proc.stdout, t.proc.stderr[-500:]))
        n = sum(1 for r in records(t.trace) if r["kind"] == "alloc" and r["size"] == 6161)
        s = harness.refscope_json("summary", t.trace)
        expect(n == 300 and s["end"] == "exit", "%r: %d of 300 blocks, ended %r" % (env, n, s["end"]))


def test_many_processes_alive_at_once():
    """300 traced processes alive at the same time (a shell starts 300
    `sleep 2` in the background; the recorder once took at most 256): every
    image has a complete trace, the shell's fork children ending as "exec"
    (also the one for `seq`), the sleeps as "exit"."""
    n = 300
    t = harness.run_traced(["/bin/sh", "-c", "for i in $(seq %d); do sleep 2 & done; wait" % n], timeout=120)
    expect("untraced" not in t.proc.stderr, "a process ran untraced: %s" % t.proc.stderr[-500:])
    ends = {}
    for path in t.traces():
        s = harness.refscope_json("summary", path)
        expect(s["complete"], "%s is incomplete" % path)
        key = (os.path.basename(s["exe"]), s["end"])
        ends[key] = ends.get(key, 0) + 1
    sleeps = ends.get(("sleep", "exit"), 0)
    forks = sum(v for (exe, end), v in ends.items() if end == "exec")
    expect(sleeps == n and forks >= n, "expected %d sleeps that exited and %d fork images that exec'd: %r"
           % (n, n, ends))


def test_command_keeps_its_descriptor_limit():
    """`run` raises its own descriptor limit (a pidfd per traced process),
    not the command's: a command started with a soft limit of 1000 sees
    1000, traced as untraced."""
    d = harness.workdir()
    trace = os.path.join(d, "trace.rfs")
    script = 'ulimit -Sn 1000 && exec "$0" run -o "$1" -- /bin/sh -c "ulimit -Sn"'
    proc = harness.run(["/bin/sh", "-c", script, harness.refscope_bin(), trace], timeout=60)
    expect(proc.returncode == 0, "exit %d: %s" % (proc.returncode, proc.stderr[-500:]))
    expect(proc.stdout.strip() == "1000", "the command's soft limit is %r, not 1000" % proc.stdout.strip())
    expect(harness.refscope_json("summary", trace)["complete"], "the trace is incomplete")


def test_signals_of_a_program_without_python_are_its_own():
    """The shim catches SIGUSR2 (snapshots) only in Python processes: a
    traced shell's caught signals, as the kernel lists them, are the same
    as untraced (the shim once caught SIGUSR2 everywhere, so `kill -USR2`
    no longer ended a C program)."""
    cmd = ["/bin/sh", "-c", "grep -E '^Sig(Cgt|Ign)' /proc/$$/status"]
    plain = harness.run(cmd, timeout=30)
    expect(plain.returncode == 0 and "SigCgt" in plain.stdout, "untraced: %r %r" % (plain.stdout, plain.stderr))
    t = harness.run_traced(cmd, timeout=60)
    expect(t.proc.stdout == plain.stdout, "traced %r, untraced %r" % (t.proc.stdout, plain.stdout))


def test_program_overwriting_its_ring():
    """A wild write over the ring (tests/progs/ring_scribble.c: its slots,
    its header's counters, both, or one committed ALLOC of 2^60 bytes): the
    program runs to its end with its own status, the recorder says in one
    line that the ring is damaged and keeps what came before (the 100 blocks
    allocated earlier) in a trace every report reads, and neither side waits
    on the garbage (a head 2^63 slots ahead once made the recorder skip
    towards it forever)."""
    for what in ("slots", "header", "both", "record"):
        t = harness.run_traced([harness.prog("ring_scribble"), what], timeout=60)
        expect(t.proc.stdout.strip() == "done", "%s: printed %r: %s" % (what, t.proc.stdout, t.proc.stderr[-500:]))
        damaged = [l for l in t.proc.stderr.splitlines() if "is damaged" in l]
        expect(len(damaged) == 1, "%s: expected one line on the damaged ring: %s" % (what, t.proc.stderr[-800:]))
        n = sum(1 for r in records(t.trace) if r["kind"] == "alloc" and r["size"] == 7777)
        expect(n == 100, "%s: %d of the 100 blocks allocated before the damage are in the trace" % (what, n))
        summary = harness.refscope("summary", t.trace)
        expect(summary.returncode == 0, "%s: summary failed: %s" % (what, summary.stderr.strip()))
