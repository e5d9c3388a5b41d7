#!/usr/bin/env python3
"""Link goodput: how much of a slow link's bandwidth carries backup data (DESIGN section 9).

The MicroPython rover (256 KB heap) backs up a folder of incompressible files (photo-like)
to an `anchor serve --serial` process over the pty link emulator (tests/support/linkemu.py PtyLink),
on two links:

  serial   115200 baud 8N1: 11,520 bytes/s each way, no latency, 512-byte packets
  ble      BLE-like: 20,000 bytes/s each way, 30 ms one way, 244-byte packets (ATT MTU 247)

goodput = chunk bytes the rover uploaded / (wall time of the backup x link rate). The wall
time is the rover's whole run: start-up, walk, hash, manifest round trips, upload, commit.
The line also gives the bytes the rover put on the link (framing, channel headers, session
messages) over the chunk bytes, and the channel's retransmissions.

Prints one JSON line per link, runtime and latency. Usage: python -m tools.bench_goodput [--kib N]
[--links serial,ble,mqtt] [--runtimes micropython,cpython] [--latencies 0,50,100,200,300]
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time

from tests.support.harness import AnchorProc, rover_cmd
from tests.support.linkemu import CountingRelay, PtyLink
from tests.support.services import Broker

LINKS = {
    "serial": {"rate": 11520, "latency_ms": 0, "mtu": 512, "what": "115200 baud 8N1"},
    "ble": {"rate": 20000, "latency_ms": 30, "mtu": 244, "what": "BLE-like: 20 kB/s, 30 ms, ATT MTU 247"},
    "mqtt": {"rate": 100000, "latency_ms": 50, "mtu": 1024,
             "what": "MQTT over cellular-like TCP: 100 kB/s, 50 ms one way, 1 KiB packets"},
}


def make_tree(root, kib, seed):
    rnd = random.Random(seed)
    os.makedirs(root)
    left = kib * 1024
    i = 0
    while left > 0:
        n = min(left, rnd.randrange(20_000, 120_000))
        with open(os.path.join(root, "img%03d.jpg" % i), "wb") as f:
            f.write(rnd.randbytes(n))
        left -= n
        i += 1
    return i


class MqttPath:
    """The rover's side of an MQTT link: mosquitto on loopback, the anchor on the broker
    directly, the rover through a CountingRelay with the link's rate and latency (the
    cellular hop); up and down are the MQTT bytes on that hop."""

    def __init__(self, cfg, work, name):
        self.broker = Broker(work)
        self.relay = CountingRelay("127.0.0.1", self.broker.port, rate=cfg["rate"],
                                   latency_ms=cfg["latency_ms"])
        self.anchor = AnchorProc(os.path.join(work, name + "-anchor"), "--broker", self.broker.url).start()
        self.url = "mqtt://127.0.0.1:%d?mtu=%d" % (self.relay.port, cfg["mtu"])

    @property
    def up(self):
        return self.relay.up

    @property
    def down(self):
        return self.relay.down

    def close(self):
        self.anchor.stop()
        self.relay.close()
        self.broker.close()


class SerialPath:
    """The pty link emulator between the rover and `anchor serve --serial`."""

    def __init__(self, cfg, work, name, seed):
        self.emu = PtyLink(rate=cfg["rate"], latency_ms=cfg["latency_ms"], seed=seed)
        self.anchor = AnchorProc(os.path.join(work, name + "-anchor"), "--serial",
                                 self.emu.anchor_link + ":115200").start()
        self.url = "serial:%s:115200?mtu=%d" % (self.emu.rover_link, cfg["mtu"])

    @property
    def up(self):
        return self.emu.up

    @property
    def down(self):
        return self.emu.down

    def close(self):
        self.anchor.stop()
        self.emu.close()


def run(name, kib, seed, work, runtime="micropython", latency_ms=None):
    cfg = dict(LINKS[name])
    if latency_ms is not None:
        cfg["latency_ms"] = latency_ms
    src = os.path.join(work, name + "-src")
    files = make_tree(src, kib, seed)
    path = MqttPath(cfg, work, name) if name == "mqtt" else SerialPath(cfg, work, name, seed)
    try:
        url = path.url
        t0 = time.monotonic()
        p = subprocess.run(rover_cmd(runtime, url, "bench-" + name, os.path.join(work, name + "-state"),
                                     "backup", src), capture_output=True, text=True, timeout=3600)
        dt = time.monotonic() - t0
        if p.returncode != 0:
            raise SystemExit("rover failed: %s %s" % (p.stdout, p.stderr))
        mo = re.search(r"(\d+) chunks \((\d+) bytes\) uploaded", p.stdout)
        rt = re.search(r"(\d+) packets resent \((\d+) timeouts\)", p.stdout)
        chunks, data = int(mo.group(1)), int(mo.group(2))
        up, down = path.up, path.down
    finally:
        path.close()
    return {
        "bench": "goodput", "link": name, "what": cfg["what"], "rate_bytes_per_s": cfg["rate"],
        "latency_ms": cfg["latency_ms"], "packet_bytes": cfg["mtu"], "files": files,
        "chunk_bytes": data, "chunks": chunks, "seconds": round(dt, 2),
        "goodput": round(data / (dt * cfg["rate"]), 3),
        "link_up_bytes": up, "link_down_bytes": down,
        "up_over_chunk_bytes": round(up / data, 4),
        "packets_resent": int(rt.group(1)) if rt else 0, "timeouts": int(rt.group(2)) if rt else 0,
        "rover": "micropython-256K" if runtime == "micropython" else "cpython",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kib", type=int, default=None, help="KiB of files per link (default: ~40 s of each link)")
    ap.add_argument("--links", default="serial,ble")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runtimes", default="micropython", help="micropython,cpython: the rover's runtimes")
    ap.add_argument("--latencies", default=None,
                    help="one-way latencies in ms to run each link at (the curve), e.g. 0,50,100,200,300; "
                         "default: the link's own")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-goodput-")
    try:
        k = 0
        for name in a.links.split(","):
            kib = a.kib or LINKS[name]["rate"] * 40 // 1024
            for runtime in a.runtimes.split(","):
                for lat in (a.latencies.split(",") if a.latencies else [None]):
                    k += 1
                    sub = os.path.join(work, str(k))
                    os.makedirs(sub)
                    print(json.dumps(run(name, kib, a.seed, sub, runtime, None if lat is None else int(lat))),
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
