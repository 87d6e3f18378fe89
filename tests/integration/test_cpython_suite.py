"""CPython's own tests under refscope: the tracer must not change what the
program sees. A few test files that look at the allocators, the gc module,
atexit and the interpreter's state (test_sys found that sys._debugmallocstats
lost pymalloc's statistics) run traced on every interpreter that ships its
test package; a test file that fails traced must fail untraced too (some
fail on this kind of machine whatever the tracer does)."""
import os
import re

import harness
from harness import expect, per_interpreter

TESTS = ("test_sys", "test_tracemalloc", "test_gc", "test_atexit")
FAILED = re.compile(r"\b(test_\w+) failed\b")


def _failed(proc):
    """The test files regrtest reports as failed (or all of them when it
    printed no result at all)."""
    out = proc.stdout + proc.stderr
    if "Tests result" not in out and "Result:" not in out:
        return set(TESTS)
    return set(FAILED.findall(out))


def _has_test_package(py):
    probe = harness.run([py.path, "-c", "import os, test; print(os.path.dirname(test.__file__))"], timeout=30)
    return probe.returncode == 0 and os.path.exists(os.path.join(probe.stdout.strip(), "test_sys.py"))


@per_interpreter
def test_cpython_suite_unchanged_by_tracing(py):
    if not _has_test_package(py):
        raise harness.Skip("%s has no test package (Debian ships it in libpython3.x-testsuite)" % py)
    cmd = [py.path, "-m", "test", *TESTS]
    t = harness.run_traced(cmd, timeout=300, expect_status=None)
    failed = _failed(t.proc)
    if failed:
        plain = harness.run(cmd, timeout=300)
        only_traced = failed - _failed(plain)
        expect(not only_traced, "%s: %s fail under refscope only:\n%s"
               % (py, " ".join(sorted(only_traced)), t.proc.stdout[-3000:]))
    expect(len(t.traces()) > 1, "%s: no traces of the tests' child processes" % py)
    s = harness.refscope_json("summary", t.trace)
    expect(s["allocations"] > 0 and s["lost_events"] == 0, "%s: main trace: %s" % (py, s))
