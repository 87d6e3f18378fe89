"""refscope's command line on bad input and process plumbing: every failure
is one line on stderr and a nonzero exit, never a crash or a hang; `run`
passes the command's exit status through (128+signal when killed) and never
overwrites a trace without -f."""
import os
import signal
import stat
import subprocess

from harness import Skip, expect, interpreters, refscope, refscope_bin, run, run_traced, workdir, write_script


def _one_line_failure(proc, code=None):
    expect(proc.returncode != 0, "expected failure, got 0: %s" % (proc.stdout or "")[:500])
    expect(proc.returncode > 0 and proc.returncode < 128,
           "crashed or killed (status %d): %s" % (proc.returncode, proc.stderr[-500:]))
    if code is not None:
        expect(proc.returncode == code, "exit %d, expected %d" % (proc.returncode, code))
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    expect(len(lines) == 1, "expected one line on stderr, got: %r" % proc.stderr)
    return lines[0]


def _small_trace(d):
    """A real trace of a tiny Python run (needs the shim)."""
    trace = os.path.join(d, "small.rfs")
    proc = run([refscope_bin(), "run", "-o", trace, "--", "/usr/bin/python3", "-c", "x = [0] * 1000"], timeout=120)
    if proc.returncode != 0 or not os.path.exists(trace):
        raise Skip("tracing does not work in this build yet: %s" % proc.stderr.strip()[-300:])
    return trace


def test_summary_missing_file():
    line = _one_line_failure(refscope("summary", "/nonexistent/trace.rfs", timeout=30), 1)
    expect("No such file" in line, line)


def test_summary_directory():
    line = _one_line_failure(refscope("summary", workdir(), timeout=30), 1)
    expect("directory" in line, line)


def test_summary_not_a_trace():
    path = write_script("print('hello')\n", "notatrace.rfs")
    line = _one_line_failure(refscope("summary", path, timeout=30), 1)
    expect("not a refscope trace" in line, line)
    _one_line_failure(refscope("dump", path, timeout=30), 1)


def test_summary_random_bytes():
    d = workdir()
    for i, size in enumerate([0, 7, 64, 100, 4096, 100000]):
        path = os.path.join(d, "random%d.rfs" % i)
        with open(path, "wb") as f:
            data = os.urandom(size)
            if i % 2 and size >= 8:
                data = b"RFSTRACE" + data[8:]
            f.write(data)
        for cmd in ("summary", "dump"):
            _one_line_failure(refscope(cmd, path, timeout=30))


def test_bad_options():
    for args in (["summary"], ["summary", "--bogus", "x.rfs"], ["dump", "--kind", "nonsense", "x.rfs"],
                 ["run"], ["run", "--ring-mb", "zero", "--", "true"], ["run", "--what", "--", "true"],
                 ["record"], ["nosuchcommand"]):
        proc = refscope(*args, timeout=30)
        expect(proc.returncode == 2, "%s: exit %d, expected 2 (usage)" % (args, proc.returncode))
        expect(proc.stderr.strip() and len(proc.stderr.strip().splitlines()) <= 12, "%s: %r" % (args, proc.stderr))


def test_bad_option_values():
    """Every subcommand parses its options one way (analyzer/cli.c): a wrong
    value, a missing value, an unknown option or a wrong number of arguments
    is one line naming the option and the value, and exit status 2, before
    the trace is even opened."""
    cases = [
        (["top", "--depth", "x", "t.rfs"], "--depth takes an integer >= 0, not 'x'"),
        (["top", "--depth", "99999999999", "t.rfs"], "--depth takes an integer"),
        (["top", "--limit=-3", "t.rfs"], "--limit takes an integer >= 0, not '-3'"),
        (["top", "--by", "nope", "t.rfs"], "--by takes peak|total|count|live, not 'nope'"),
        (["top", "--json=1", "t.rfs"], "--json takes no value"),
        (["top", "t.rfs", "--depth"], "--depth needs a value"),
        (["top", "-x", "t.rfs"], "unknown option '-x'"),
        (["flamegraph", "--format", "svg", "t.rfs"], "--format takes html|collapsed|folded, not 'svg'"),
        (["leaks", "--depth", "2x", "t.rfs"], "--depth takes an integer >= 0, not '2x'"),
        (["leaks", "--limit", "0", "t.rfs"], "--limit takes an integer >= 1, not '0'"),
        (["leaks", "--since", "soon", "t.rfs"], "--since takes seconds"),
        (["cycles", "--limit", "", "t.rfs"], "--limit takes an integer >= 1, not ''"),
        (["diff", "--depth", "-1", "t.rfs"], "--depth takes an integer >= 0, not '-1'"),
        (["diff", "t.rfs", "1"], "give two snapshots or none"),
        (["gc", "--limit", "3", "t.rfs"], "unknown option '--limit'"),
        (["lifetimes", "a.rfs", "b.rfs"], "unexpected argument 'b.rfs'"),
        (["summary"], "expected TRACE"),
        (["dump", "--kind", "alloc,nonsense", "t.rfs"], "unknown record kind 'nonsense'"),
        (["run", "--ring-mb", "0", "--", "true"], "--ring-mb takes an integer from 1 to 65536, not '0'"),
        (["run", "--gc-census", "maybe", "true"], "--gc-census takes off|on, not 'maybe'"),
        (["run", "--no-gc", "--gc-census=on", "true"], "drop one of --no-gc and --gc-census=on"),
        (["run", "--snapshot-interval=0", "true"], "--snapshot-interval takes an integer from 1 to 86399"),
        (["run", "--"], "expected a command to run"),
        (["record", "--serve"], "--serve needs a value"),
    ]
    for args, want in cases:
        proc = refscope(*args, timeout=30)
        line = _one_line_failure(proc, 2)
        expect(line.startswith("refscope %s: " % args[0]) and want in line,
               "refscope %s: %r lacks %r" % (" ".join(args), line, want))


def test_option_forms():
    """--name=value, --name value, short forms and options after the trace
    all mean the same (GNU style); run stops at its command, whose own
    options are not ours."""
    d = workdir()
    trace = _small_trace(d)
    outs = []
    for args in (["top", "--by", "count", "--limit", "2", "--json", trace],
                 ["top", "--by=count", "--limit=2", "-j", trace],
                 ["top", trace, "-n", "2", "--json", "--by", "count"]):
        proc = refscope(*args, timeout=60)
        expect(proc.returncode == 0, "%s: exit %d: %s" % (args, proc.returncode, proc.stderr))
        outs.append(proc.stdout)
    expect(outs[0] == outs[1] == outs[2], "option forms disagree: %r" % [o[:200] for o in outs])
    out = os.path.join(d, "forms.rfs")
    proc = run([refscope_bin(), "run", "-o", out, "/bin/sh", "-c", "exit 3", "-o", "--json"], timeout=60)
    expect(proc.returncode == 3, "run did not pass the command's own options through: %d %s"
           % (proc.returncode, proc.stderr))


def test_run_refuses_to_overwrite():
    d = workdir()
    out = os.path.join(d, "exists.rfs")
    with open(out, "w") as f:
        f.write("precious")
    line = _one_line_failure(run([refscope_bin(), "run", "-o", out, "--", "true"], timeout=60), 1)
    expect("exists" in line and "-f" in line, line)
    with open(out) as f:
        expect(f.read() == "precious", "the existing file was modified")


def test_run_force_overwrites():
    d = workdir()
    out = os.path.join(d, "exists.rfs")
    with open(out, "w") as f:
        f.write("old")
    proc = run([refscope_bin(), "run", "-f", "-o", out, "--", "/usr/bin/python3", "-c", "pass"], timeout=120)
    expect(proc.returncode == 0, proc.stderr)
    with open(out, "rb") as f:
        head = f.read(8)
    if head != b"RFSTRACE":
        raise Skip("no trace written (shim not working?): %s" % proc.stderr.strip()[-300:])
    expect(oct(os.stat(out).st_mode & 0o777) == oct(0o600), "trace mode %o" % (os.stat(out).st_mode & 0o777))


def test_run_no_stacks():
    """--no-stacks: allocation records without Python stacks (and no stack
    definitions); the same program traced by default has them."""
    if not os.access("/usr/bin/python3", os.X_OK):
        raise Skip("/usr/bin/python3 not found")
    d = workdir()
    prog = ["/usr/bin/python3", "-c", "x = [bytearray(1000) for _ in range(100)]"]
    counts = {}
    for label, opts in (("default", []), ("no-stacks", ["--no-stacks"])):
        out = os.path.join(d, label + ".rfs")
        proc = run([refscope_bin(), "run", "-o", out] + opts + ["--"] + prog, timeout=120)
        expect(proc.returncode == 0, "%s: %s" % (label, proc.stderr))
        dump = refscope("dump", out, timeout=120).stdout.splitlines()
        allocs = [l for l in dump if " alloc " in l and " obj " in l]
        counts[label] = (sum(" py_stack " in l for l in dump), sum("stack=0 " not in l for l in allocs), len(allocs))
    expect(counts["default"][0] > 0 and counts["default"][1] > 0, "default run has no Python stacks: %r" % counts)
    expect(counts["no-stacks"][2] >= 100, "no allocations recorded with --no-stacks: %r" % counts)
    expect(counts["no-stacks"][:2] == (0, 0), "--no-stacks still recorded stacks: %r" % counts)


def test_run_exit_status_passthrough():
    d = workdir()
    for code in (0, 3, 42):
        out = os.path.join(d, "s%d.rfs" % code)
        proc = run([refscope_bin(), "run", "-o", out, "--", "/usr/bin/python3", "-c",
                    "import sys; sys.exit(%d)" % code], timeout=120)
        expect(proc.returncode == code, "exit %d, expected %d: %s" % (proc.returncode, code, proc.stderr))


def test_run_killed_by_signal():
    d = workdir()
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV):
        out = os.path.join(d, "k%d.rfs" % sig)
        proc = run([refscope_bin(), "run", "-o", out, "--", "/usr/bin/python3", "-c",
                    "import os, signal; x = [bytearray(100) for _ in range(1000)]; os.kill(os.getpid(), %d)" % sig],
                   timeout=120)
        expect(proc.returncode == 128 + sig, "exit %d, expected %d: %s" % (proc.returncode, 128 + sig, proc.stderr))
        if os.path.exists(out):
            s = refscope("summary", out, timeout=60)
            expect(s.returncode == 0, "summary of a killed process's trace failed: %s" % s.stderr)


def test_run_command_not_found():
    d = workdir()
    proc = run([refscope_bin(), "run", "-o", os.path.join(d, "t.rfs"), "--", "/no/such/program"], timeout=60)
    expect(proc.returncode == 127, "exit %d, expected 127" % proc.returncode)


def test_truncated_trace():
    d = workdir()
    trace = _small_trace(d)
    with open(trace, "rb") as f:
        data = f.read()
    ok = failed = 0
    step = max(1, len(data) // 60)
    for cut in list(range(0, len(data), step)) + [len(data) - 1, len(data) - 20]:
        path = os.path.join(d, "cut%d.rfs" % cut)
        with open(path, "wb") as f:
            f.write(data[:cut])
        proc = refscope("summary", path, timeout=30)
        expect(proc.returncode in (0, 1), "summary of a trace cut at %d: status %d %s" % (cut, proc.returncode, proc.stderr))
        if proc.returncode == 0:
            expect("truncated" in proc.stdout or "did not finish" in proc.stdout,
                   "no warning for a trace cut at %d:\n%s" % (cut, proc.stdout))
            ok += 1
        else:
            _one_line_failure(proc, 1)
            failed += 1
    expect(ok > 0, "no truncated prefix was readable")


def test_summary_json_keys():
    d = workdir()
    trace = _small_trace(d)
    import json
    proc = refscope("summary", "--json", trace, timeout=60)
    expect(proc.returncode == 0, proc.stderr)
    doc = json.loads(proc.stdout)
    for key in ("allocations", "frees", "peak_bytes", "live_bytes_end", "lost_events", "domains", "threads",
                "duration_ns", "pid", "ppid", "command", "python_version", "producer_waits", "truncated"):
        expect(key in doc, "missing key %s" % key)
    for name in ("libc", "raw", "mem", "obj", "arena"):
        for key in ("allocations", "bytes", "frees", "live_bytes_end"):
            expect(key in doc["domains"][name], "missing domains.%s.%s" % (name, key))
    expect(doc["allocations"] > 0, "no allocations seen")
    dump = refscope("dump", "--json", "--kind", "alloc", trace, timeout=60)
    expect(dump.returncode == 0, dump.stderr)
    lines = dump.stdout.splitlines()
    expect(len(lines) == sum(v["allocations"] for v in doc["domains"].values()) + 0 or len(lines) > 0, "dump empty")
    rec = json.loads(lines[0])
    for key in ("kind", "ordinal", "time_ns", "thread", "domain", "addr", "size", "stack"):
        expect(key in rec, "dump record lacks %s" % key)


def test_run_force_replaces_only_files():
    """-f replaces a trace file, or a symbolic link (not its target); a
    device, FIFO or directory is refused, with or without -f (a FIFO stands
    in for /dev/null here: as root, replacing that would break the machine)."""
    d = workdir()
    fifo = os.path.join(d, "fifo.rfs")
    os.mkfifo(fifo)
    for force in ([], ["-f"]):
        line = _one_line_failure(run([refscope_bin(), "run", *force, "-o", fifo, "--", "true"], timeout=60), 1)
        expect("not a regular file" in line, line)
        expect(stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced")
    line = _one_line_failure(run([refscope_bin(), "run", "-f", "-o", d, "--", "true"], timeout=60), 1)
    expect("not a regular file" in line, line)
    target = os.path.join(d, "target")
    with open(target, "w") as f:
        f.write("precious")
    link = os.path.join(d, "link.rfs")
    os.symlink(target, link)
    proc = run([refscope_bin(), "run", "-f", "-o", link, "--", "/usr/bin/python3", "-c", "pass"], timeout=120)
    expect(proc.returncode == 0, proc.stderr)
    with open(target) as f:
        expect(f.read() == "precious", "the link's target was overwritten")
    expect(not os.path.islink(link), "the link was followed, not replaced")


def test_reports_to_a_full_disk():
    """A report that cannot be written (stdout or -o on a full device) is a
    failure: one line on stderr and status 1, not a silent success."""
    if not os.path.exists("/dev/full"):
        raise Skip("/dev/full is missing")
    trace = _small_trace(workdir())
    for args in (["summary"], ["summary", "--json"], ["top"], ["top", "--json"], ["gc"], ["gc", "--json"],
                 ["lifetimes"], ["lifetimes", "--json"], ["leaks"], ["leaks", "--json"], ["cycles"],
                 ["cycles", "--json"], ["dump"], ["flamegraph", "-o", "-"],
                 ["flamegraph", "--format", "collapsed", "-o", "-"]):
        with open(os.devnull, "w") as sink:
            ok = subprocess.run([refscope_bin(), *args, trace], stdout=sink, stderr=subprocess.PIPE,
                                text=True, timeout=120)
        expect(ok.returncode == 0, "refscope %s failed on a good trace: %s" % (" ".join(args), ok.stderr))
        with open("/dev/full", "w") as full:
            proc = subprocess.run([refscope_bin(), *args, trace], stdout=full, stderr=subprocess.PIPE,
                                  text=True, timeout=120)
        line = _one_line_failure(proc, 1)
        expect(line.startswith("refscope %s: cannot write" % args[0]), "refscope %s: %s" % (" ".join(args), line))
    for args in (["flamegraph", "-o", "/dev/full"], ["cycles", "--dot", "/dev/full"]):
        line = _one_line_failure(refscope(*args, trace, timeout=120), 1)
        expect("cannot write /dev/full" in line, line)


def test_run_unwritable_output():
    proc = run([refscope_bin(), "run", "-o", "/nonexistent-dir/t.rfs", "--", "true"], timeout=60)
    line = _one_line_failure(proc, 1)
    expect("/nonexistent-dir/t.rfs" in line, line)


def test_run_reaps_orphans_while_the_command_runs():
    """`run` is the subreaper of the command's tree: children the command
    leaves behind are reaped as they exit, not kept as zombies until the
    command ends (a traced service would fill the process table)."""
    script = (
        'for i in 1 2 3 4 5; do ( /bin/sleep 0.1 & ); done\n'
        '/bin/sleep 1.5\n'
        'n=0\n'
        'for f in /proc/[0-9]*/status; do\n'
        '  if grep -q "^PPid:[[:space:]]*$PPID\\$" "$f" 2>/dev/null && grep -q "^State:[[:space:]]*Z" "$f" 2>/dev/null; then n=$((n+1)); fi\n'
        'done\n'
        'echo "zombies $n"\n')
    t = run_traced(["/bin/sh", "-c", script])
    expect("zombies 0" in t.proc.stdout, "orphans left as zombies of refscope run: %r" % t.proc.stdout)


def test_run_forwards_sigterm():
    import subprocess
    import time
    d = workdir()
    out = os.path.join(d, "term.rfs")
    proc = subprocess.Popen([refscope_bin(), "run", "-o", out, "--", "/usr/bin/python3", "-c",
                             "import time; x = [bytearray(64) for _ in range(100)]; time.sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    expect(proc.returncode == 128 + signal.SIGTERM, "exit %d: %s" % (proc.returncode, err))
    if os.path.exists(out):
        s = refscope("summary", out, timeout=60)
        expect(s.returncode == 0, s.stderr)


def test_bad_snapshot_numbers():
    """leaks, cycles and diff name the snapshots a trace has when asked for one it has not."""
    pys = interpreters()
    if not pys:
        raise Skip("no CPython found")
    script = write_script("x = [bytearray(100) for _ in range(100)]\n")
    t = run_traced([pys[0].path, script])
    for args in (("leaks", "--snapshot", "9", t.trace), ("leaks", "--snapshot", "abc", t.trace),
                 ("cycles", "--snapshot", "9", t.trace), ("diff", t.trace, "1", "x")):
        proc = refscope(*args)
        lines = proc.stderr.strip().splitlines()
        expect(proc.returncode == 1 and len(lines) == 1 and "no snapshot numbered" in lines[0]
                       and "the trace has snapshot 1" in lines[0],
                       "refscope %s: exit %d, stderr %r" % (" ".join(args[:-1]), proc.returncode, proc.stderr))
