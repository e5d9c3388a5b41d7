"""Sharing one slow link: relay traffic goes before backup traffic, and a rover with two
links backs up over the cheaper one."""
import os
import random
import threading
import time

from tests.support.harness import run_rover
from tests.support.inproc import InprocAnchor
from tests.support.kinds import SerialKind
from tests.support.linkemu import CountingRelay
from anchor_core import channel as chan
from rover.backup import Backup
from rover.relay import Relay
from tests.support.services import Origin

RATE = 20_000        # bytes/s each way: a slow radio
FETCHES = 5          # fetches during the backup, at least
MAX_FETCHES = 20     # and at most, until enough of them met queued backup data
CONTENDED = 3        # relay packets that must have found backup data queued before them


class LinkOrder:
    """What each end of the channel puts on the link, in the link's order (a port sends a
    packet as soon as the channel hands it out, and the line is a FIFO): every new DATA
    packet, the streams that had bytes queued and unsent when it was chosen, and the wire
    bytes of each stream then in flight (sent, not yet acknowledged: at least all of that
    stream's bytes still ahead of it on the link).

    This is the property itself, in link bytes, and it does not depend on the clock: the
    backup runs in this process and competes for the CPU with the fetch, so a fetch's wall
    time mixes the link's order with CPU contention, while what goes onto the link ahead of
    what does not."""

    def __init__(self, monkeypatch):
        self.packets = []      # (rover_end, sid, first of its stream, sids waiting, in flight by sid, packet)
        self.on = False
        self._streams = []     # every stream seen sending (kept, so no id is reused)
        pick = chan.Channel.packet_to_send
        data, header = chan.DATA, chan.HEADER

        def packet_to_send(ch, now):
            if not self.on:
                return pick(ch, now)
            nxt = ch.snd_nxt
            waiting = [sid for sid, s in ch.streams.items() if s.tx.count > s.tx_sent]
            fl = ch.fl
            flight = []        # (sid, stream offset, wire bytes) of each packet in flight
            for k in range(fl.count):
                i = fl.slot(k)
                flight.append((fl.sid[i], fl.off[i], header + fl.length[i] + ch.overhead))
            p = pick(ch, now)
            # New data only: a resent packet was on the link before anything queued now.
            if p is not None and ch.snd_nxt != nxt and p[0] >> 4 == data:
                sid = p[0] & 15
                s = ch.streams.get(sid)
                first = not any(x is s for x in self._streams)
                if first:
                    self._streams.append(s)
                i = fl.slot(fl.count - 1)          # the packet just sent
                end = fl.off[i] + fl.length[i]
                self.packets.append((ch.initiator, sid, first, waiting, flight, ch.peer_mtu_wire(), end))
            return p
        monkeypatch.setattr(chan.Channel, "packet_to_send", packet_to_send)

    def tally(self, backup_sid, relay_sids):
        """Per direction ("up": rover to anchor): backup packets that went onto the link while
        relay data waited; the most backup bytes in flight when a relay packet went that the
        backup sent after the relay's exchange began (what was in flight before it, nothing
        can call back from the link, and under load its acknowledgements may take a while);
        relay packets that went while backup data waited, the contention that makes the
        first two mean something; and one packet's wire bytes."""
        t = {d: {"backup_ahead": 0, "backup_in_flight": 0, "contended": 0, "relay": 0, "packet": 0}
             for d in ("up", "down")}
        sent = {"up": 0, "down": 0}      # backup stream bytes sent so far, per direction
        began = {}                       # (direction, relay sid) -> backup bytes sent before its first packet
        for rover_end, sid, first, waiting, flight, packet, end in list(self.packets):
            d = "up" if rover_end else "down"
            c = t[d]
            c["packet"] = packet
            if sid == backup_sid:
                sent[d] = max(sent[d], end)
                if any(w in relay_sids for w in waiting):
                    c["backup_ahead"] += 1
            elif sid in relay_sids:
                c["relay"] += 1
                if backup_sid in waiting:
                    c["contended"] += 1
                if first or (d, sid) not in began:
                    began[(d, sid)] = sent[d]
                else:
                    since = sum(n for fs, off, n in flight if fs == backup_sid and off >= began[(d, sid)])
                    c["backup_in_flight"] = max(c["backup_in_flight"], since)
        return t


def fetch(channel, url, out):
    s = channel.stream(urgent=True)
    try:
        r = Relay(s, "rover-s")
        r.open()
        status, size = r.fetch(url, out)
    finally:
        s.close()
    assert status == 200
    return s.sid


def test_relay_goes_before_backup_on_a_busy_link(tmp_path, monkeypatch):
    """While a backup fills the link, no backup byte goes onto it ahead of relay data that
    is waiting: a relay packet waits only for what was already on the link."""
    ia = InprocAnchor(str(tmp_path / "anchor"))
    origin = Origin()
    page = random.Random(1).randbytes(2000)
    origin.files["/page"] = page
    kind = SerialKind(rate=RATE)
    kind.tmp = tmp_path
    order = LinkOrder(monkeypatch)
    try:
        kind.start(ia, ia.anchor)
        first = kind.open()                 # the channel; this stream carries the backup
        ch = kind.channel
        url = origin.url("/page")
        out = str(tmp_path / "page")

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
        fetches_while(order, ch, first.sid, url, out, page, t, lambda: b.stats["chunks_sent"], "up", err)
        t.join(120)
        assert not err, err
        assert b.stats["snapshot"] == 1
    finally:
        kind.stop()
        origin.close()
        ia.close()


def fetches_while(order, ch, sid, url, out, page, t, chunks, direction, err):
    """Fetch through the relay while the job on stream `sid` (thread t) moves chunks
    (`chunks()` counts them) in `direction`, until enough relay packets met its data queued;
    then check the link's order: no job packet went ahead of waiting relay data, and while
    a relay exchange was open the job kept at most one packet on the link."""
    # Wait (bounded) until chunk data is flowing, then fetch while it flows.
    deadline = time.monotonic() + 60
    while chunks() < 3 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.01)
    assert chunks() >= 3, err
    order.on = True
    relay_sids = set()
    for n in range(MAX_FETCHES):
        relay_sids.add(fetch(ch, url, out))
        assert t.is_alive(), "the job ended before the fetches did; the test proves nothing"
        tally = order.tally(sid, relay_sids)
        if n + 1 >= FETCHES and tally[direction]["contended"] >= CONTENDED:
            break
    order.on = False
    with open(out, "rb") as f:
        assert f.read() == page
    print("link order over %d fetches: %s" % (n + 1, tally))
    # The test means something only if relay data met the job's data queued for the link.
    assert tally[direction]["contended"] >= CONTENDED, tally
    for d in ("up", "down"):
        c = tally[d]
        # No job packet goes onto the link ahead of relay data that waits for it ...
        assert c["backup_ahead"] == 0, tally
        # ... and while a relay exchange is open the job keeps at most one packet on the
        # link, so each of its messages waits behind one job packet at most.
        assert c["backup_in_flight"] <= c["packet"], tally


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


def test_relay_goes_before_a_restore_on_a_busy_link(tmp_path, monkeypatch):
    """A restore over the rover's link shares it as a backup does: the anchor sends no
    restore byte ahead of relay data that waits, and keeps one restore packet in flight
    while a relay exchange is open."""
    from rover.restore import Restore
    ia = InprocAnchor(str(tmp_path / "anchor"))
    origin = Origin()
    page = random.Random(1).randbytes(2000)
    origin.files["/page"] = page
    kind = SerialKind(rate=RATE)
    kind.tmp = tmp_path
    order = LinkOrder(monkeypatch)
    try:
        src = str(tmp_path / "src")
        os.makedirs(src)
        rnd = random.Random(2)
        for i in range(6):                   # 300 KB: 15 s of this link, far longer than the fetches
            with open(os.path.join(src, "img%d.jpg" % i), "wb") as f:
                f.write(rnd.randbytes(50_000))
        # backed up over a fast link; restored over the slow radio into an empty folder
        port = ia.serve_tcp()
        run_rover("cpython", "tcp://127.0.0.1:%d" % port, "rover-s", str(tmp_path / "state"), "backup", src)
        kind.start(ia, ia.anchor)
        first = kind.open()
        ch = kind.channel
        url = origin.url("/page")
        out = str(tmp_path / "page")
        r = Restore(first, "rover-s", str(tmp_path / "back"))
        err = []
        stats = {}
        t = threading.Thread(target=lambda: _run_restore(r, err, stats), daemon=True)
        t.start()
        fetches_while(order, ch, first.sid, url, out, page, t, lambda: r.stats["chunks"], "down", err)
        t.join(120)
        assert not err, err
        assert stats["files"] == 6
        for i in range(6):
            with open(os.path.join(src, "img%d.jpg" % i), "rb") as a, \
                    open(os.path.join(str(tmp_path / "back"), "img%d.jpg" % i), "rb") as b:
                assert a.read() == b.read()
    finally:
        kind.stop()
        origin.close()
        ia.close()


def _run_restore(r, err, stats):
    try:
        stats.update(r.run())
    except Exception as e:
        err.append(e)
