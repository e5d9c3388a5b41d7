#!/usr/bin/env python3
"""Fuzzing benchmark: millions of generated inputs through everything that takes bytes from
the wire, with no crash, no hang and no growing memory.

Targets (tests/support/fuzz_targets.py, the same code the hypothesis properties in
tests/fuzz/test_fuzz_decoders.py use, here driven by a seeded random.Random with no
hypothesis overhead):

  cbor_decode      random bytes, byte-level mutations of valid encodings and messages,
                   nesting at and past the limit, hostile heads: only CBORError; whatever
                   decodes re-encodes to exactly the input (canonical); as copies and views
  cbor_roundtrip   decode(encode(x)) == x, types included, for the protocol's subset
  utf8_validator   the UTF-8 check the decoder does on MicroPython (cbor._utf8_ok) agrees
                   with CPython's strict decoder on text near the encoding's edges
  messages_decode  random bytes, valid messages of every type, structural and byte-level
                   mutations: only ProtocolError; what decodes passes check() again
  deframer         frames in clean and dirty noise, pushed in random pieces: no exception,
                   counters balance, buffer never grows, every real frame recovered
  session          a Session (rover or anchor, three buffer set-ups) walked through the
                   table by valid messages and fed out-of-order, mutated and noise input:
                   only ProtocolError (then a fresh session), states from the table only
  channel          two Channels after a real handshake; one gets random, forged
                   (right epoch), replayed and mutated packets among real traffic with
                   loss and application calls: nothing raises, <= 16 streams, <= 48 packets
                   in flight, buffers never replaced, counters only grow

Each target runs in 10 slices; the resident set after the first slice and after the last
shows whether anything grows (rss_growth_mib). A case slower than --hang-s counts as a
crash (a hang), as does any exception a target does not document. Also measured: the
deframer's worst case, a flood of bogus headers with a valid check and the largest LEN
(each costs a CRC over max_payload bytes before it is dropped by one byte).

Prints one JSON line; exits 1 if anything crashed (reproducers on stderr).

Usage: python -m tools.bench_fuzz [--scale F] [--seed S] [--only a,b] [--hang-s SECONDS]
"""
import argparse
import json
import os
import resource
import struct
import sys
import time

from tests.support import fuzz_targets as ft
from anchor_core import framing

# Cases per target at --scale 1 (session and channel cases are runs of several steps).
CASES = {
    "cbor_decode": 1_000_000,
    "messages_decode": 1_000_000,
    "cbor_roundtrip": 200_000,
    "utf8_validator": 1_000_000,
    "deframer": 200_000,
    "session": 20_000,
    "channel": 10_000,
}
SLICES = 10


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def header_flood_kib_per_s(kib=256):
    hdr = framing.SYNC + struct.pack(">HH", framing.MAX_PAYLOAD, framing.MAX_PAYLOAD ^ 0xFFFF)
    data = memoryview(hdr * (kib * 1024 // len(hdr)))
    d = framing.Deframer()
    t = time.perf_counter()
    pos = 0
    while pos < len(data):
        pos += d.receive_data(data[pos:pos + 4096])
        while d.next_frame() is not None:
            pass
    d.eof()
    while d.next_frame() is not None:
        pass
    assert d.frames == 0 and d.pending == 0
    return len(data) / 1024 / (time.perf_counter() - t)


def run_target(name, cases, seed, hang_s):
    per = [cases // SLICES + (1 if i < cases % SLICES else 0) for i in range(SLICES)]
    total = {"cases": 0, "inputs": 0, "exceptions": {}, "escaped": {}, "crashes": [], "seconds": 0.0,
             "slowest_case_s": 0.0}
    rss_after_first = None
    for i, n in enumerate(per):
        if not n:
            continue
        got = ft.fuzz_loop(name, n, seed * 1000 + i, hang_s)
        for k in ("cases", "inputs", "seconds"):
            total[k] += got[k]
        total["slowest_case_s"] = max(total["slowest_case_s"], got["slowest_case_s"])
        for key in ("exceptions", "escaped"):
            for k, v in got[key].items():
                total[key][k] = total[key].get(k, 0) + v
        for c in got["crashes"]:
            c["slice"] = i
        total["crashes"] += got["crashes"]
        if rss_after_first is None:
            rss_after_first = rss_mib()
    total["rss_growth_mib"] = round(rss_mib() - rss_after_first, 2)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every target's cases")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated targets: " + ",".join(CASES))
    ap.add_argument("--hang-s", type=float, default=5.0, help="a case slower than this is a hang")
    args = ap.parse_args()
    names = [n for n in CASES if not args.only or n in args.only.split(",")]
    t0 = time.perf_counter()
    out = {"bench": "fuzz", "seed": args.seed, "targets": {}}
    exceptions = {}
    unexpected = {}
    crashes = 0
    inputs = 0
    for name in names:
        cases = max(1, int(CASES[name] * args.scale))
        print("# %s: %d cases" % (name, cases), file=sys.stderr, flush=True)
        r = run_target(name, cases, args.seed, args.hang_s)
        bad = dict(r["escaped"])
        for k, v in r["exceptions"].items():
            if k not in ft.ALLOWED[name]:
                bad[k] = bad.get(k, 0) + v
        n_crash = sum(bad.values())
        for c in r["crashes"]:
            print("# CRASH %s: %s" % (name, json.dumps(c)), file=sys.stderr)
        out["targets"][name] = {
            "cases": r["cases"], "inputs": r["inputs"], "what": ft.TARGETS[name][1],
            "inputs_per_s": round(r["inputs"] / r["seconds"]), "seconds": round(r["seconds"], 1),
            "exceptions": r["exceptions"], "unexpected_exceptions": bad, "crashes": n_crash,
            "slowest_case_ms": round(r["slowest_case_s"] * 1000, 2), "rss_growth_mib": r["rss_growth_mib"],
        }
        inputs += r["inputs"]
        crashes += n_crash
        for k, v in r["exceptions"].items():
            exceptions[k] = exceptions.get(k, 0) + v
        for k, v in bad.items():
            unexpected["%s:%s" % (name, k)] = v
    out["inputs_total"] = inputs
    out["exceptions"] = exceptions
    out["unexpected_exceptions"] = unexpected
    out["crashes"] = crashes
    out["deframer_header_flood_kib_per_s"] = round(header_flood_kib_per_s())
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["python"] = sys.version.split()[0]
    out["cpus"] = os.cpu_count()
    print(json.dumps(out))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
