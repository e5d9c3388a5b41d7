"""Relayed downloads that resume: a fetch cut off by the link asks for the rest when the rover
comes back, and nothing the rover already holds crosses the link again (counted at a relay
socket). The anchor reads on after the cut so that it holds the body whole, and serves the
rest from its copy without asking the origin twice; when it does not hold it, it asks the
origin for the rest with a range request, and when the origin changed, the rover gets the
new version whole."""
import hashlib
import os
import random
import subprocess

import pytest

from tests.support.harness import AnchorProc, counters, rover_cmd, wait_counter
from tests.support.linkemu import CountingRelay
from tests.support.services import Origin



def framing_allowed(n):
    """Bytes of the protocol around n body bytes (BODY headers and frames: under 0.5% at 4 KiB
    per BODY; RESULT, END, HELLO, WELCOME): allowed on top of the body bytes that cross."""
    return n + n // 200 + 4096



def fetch(runtime, link, state, url, out):
    return subprocess.run(rover_cmd(runtime, link, "resumer", state, "fetch", url, "--out", out),
                          capture_output=True, text=True, timeout=120)


def gets(origin, path):
    return [h for (method, p, h) in origin.requests if method == "GET" and p == path]


def cut_then_resume(tmp_path, anchor, origin, runtime, path, body, cut, wait_captured=True):
    # A link slower than loopback, so that the anchor is still sending (its socket buffers
    # full) when the cut comes, as it would be on a radio.
    relay = CountingRelay("127.0.0.1", anchor.port, rate=30e6)
    try:
        link = "tcp://127.0.0.1:%d" % relay.port
        out = str(tmp_path / "got.bin")
        state = str(tmp_path / "state")
        relay.cut_down_at(cut)
        p = fetch(runtime, link, state, origin.url(path), out)
        assert p.returncode != 0, p.stdout + p.stderr
        have = os.path.getsize(out + ".part")
        assert 0 < have < len(body) and not os.path.exists(out)
        assert open(out + ".part", "rb").read() == body[:have]
        if wait_captured:
            # The anchor reads on after the cut; the rover comes back once it holds the body.
            assert wait_counter(anchor, "resumer", "captured_objects", 1).get("captured_objects") == 1
        relay.reset()
        p = fetch(runtime, link, state, origin.url(path), out)
        assert p.returncode == 0, p.stdout + p.stderr
        return have, relay.down, open(out, "rb").read(), out
    finally:
        relay.close()


@pytest.mark.parametrize("runtime,seed", [("cpython", 1), ("cpython", 2), ("micropython", 3)])
def test_a_cut_download_resumes_from_the_anchors_copy(tmp_path, runtime, seed):
    rnd = random.Random(seed)
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        # Larger than what loopback's socket buffers hold (a few MB), cut in its first third:
        # the anchor has not read the whole body from the origin when the link goes.
        body = rnd.randbytes(rnd.randrange(12, 16) << 20)
        origin.files["/m/a.bin"] = body
        have, down, got, out = cut_then_resume(tmp_path, anchor, origin, runtime, "/m/a.bin", body,
                                              rnd.randrange(256 << 10, len(body) // 3))
        assert got == body
        assert not os.path.exists(out + ".part") and not os.path.exists(out + ".part.tag")
        assert len(body) - have <= down <= framing_allowed(len(body) - have), (have, down, len(body))
        assert len(gets(origin, "/m/a.bin")) == 1              # the rest came from the anchor
        assert counters(anchor, "resumer").get("relay_resumed") == 1
    finally:
        anchor.stop()
        origin.close()


@pytest.mark.parametrize("ranges", [True, False])
def test_without_the_anchors_copy_the_origin_sends_the_rest(tmp_path, ranges):
    """--no-capture stands in for an anchor that does not hold the body (it stops reading
    when the link goes): a range request (If-Range: the version the rover holds) when the
    origin takes ranges; else the whole body from the origin, and the rover still gets only
    the rest."""
    origin = Origin()
    origin.ranges = ranges
    anchor = AnchorProc(str(tmp_path / "anchor"), "--no-capture").start()
    try:
        body = random.Random(7).randbytes(500_000)
        origin.files["/m/b.bin"] = body
        have, down, got, _ = cut_then_resume(tmp_path, anchor, origin, "cpython", "/m/b.bin", body, 200_000,
                                             wait_captured=False)
        assert got == body
        assert len(body) - have <= down <= framing_allowed(len(body) - have), (have, down)
        second = gets(origin, "/m/b.bin")[1]
        assert second.get("Range") == "bytes=%d-" % have
        assert second.get("If-Range") == '"%s"' % hashlib.sha256(body).hexdigest()[:16]   # the origin's ETag
    finally:
        anchor.stop()
        origin.close()


def test_a_changed_origin_gives_the_new_version_whole(tmp_path):
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor"), "--no-capture").start()
    try:
        rnd = random.Random(9)
        old, new = rnd.randbytes(400_000), rnd.randbytes(450_000)
        origin.files["/m/c.bin"] = old
        relay = CountingRelay("127.0.0.1", anchor.port)
        try:
            link = "tcp://127.0.0.1:%d" % relay.port
            out = str(tmp_path / "c.bin")
            relay.cut_down_at(100_000)
            assert fetch("cpython", link, str(tmp_path / "st"), origin.url("/m/c.bin"), out).returncode != 0
            assert os.path.getsize(out + ".part") > 0
            origin.files["/m/c.bin"] = new
            p = fetch("cpython", link, str(tmp_path / "st"), origin.url("/m/c.bin"), out)
            assert p.returncode == 0, p.stdout + p.stderr
            assert open(out, "rb").read() == new
        finally:
            relay.close()
    finally:
        anchor.stop()
        origin.close()


# --- uploads -------------------------------------------------------------------------------

def send(runtime, link, state, src, url, device="resumer"):
    return subprocess.run(rover_cmd(runtime, link, device, state, "send", src, "--to", url),
                          capture_output=True, text=True, timeout=120)


def puts(origin, path):
    return [h for (method, p, h) in origin.requests if method == "PUT" and p == path]


def cut_points(rnd, size, n):
    """n cut points in the bytes that go rover -> anchor across all attempts (cumulative, as
    the relay counts them), increasing, at least 32 KiB apart, all inside the body."""
    pts = sorted(rnd.sample(range(64 << 10, size - (64 << 10), 32 << 10), n))
    return pts


@pytest.mark.parametrize("runtime,seed", [("cpython", 11), ("cpython", 12), ("micropython", 13)])
def test_a_cut_upload_resumes_with_no_byte_sent_twice(tmp_path, runtime, seed):
    """An upload cut at several random points: each new attempt asks the anchor what it holds
    (UPASK/HELD) and sends only the rest; the origin gets the body once, whole. Counted at the
    relay socket across every connection: the body once, plus framing, plus at most the one
    BODY frame each cut tore (a frame is used whole or not at all)."""
    rnd = random.Random(seed)
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        body = rnd.randbytes(rnd.randrange(1 << 20, 3 << 20))
        src = tmp_path / "up.bin"
        src.write_bytes(body)
        link = "tcp://127.0.0.1:%d" % relay.port
        state = str(tmp_path / "state")
        cuts = cut_points(rnd, len(body), 3)
        for i, at in enumerate(cuts):
            relay.cut_up_at(at)
            p = send(runtime, link, state, str(src), origin.url("/up/a.bin"))
            assert p.returncode != 0, p.stdout + p.stderr
            assert relay.cuts == i + 1
        p = send(runtime, link, state, str(src), origin.url("/up/a.bin"))
        assert p.returncode == 0, p.stdout + p.stderr
        assert origin.received["/up/a.bin"] == body
        assert len(puts(origin, "/up/a.bin")) == 1
        torn = len(cuts) * (16384 + 64)
        assert len(body) <= relay.up <= framing_allowed(len(body)) + torn, (relay.up, len(body), cuts)
        c = counters(anchor, "resumer")
        assert c.get("relay_resumed") == 1 and c.get("captured_objects") == 1
        assert not os.path.exists(os.path.join(state, "relay-upload"))
        print("upload %d B, %d cuts: %d B up at the relay socket (%+d)" % (
            len(body), len(cuts), relay.up, relay.up - len(body)))
    finally:
        relay.close()
        anchor.stop()
        origin.close()


# --- downloads the anchor holds only the start of ---------------------------------------------

def cut_partial(tmp_path, anchor, origin, path, body, cut_link, cut_origin, runtime="cpython"):
    """A fetch whose link is cut after `cut_link` bytes down and whose origin then stops after
    `cut_origin` bytes of the body: the rover holds less than the anchor, which keeps what it
    read on. Returns (relay, link, state, out, bytes the rover holds)."""
    origin.cut_once[path] = cut_origin
    relay = CountingRelay("127.0.0.1", anchor.port, rate=30e6)
    link = "tcp://127.0.0.1:%d" % relay.port
    out, state = str(tmp_path / "got.bin"), str(tmp_path / "state")
    relay.cut_down_at(cut_link)
    p = fetch(runtime, link, state, origin.url(path), out)
    assert p.returncode != 0, p.stdout + p.stderr
    have = os.path.getsize(out + ".part")
    assert 0 < have < cut_origin and open(out + ".part", "rb").read() == body[:have]
    # The anchor read on until the origin stopped, and kept those bytes (a failed request).
    assert wait_counter(anchor, "resumer", "relay_failures", 1).get("relay_failures") == 1
    relay.reset()
    return relay, link, state, out, have


@pytest.mark.parametrize("runtime,seed", [("cpython", 21), ("cpython", 22), ("micropython", 23)])
def test_a_partial_capture_serves_its_part_and_asks_the_origin_for_the_rest(tmp_path, runtime, seed):
    rnd = random.Random(seed)
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        body = rnd.randbytes(rnd.randrange(3 << 20, 4 << 20))
        origin.files["/p/a.bin"] = body
        stop = rnd.randrange(len(body) // 2, len(body) - (256 << 10))
        relay, link, state, out, have = cut_partial(tmp_path, anchor, origin, "/p/a.bin", body,
                                                    rnd.randrange(64 << 10, 512 << 10), stop, runtime)
        try:
            p = fetch(runtime, link, state, origin.url("/p/a.bin"), out)
            assert p.returncode == 0, p.stdout + p.stderr
            assert open(out, "rb").read() == body
            # Nothing the rover held came down again; the origin was asked only for what
            # neither held, and the anchor's capture of the body is whole now.
            assert len(body) - have <= relay.down <= framing_allowed(len(body) - have), (have, relay.down)
            second = gets(origin, "/p/a.bin")[1:]
            assert [h.get("Range") for h in second] == ["bytes=%d-" % stop]
            c = counters(anchor, "resumer")
            assert c.get("captured_objects") == 1 and c.get("captured_bytes") == len(body)
            print("download %d B: rover held %d, anchor %d; %d B down at the relay socket on resume" % (
                len(body), have, stop, relay.down))
        finally:
            relay.close()
    finally:
        anchor.stop()
        origin.close()


def test_an_origin_that_ignores_ranges_is_checked_against_the_partial_capture(tmp_path):
    origin = Origin()
    origin.ranges = False
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        body = random.Random(31).randbytes(2 << 20)
        origin.files["/p/b.bin"] = body
        relay, link, state, out, have = cut_partial(tmp_path, anchor, origin, "/p/b.bin", body, 200_000, 1 << 20)
        try:
            p = fetch("cpython", link, state, origin.url("/p/b.bin"), out)
            assert p.returncode == 0, p.stdout + p.stderr
            assert open(out, "rb").read() == body
            assert len(body) - have <= relay.down <= framing_allowed(len(body) - have), (have, relay.down)
            assert counters(anchor, "resumer").get("captured_objects") == 1
        finally:
            relay.close()
    finally:
        anchor.stop()
        origin.close()


def test_an_origin_whose_bytes_changed_under_the_same_etag_fails_clearly(tmp_path):
    """The anchor compares what the origin sends again with the start it holds: other bytes
    under the same validator are refused (F_RESUME) and the rover starts the file over."""
    origin = Origin()
    origin.ranges = False
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        rnd = random.Random(41)
        old, new = rnd.randbytes(2 << 20), rnd.randbytes(2 << 20)
        origin.files["/p/c.bin"] = old
        origin.etags["/p/c.bin"] = '"same"'
        relay, link, state, out, have = cut_partial(tmp_path, anchor, origin, "/p/c.bin", old, 200_000, 1 << 20)
        try:
            origin.files["/p/c.bin"] = new
            p = fetch("cpython", link, state, origin.url("/p/c.bin"), out)
            assert p.returncode != 0 and "other bytes under the same validator" in p.stderr, p.stdout + p.stderr
            assert not os.path.exists(out + ".part") and not os.path.exists(out)
            assert relay.down < 4096                       # no byte of either version came down
            assert counters(anchor, "resumer").get("captured_objects", 0) == 0
            p = fetch("cpython", link, state, origin.url("/p/c.bin"), out)
            assert p.returncode == 0 and open(out, "rb").read() == new, p.stdout + p.stderr
        finally:
            relay.close()
    finally:
        anchor.stop()
        origin.close()


@pytest.mark.parametrize("runtime,seed", [("cpython", 51), ("micropython", 52)])
def test_a_download_cut_again_and_again_sends_no_byte_twice(tmp_path, runtime, seed):
    """Several cuts at seeded points of one download, the rover coming straight back each time
    (while the anchor may still be reading on): counted at the relay socket across every
    connection, the body comes down once, plus framing and at most the BODY frame each cut
    tore; the origin is asked once."""
    rnd = random.Random(seed)
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    relay = CountingRelay("127.0.0.1", anchor.port, rate=30e6)
    try:
        body = rnd.randbytes(rnd.randrange(6 << 20, 8 << 20))
        origin.files["/m/d.bin"] = body
        link = "tcp://127.0.0.1:%d" % relay.port
        out, state = str(tmp_path / "d.bin"), str(tmp_path / "state")
        cuts = sorted(rnd.sample(range(128 << 10, len(body) - (128 << 10), 64 << 10), 3))
        for i, at in enumerate(cuts):
            relay.cut_down_at(at)
            p = fetch(runtime, link, state, origin.url("/m/d.bin"), out)
            assert p.returncode != 0, p.stdout + p.stderr
            assert relay.cuts == i + 1
            assert open(out + ".part", "rb").read() == body[:os.path.getsize(out + ".part")]
        p = fetch(runtime, link, state, origin.url("/m/d.bin"), out)
        assert p.returncode == 0, p.stdout + p.stderr
        assert open(out, "rb").read() == body
        assert len(gets(origin, "/m/d.bin")) == 1
        torn = len(cuts) * (16384 + 64)
        assert len(body) <= relay.down <= framing_allowed(len(body)) + torn, (relay.down, len(body), cuts)
        print("download %d B, %d cuts: %d B down at the relay socket (%+d)" % (
            len(body), len(cuts), relay.down, relay.down - len(body)))
    finally:
        relay.close()
        anchor.stop()
        origin.close()


# --- resumes that do not fit -----------------------------------------------------------------

def raw_session(anchor, device):
    from anchor_core import messages as m
    from anchor_core import resumemsg
    from tests.support.harness import RawRover
    resumemsg.install()
    r = RawRover(anchor.port)
    r.send(m.hello(device, None, 0))
    w = r.reply()
    assert w[0] == m.WELCOME and w[4] & resumemsg.CAP_UPRESUME
    return r


def test_resumes_that_do_not_fit_are_refused_and_change_nothing(tmp_path):
    """An unknown upload id, another rover's id, an offset the anchor does not hold, an offset
    past the end of the body (a protocol error), and a download resume past the end of the
    anchor's copy: each gets a clear answer, and the held upload, the origin and the store are
    as they were: the rover that owns the upload still sends only its rest."""
    from anchor_core import messages as m
    from anchor_core import resumemsg
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        body = random.Random(61).randbytes(1 << 20)
        src = tmp_path / "up.bin"
        src.write_bytes(body)
        url = origin.url("/up/h.bin")
        link = "tcp://127.0.0.1:%d" % relay.port
        state = str(tmp_path / "state")
        relay.cut_up_at(400_000)
        assert send("cpython", link, state, str(src), url, device="owner").returncode != 0
        uid = open(os.path.join(state, "relay-upload"), "rb").read()
        assert len(uid) == resumemsg.ID_SIZE

        # Unknown id, and the owner's id from another rover: nothing held for them.
        other = raw_session(anchor, "intruder")
        for u in (b"\0" * resumemsg.ID_SIZE, uid):
            other.send(resumemsg.upask(u))
            f = other.reply()
            assert f[0] == m.FAIL and f[1] == resumemsg.F_RESUME and "holds no upload" in f[2], f
        # The other rover sends "the rest" under the owner's id: refused after its END.
        req = m.send_req("PUT", url, len(body), "application/octet-stream") + [[uid, 393216]]
        other.send(req)
        other.send(m.body(body[393216:393216 + 1000]))
        other.send(m.end(393216 + 1000))
        # (END's size must be the body's: the anchor says so as a protocol error, closing)
        e = other.reply()
        assert e[0] == m.ERROR and "announced" in e[2], e
        other.close()

        other = raw_session(anchor, "intruder")
        rest = body[393216:]
        other.send(req)
        for i in range(0, len(rest), 16384):
            other.send(m.body(rest[i:i + 16384]))
        other.send(m.end(len(body)))
        f = other.reply()
        assert f[0] == m.FAIL and f[1] == resumemsg.F_RESUME and "holds no upload" in f[2], f
        # An offset past the end of the body breaks the protocol.
        other.send(m.send_req("PUT", url, 10, "text/plain") + [[uid, 11]])
        e = other.reply()
        assert e[0] == m.ERROR and "past the end" in e[2], e
        other.close()

        # The owner with an offset the anchor does not hold: refused after END, nothing moved.
        own = raw_session(anchor, "owner")
        own.send(resumemsg.upask(uid))
        h = own.reply()
        assert h[0] == resumemsg.HELD and h[1] == uid and 0 < h[2] <= 400_000
        held = h[2]
        assert h[3] == hashlib.sha256(body[:held]).digest()
        own.send(m.send_req("PUT", url, len(body), "application/octet-stream") + [[uid, held - 1]])
        own.send(m.body(body[held - 1:held + 9]))
        own.send(m.end(held + 9))
        assert own.reply()[0] == m.ERROR     # END short of the body: a protocol error
        own.close()
        own = raw_session(anchor, "owner")
        own.send(resumemsg.upask(uid))
        assert own.reply()[2] == held        # still held, and still as much
        own.close()
        assert puts(origin, "/up/h.bin") == []

        # The owner comes back: only the rest crosses, and the origin gets the body once.
        relay.reset()
        p = send("cpython", link, state, str(src), url, device="owner")
        assert p.returncode == 0, p.stdout + p.stderr
        assert origin.received["/up/h.bin"] == body and len(puts(origin, "/up/h.bin")) == 1
        assert len(body) - held <= relay.up <= framing_allowed(len(body) - held), (relay.up, held)

        # A download resumed past the end of the version the anchor holds.
        origin.files["/m/e.bin"] = body
        out = str(tmp_path / "e.bin")
        assert fetch("cpython", link, state, origin.url("/m/e.bin"), out).returncode == 0
        before = counters(anchor, "resumer")
        r = raw_session(anchor, "resumer")
        etag = '"%s"' % hashlib.sha256(body).hexdigest()[:16]
        r.send(m.fetch(origin.url("/m/e.bin"), [], [len(body) + 1, etag]))
        f = r.reply()
        assert f[0] == m.FAIL and f[1] == resumemsg.F_RESUME and "past the end" in f[2], f
        r.close()
        assert len(gets(origin, "/m/e.bin")) == 1
        after = counters(anchor, "resumer")
        assert after.get("captured_objects") == before.get("captured_objects") == 1
    finally:
        relay.close()
        anchor.stop()
        origin.close()


def test_a_cut_publish_resumes_and_the_broker_gets_it_once(tmp_path):
    """PUBLISH carries the upload id too: a payload cut off mid-way is held, the rover sends
    the rest, and the broker delivers one message, whole."""
    from tests.support.services import Broker, Subscriber
    broker = Broker(str(tmp_path))
    anchor = AnchorProc(str(tmp_path / "anchor"), "--broker", broker.url).start()
    relay = CountingRelay("127.0.0.1", anchor.port)
    sub = Subscriber(broker.port, "rover/#")
    try:
        payload = random.Random(71).randbytes(600_000)
        src = tmp_path / "log.bin"
        src.write_bytes(payload)
        link = "tcp://127.0.0.1:%d" % relay.port
        state = str(tmp_path / "state")
        relay.cut_up_at(250_000)
        p = subprocess.run(rover_cmd("micropython", link, "resumer", state, "publish", "rover/log", "--file", str(src)),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0, p.stdout + p.stderr
        p = subprocess.run(rover_cmd("micropython", link, "resumer", state, "publish", "rover/log", "--file", str(src)),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        assert sub.wait(1), "broker never delivered the message"
        assert sub.messages == [("rover/log", payload)]
        assert len(payload) <= relay.up <= framing_allowed(len(payload)) + 4096 + 64, relay.up
        assert counters(anchor, "resumer").get("relay_resumed") == 1
    finally:
        sub.close()
        relay.close()
        anchor.stop()
        broker.close()
