"""Every message the protocol has, built by anchor_core.messages, encodes to the same bytes with
cbor2 (the anchor's CPython library) as with anchor_core.cbor (the rover's own codec)."""
import cbor2

from anchor_core import cbor
from anchor_core import messages as m

OID = bytes(range(32))
CID = bytes(range(32, 64))

ALL = [
    m.hello("rover-1", None, m.CAP_ZLIB), m.hello("r", 1 << 40, 0),
    m.welcome(None, True, m.CAP_ZLIB), m.welcome(7, False, 0),
    m.entries(3, [m.put_entry("a/b.txt", m.T_FILE, 123456, 1_700_000_000_123_456_789, 0o644, OID),
                  m.put_entry("a", m.T_DIR, 0, -5, 0o755, None),
                  m.put_entry("l", m.T_LINK, 0, 0, 0o777, None, "a/b.txt"),
                  m.put_entry("outbox/x", m.T_FILE, 1, 0, 0o600, OID, None, m.FLAG_QUEUED),
                  m.del_entry("gone/ü")]),
    m.verdict(3, [0, 3]), m.verdict(4, [], [[1, 600]]),
    m.chunklist([m.list_part(0, 0, [CID, OID], False), m.list_part(3, 256, [CID], True)]),
    m.need([m.need_part(0, 0, [1]), m.need_part(3, 256, [])]),
    m.data(CID, m.ENC_ZLIB, b"\x78\x01" + bytes(300)), m.data(CID, m.ENC_RAW, bytes(70000)),
    m.commit(OID, 5, 1 << 33), m.committed(12), m.error(m.E_TREE, "tree mismatch"),
    m.fetch("https://example.org/a?b=1", [["Accept", "*/*"]]),
    m.send_req("POST", "http://example.org/up", 1 << 32, "image/jpeg"),
    m.publish("rover/telemetry", 10, 1, True),
    m.result(200, 1 << 31, '"abc"', "Wed, 21 Oct 2026 07:28:00 GMT", "text/plain"), m.result(0),
    m.body(bytes(4096)), m.end(4096), m.fail(m.F_BROKER, "broker down"),
    m.watchwait(600), m.watched([0, 1]),
]


def test_every_message_encodes_identically_with_cbor2():
    for msg in ALL:
        ours = cbor.encode(msg)
        assert cbor2.dumps(msg, canonical=True) == ours, m.NAMES[msg[0]]
        assert cbor.decode(cbor2.dumps(msg, canonical=True)) == msg


def test_zero_copy_blob_prefix_matches_whole_encoding():
    for msg in ALL:
        if msg[0] in (m.DATA, m.BODY):
            body = msg[-1]
            assert m.blob_prefix(msg[:-1], len(body)) + body == cbor2.dumps(msg, canonical=True)
