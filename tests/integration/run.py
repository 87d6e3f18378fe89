#!/usr/bin/env python3
"""Runs refscope's integration tests: every test_* function in
tests/integration/test_*.py, per interpreter where asked. Prints one line per
result and closes with 'N passed, N failed, N skipped'.

  python3 tests/integration/run.py [--build DIR] [-k SUBSTRING] [-j JOBS]
"""
import argparse
import concurrent.futures
import importlib.util
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def load_tests(pattern):
    sys.path.insert(0, HERE)
    import harness
    tests = []
    for name in sorted(os.listdir(HERE)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(HERE, name))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for attr in sorted(dir(mod)):
            fn = getattr(mod, attr)
            if not (attr.startswith("test_") and callable(fn)):
                continue
            if getattr(fn, "per_interpreter", False):
                for py in harness.interpreters():
                    tests.append(("%s::%s[%s]" % (name[:-3], attr, py.label), fn, (py,)))
            else:
                tests.append(("%s::%s" % (name[:-3], attr), fn, ()))
    return harness, [t for t in tests if not pattern or pattern in t[0]]


def run_one(test):
    name, fn, args = test
    import harness
    start = time.monotonic()
    try:
        fn(*args)
        return name, "PASS", "", time.monotonic() - start
    except harness.Skip as e:
        return name, "SKIP", str(e), time.monotonic() - start
    except Exception:
        return name, "FAIL", traceback.format_exc(), time.monotonic() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "build"))
    ap.add_argument("-k", dest="pattern", default="")
    ap.add_argument("-j", dest="jobs", type=int, default=max(2, os.cpu_count() or 2))
    opts = ap.parse_args()
    os.environ["REFSCOPE_BUILD"] = os.path.abspath(opts.build)
    harness, tests = load_tests(opts.pattern)
    pys = harness.interpreters()
    print("interpreters: " + (", ".join("%s (%s)" % (p.label, p.path) for p in pys) or "none"))
    for note in harness.missing_interpreter_notes():
        print("skipping: " + note)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        for name, status, detail, secs in pool.map(run_one, tests):
            counts[status] += 1
            line = "%-4s %s (%.1fs)" % (status, name, secs)
            if status == "SKIP":
                line += ": " + detail
            print(line, flush=True)
            if status == "FAIL":
                failures.append((name, detail))
    for name, detail in failures:
        print("\n==== %s\n%s" % (name, detail))
    harness.cleanup()
    print("%d passed, %d failed, %d skipped" % (counts["PASS"], counts["FAIL"], counts["SKIP"]))
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
