# The pairing handshake's state machine (anchor_core/handshake.py), both ends, on both runtimes:
# whole exchanges in any split, the bytes on the wire as docs/security.md spells them, and
# every way a handshake fails (no keys, a clear reason, the failure sticks).
import struct

from anchor_core import handshake as hs
from anchor_core import secure
from anchor_core.hmac256 import hmac_sha256

KEY = hmac_sha256(b"test key")
NR = b"r" * 16
NA = b"a" * 16
DEV = "rover-1"


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("%s not raised" % exc.__name__)


def pump(ini, res, secrets, split):
    """Carries each end's bytes to the other in pieces (see pieces(); 0: whole), asking
    for the next event after every piece; answers HELLO from `secrets`. Returns the wire
    bytes (up, down)."""
    up = b""
    down = b""
    for _ in range(3):
        out = ini.data_to_send()
        up += out
        ps = pieces(out, split)
        for i in range(len(ps)):
            res.receive_data(ps[i])
            ev = res.next_event()
            if i < len(ps) - 1:
                assert ev == hs.NEED_DATA, (split, i, ev)
            elif ev == hs.HELLO:
                res.secret(secrets.get(res.device))
        out = res.data_to_send()
        down += out
        ps = pieces(out, split)
        for i in range(len(ps)):
            ini.receive_data(ps[i])
            ev = ini.next_event()
            assert ev == (hs.NEED_DATA if i < len(ps) - 1 else hs.ESTABLISHED), (split, i, ev)
    return up, down


def pieces(data, split):
    """data cut into pieces of `split` bytes, or of the sizes a tuple `split` cycles through."""
    if not split:
        return [data] if data else []
    sizes = split if type(split) is tuple else (split,)
    out = []
    i = 0
    while i < len(data):
        k = sizes[len(out) % len(sizes)]
        out.append(data[i:i + k])
        i += k
    return out


def pair(rx_max=1024, tx_max=2048):
    return hs.Initiator(DEV, KEY, NR, rx_max, tx_max), hs.Responder(NA)


def test_exchange_in_any_split_gives_both_ends_the_same_keys():
    for split in (0, 1, 2, 3, 7, 16, 37, (1, 4, 2, 9, 3), (30, 1, 6)):
        ini, res = pair()
        up, down = pump(ini, res, {DEV: KEY}, split)
        assert ini.next_event() == hs.ESTABLISHED and res.next_event() == hs.ESTABLISHED, split
        assert ini.keys == res.keys and len(ini.keys) == 4, split
        assert res.device == DEV and res.rx_max == 1024
        assert ini.trailing_data() == b"" and res.trailing_data() == b""
        # the record layers of the two ends fit together, each way
        rs, ro = ini.records()
        as_, ao = res.records()
        assert rs.max == 2048 and ro.max == 1024 and as_.max == 1024 and ao.max == secure.MAX_RECORD
        assert ao.feed(bytes(rs.seal(b"up"))) == [b"up"]
        assert ro.feed(bytes(as_.seal(b"down"))) == [b"down"]


def test_wire_bytes_and_keys_are_those_of_docs_security_md():
    ini, res = pair()
    up, down = pump(ini, res, {DEV: KEY}, 0)
    d = DEV.encode()
    pa = hmac_sha256(KEY, b"anchor\0" + d + b"\0" + NR + NA)[:16]
    pr = hmac_sha256(KEY, b"rover\0" + d + b"\0" + NR + NA)[:16]
    assert up == b"ANC1" + bytes([len(d)]) + d + NR + struct.pack(">H", 1024) + pr
    assert down == b"ANC1\x00" + NA + pa
    assert len(down) == hs.HELLO2
    want = []
    for label in (b"r2a enc", b"r2a mac", b"a2r enc", b"a2r mac"):
        k = hmac_sha256(KEY, label + NR + NA)
        want.append(k[:16] if label.endswith(b"enc") else k)
    assert list(ini.keys) == want


def test_need_never_reads_past_the_handshake():
    """Read exactly need() bytes each time: the drivers never take a record by mistake."""
    ini, res = pair()
    up = ini.data_to_send()
    k = 0
    while res.next_event() == hs.NEED_DATA:
        n = res.need()
        assert n >= 1
        res.receive_data(up[k:k + n])
        k += n
    assert k == len(up) and res.next_event() == hs.HELLO and res.need() == 0
    res.secret(KEY)
    down = res.data_to_send()
    k = 0
    while ini.next_event() == hs.NEED_DATA:
        n = ini.need()
        assert n >= 1
        ini.receive_data(down[k:k + n])
        k += n
    assert k == len(down) == hs.HELLO2 and ini.need() == 0
    pr = ini.data_to_send()
    assert res.next_event() == hs.NEED_DATA and res.need() == 16
    res.receive_data(pr)
    assert res.next_event() == hs.ESTABLISHED and res.need() == 0


def test_records_right_after_the_proof_are_trailing_data():
    ini, res = pair()
    res.receive_data(ini.data_to_send())
    assert res.next_event() == hs.HELLO
    res.secret(KEY)
    ini.receive_data(res.data_to_send())
    assert ini.next_event() == hs.ESTABLISHED
    sealer, opener = ini.records()
    record = bytes(sealer.seal(b"HELLO as a record"))
    res.receive_data(ini.data_to_send() + record)
    assert res.next_event() == hs.ESTABLISHED
    assert res.trailing_data() == record
    assert res.records()[1].feed(res.trailing_data()) == [b"HELLO as a record"]


def test_plain_rover_is_told_apart_with_every_byte_kept():
    res = hs.Responder(NA)
    res.receive_data(b"\x00\x10pla")
    assert res.next_event() == hs.PLAIN
    res.receive_data(b"in")
    assert res.next_event() == hs.PLAIN and res.trailing_data() == b"\x00\x10plain"
    assert res.keys is None
    # a link that closes before 4 bytes is no secure hello either
    res = hs.Responder(NA)
    res.receive_data(b"AN")
    res.receive_data(b"")
    assert res.next_event() == hs.PLAIN and res.trailing_data() == b"AN"


def test_wrong_secret_is_refused_by_the_rover():
    """An anchor with another secret (not ours, or the pairing was renewed): the rover
    stops at its proof and sends nothing more."""
    ini, res = pair()
    res.receive_data(ini.data_to_send())
    assert res.next_event() == hs.HELLO
    res.secret(hmac_sha256(b"another key"))
    ini.receive_data(res.data_to_send())
    e = raises(hs.NotPairedError, ini.next_event)
    assert "could not prove" in str(e)
    assert ini.keys is None and ini.data_to_send() == b""
    assert raises(hs.NotPairedError, ini.next_event) is e


def test_wrong_secret_is_refused_by_the_anchor():
    """A rover that does not hold the secret (it guessed, or replays someone's hello)."""
    forger = hs.Initiator(DEV, hmac_sha256(b"guess"), NR)
    res = hs.Responder(NA)
    res.receive_data(forger.data_to_send())
    assert res.next_event() == hs.HELLO
    res.secret(KEY)
    down = res.data_to_send()
    na = down[5:21]
    res.receive_data(secure.proof(hmac_sha256(b"guess"), b"rover", DEV.encode(), NR, na))
    e = raises(hs.NotPairedError, res.next_event)
    assert "failed to prove" in str(e) and DEV in str(e)
    assert res.keys is None
    assert raises(hs.NotPairedError, res.next_event) is e


def test_unknown_device_is_told_so_and_the_rover_says_what_to_do():
    ini, res = pair()
    res.receive_data(ini.data_to_send())
    assert res.next_event() == hs.HELLO
    res.secret(None)
    down = res.data_to_send()
    assert down == b"ANC1\x01" + bytes(32)
    e = raises(hs.NotPairedError, res.next_event)
    assert "not paired" in str(e) and res.keys is None
    ini.receive_data(down)
    e = raises(hs.NotPairedError, ini.next_event)
    assert "anchorctl pair rover-1" in str(e) and ini.keys is None


def test_truncated_handshakes_fail_without_keys():
    whole_up = hs.Initiator(DEV, KEY, NR).data_to_send()
    for cut in (4, 5, 10, len(whole_up) - 1):
        res = hs.Responder(NA)
        res.receive_data(whole_up[:cut])
        assert res.next_event() == hs.NEED_DATA
        res.receive_data(b"")
        e = raises(hs.HandshakeError, res.next_event)
        assert "closed during the secure handshake" in str(e) and res.keys is None
    # the proof cut short
    ini, res = pair()
    res.receive_data(ini.data_to_send())
    res.next_event()
    res.secret(KEY)
    ini.receive_data(res.data_to_send())
    ini.next_event()
    res.receive_data(ini.data_to_send()[:8])
    res.receive_data(b"")
    assert "closed" in str(raises(hs.HandshakeError, res.next_event)) and res.keys is None
    # the anchor's answer cut short
    ini = hs.Initiator(DEV, KEY, NR)
    ini.receive_data(b"ANC1\x00" + NA)
    assert ini.next_event() == hs.NEED_DATA
    ini.receive_data(b"")
    e = raises(hs.HandshakeError, ini.next_event)
    assert "anchor closed the link" in str(e) and ini.keys is None


def hello_with(n_byte, name, rx_max=1024):
    return b"ANC1" + bytes([n_byte]) + name + NR + struct.pack(">H", rx_max)


def test_garbage_and_oversized_hellos_fail_with_a_reason():
    cases = (
        (hello_with(0, b""), "bad device name length"),
        (hello_with(65, b"x" * 65), "bad device name length"),          # over 64 bytes
        (hello_with(200, b"x" * 200), "bad device name length"),
        (hello_with(2, b"\xff\xfe"), "not UTF-8"),
        (hello_with(3, b"abc", 100), "record size 100 out of range"),
        (hello_with(3, b"abc", 5000), "record size 5000 out of range"),
    )
    for wire, why in cases:
        for split in (0, 1):
            res = hs.Responder(NA)
            e = None
            for piece in pieces(wire, split):
                res.receive_data(piece)
                try:
                    if res.next_event() != hs.NEED_DATA:
                        raise AssertionError("accepted %r" % wire)
                except hs.HandshakeError as err:
                    e = err
                    break
            assert e is not None and why in str(e), (wire, split, e)
            assert res.keys is None and res.data_to_send() == b""
    # the rover, answered by something that is no anchor
    ini = hs.Initiator(DEV, KEY, NR)
    ini.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 20)
    e = raises(hs.HandshakeError, ini.next_event)
    assert "does not speak the secure channel" in str(e) and ini.keys is None


def test_replayed_answers_and_proofs_from_another_session_are_refused():
    ini, res = pair()
    pump(ini, res, {DEV: KEY}, 0)
    old_down = b"ANC1\x00" + NA + secure.proof(KEY, b"anchor", DEV.encode(), NR, NA)
    old_pr = secure.proof(KEY, b"rover", DEV.encode(), NR, NA)
    # a fresh rover nonce: yesterday's answer does not prove the anchor today
    ini = hs.Initiator(DEV, KEY, b"s" * 16)
    ini.receive_data(old_down)
    assert "could not prove" in str(raises(hs.NotPairedError, ini.next_event))
    assert ini.keys is None and ini.data_to_send()[:4] == b"ANC1"   # only its own hello
    # a fresh anchor nonce: yesterday's proof does not prove the rover today
    res = hs.Responder(b"b" * 16)
    res.receive_data(hs.Initiator(DEV, KEY, NR).data_to_send())
    assert res.next_event() == hs.HELLO
    res.secret(KEY)
    res.receive_data(old_pr)
    assert "failed to prove" in str(raises(hs.NotPairedError, res.next_event))
    assert res.keys is None


def test_messages_out_of_order_are_refused():
    # the anchor's answer sent to an anchor: not a hello
    res = hs.Responder(NA)
    res.receive_data(b"ANC1\x00" + NA + b"p" * 16)
    assert "bad device name length" in str(raises(hs.HandshakeError, res.next_event))
    # the rover's own hello reflected back to it: not the anchor's proof
    ini = hs.Initiator(DEV, KEY, NR)
    ini.receive_data(ini.data_to_send() + b"p" * 16)
    raises(hs.NotPairedError, ini.next_event)
    assert ini.keys is None
    # the driver answering before the hello, or twice
    res = hs.Responder(NA)
    assert "out of order" in str(raises(hs.HandshakeError, res.secret, KEY))
    res = hs.Responder(NA)
    res.receive_data(hs.Initiator(DEV, KEY, NR).data_to_send())
    assert res.next_event() == hs.HELLO
    res.secret(KEY)
    assert "out of order" in str(raises(hs.HandshakeError, res.secret, KEY))


def test_hello_parsing_is_strict():
    h = hs.hello1("rover-1", b"n" * 16)
    assert hs.parse_hello1(h[:10]) is None
    assert hs.parse_hello1(h) == ("rover-1", b"n" * 16, secure.MAX_RECORD, len(h))
    assert hs.parse_hello1(hs.hello1("r", b"n" * 16, 1024))[2] == 1024
    for bad in (b"XNC1" + h[4:], h[:4] + b"\x00" + h[5:]):
        raises(secure.SecureError, hs.parse_hello1, bad)


def test_no_records_before_the_handshake_is_done():
    ini, res = pair()
    raises(hs.HandshakeError, ini.records)
    res.receive_data(ini.data_to_send())
    assert res.next_event() == hs.HELLO
    raises(hs.HandshakeError, res.records)
