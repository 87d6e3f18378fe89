"""Shared helpers for refscope's integration tests.

Tests are plain functions named test_* in tests/integration/test_*.py.
A test decorated with @per_interpreter is called once per CPython found,
with an Interpreter; raise Skip("why") to skip. Every process a test starts
goes through run() or run_traced(), which bound it with a timeout.
"""
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("REFSCOPE_BUILD", os.path.join(ROOT, "build"))
DEFAULT_TIMEOUT = 120


class Skip(Exception):
    """Raised by a test that cannot run here; the message says why."""


class Interpreter:
    def __init__(self, path, label, version, free_threaded, shared):
        self.path = path
        self.label = label
        self.version = version            # (major, minor, micro)
        self.free_threaded = free_threaded
        self.shared = shared              # libpython is a shared library

    def __repr__(self):
        return self.label


def refscope_bin():
    return os.path.join(BUILD, "refscope")


def shim_path():
    return os.path.join(BUILD, "librefscope.so")


def prog(name):
    """Path of a compiled tests/progs/<name>.c helper program."""
    return os.path.join(BUILD, "tests", "progs", name)


_PROBE = ("import sys, sysconfig; print(sys.version_info[0], sys.version_info[1], sys.version_info[2], "
          "int(bool(sysconfig.get_config_var('Py_GIL_DISABLED'))), "
          "int(bool(sysconfig.get_config_var('Py_ENABLE_SHARED'))))")


def _probe(path):
    try:
        out = subprocess.run([path, "-c", _PROBE], capture_output=True, text=True, timeout=30).stdout.split()
        major, minor, micro, ft, shared = (int(x) for x in out)
        return (major, minor, micro), bool(ft), bool(shared)
    except Exception:
        return None


def _pyenv_root():
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            root = None
    return root or os.path.expanduser("~/.pyenv")


@functools.lru_cache(maxsize=1)
def interpreters():
    """Every CPython >= 3.9 found: Debian's, pyenv's, /opt/cpython's. Deduplicated."""
    return [py for py in _discover() if py.version >= (3, 9, 0)]


@functools.lru_cache(maxsize=1)
def older_interpreters():
    """Every CPython older than 3.9 found in the same places (refscope traces
    their allocations only)."""
    return [py for py in _discover() if py.version < (3, 9, 0)]


def _discover():
    candidates = [("debian", "/usr/bin/python3")]
    candidates += [("pyenv", p) for p in sorted(glob.glob(os.path.join(_pyenv_root(), "versions", "*", "bin", "python3")))]
    candidates += [("opt", p) for p in sorted(glob.glob("/opt/cpython/*/bin/python3*")) if not p.endswith("-config")]
    seen, found = set(), []
    only = os.environ.get("REFSCOPE_PYTHONS")  # optional filter: comma-separated labels or paths
    for origin, path in candidates:
        if not os.path.exists(path):
            continue
        st = os.stat(path)  # hard links (python3.13 / python3.13t) are one interpreter
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        probed = _probe(path)
        if probed is None:
            continue
        version, ft, shared = probed
        label = "%s-%d.%d.%d%s" % (origin, version[0], version[1], version[2], "t" if ft else "")
        if only and label not in only.split(",") and path not in only.split(","):
            continue
        found.append(Interpreter(path, label, version, ft, shared))
    return found


def first_interpreter():
    """The first interpreter found (/usr/bin/python3 when there is one), for
    a test that needs one, not each; Skip when there is none."""
    pys = interpreters()
    if not pys:
        raise Skip("no Python interpreter found")
    return pys[0]


def missing_interpreter_notes():
    """Lines saying which expected interpreter locations were not found."""
    notes = []
    if not os.path.exists("/usr/bin/python3"):
        notes.append("no /usr/bin/python3 (Debian's CPython)")
    if not glob.glob(os.path.join(_pyenv_root(), "versions", "*", "bin", "python3")):
        notes.append("no pyenv interpreters under %s" % _pyenv_root())
    if not glob.glob("/opt/cpython/*/bin/python3*"):
        notes.append("no /opt/cpython interpreters (run shared/tools/build-cpython.sh --ft for 3.13 and 3.13t)")
    return notes


def per_interpreter(fn):
    fn.per_interpreter = True
    return fn


def run(args, timeout=DEFAULT_TIMEOUT, env=None, check=False, **kw):
    """subprocess.run with a timeout and captured text output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env, check=check, **kw)


class Traced:
    def __init__(self, proc, trace, workdir):
        self.proc = proc
        self.trace = trace
        self.workdir = workdir

    def traces(self):
        """Every trace file this run produced (main first)."""
        stem = self.trace[:-4] if self.trace.endswith(".rfs") else self.trace
        others = sorted(p for p in glob.glob(stem + ".*.rfs") if p != self.trace)
        return [self.trace] + others


_WORKDIRS = []


def workdir():
    """A fresh temporary directory, removed by cleanup() when the run ends."""
    d = tempfile.mkdtemp(prefix="refscope-test-")
    _WORKDIRS.append(d)
    return d


def cleanup():
    """Removes every directory workdir() made (REFSCOPE_KEEP=1 keeps them)."""
    if os.environ.get("REFSCOPE_KEEP") == "1":
        return
    while _WORKDIRS:
        shutil.rmtree(_WORKDIRS.pop(), ignore_errors=True)


def run_traced(cmd, run_args=(), env=None, timeout=DEFAULT_TIMEOUT, cwd=None, expect_status=0):
    """`refscope run -o DIR/trace.rfs [run_args] -- cmd...`; asserts the exit status."""
    d = workdir()
    trace = os.path.join(d, "trace.rfs")
    proc = run([refscope_bin(), "run", "-o", trace, *run_args, "--", *cmd], timeout=timeout, env=env, cwd=cwd or d)
    if expect_status is not None and proc.returncode != expect_status:
        raise AssertionError("refscope run exited %d (expected %d)\nstdout: %s\nstderr: %s"
                             % (proc.returncode, expect_status, proc.stdout[-2000:], proc.stderr[-2000:]))
    return Traced(proc, trace, d)


def write_script(text, name="prog.py"):
    d = workdir()
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def refscope(*args, timeout=DEFAULT_TIMEOUT, env=None):
    return run([refscope_bin(), *args], timeout=timeout, env=env)


def refscope_json(*args, timeout=DEFAULT_TIMEOUT):
    """Runs a refscope subcommand with --json and returns the parsed output."""
    proc = refscope(args[0], "--json", *args[1:], timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError("refscope %s failed (%d): %s" % (" ".join(args), proc.returncode, proc.stderr.strip()))
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError("refscope %s printed invalid JSON: %s\n%s" % (" ".join(args), e, proc.stdout[:2000]))


def dump_records(trace, *options):
    """The trace's records, one dict each, as `refscope dump --json [options]` prints them."""
    proc = refscope("dump", "--json", *options, trace, timeout=60)
    expect(proc.returncode == 0, "refscope dump %s failed: %s" % (trace, proc.stderr.strip()))
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)
