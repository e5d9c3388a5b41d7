#!/usr/bin/env python3
"""Relay throughput of a large download with capture on vs. off (DESIGN section 9).

Everything on 127.0.0.1: the loopback Origin of the e2e tests serves --mib MiB of
pseudo-random bytes (media-like, incompressible); the CPython rover (`rover fetch`) pulls it
through the relay of two `anchor serve` processes, one as shipped and one started with
`--no-capture` (a measurement-only switch: the relay still spools bodies as they pass, but
nothing is chunked, hashed, compressed, stored or registered).

A run is timed from the rover's start until the anchor has counted the request (polled over
the management socket). The relay captures after it sent END, so the rover alone finishes
before the capture does; waiting for the count puts the capture's time in. Each run fetches
new bytes (a repeat would be deduplicated and cost the store almost nothing). Runs alternate
on/off; rates are MB/s (10^6 bytes) of body over the median run of --runs (the best run
is printed too: on a shared machine the median moves less). `capture_tail_s` is the median
time from the rover's exit to the anchor's count: the capture's own latency after END.

For comparison the same download also goes through each anchor's HTTP forward proxy
(`--proxy`, http.client as the client); the proxy counts before it hands over the last
bytes, so the client's time already includes the capture.

Prints one JSON line. Usage: python -m tools.bench_relay_capture [--mib N] [--runs N] [--timeout S]
"""
import argparse
import base64
import statistics
import http.client
import json
import os
import random
import shutil
import subprocess
import tempfile
import time

from tests.support.harness import AnchorProc, rover_cmd
from tests.support.services import Origin
from anchorctl.client import Client

DEVICE = "bench-rover"




def wait_counted(client, n, timeout):
    """Until the anchor has counted n relay requests of DEVICE; bounded by time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = client.stats()["devices"].get(DEVICE, {})
        if c.get("relay_requests", 0) + c.get("relay_failures", 0) >= n:
            return c
    raise RuntimeError("anchor did not count request %d in %g s" % (n, timeout))


def one_fetch(anchor, client, url, out, n, timeout):
    t0 = time.perf_counter()
    p = subprocess.run(rover_cmd("cpython", anchor.link, DEVICE, out + ".state", "fetch", url, "--out", out),
                       capture_output=True, text=True, timeout=timeout)
    t_rover = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError("rover fetch failed: %s %s" % (p.stdout, p.stderr))
    c = wait_counted(client, n, timeout)
    t_done = time.perf_counter() - t0
    os.unlink(out)
    return t_rover, t_done, c


def proxy_fetch(port, url, timeout):
    auth = "Basic " + base64.b64encode(DEVICE.encode() + b":").decode()
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", url, headers={"Proxy-Authorization": auth})
        resp = c.getresponse()
        n = 0
        while True:
            b = resp.read(1 << 20)
            if not b:
                break
            n += len(b)
    finally:
        c.close()
    if resp.status != 200:
        raise RuntimeError("proxy answered %d" % resp.status)
    return time.perf_counter() - t0, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    size = args.mib << 20
    tmp = tempfile.mkdtemp(prefix="bench-relay-capture-")
    origin = Origin()
    anchors = {}
    try:
        ports = {}
        for mode, extra in (("on", ()), ("off", ("--no-capture",))):
            anchors[mode] = AnchorProc(os.path.join(tmp, mode), "--proxy", "tcp://127.0.0.1:0", *extra).start()
            ports[mode] = anchors[mode].proxy_port()
        clients = {k: Client(a.address) for k, a in anchors.items()}
        # Fixed costs (rover start-up, HELLO, one tiny request), for reading the numbers.
        origin.files["/tiny"] = b"x"
        tiny = [one_fetch(anchors["off"], clients["off"], origin.url("/tiny"), os.path.join(tmp, "tiny"), 1,
                          args.timeout)[1]]
        counted = {"on": 0, "off": 1}
        times = {"on": [], "off": []}
        rover_times = {"on": [], "off": []}
        proxy_times = {"on": [], "off": []}
        for run in range(args.runs):
            for mode in ("on", "off"):
                path = "/media/%s-%d.bin" % (mode, run)
                origin.files = {path: random.Random(1000 + run * 2 + (mode == "off")).randbytes(size)}
                counted[mode] += 1
                t_rover, t_done, c = one_fetch(anchors[mode], clients[mode], origin.url(path),
                                               os.path.join(tmp, "out.bin"), counted[mode], args.timeout)
                times[mode].append(round(t_done, 3))
                rover_times[mode].append(round(t_rover, 3))
                if c.get("relay_failures"):
                    raise RuntimeError("relay failed: %s" % c)
                path = "/media/proxy-%s-%d.bin" % (mode, run)
                origin.files = {path: random.Random(5000 + run * 2 + (mode == "off")).randbytes(size)}
                t, n = proxy_fetch(ports[mode], origin.url(path), args.timeout)
                if n != size:
                    raise RuntimeError("proxy gave %d of %d bytes" % (n, size))
                proxy_times[mode].append(round(t, 3))
        on_c = clients["on"].stats()["devices"][DEVICE]
        off_c = clients["off"].stats()["devices"][DEVICE]
        if on_c.get("captured_bytes") != 2 * size * args.runs or off_c.get("captured_objects"):
            raise RuntimeError("capture counters wrong: on %s, off %s" % (on_c, off_c))
        mb = size / 1e6
        med = {k: statistics.median(v) for k, v in times.items()}
        tail = {k: statistics.median(d - r for d, r in zip(times[k], rover_times[k])) for k in times}
        print(json.dumps({
            "bench": "relay_capture", "bytes": size, "data": "pseudo-random (media-like, incompressible)",
            "rover": "cpython", "runs": args.runs,
            "capture_on_mb_per_s": round(mb / med["on"], 1), "capture_off_mb_per_s": round(mb / med["off"], 1),
            "ratio_on_over_off": round(med["off"] / med["on"], 3),
            "best_on_mb_per_s": round(mb / min(times["on"]), 1), "best_off_mb_per_s": round(mb / min(times["off"]), 1),
            "rover_seen_on_mb_per_s": round(mb / statistics.median(rover_times["on"]), 1),
            "rover_seen_off_mb_per_s": round(mb / statistics.median(rover_times["off"]), 1),
            "capture_tail_s_on": round(tail["on"], 3), "capture_tail_s_off": round(tail["off"], 3),
            "seconds_on": times["on"], "seconds_off": times["off"],
            "proxy_on_mb_per_s": round(mb / statistics.median(proxy_times["on"]), 1),
            "proxy_off_mb_per_s": round(mb / statistics.median(proxy_times["off"]), 1),
            "proxy_ratio_on_over_off": round(statistics.median(proxy_times["off"]) / statistics.median(proxy_times["on"]), 3),
            "fixed_cost_s": round(tiny[0], 3), "cpus": os.cpu_count(),
        }), flush=True)
    finally:
        for a in anchors.values():
            a.stop()
        origin.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
