"""Anchors of a test's fleet as real `anchor serve` processes, and what the tests ask them."""
import json
import subprocess
import time

from tests.support.harness import anchorctl, rover_cmd


def pair(anchor, device, state, runtime="cpython"):
    code = json.loads(anchorctl(anchor.address, "pair", device, "--json").stdout)["code"]
    p = subprocess.run(rover_cmd(runtime, "tcp://unused:1", device, state, "pair", code),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def status(anchor):
    return json.loads(anchorctl(anchor.address, "fleet", "--json").stdout)


def offload(anchor, timeout=60):
    """Ask for an offload pass and wait until nothing is pending; the status then."""
    before = status(anchor)["last_pass"] or 0
    anchorctl(anchor.address, "fleet", "offload")
    deadline = time.monotonic() + timeout
    r = None
    for _ in range(100000):
        r = status(anchor)
        if (r["last_pass"] or 0) > before and r["pending"]["snapshots"] == 0 and r["state"] == "idle":
            return r
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)          # polling a condition, bounded by the deadline
    raise AssertionError("offload did not finish in %d s: %s" % (timeout, r))


def stats(anchor):
    return json.loads(anchorctl(anchor.address, "stats", "--json").stdout)


def uploaded(stdout):
    """(chunks, bytes) a rover's backup line says it uploaded."""
    chunks = int(stdout.split(" chunks (")[0].rsplit(" ", 1)[1])
    nbytes = int(stdout.split(" chunks (")[1].split(" bytes")[0])
    return chunks, nbytes
