# Session rules and message checks; runs under CPython (pytest) and MicroPython (mpy_runner).
import gc

from anchor_core import messages as m
from anchor_core import states as st
from anchor_core.session import Session
from anchor_core import cbor
from anchor_core import framing
from session_support import expect_error, pipe


OID = b"\x11" * 32
CID = b"\x22" * 32


def test_full_conversation_walks_the_table():
    r = Session(st.ROVER, 4096)
    a = Session(st.ANCHOR, 4096)
    pipe(r, a, m.hello("rover-1", None, m.CAP_ZLIB))
    pipe(a, r, m.welcome(None, True, m.CAP_ZLIB))
    pipe(r, a, m.entries(0, [m.put_entry("a/b.txt", m.T_FILE, 5, 10 ** 18, 0o644, OID), m.del_entry("old")]))
    pipe(a, r, m.verdict(0, [0]))
    pipe(r, a, m.chunklist([m.list_part(0, 0, [CID], True)]))
    pipe(a, r, m.need([m.need_part(0, 0, [0])]))
    pipe(r, a, m.data(CID, m.ENC_RAW, b"hello"))
    pipe(r, a, m.commit(b"\x33" * 32, 1, 5))
    pipe(a, r, m.committed(1))
    assert r.closed and a.closed
    assert r.bytes_out == a.bytes_in and a.bytes_out == r.bytes_in


def test_out_of_order_message_rejected_on_both_ends():
    r = Session(st.ROVER, 4096)
    expect_error(lambda: r.send(m.commit(b"\x00" * 32, 0, 0)), m.E_PROTOCOL)
    a = Session(st.ANCHOR, 4096)
    r2 = Session(st.ROVER, 4096)
    r2.send(m.hello("x", None, 0))
    # a hostile rover that skips HELLO: framed DATA straight away
    a.receive_data(framing.encode_frame(cbor.encode(m.data(CID, 0, b"x"))))
    expect_error(a.next_event, m.E_PROTOCOL)


def test_reply_must_answer_pending_request():
    r = Session(st.ROVER, 4096)
    a = Session(st.ANCHOR, 4096)
    pipe(r, a, m.hello("rover-1", 3, 0))
    pipe(a, r, m.welcome(3, True, 0))
    pipe(r, a, m.entries(7, []))
    r.receive_data(a.send(m.verdict(7, [])))
    r.next_event()
    pipe(r, a, m.entries(8, []))
    # a VERDICT for batch 7 again: the anchor end refuses to send it, the rover end to take it
    expect_error(lambda: a.send(m.verdict(7, [])), m.E_PROTOCOL)


def test_need_must_echo_the_parts_of_its_chunklist():
    r = Session(st.ROVER, 4096)
    a = Session(st.ANCHOR, 4096)
    pipe(r, a, m.hello("rover-1", None, 0))
    pipe(a, r, m.welcome(None, True, 0))
    pipe(r, a, m.entries(0, []))
    pipe(a, r, m.verdict(0, []))
    pipe(r, a, m.chunklist([m.list_part(3, 0, [CID], False), m.list_part(5, 0, [CID], True)]))
    expect_error(lambda: a.send(m.need([m.need_part(3, 0, [])])), m.E_PROTOCOL)


def test_error_closes_from_any_state():
    r = Session(st.ROVER, 4096)
    a = Session(st.ANCHOR, 4096)
    pipe(r, a, m.hello("rover-1", None, 0))
    pipe(a, r, m.error(m.E_DEVICE, "not paired"))
    assert r.closed and a.closed
    expect_error(lambda: r.send(m.hello("rover-1", None, 0)))


def test_hostile_fields_rejected():
    bad = [
        [m.HELLO, 99, "rover", None, 0],                      # version
        [m.HELLO, 1, "bad/name", None, 0],                     # device id
        [m.HELLO, 1, "x" * 65, None, 0],
        [m.ENTRIES, 0, [[m.OP_PUT, "../etc/passwd", 0, 1, 0, 0o644, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "/abs", 0, 1, 0, 0o644, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "a//b", 0, 1, 0, 0o644, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "a/./b", 0, 1, 0, 0o644, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "a", 0, 1, 0, 0o644, b"short"]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "a", 0, -1, 0, 0o644, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "a", 0, 1, 0, 0o10000, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "a", 1, 0, 0, 0o755, OID]]],   # dir with an object id
        [m.ENTRIES, 0, [[m.OP_PUT, "a", 2, 0, 0, 0o777, None]]],  # symlink without target
        [m.ENTRIES, 0, [[m.OP_PUT, "a" * 4097, 0, 1, 0, 0o644, OID]]],       # above PATH_MAX
        [m.ENTRIES, 0, [[m.OP_PUT, b"a\xff/" * 1366 + b"a", 0, 1, 0, 0o644, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, b"plain", 0, 1, 0, 0o644, OID]]],    # UTF-8 must be text
        [m.ENTRIES, 0, [[m.OP_PUT, b"a\xff/../b", 0, 1, 0, 0o644, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, b"a\xff\x00", 0, 1, 0, 0o644, OID]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "a", 0, 1, 1 << 64, 0o644, OID]]],     # mtime beyond CBOR
        [m.ENTRIES, 0, [[m.OP_PUT, "a", 2, 0, 0, 0o777, None, b"t"]]],  # UTF-8 target as bytes
        [m.ENTRIES, 0, [m.del_entry("x")] * (m.MAX_ENTRIES + 1)],
        [m.CHUNKLIST, [[0, 0, [CID] * (m.MAX_IDS + 1), True]]],
        [m.CHUNKLIST, [[0, 0, [CID] * 300, False], [1, 0, [CID] * 300, True]]],   # 600 ids in all
        [m.CHUNKLIST, [[0, 0, [b"short"], True]]],
        [m.CHUNKLIST, [[m.MAX_ENTRIES, 0, [CID], True]]],
        [m.NEED, [[0, 0, [m.MAX_IDS]]]],
        [m.DATA, CID, 5, b"x"],
        [m.DATA, CID, 0, b"x" * (m.MAX_CHUNK + 1025)],
        [m.COMMIT, b"x", 0, 0],
        [42],
        [],
        "not a list",
    ]
    for msg in bad:
        expect_error(lambda: m.check(msg))


def test_bad_cbor_is_a_protocol_error():
    expect_error(lambda: m.decode(b"\xff\x00"), m.E_PROTOCOL)
    expect_error(lambda: m.decode(cbor.encode([m.HELLO, 1])), m.E_PROTOCOL)


def test_path_key_orders_by_component():
    paths = ["a", "a/b", "a/b/c", "a/c", "a.b", "a0", "b"]
    keyed = sorted(paths, key=m.path_key)
    assert keyed == paths, keyed
    assert sorted(paths) != paths   # plain string order would put "a.b" before "a/b"


def test_received_bytes_in_small_pieces():
    r = Session(st.ROVER, 4096)
    a = Session(st.ANCHOR, 4096)
    wire = r.send(m.hello("rover-1", None, 0))
    for i in range(len(wire) - 1):
        a.receive_data(wire[i:i + 1])
        assert a.next_event() is None
    a.receive_data(wire[-1:])
    assert a.next_event()[0] == m.HELLO


def test_send_data_without_copy_matches_send():
    body = bytes(range(256)) * 40
    for n in (0, 5, 23, 24, 255, 256, len(body)):
        r1 = Session(st.ROVER, 4096)
        r2 = Session(st.ROVER, 4096)
        for r in (r1, r2):       # bring both to READY
            a = Session(st.ANCHOR, 4096)
            pipe(r, a, m.hello("rover-1", None, 0))
            pipe(a, r, m.welcome(None, True, 0))
        whole = r1.send(m.data(CID, m.ENC_RAW, body[:n]))
        head, tail = r2.send_data(CID, m.ENC_RAW, memoryview(body)[:n])
        assert head + body[:n] + tail == whole, n
        assert r1.bytes_out == r2.bytes_out


def test_link_bytes_are_counted_by_purpose():
    r = Session(st.ROVER, 4096)
    a = Session(st.ANCHOR, 4096)
    pipe(r, a, m.hello("rover-1", None, 0))
    pipe(a, r, m.welcome(None, True, 0))
    control = r.bytes_out + r.bytes_in
    pipe(r, a, m.fetch("http://example.org/x"))
    pipe(a, r, m.result(200, 3))
    pipe(a, r, m.body(b"abc"))
    pipe(a, r, m.end(3))
    relay = r.bytes_out + r.bytes_in - control
    pipe(r, a, m.entries(0, []))
    pipe(a, r, m.verdict(0, []))
    backup = r.bytes_out + r.bytes_in - control - relay
    assert r.purpose_bytes == [control, backup, relay], (r.purpose_bytes, control, backup, relay)
    assert a.purpose_bytes == r.purpose_bytes


def test_relay_and_watch_messages_are_checked():
    good = [
        m.fetch("http://example.org/a?b=c", [["Accept", "*/*"]]),
        m.send_req("PUT", "https://example.org/up", 10, "text/plain"),
        m.publish("rover/telemetry", 5, 1, False),
        m.result(200, 3, '"etag"', None, "text/plain"),
        m.body(b"abc"), m.end(3), m.fail(m.F_TIMEOUT, "late"),
        m.watchwait(30), m.watched([0, 2]),
        m.verdict(0, [1], [[2, 600]]),
        m.entries(0, [m.put_entry("outbox/a", m.T_FILE, 1, 0, 0o644, OID, None, m.FLAG_QUEUED)]),
    ]
    for msg in good:
        assert m.check(msg) is msg
        assert m.decode(cbor.encode(msg)) == msg
    bad = [
        m.fetch("ftp://example.org/x"),
        m.fetch("http://exa mple.org/"),
        m.fetch("http://example.org/\x00"),
        m.fetch("http://example.org/" + "a" * m.MAX_URL),
        [m.FETCH, "http://example.org/x", [["a"]]],
        [m.FETCH, "http://example.org/x", [["a", "b"]] * (m.MAX_HEADERS + 1)],
        m.send_req("DELETE", "http://example.org/x", 1, "a"),
        m.send_req("PUT", "http://example.org/x", -1, "a"),
        m.publish("rover/#", 1, 1, False),
        m.publish("", 1, 1, False),
        m.publish("t", 1, 2, False),
        m.body(b"x" * (m.MAX_BODY + 1)),
        m.result(1000),
        m.watched([m.MAX_ENTRIES]),
        [m.VERDICT, 0, [], [[0]]],
        [m.ENTRIES, 0, [[m.OP_PUT, "a", 0, 1, 0, 0o644, OID, None, -1]]],
    ]
    for msg in bad:
        expect_error(lambda: m.check(msg))


def test_relay_transitions():
    r = Session(st.ROVER, 4096)
    a = Session(st.ANCHOR, 4096)
    pipe(r, a, m.hello("rover-1", None, 0))
    pipe(a, r, m.welcome(None, True, 0))
    pipe(r, a, m.send_req("POST", "http://example.org/x", 3, "a/b"))
    expect_error(lambda: a.send(m.result(201)), m.E_PROTOCOL)    # not before the body ends
    pipe(r, a, m.body(b"abc"))
    pipe(r, a, m.end(3))
    pipe(a, r, m.result(201))
    pipe(r, a, m.fetch("http://example.org/y"))
    expect_error(lambda: a.send(m.body(b"x")), m.E_PROTOCOL)     # RESULT comes first
    pipe(a, r, m.fail(m.F_UNREACHABLE, "refused"))
    assert r.state == st.READY and a.state == st.READY


def test_zero_copy_session_refuses_long_map_keys_with_protocol_error():
    # Found by fuzzing: with zero_copy (the rover's session) a byte-string map key of 1024
    # bytes or more was decoded as a view, which cannot be a dict key: TypeError on
    # MicroPython escaped next_event instead of ProtocolError.
    r = Session(st.ROVER, 4608, 4624, 0, True)
    r.receive_data(framing.encode_frame(cbor.encode([m.BODY, {b"k" * 1024: 1}])))
    expect_error(r.next_event)


def test_a_send_that_does_not_fit_leaves_the_state_alone():
    from anchor_core import messages as m
    from anchor_core import states as st
    from anchor_core.session import Session
    s = Session(st.ROVER, tx_buffer=24)
    try:
        s.send(m.hello("rover-with-a-rather-long-name", None, 0))
        raise AssertionError("a HELLO larger than the buffer was sent")
    except m.ProtocolError as e:
        assert e.code == m.E_TOO_LARGE
    assert s.state == st.START
    # Each session holds a receive buffer of the largest frame (72 KiB): free this one
    # before the next, or a 256 KB MicroPython heap needs two such blocks at once.
    s = None
    gc.collect()
    big = Session(st.ROVER, tx_buffer=256)
    big.send(m.hello("rover-1", None, 0))
    assert big.state == st.HELLO_SENT
