"""Fault tolerance with the rover under MicroPython and the anchor as its own process:
a serial line with bit errors, garbage bursts, seconds-long outages and a small UART
buffer on the rover; a TCP link cut again and again. Every backup completes, restores
bit-exact, and the store verifies clean (no corrupt chunk was ever stored)."""
import json
import os
import random
import subprocess

from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, make_src, rover_cmd, snapshot_of
from tests.support.linkemu import CountingRelay, PtyLink


def check_restore(anchor, device, src, tmp_path):
    out = str(tmp_path / ("restored-" + device))
    anchorctl(anchor.address, "restore", device, "--to", out)
    assert_same_tree(snapshot_of(src), out, mtime_resolution_ns=10**9)   # MicroPython stats whole seconds
    v = json.loads(anchorctl(anchor.address, "verify", "--json").stdout)
    assert v["ok"] and v["chunks"] > 0, v


def test_noisy_serial_line_micropython(tmp_path):
    # 1 bit in 100,000 flipped, 64 bytes of garbage every 2 s each way, two outages of
    # 2 and 3 s, and a rover whose UART holds only 1 KiB unread.
    emu = PtyLink(rate=40_000, bit_error_rate=1e-5, garbage=(2.0, 64),
                  outages=[(2.0, 2.0), (7.0, 3.0)], rxbuf=1024, seed=3)
    src = str(tmp_path / "src")
    make_src(src, 6, 40_000, 1)                       # ~250 KB
    anchor = AnchorProc(str(tmp_path / "anchor"), "--serial", emu.anchor_link + ":115200").start()
    try:
        p = subprocess.run(
            rover_cmd("micropython", "serial:%s:115200?rxbuf=1024" % emu.rover_link, "rover-n",
                      str(tmp_path / "state"), "backup", src),
            capture_output=True, text=True, timeout=240)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "snapshot 1 committed" in p.stdout, p.stdout
        # The faults really happened on the line.
        assert sum(emu.corrupted_bits.values()) > 0
        assert sum(emu.garbage_bytes.values()) > 0
        assert sum(emu.outage_bytes.values()) > 0
        # The rover's UART never overflowed: the anchor kept within its window.
        assert emu.overrun_bytes["down"] == 0, emu.overrun_bytes
        check_restore(anchor, "rover-n", src, tmp_path)
    finally:
        anchor.stop()
        emu.close()


def test_link_cut_every_5_to_30_seconds_micropython(tmp_path):
    src = str(tmp_path / "src")
    make_src(src, 24, 40_000, 2)                      # ~1 MB at 25 kB/s: ~40 s, cut at least once
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    relay = CountingRelay("127.0.0.1", anchor.port, rate=25_000, cut_every=(5, 30), seed=4)
    try:
        p = subprocess.run(
            rover_cmd("micropython", "tcp://127.0.0.1:%d" % relay.port, "rover-x",
                      str(tmp_path / "state"), "backup", src, "--retries", "30"),
            capture_output=True, text=True, timeout=400)
        assert p.returncode == 0, p.stdout + p.stderr
        assert relay.cuts >= 1, "the link was never cut; the test proves nothing"
        assert "resuming" in p.stdout, p.stdout
        check_restore(anchor, "rover-x", src, tmp_path)
    finally:
        relay.close()
        anchor.stop()


def test_backup_and_fetch_over_mqtt_micropython(tmp_path):
    """The rover on a cellular-style MQTT link: frames as QoS 1 payloads through mosquitto,
    to the anchor process (as shipped: paired rovers only) that relays through the same
    broker. The heaviest rover there is (channel, secure records, MQTT client, compressor),
    with a tree that fills whole batches (33 entries, ~150 chunks): with batches of 32
    entries and 128 ids it ran out of its 256 KB heap."""
    from tests.support.services import Broker, Origin
    broker = Broker(str(tmp_path))
    origin = Origin()
    origin.files["/doc.pdf"] = random.Random(9).randbytes(30_000)
    src = str(tmp_path / "src")
    make_src(src, 12, 100_000, 5)
    anchor = AnchorProc(str(tmp_path / "anchor"), "--broker", broker.url, secure=True).start()
    try:
        code = json.loads(anchorctl(anchor.address, "pair", "rover-m", "--json").stdout)["code"]
        p = subprocess.run(rover_cmd("micropython", "tcp://unused:1", "rover-m", str(tmp_path / "state"),
                                     "pair", code), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        link = "mqtt://127.0.0.1:%d" % broker.port
        # The anchor subscribes in the background; the rover's SYN is retried until then.
        p = subprocess.run(rover_cmd("micropython", link, "rover-m", str(tmp_path / "state"),
                                     "fetch", origin.url("/doc.pdf"), "--out", os.path.join(src, "doc.pdf")),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        with open(os.path.join(src, "doc.pdf"), "rb") as f:
            assert f.read() == origin.files["/doc.pdf"]
        p = subprocess.run(rover_cmd("micropython", link, "rover-m", str(tmp_path / "state"), "backup", src),
                           capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "snapshot 1 committed" in p.stdout, p.stdout
        # The fetched file passed through the anchor: the backup uploads every chunk but
        # the PDF's, which come from the capture.
        sent = int(p.stdout.split(" chunks (")[0].rsplit(" ", 1)[1])
        pdf = set(chunks_of_file(os.path.join(src, "doc.pdf")))
        others = set()
        for dirpath, _, names in os.walk(src):
            for n in names:
                if n != "doc.pdf":
                    others |= set(chunks_of_file(os.path.join(dirpath, n)))
        assert pdf and sent == len(others - pdf), (sent, len(others), len(pdf))
        check_restore(anchor, "rover-m", src, tmp_path)
    finally:
        anchor.stop()
        origin.close()
        broker.close()


def chunks_of_file(path):
    import hashlib
    import pyfastcdc
    from anchor_core.chunker import MIN_SIZE, AVG_SIZE, MAX_SIZE
    with open(path, "rb") as f:
        data = f.read()
    ref = pyfastcdc.FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=0)
    return [hashlib.sha256(c.data).digest() for c in ref.cut_buf(data)]


def test_paired_rover_over_a_radio_link_micropython(tmp_path):
    """The secure channel runs on every link: here a paired MicroPython rover over serial,
    to an anchor as shipped (paired rovers only)."""
    emu = PtyLink(rate=200_000, seed=5)
    src = str(tmp_path / "src")
    make_src(src, 3, 30_000, 6)
    anchor = AnchorProc(str(tmp_path / "anchor"), "--serial", emu.anchor_link + ":115200", secure=True).start()
    try:
        state = str(tmp_path / "state")
        code = json.loads(anchorctl(anchor.address, "pair", "rover-s", "--json").stdout)["code"]
        p = subprocess.run(rover_cmd("micropython", "tcp://unused:1", "rover-s", state, "pair", code),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        link = "serial:%s:115200" % emu.rover_link
        p = subprocess.run(rover_cmd("micropython", link, "rover-s", state, "backup", src),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "snapshot 1 committed" in p.stdout, p.stdout + p.stderr
        check_restore(anchor, "rover-s", src, tmp_path)
        # unpaired now: the same rover on the same line gets only a refusal
        anchorctl(anchor.address, "unpair", "rover-s")
        p = subprocess.run(rover_cmd("micropython", link, "rover-s", state, "backup", src, "--retries", "0"),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and "pair" in p.stderr, p.stdout + p.stderr
    finally:
        anchor.stop()
        emu.close()


import pytest  # noqa: E402


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_pipelined_mqtt_through_a_broker_connection_that_drops_mid_window(tmp_path, runtime):
    """The rover's MQTT client keeps up to 64 publishes unacknowledged; its TCP connection to
    the broker is cut again and again in the middle of that window. The rover reconnects and
    resumes (its persistent session and the channel above resend what was lost): the backup
    commits once, restores bit-exact, and the store verifies clean, so no packet was lost,
    none took effect twice, and none came out of order."""
    from tests.support.services import Broker
    broker = Broker(str(tmp_path))
    src = str(tmp_path / "src")
    make_src(src, 8, 60_000, 6)                        # ~0.6 MB
    anchor = AnchorProc(str(tmp_path / "anchor"), "--broker", broker.url).start()
    # 300 kB/s: the backup takes seconds, so cuts every 0.7-1.5 s land mid-window.
    relay = CountingRelay("127.0.0.1", broker.port, rate=300_000, cut_every=(0.7, 1.5), seed=11)
    try:
        p = subprocess.run(
            rover_cmd(runtime, "mqtt://127.0.0.1:%d" % relay.port, "rover-q", str(tmp_path / "state"),
                      "backup", src, "--retries", "60"),
            capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        assert relay.cuts >= 2, "the connection was cut %d times; the test proves little" % relay.cuts
        assert "resuming" in p.stdout, p.stdout
        assert ": connection closed); resuming" in p.stdout, p.stdout     # said the same on both runtimes
        assert "snapshot 1 committed" in p.stdout, p.stdout
        snaps = json.loads(anchorctl(anchor.address, "snapshots", "rover-q", "--json").stdout)
        assert len(snaps) == 1, snaps
        check_restore(anchor, "rover-q", src, tmp_path)
    finally:
        relay.close()
        anchor.stop()
        broker.close()


def test_a_commit_whose_answer_the_link_lost_commits_once(tmp_path):
    """The link goes after the anchor committed but before COMMITTED reached the rover: the
    rover resumes and sends the same COMMIT again, and gets the snapshot already made, not a
    second one. (Counted first: the bytes a whole backup sends down; the cut lets all but the
    last one through.)"""
    src = str(tmp_path / "src")
    make_src(src, 4, 30_000, 8)
    downs = []
    for run in ("measure", "cut"):
        anchor = AnchorProc(str(tmp_path / ("anchor-" + run))).start()
        relay = CountingRelay("127.0.0.1", anchor.port)
        try:
            if run == "cut":
                relay.cut_down_at(downs[0] - 1)
            p = subprocess.run(rover_cmd("cpython", "tcp://127.0.0.1:%d" % relay.port, "rover-c",
                                         str(tmp_path / ("state-" + run)), "backup", src, "--retries", "3"),
                               capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stdout + p.stderr
            assert "snapshot 1 committed" in p.stdout, p.stdout
            downs.append(relay.down)
            snaps = json.loads(anchorctl(anchor.address, "snapshots", "rover-c", "--json").stdout)
            assert len(snaps) == 1, snaps
        finally:
            relay.close()
            anchor.stop()
    assert relay.cuts == 1 and "resuming" in p.stdout, p.stdout
