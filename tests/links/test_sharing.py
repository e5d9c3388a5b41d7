"""Sharing one slow link: relay traffic goes before backup traffic, and a rover with two
links backs up over the cheaper one."""
import os
import random
import statistics
import threading
import time

from tests.support.harness import run_rover
from tests.support.inproc import InprocAnchor
from tests.support.kinds import SerialKind
from tests.support.linkemu import CountingRelay
from rover.backup import Backup
from rover.relay import Relay
from tests.support.services import Origin

RATE = 20_000        # bytes/s each way: a slow radio


def fetch_time(channel, url, out):
    t0 = time.monotonic()
    s = channel.stream(urgent=True)
    try:
        r = Relay(s, "rover-s")
        r.open()
        status, size = r.fetch(url, out)
    finally:
        s.close()
    assert status == 200
    return time.monotonic() - t0, size


def test_relay_goes_before_backup_on_a_busy_link(tmp_path):
    ia = InprocAnchor(str(tmp_path / "anchor"))
    origin = Origin()
    page = random.Random(1).randbytes(2000)
    origin.files["/page"] = page
    kind = SerialKind(rate=RATE)
    kind.tmp = tmp_path
    try:
        kind.start(ia, ia.anchor)
        first = kind.open()                 # the channel; this stream carries the backup
        ch = kind.channel
        url = origin.url("/page")
        out = str(tmp_path / "page")
        idle = [fetch_time(ch, url, out)[0] for _ in range(5)]

        src = str(tmp_path / "src")
        os.makedirs(src)
        rnd = random.Random(2)
        for i in range(6):                   # 300 KB: 15 s of this link, far longer than the fetches
            with open(os.path.join(src, "img%d.jpg" % i), "wb") as f:
                f.write(rnd.randbytes(50_000))
        b = Backup(first, "rover-s", str(tmp_path / "state"), src)
        err = []
        t = threading.Thread(target=lambda: _run(b, err), daemon=True)
        t.start()
        # Wait (bounded) until chunk data is flowing, then fetch while it flows.
        deadline = time.monotonic() + 60
        while b.stats["chunks_sent"] < 3 and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.01)
        assert b.stats["chunks_sent"] >= 3, err
        busy = []
        for _ in range(5):
            busy.append(fetch_time(ch, url, out)[0])
            assert t.is_alive(), "the backup ended before the fetches did; the test proves nothing"
        with open(out, "rb") as f:
            assert f.read() == page
        ratio = statistics.median(busy) / statistics.median(idle)
        print("idle %s busy %s ratio %.2f" % (idle, busy, ratio))
        assert ratio <= 2.0, (idle, busy)
        t.join(120)
        assert not err, err
        assert b.stats["snapshot"] == 1
    finally:
        kind.stop()
        origin.close()
        ia.close()


def _run(b, err):
    try:
        b.run()
    except Exception as e:
        err.append(e)


def test_backup_takes_the_cheaper_link(tmp_path):
    """A rover with a TCP link (cost 5) and a serial link (cost 1) backs up over serial."""
    ia = InprocAnchor(str(tmp_path / "anchor"))
    port = ia.serve_tcp()
    relay = CountingRelay("127.0.0.1", port)
    kind = SerialKind()
    try:
        kind.start(ia, ia.anchor)
        src = str(tmp_path / "src")
        os.makedirs(src)
        with open(os.path.join(src, "a.bin"), "wb") as f:
            f.write(random.Random(3).randbytes(100_000))
        p = run_rover("cpython", "tcp://127.0.0.1:%d?cost=5" % relay.port, "rover-2", str(tmp_path / "st"),
                      "--link", "serial:%s?cost=1" % kind.pty.rover_link, "backup", src)
        assert "snapshot 1 committed" in p.stdout, p.stdout
        assert relay.total == 0, "backup bytes went over the expensive link"
        assert kind.pty.up > 100_000
        # Relay commands use the first link given.
        origin = Origin()
        try:
            origin.files["/x"] = b"hello"
            run_rover("cpython", "tcp://127.0.0.1:%d?cost=5" % relay.port, "rover-2", str(tmp_path / "st"),
                      "--link", "serial:%s?cost=1" % kind.pty.rover_link, "fetch", origin.url("/x"),
                      "--out", str(tmp_path / "x"))
            assert relay.total > 0
        finally:
            origin.close()
    finally:
        relay.close()
        kind.stop()
        ia.close()
