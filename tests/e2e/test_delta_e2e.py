"""Sub-chunk deltas end to end: a real anchor, the rover under MicroPython (256 KB heap) or
CPython, a real SQLite database edited in place, radio bytes counted at a relay socket, the
restore compared byte for byte; and what a rover could send that it should not, spoken
message by message."""
import hashlib
import io
import json
import os
import random
import sqlite3
import zlib

import pytest

from anchor_core import chunker, delta
from anchor_core import messages as m
from tests.support.harness import AnchorProc, RawRover, anchorctl, counters, run_rover, wait_counter
from tests.support.linkemu import CountingRelay

delta.install()      # the test speaks BASEQ and DELTA itself

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor")).start()
    yield a
    a.stop()


def make_db(path, rnd, rows=6000):
    con = sqlite3.connect(path)
    con.execute("create table t (id integer primary key, name text, n integer, note text)")
    con.executemany("insert into t values (?,?,?,?)",
                    [(i, rnd.choice(WORDS) + str(i), rnd.randrange(10 ** 6),
                      " ".join(rnd.choice(WORDS) for _ in range(8))) for i in range(rows)])
    con.commit()
    con.close()


def chunks(data):
    return [(off, ln, cid) for off, ln, cid in chunker.chunks_of(io.BytesIO(data), bytearray(65536))]


def whole_cost(old, new):
    """zlib-6 bytes of new's chunks that old does not have: what DATA would carry."""
    have = set(c for _, _, c in chunks(old))
    return sum(len(zlib.compress(new[o:o + n], 6)) for o, n, c in chunks(new) if c not in have), \
        sum(1 for _, _, c in chunks(new) if c not in have)


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_edited_database_and_document_go_as_deltas(anchor, tmp_path, runtime):
    rnd = random.Random(5)
    src = tmp_path / "src"
    src.mkdir()
    db = str(src / "app.db")
    make_db(db, rnd)
    with open(src / "notes.txt", "w") as f:
        for i in range(3000):
            f.write("line %d: %s\n" % (i, " ".join(rnd.choice(WORDS) for _ in range(6))))
    relay = CountingRelay("127.0.0.1", anchor.port)
    link = "tcp://127.0.0.1:%d" % relay.port
    state = str(tmp_path / "state")
    run_rover(runtime, link, "r1", state, "backup", str(src))
    old = open(db, "rb").read() + open(src / "notes.txt", "rb").read()

    con = sqlite3.connect(db)                      # five rows updated in place
    for i in rnd.sample(range(6000), 5):
        con.execute("update t set n = ? where id = ?", (rnd.randrange(10 ** 6), i))
    con.commit()
    con.close()
    with open(src / "notes.txt", "r+") as f:       # a word typed over in the middle
        f.seek(20000)
        f.write("EDITED")
    new = open(db, "rb").read() + open(src / "notes.txt", "rb").read()
    whole, changed = whole_cost(old, new)

    up, down = relay.up, relay.down
    p = run_rover(runtime, link, "r1", state, "backup", str(src))
    assert "snapshot 2 committed" in p.stdout, p.stdout
    radio = relay.up - up + relay.down - down
    c = counters(anchor, "r1")
    print(json.dumps({"runtime": runtime, "changed_chunks": changed, "whole_zlib_bytes": whole,
                      "radio_bytes": radio, "chunks_delta": c.get("chunks_delta"),
                      "delta_sig_bytes": c.get("delta_sig_bytes")}))
    assert c.get("chunks_delta", 0) >= changed - 1, c      # every changed chunk but maybe one
    assert c.get("delta_refused", 0) == 0
    # both directions, signatures and every message included, against the chunks' payloads alone
    assert radio < whole * 0.6, (radio, whole)

    out = str(tmp_path / "restore")
    anchorctl(anchor.address, "restore", "r1", "2", "--to", out)
    assert open(os.path.join(out, "app.db"), "rb").read() == open(db, "rb").read()
    assert open(os.path.join(out, "notes.txt"), "rb").read() == open(src / "notes.txt", "rb").read()


def test_a_replaced_file_is_not_offered_bases(anchor, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "photo.jpg", "wb") as f:
        f.write(os.urandom(200_000))
    state = str(tmp_path / "state")
    run_rover("cpython", anchor.link, "r1", state, "backup", str(src))
    with open(src / "photo.jpg", "wb") as f:          # the same name, all new content
        f.write(os.urandom(200_000))
    p = run_rover("cpython", anchor.link, "r1", state, "backup", str(src))
    assert "snapshot 2 committed" in p.stdout
    c = counters(anchor, "r1")
    assert c.get("delta_sig_bytes", 0) == 0 and c.get("chunks_delta", 0) == 0, c


class Session:
    """A rover's second backup of one file, spoken by hand up to its NEED."""

    def __init__(self, anchor, tmp_path, data_v1, data_v2):
        src = tmp_path / "src"
        src.mkdir()
        self.path = src / "f.bin"
        self.path.write_bytes(data_v1)
        run_rover("cpython", anchor.link, "r1", str(tmp_path / "state"), "backup", str(src))
        self.first_uploads = counters(anchor, "r1")["chunks_uploaded"]
        self.c = RawRover(anchor.port)
        self.c.send(m.hello("r1", 1, m.CAP_ZLIB | m.CAP_DELTA))
        w = self.c.reply()
        assert w[0] == m.WELCOME and w[m.WELCOME_PARENT_OK], w
        self.data = data_v2
        self.chunks = chunks(data_v2)
        ids = [cid for _, _, cid in self.chunks]
        h = chunker.ObjectId()
        for cid in ids:
            h.add(cid)
        oid = h.finish(len(data_v2))
        self.c.send(m.entries(0, [m.put_entry("f.bin", m.T_FILE, len(data_v2), 0, 0o644, oid)]))
        v = self.c.reply()
        assert v[0] == m.VERDICT and v[m.VERDICT_WANTED] == [0], v
        self.c.send(m.chunklist([m.list_part(0, 0, ids, True)]))
        self.need = self.c.reply()
        assert self.need[0] == m.NEED, self.need

    def based(self):
        """(offset, length, id) of the first chunk NEED offered a base for."""
        assert len(self.need) > 3, self.need
        i = self.need[3][0][0]
        return self.chunks[i]

    def base_of(self, cid):
        self.c.send([delta.BASEQ, cid])
        b = self.c.reply()
        assert b[0] == delta.BASE and b[1] == cid and b[2] > 0, b
        return b[2], b[3]


def database_versions():
    rnd = random.Random(9)
    v1 = bytearray()
    while len(v1) < 100_000:
        v1 += b"%d|%s|%d;" % (rnd.randrange(10 ** 5), rnd.choice(WORDS).encode(), rnd.randrange(977))
    v2 = bytearray(v1)
    v2[50_000:50_006] = b"EDITED"
    return bytes(v1), bytes(v2)


def test_a_delta_that_does_not_rebuild_the_chunk_stores_nothing_and_the_chunk_comes_whole(anchor, tmp_path):
    v1, v2 = database_versions()
    s = Session(anchor, tmp_path, v1, v2)
    off, ln, cid = s.based()
    blk, sigs = s.base_of(cid)
    # the rover's view of the base differs from the anchor's: its instructions are built on
    # other bytes (as a weak-and-short-hash collision would make them)
    other = bytearray(v2[off:off + ln])
    other[10:20] = b"0123456789"
    enc = delta.Encoder()
    out = bytearray(8192)
    k = enc.encode(other, ln, blk, sigs, out)
    assert k > 0
    s.c.send([delta.DELTA, cid, ln, bytes(out[:k])])
    r = s.c.reply()
    assert r == [delta.DELTAOK, cid, False], r
    # the whole chunk is still wanted, and taken
    s.c.send([m.DATA, cid, m.ENC_RAW, v2[off:off + ln]])
    s.c.send([delta.BASEQ, cid])       # not wanted any more: the anchor says so
    r = s.c.reply()
    assert r[0] == m.ERROR and r[1] == m.E_PROTOCOL and "offered no base" in r[2], r
    c = wait_counter(anchor, "r1", "delta_refused", 1)     # written when the session ends
    assert c.get("delta_refused") == 1 and c.get("chunks_delta", 0) == 0, c
    assert c["chunks_uploaded"] == s.first_uploads + 1, c  # the DATA, not the delta


@pytest.mark.parametrize("case", ["copy past the base", "longer than promised", "no BASE first",
                                  "a chunk never offered a base"])
def test_hostile_deltas_are_refused_with_the_reason(anchor, tmp_path, case):
    v1, v2 = database_versions()
    s = Session(anchor, tmp_path, v1, v2)
    off, ln, cid = s.based()
    if case == "no BASE first":
        s.c.send([delta.DELTA, cid, ln, b"\x02x"])
        want = (m.E_PROTOCOL, "without its BASE")
    elif case == "a chunk never offered a base":
        s.c.send([delta.BASEQ, hashlib.sha256(b"nothing").digest()])
        want = (m.E_PROTOCOL, "offered no base")
    else:
        blk, sigs = s.base_of(cid)
        nb = len(sigs) // delta.SIG
        ops = bytes((0x03, nb)) if case == "copy past the base" else bytes((0x03, 0))
        size = ln if case == "copy past the base" else blk // 2
        s.c.send([delta.DELTA, cid, size, ops])
        want = (m.E_BAD_DATA, "copy of blocks" if case == "copy past the base" else "more than")
    r = s.c.reply()
    assert r[0] == m.ERROR and r[1] == want[0] and want[1] in r[2], r
    c = counters(anchor, "r1")
    assert c.get("chunks_delta", 0) == 0
    # nothing of the refused session was committed
    snaps = json.loads(anchorctl(anchor.address, "snapshots", "r1", "--json").stdout)
    assert [x["id"] for x in snaps] == [1]


class SwappingRelay:
    """A neighbour on an open link: relays one rover at a time to the anchor, and in every
    BASE the anchor sends, swaps the signatures of blocks 0 and 1 (re-framed, so the frame
    checks pass).  The rover then copies the wrong block: its delta cannot rebuild the chunk."""

    def __init__(self, anchor_port):
        import socket
        import threading
        self.anchor_port = anchor_port
        self.lst = socket.socket()
        self.lst.bind(("127.0.0.1", 0))
        self.lst.listen(4)
        self.port = self.lst.getsockname()[1]
        self.swapped = 0
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self):
        import socket
        import threading
        while True:
            try:
                r, _ = self.lst.accept()
            except OSError:
                return
            a = socket.create_connection(("127.0.0.1", self.anchor_port), timeout=60)
            r.settimeout(60)
            for src, dst, tamper in ((r, a, False), (a, r, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, tamper), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst, tamper):
        from anchor_core import cbor, framing
        d = framing.Deframer()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not tamper:
                    dst.sendall(data)
                    continue
                d.receive_data(data)
                for _ in range(10_000):
                    p = d.next_frame()
                    if p is None:
                        break
                    msg = cbor.decode(p)
                    if msg[0] == delta.BASE and len(msg[3]) >= 2 * delta.SIG:
                        s = msg[3]
                        msg[3] = s[8:16] + s[:8] + s[16:]
                        self.swapped += 1
                        p = cbor.encode(msg)
                    dst.sendall(framing.encode_frame(p))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def close(self):
        self.lst.close()
        for t in self.threads:
            t.join(30)


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_a_rover_whose_delta_is_refused_sends_the_chunk_whole(anchor, tmp_path, runtime):
    v1, v2 = database_versions()
    src = tmp_path / "src"
    src.mkdir()
    (src / "db.bin").write_bytes(v1)
    state = str(tmp_path / "state")
    relay = SwappingRelay(anchor.port)
    try:
        link = "tcp://127.0.0.1:%d" % relay.port
        run_rover(runtime, link, "r1", state, "backup", str(src))
        (src / "db.bin").write_bytes(v2)
        p = run_rover(runtime, link, "r1", state, "backup", str(src))
    finally:
        relay.close()
    assert "snapshot 2 committed" in p.stdout, p.stdout
    assert "could not rebuild a chunk from its delta; sending it whole" in p.stdout + p.stderr
    assert relay.swapped >= 1
    c = counters(anchor, "r1")
    assert c.get("delta_refused", 0) >= 1 and c.get("chunks_delta", 0) == 0, c
    out = str(tmp_path / "restore")
    anchorctl(anchor.address, "restore", "r1", "2", "--to", out)
    assert open(os.path.join(out, "db.bin"), "rb").read() == v2


@pytest.mark.parametrize("kind", ["serial", "mqtt"])
def test_a_paired_256k_rover_backs_up_its_edits_over_a_radio_link(tmp_path, kind):
    """The 256 KB MicroPython rover, paired, over a serial radio and an MQTT broker: the second
    backup of a tree edited in place sends its changed chunks as deltas, commits and restores
    whole."""
    from tests.e2e.test_rover_restore import make_phone
    from tests.support.harness import paired_radio, snapshot_of
    from tools.bench_rover_heap import edit
    with paired_radio(tmp_path, kind, "hand") as (a, link, state):
        src = str(tmp_path / "data")
        make_phone(src, seed=4)
        run_rover("micropython", link, "hand", state, "backup", src)
        edit(src)
        want = open(os.path.join(src, "app/db/store.db"), "rb").read()
        p = run_rover("micropython", link, "hand", state, "backup", src)
        assert "snapshot 2 committed" in p.stdout, p.stdout
        c = counters(a, "hand")
        assert c.get("chunks_delta", 0) >= 3, c
        out = str(tmp_path / "restore")
        anchorctl(a.address, "restore", "hand", "2", "--to", out)
        assert open(os.path.join(out, "app/db/store.db"), "rb").read() == want
        mine = snapshot_of(src)
        assert snapshot_of(out).keys() == mine.keys()
        for rel in mine:
            if os.path.isfile(os.path.join(src, rel)):
                assert open(os.path.join(out, rel), "rb").read() == open(os.path.join(src, rel), "rb").read(), rel
