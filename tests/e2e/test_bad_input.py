"""Hostile and broken input on the rover link: each gets a clear ERROR (or a closed
session), the anchor keeps serving other rovers, and nothing stored changes."""
import hashlib
import os
import socket

import pytest

from tests.support.harness import AnchorProc, anchorctl, make_tree, run_rover
from anchor_core import cbor, chunker, framing
from anchor_core import messages as m


@pytest.fixture(scope="module")
def anchor(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    a = AnchorProc(str(d / "anchor")).start()
    src = make_tree(str(d / "src"), n_files=50, total_bytes=300_000, seed=2)
    run_rover("cpython", a.link, "good", str(d / "state"), "backup", src)
    a.src = src
    a.state = str(d / "state")
    yield a
    a.stop()


class Raw:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.d = framing.Deframer()

    def send_msg(self, msg):
        self.s.sendall(framing.encode_frame(cbor.encode(msg)))

    def send_raw(self, data):
        self.s.sendall(data)

    def reply(self):
        """The next message, or None when the anchor closed the connection."""
        while True:
            f = self.d.next_frame()
            if f is not None:
                return cbor.decode(f)
            data = self.s.recv(65536)
            if not data:
                return None
            self.d.receive_data(data)

    def close(self):
        self.s.close()


def store_state(anchor):
    seg = os.path.join(anchor.data_dir, "chunks", "segments")
    return sorted((f, os.path.getsize(os.path.join(seg, f))) for f in os.listdir(seg)), \
        anchorctl(anchor.address, "snapshots", "good", "--json").stdout


def expect_error(conn, code):
    r = conn.reply()
    assert r is not None and r[0] == m.ERROR, r
    assert r[1] == code, r
    assert r[2]                      # a human-readable reason
    assert conn.reply() is None      # and the session is over
    return r[2]


def hello(conn, device="hostile"):
    conn.send_msg(m.hello(device, None, 0))
    w = conn.reply()
    assert w[0] == m.WELCOME, w


def test_garbage_bytes(anchor):
    c = Raw(anchor.port)
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n" * 4)
    expect_error(c, m.E_PROTOCOL)


def test_oversized_frame_header(anchor):
    c = Raw(anchor.port)
    n = 60000
    c.send_raw(b"\xa7\x5c" + n.to_bytes(2, "big") + (n ^ 0xFFFF).to_bytes(2, "big") + b"\x00" * 100)
    expect_error(c, m.E_PROTOCOL)


def test_bad_crc(anchor):
    c = Raw(anchor.port)
    f = bytearray(framing.encode_frame(cbor.encode(m.hello("x", None, 0))))
    f[-1] ^= 1
    c.send_raw(bytes(f))
    expect_error(c, m.E_PROTOCOL)


def test_not_cbor(anchor):
    c = Raw(anchor.port)
    c.send_raw(framing.encode_frame(b"\xff\xfe\xfd"))
    assert "CBOR" in expect_error(c, m.E_PROTOCOL)


def test_message_before_hello(anchor):
    c = Raw(anchor.port)
    c.send_msg(m.commit(b"\x00" * 32, 0, 0))
    assert "not allowed" in expect_error(c, m.E_PROTOCOL)


def test_wrong_version_and_bad_device(anchor):
    c = Raw(anchor.port)
    c.send_msg([m.HELLO, 7, "x", None, 0])
    expect_error(c, m.E_VERSION)
    c = Raw(anchor.port)
    c.send_msg(m.hello("../../etc", None, 0))
    expect_error(c, m.E_DEVICE)


def test_path_traversal_and_absurd_sizes(anchor):
    before = store_state(anchor)
    for entry in ([m.OP_PUT, "../outside", 0, 5, 0, 0o644, b"\x01" * 32],
                  [m.OP_PUT, "a/../../b", 0, 5, 0, 0o644, b"\x01" * 32],
                  [m.OP_PUT, "big", 0, 1 << 60, 0, 0o644, b"\x01" * 32]):
        c = Raw(anchor.port)
        hello(c)
        c.send_msg(m.entries(0, [entry]))
        expect_error(c, m.E_PROTOCOL)
    assert store_state(anchor) == before


def test_entries_out_of_order(anchor):
    c = Raw(anchor.port)
    hello(c)
    c.send_msg(m.entries(0, [m.del_entry("b"), m.del_entry("a")]))
    assert "order" in expect_error(c, m.E_PROTOCOL)


def _declare_one(c, raw):
    cid = hashlib.sha256(raw).digest()
    oid = chunker.ObjectId()
    oid.add(cid)
    oid = oid.finish(len(raw))
    hello(c)
    c.send_msg(m.entries(0, [m.put_entry("f", m.T_FILE, len(raw), 0, 0o644, oid)]))
    assert c.reply() == m.verdict(0, [0])
    c.send_msg(m.chunklist([m.list_part(0, 0, [cid], True)]))
    assert c.reply() == m.need([m.need_part(0, 0, [0])])
    return cid, oid


def test_chunk_bytes_that_do_not_match_their_id(anchor):
    before = store_state(anchor)
    c = Raw(anchor.port)
    raw = os.urandom(5000)
    cid, _ = _declare_one(c, raw)
    c.send_msg(m.data(cid, m.ENC_RAW, raw[:-1] + b"X"))
    expect_error(c, m.E_BAD_DATA)
    assert store_state(anchor) == before


def test_zip_bomb_and_broken_zlib(anchor):
    import zlib
    for payload in (zlib.compress(b"\x00" * 200_000), b"\x78\x9c garbage"):
        c = Raw(anchor.port)
        cid, _ = _declare_one(c, os.urandom(100))
        c.send_msg(m.data(cid, m.ENC_ZLIB, payload))
        expect_error(c, m.E_BAD_DATA)


def test_chunk_not_asked_for(anchor):
    c = Raw(anchor.port)
    hello(c)
    raw = b"unsolicited"
    c.send_msg(m.data(hashlib.sha256(raw).digest(), m.ENC_RAW, raw))
    assert "not asked" in expect_error(c, m.E_PROTOCOL)


def test_chunk_list_that_does_not_hash_to_object(anchor):
    c = Raw(anchor.port)
    hello(c)
    oid = b"\x42" * 32
    c.send_msg(m.entries(0, [m.put_entry("f", m.T_FILE, 10, 0, 0o644, oid)]))
    assert c.reply() == m.verdict(0, [0])
    c.send_msg(m.chunklist([m.list_part(0, 0, [b"\x01" * 32], True)]))
    expect_error(c, m.E_BAD_DATA)


def test_chunk_list_for_an_entry_not_asked_for(anchor):
    c = Raw(anchor.port)
    hello(c)
    c.send_msg(m.entries(0, [m.del_entry("x")]))
    assert c.reply() == m.verdict(0, [])
    c.send_msg(m.chunklist([m.list_part(0, 0, [b"\x01" * 32], True)]))
    assert "not asked for" in expect_error(c, m.E_PROTOCOL)


def test_commit_with_wrong_root_makes_no_snapshot(anchor):
    before = store_state(anchor)
    c = Raw(anchor.port)
    hello(c, "good")
    c.send_msg(m.commit(b"\x00" * 32, 3, 3))
    assert "tree mismatch" in expect_error(c, m.E_TREE)
    assert store_state(anchor) == before


def test_truncated_frame_then_disconnect(anchor):
    c = Raw(anchor.port)
    f = framing.encode_frame(cbor.encode(m.hello("x", None, 0)))
    c.send_raw(f[:len(f) // 2])
    c.s.shutdown(socket.SHUT_WR)
    assert c.reply() is None


def test_anchor_still_serves_after_all_that(anchor):
    # a session left hanging mid-message does not block others
    hang = Raw(anchor.port)
    hang.send_raw(b"\xa7\x5c\x01\x00")
    p = run_rover("cpython", anchor.link, "good", anchor.state, "backup", anchor.src)
    assert "committed" in p.stdout
    hang.close()
    assert "good" in anchorctl(anchor.address, "devices").stdout
