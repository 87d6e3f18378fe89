"""`refscope top` (ranking metrics, depth, limit, filters, JSON shape) and
`refscope flamegraph` (self-contained HTML, folded stacks) on a workload
whose answer is known."""
import os
import re

from harness import (Skip, expect, interpreters, per_interpreter, refscope, refscope_json,
                     run_traced, workdir, write_script)

WORKLOAD = """\
LEAKED = []

def leak_some():
    LEAKED.append(bytearray(3 << 20))  # LIVE_LINE

def big_peak():
    held = [bytearray(1 << 20) for _ in range(12)]  # PEAK_LINE
    return len(held)

def churn_bytes():
    for _ in range(30):
        tmp = bytearray(1 << 20)  # TOTAL_LINE
    return tmp

def churn_count():
    for i in range(40000):
        tmp = bytearray(40)  # COUNT_LINE
    return tmp

leak_some()
big_peak()
churn_bytes()
churn_count()
"""

MARKERS = ("LIVE_LINE", "PEAK_LINE", "TOTAL_LINE", "COUNT_LINE")


def _lines(path):
    found = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            for m in MARKERS:
                if "# " + m in line:
                    found[m] = number
    return found


def _trace_workload(py):
    script = write_script(WORKLOAD, "workload.py")
    traced = run_traced([py.path, script], timeout=120)
    return script, _lines(script), traced.trace


def _site_line(site, script):
    frames = site["frames"]
    if not frames or frames[0]["file"] != script:
        return None
    return frames[0]["line"]


@per_interpreter
def test_top_ranks_by_each_metric(py):
    script, lines, trace = _trace_workload(py)
    expected = {"peak": "PEAK_LINE", "total": "TOTAL_LINE", "count": "COUNT_LINE", "live": "LIVE_LINE"}
    for metric, marker in expected.items():
        top = refscope_json("top", "--by", metric, trace, timeout=120)
        expect(top["sites"], "%s: no sites" % py)
        got = _site_line(top["sites"][0], script)
        expect(got == lines[marker], "%s: --by %s ranks line %s first, expected %d (%s)"
               % (py, metric, got, lines[marker], marker))
    top = refscope_json("top", "--by", "peak", "--limit", "0", trace, timeout=120)
    # before 3.12 a list comprehension is its own function on the same line:
    # add up the sites of each line
    by_line = {}
    for s in top["sites"]:
        line = _site_line(s, script)
        if line:
            acc = by_line.setdefault(line, dict.fromkeys(("allocations", "bytes", "peak_bytes",
                                                           "live_bytes_end"), 0))
            for k in acc:
                acc[k] += s[k]
    peak = by_line[lines["PEAK_LINE"]]
    live = by_line[lines["LIVE_LINE"]]
    total = by_line[lines["TOTAL_LINE"]]
    count = by_line[lines["COUNT_LINE"]]
    # 12 MiB held at the peak by PEAK_LINE, 3 MiB by LIVE_LINE (leaked before)
    expect(peak["peak_bytes"] >= 12 << 20 and peak["live_bytes_end"] < 4096,
           "%s: peak site %r" % (py, peak))
    expect(live["peak_bytes"] >= 3 << 20 and live["live_bytes_end"] >= 3 << 20,
           "%s: leak site %r" % (py, live))
    expect(total["bytes"] >= 30 << 20 and total["peak_bytes"] <= 2 << 20,
           "%s: churn site %r" % (py, total))
    expect(count["allocations"] >= 40000, "%s: count site %r" % (py, count))
    for s in top["sites"]:
        for key in ("frames", "allocations", "bytes", "peak_bytes", "live_bytes_end"):
            expect(key in s, "%s: site without %s" % (py, key))
        for f in s["frames"]:
            expect(set(("function", "file", "line")) <= set(f), "%s: frame %r" % (py, f))


def _first_interpreter():
    pys = [p for p in interpreters() if not p.free_threaded] or interpreters()
    if not pys:
        raise Skip("no interpreter found")
    return pys[0]


def test_top_filters_depth_limit_text():
    py = _first_interpreter()
    script, lines, trace = _trace_workload(py)
    top = refscope_json("top", "--limit", "2", trace, timeout=120)
    expect(len(top["sites"]) == 2, "--limit 2 gave %d sites" % len(top["sites"]))

    only = refscope_json("top", "--function", "leak_some", "--limit", "0", trace, timeout=120)
    expect(only["sites"] and all(any(f["function"].endswith("leak_some") for f in s["frames"])
                                 or s["frames"][0]["line"] == lines["LIVE_LINE"] for s in only["sites"]),
           "--function leak_some kept other sites: %r" % only["sites"][:3])
    expect(_site_line(only["sites"][0], script) == lines["LIVE_LINE"], "--function: %r" % only["sites"][0])

    none = refscope_json("top", "--file", "no-such-file-anywhere.py", trace, timeout=120)
    expect(none["sites"] == [], "--file with no match gave %d sites" % len(none["sites"]))
    mine = refscope_json("top", "--file", os.path.basename(script), "--limit", "0", trace, timeout=120)
    expect(len(mine["sites"]) >= 4, "--file workload.py gave %d sites" % len(mine["sites"]))

    deep = refscope_json("top", "--depth", "3", "--by", "live", trace, timeout=120)
    frames = deep["sites"][0]["frames"]
    expect(len(frames) == 2 and frames[1]["function"] == "<module>",
           "--depth 3 frames of the leak: %r" % frames)

    text = refscope("top", "--by", "count", trace, timeout=120)
    expect(text.returncode == 0 and "workload.py:%d" % lines["COUNT_LINE"] in text.stdout,
           "text report:\n" + text.stdout[:2000])
    bad = refscope("top", "--by", "nonsense", trace, timeout=60)
    expect(bad.returncode == 2, "bad --by exited %d" % bad.returncode)


def test_flamegraph_html_and_collapsed():
    py = _first_interpreter()
    script, lines, trace = _trace_workload(py)
    d = workdir()
    html = os.path.join(d, "fg.html")
    proc = refscope("flamegraph", trace, "-o", html, timeout=120)
    expect(proc.returncode == 0, "flamegraph failed: %s" % proc.stderr)
    with open(html) as f:
        page = f.read()
    expect(not re.search(r"https?://", page), "HTML refers to a network resource")
    expect(not re.search(r"<(script|link|img)[^>]+(src|href)=", page), "HTML loads an external file")
    expect("<script>" in page and 'id="q"' in page and "onclick" in page, "HTML lacks the viewer")
    expect("big_peak" in page, "peak frame missing from the HTML")

    totals = refscope_json("top", "--by", "total", "--limit", "1", trace, timeout=120)
    for metric in ("total", "live", "peak"):
        out = os.path.join(d, "fg-%s.txt" % metric)
        proc = refscope("flamegraph", "--format", "collapsed", "--by", metric, "-o", out, trace, timeout=120)
        expect(proc.returncode == 0, "collapsed failed: %s" % proc.stderr)
        weights = {}
        with open(out) as f:
            for raw in f:
                m = re.match(r"^(.+) (\d+)$", raw.rstrip("\n"))
                expect(m is not None, "bad folded line: %r" % raw)
                frames = m.group(1).split(";")
                expect(all(frames), "empty frame in %r" % raw)
                weights[m.group(1)] = weights.get(m.group(1), 0) + int(m.group(2))
        expect(len(weights) == sum(1 for _ in open(out)), "duplicate folded stacks in %s" % metric)
        total = sum(weights.values())
        if metric == "total":
            expect(total == totals["bytes"], "folded total %d != top total %d" % (total, totals["bytes"]))
            key = [k for k in weights if k.endswith("churn_bytes (workload.py:%d)" % lines["TOTAL_LINE"])]
            expect(key and weights[key[0]] >= 30 << 20, "churn_bytes stack missing: %r" % key)
        if metric == "live":
            expect(total == totals["live_bytes_end"], "folded live %d != top %d"
                   % (total, totals["live_bytes_end"]))
        if metric == "peak":
            expect(total == totals["peak_bytes"], "folded peak %d != trace peak %d"
                   % (total, totals["peak_bytes"]))
