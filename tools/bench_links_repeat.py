"""The link suite, run again and again: a test that fails at random is a defect, and one run
cannot show it is gone.

Runs `pytest tests/links` RUNS times in a row (each in a fresh process, each bounded in time)
and prints one JSON line: {"bench": "links_repeat", "runs", "passed_runs", "failed_runs",
"failures" (test id -> count), "seconds" (min/median/max of a run), "total_s"}. The slowest
test's worst time is kept too, so a stall that stays under its timeout still shows.

usage: python -m tools.bench_links_repeat [--runs 20] [-k EXPR]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUN_TIMEOUT = 1200        # one run of the suite takes ~3-5 min on 2 cores


def one_run(k, basetemp):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=1",
           "--basetemp", basetemp, "tests/links"]
    if k:
        cmd += ["-k", k]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        out = p.stdout + p.stderr
        code = p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        code = "timeout"
    took = time.monotonic() - t0
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    slow = re.search(r"^([\d.]+)s call\s+(\S+)", out, re.M)
    return code, took, failed, (float(slow.group(1)), slow.group(2)) if slow else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("-k", default=None, help="only tests matching this pytest -k expression")
    args = ap.parse_args()
    failures = {}
    times = []
    slowest = (0.0, None)
    passed = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            code, took, failed, slow = one_run(args.k, os.path.join(tmp, "run%d" % i))
            times.append(took)
            if code == 0:
                passed += 1
            else:
                for t in failed or ["(run %s: %s)" % (i, code)]:
                    failures[t] = failures.get(t, 0) + 1
            if slow and slow[0] > slowest[0]:
                slowest = slow
            print("# run %d/%d: %s in %.0f s%s" % (i + 1, args.runs, "passed" if code == 0 else "FAILED",
                                                  took, (": " + ", ".join(failed)) if failed else ""),
                  file=sys.stderr, flush=True)
    print(json.dumps({
        "bench": "links_repeat", "runs": args.runs, "passed_runs": passed,
        "failed_runs": args.runs - passed, "failures": failures,
        "seconds": {"min": round(min(times), 1), "median": round(statistics.median(times), 1),
                    "max": round(max(times), 1)},
        "slowest_test": {"seconds": slowest[0], "test": slowest[1]},
        "total_s": round(time.monotonic() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
