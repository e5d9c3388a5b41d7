"""The link conformance suite: every kind of link (kinds.py) passes these tests unchanged.

- both ends are what the registries make (rover/link.py, anchor/links/__init__.py), and they have
  the interfaces the channel and the session call (rover/port.py, anchor/links/port.py);
- frames up to the maximum size arrive whole and in order, both ways;
- backpressure holds: a writer facing a reader that does not read blocks after a bounded
  backlog, loses nothing, and goes on when the reader does;
- a link that breaks in the middle of a backup is reopened and the backup resumes,
  sending again only what the anchor had not made durable.
"""
import asyncio
import os
import random
import threading

import pytest

from anchor_core import framing
from tests.support.harness import anchorctl, assert_same_tree, snapshot_of
from tests.support.inproc import InprocAnchor
from tests.support.kinds import KINDS
from tests.support.linkdiag import describe_all
from rover.backup import Backup
from rover.chanlink import now_ms
from rover.link import LinkError
from anchor.links import port as anchor_api
from rover import port as rover_api


class Echo:
    """Sends back every byte it gets."""

    async def serve_stream(self, reader, writer):
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()


class Sink:
    """Reads nothing until `go` is set, then counts and checks a byte pattern."""

    def __init__(self, loop):
        self.go = asyncio.Event()
        self.loop = loop
        self.got = 0
        self.bad = 0
        self.done = threading.Event()

    async def serve_stream(self, reader, writer):
        await self.go.wait()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            for i in (0, len(data) - 1):
                if data[i] != (self.got + i) % 251:
                    self.bad += 1
            self.got += len(data)
            self.done.set() if self.got >= self.want else None
        writer.close()


@pytest.fixture(params=sorted(KINDS))
def kind(request, tmp_path):
    ia = InprocAnchor(str(tmp_path / "anchor"))
    k = KINDS[request.param]()
    k.tmp = tmp_path
    yield k, ia
    try:
        k.stop()
    finally:
        ia.close()


def read_frames(link, deframer, n, buf):
    out = []
    for _ in range(100000):
        while len(out) < n:
            p = deframer.next_frame()
            if p is None:
                break
            out.append(bytes(p))
        if len(out) == n:
            return out
        try:
            k = link.readinto(buf)
        except LinkError as e:
            # A stall: say what each end held, so a rare one names its cause at once.
            raise AssertionError("%s after %d of %d frames\n%s"
                                 % (e, len(out), n, describe_all(now_ms()))) from e
        if not k:
            raise AssertionError("link closed after %d of %d frames" % (len(out), n))
        fed = deframer.receive_data(memoryview(buf)[:k])
        assert fed == k
    raise AssertionError("frames did not arrive")


def test_ends_have_the_interfaces(kind):
    k, ia = kind
    k.start(ia, Echo())
    link = k.open()
    try:
        assert rover_api.missing(link, rover_api.Link) == []
        if k.channel is not None:          # every kind but TCP runs a channel over a port
            assert rover_api.missing(k.channel.port, rover_api.Port) == []
        if k.listener is not None:         # memory has no listener: it has no address
            assert anchor_api.missing(k.listener, anchor_api.Listener) == []
        # A round trip, so the anchor's end exists (a listener hands out ports as rovers appear).
        link.write(b"ping")
        buf = bytearray(16)
        got = b""
        while len(got) < 4:
            n = link.readinto(buf)
            assert n, "link closed"
            got += bytes(buf[:n])
        assert got == b"ping"
        if k.channel is not None:
            assert k.anchor_ports
            for p in k.anchor_ports:
                assert anchor_api.missing(p, anchor_api.Port) == []
    finally:
        link.close()


def test_frames_arrive_whole_and_in_order(kind):
    k, ia = kind
    k.start(ia, Echo())
    link = k.open()
    try:
        rnd = random.Random(7)
        sizes = [0, 1, 2, 255, 256, 511, 512, 1000, 4096, 20000, framing.MAX_PAYLOAD]
        payloads = [rnd.randbytes(n) for n in sizes]
        deframer = framing.Deframer()
        buf = bytearray(8192)
        # One at a time, then all at once so frames share packets and packets span frames.
        for p in payloads:
            link.write(framing.encode_frame(p))
            assert read_frames(link, deframer, 1, buf) == [p]
        # Read while writing: an echo through finite buffers deadlocks otherwise, on any
        # link, once more is in flight than the buffers on the way hold.
        got = []
        failed = []

        def reader():
            try:
                got.append(read_frames(link, deframer, len(payloads), buf))
            except BaseException as e:
                failed.append(e)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        for p in payloads:
            link.write(framing.encode_frame(p))
        t.join(120)
        assert not failed, failed[0]
        assert got and got[0] == payloads
        assert deframer.bad_frames == 0 and deframer.garbage_bytes == 0
    finally:
        link.close()


def test_backpressure_holds(kind):
    k, ia = kind
    sink = Sink(ia.lt.loop)
    sink.want = k.backlog * 2
    k.start(ia, sink)
    link = k.open()
    written = [0]
    errors = []

    # pattern: byte i of the stream is i % 251; each write starts where the last ended
    def writer_aligned():
        block = bytes((i % 251) for i in range(251 * 65))
        mv = memoryview(block)
        try:
            while written[0] < sink.want:
                off = written[0] % 251
                n = min(251 * 64, sink.want - written[0])
                link.write(mv[off:off + n])
                written[0] += n
            link.close()         # a channel link sends what it holds before it closes
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=writer_aligned, daemon=True)
    t.start()
    try:
        # The reader reads nothing: the writer must stop short of everything.
        t.join(3)
        assert t.is_alive(), "the writer pushed %d bytes into a reader that reads nothing" % written[0]
        assert written[0] < sink.want
        assert not errors, errors
        ia.lt.loop.call_soon_threadsafe(sink.go.set)
        t.join(120)
        assert not t.is_alive() and not errors, errors
        assert sink.done.wait(120), "only %d of %d bytes arrived" % (sink.got, sink.want)
        assert sink.got == sink.want and sink.bad == 0
    finally:
        if t.is_alive():
            link.close()


def make_files(root, n, size, seed):
    rnd = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        with open(os.path.join(root, "f%03d.bin" % i), "wb") as f:
            f.write(rnd.randbytes(size))


def test_backup_resumes_after_the_link_breaks(kind, tmp_path):
    k, ia = kind
    k.start(ia, ia.anchor)
    mgmt = ia.start_mgmt(str(tmp_path / "mgmt.sock"))
    src = str(tmp_path / "src")
    state = str(tmp_path / "state")
    make_files(src, k.resume_files, 40_000, 3)   # incompressible, ~5 chunks per file
    link = k.open()
    b = Backup(link, "rover-c", state, src)
    cut_after = [k.resume_files * 5 // 3]
    sent_before_cut = [0]

    # Break the link once a third of the chunks have gone out, from inside the backup's own
    # upload path, so the cut lands mid-backup every time.
    orig_write = link.write

    def write(data):
        if b.stats["chunks_sent"] >= cut_after[0] and not sent_before_cut[0]:
            sent_before_cut[0] = b.stats["chunks_sent"]
            k.cut()
        return orig_write(data)
    link.write = write
    with pytest.raises(LinkError):
        b.run()
    try:
        link.close()
    except Exception:
        pass
    assert sent_before_cut[0] >= cut_after[0]

    link = k.open()
    try:
        s = Backup(link, "rover-c", state, src).run()
    finally:
        link.close()
    total_chunks = len(set(chunk_ids(src)))
    # The resumed backup sent what the anchor lacked: nothing twice beyond the chunks in
    # flight at the cut (at most one flush window, 1 MiB here, is not yet durable).
    assert s["chunks_sent"] + sent_before_cut[0] >= total_chunks
    assert s["chunks_sent"] < total_chunks
    restored = str(tmp_path / "restored")
    anchorctl(mgmt, "restore", "rover-c", "--to", restored)
    assert_same_tree(snapshot_of(src), restored)


def chunk_ids(root):
    import hashlib
    import pyfastcdc
    from anchor_core.chunker import MIN_SIZE, AVG_SIZE, MAX_SIZE
    ref = pyfastcdc.FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=0)
    out = []
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name), "rb") as f:
            data = f.read()
        out.extend(hashlib.sha256(c.data).digest() for c in ref.cut_buf(data))
    return out
