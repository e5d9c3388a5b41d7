# The secure channel's primitives and records, on both runtimes (known-answer vectors from
# RFC 4231 and FIPS-197, so both runtimes compute the same bytes as everyone else).
import struct
from binascii import unhexlify

from anchor_core import secure
from anchor_core.compat import MICROPYTHON


def test_hmac_sha256_rfc4231_case_2():
    tag = secure.hmac_sha256(b"Jefe", b"what do ya want ", b"for nothing?")
    assert tag == unhexlify("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_hmac_sha256_long_key_rfc4231_case_6():
    tag = secure.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")
    assert tag == unhexlify("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def _ecb(key, block):
    if MICROPYTHON:
        import cryptolib
        out = bytearray(16)
        cryptolib.aes(key, 1).encrypt(block, out)
        return bytes(out)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block)


def test_aes_fips197_and_ctr_keystream():
    key = unhexlify("000102030405060708090a0b0c0d0e0f")
    assert _ecb(key, unhexlify("00112233445566778899aabbccddeeff")) == unhexlify("69c4e0d86a7b0430d8cdb78070b4c55a")
    # record 5's keystream is AES(key, 5 || block index)
    ctr = secure._Ctr(key)
    buf = bytearray(40)
    ctr.apply(5, memoryview(buf), 40)
    want = b"".join(_ecb(key, struct.pack(">QQ", 5, i)) for i in range(3))[:40]
    assert bytes(buf) == want


def pair_of(key=b"k" * 32):
    k = secure.session_keys(key, b"n" * 16, b"m" * 16)
    return secure.Sealer(k[0], k[1]), secure.Opener(k[0], k[1])


def open_all(opener, wire):
    return opener.feed(wire)


def test_records_round_trip_and_hide_the_data():
    s, o = pair_of()
    msgs = [b"", b"hello", bytes(range(256)) * 16]
    wire = b"".join(bytes(s.seal(m)) for m in msgs)
    assert b"hello" not in wire and bytes(range(64)) not in wire
    assert open_all(o, wire) == msgs
    assert len(wire) == sum(len(m) for m in msgs) + 3 * secure.OVERHEAD


def test_tampered_replayed_and_reordered_records_fail():
    for attack in ("flip", "replay", "swap", "drop"):
        s, o = pair_of()
        r = [bytes(s.seal(b"record %d" % i)) for i in range(3)]
        if attack == "flip":
            r[1] = r[1][:5] + bytes([r[1][5] ^ 0x40]) + r[1][6:]
        elif attack == "replay":
            r[1] = r[0]
        elif attack == "swap":
            r[1], r[2] = r[2], r[1]
        else:
            del r[1]
        try:
            open_all(o, b"".join(r))
            raise AssertionError("%s was accepted" % attack)
        except secure.SecureError:
            pass


def test_keys_differ_per_session_and_direction():
    a = secure.session_keys(b"k" * 32, b"1" * 16, b"2" * 16)
    b = secure.session_keys(b"k" * 32, b"1" * 16, b"3" * 16)
    assert len(set(a)) == 4 and not set(a) & set(b)


def test_proofs_and_codes():
    key = secure.code_to_key("abcde-fghjk-lmnpq-rstuv", "rover-1")
    assert key == secure.code_to_key("ABCDEFGHJKLMNPQRSTUV", "rover-1")
    assert key != secure.code_to_key("ABCDEFGHJKLMNPQRSTUV", "rover-2")
    p1 = secure.proof(key, b"anchor", b"rover-1", b"n" * 16, b"m" * 16)
    p2 = secure.proof(key, b"rover", b"rover-1", b"n" * 16, b"m" * 16)
    assert p1 != p2 and len(p1) == 16
    try:
        secure.code_to_key("short", "rover-1")
        raise AssertionError("a short code was taken")
    except secure.SecureError:
        pass



def test_records_use_a_given_buffer_of_the_right_size_only():
    # The rover takes its record buffers at start-up (rover/buffers.py); a buffer of another
    # size than the record needs is not used.
    k = secure.session_keys(b"k" * 32, b"n" * 16, b"m" * 16)
    given = bytearray(secure.HEADER + 64 + secure.TAG)
    s = secure.Sealer(k[0], k[1], 64, given)
    o = secure.Opener(k[0], k[1], 64, bytearray(10))
    assert s.buf is given and len(o.buf) == secure.HEADER + 64 + secure.TAG
    wire = bytes(s.seal(b"through the given buffer"))
    assert o.feed(wire) == [b"through the given buffer"]
