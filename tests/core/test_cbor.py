# Deterministic CBOR codec. Plain functions: runs under pytest (CPython) and
# under tests/core/mpy_runner.py (MicroPython), so no pytest, no CPython-only code.
from anchor_core import cbor
from anchor_core.cbor import encode, decode, CBORError, MAX_DEPTH, MAX_ITEMS
from anchor_core.compat import MICROPYTHON


def h(s):
    return bytes.fromhex(s.replace(" ", ""))


def rejects(data, word):
    # decode(data) must raise CBORError whose message mentions word.
    try:
        got = decode(data)
    except CBORError as e:
        if word not in str(e):
            raise AssertionError("%r: message %r lacks %r" % (data, str(e), word))
        return
    raise AssertionError("%r decoded to %r instead of failing (%s)" % (data, got, word))


def enc_rejects(obj):
    try:
        out = encode(obj)
    except CBORError:
        return
    raise AssertionError("encode(%r) gave %r instead of failing" % (obj, out))


# RFC 8949 Appendix A, the examples inside our subset: (value, encoding).
RFC_EXAMPLES = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ("\"\\", "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)),
     "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
     "a56161614161626142616361436164614461656145"),
]


def test_constants():
    assert MAX_DEPTH == 16
    assert MAX_ITEMS == 65536
    assert issubclass(CBORError, ValueError)


def test_rfc_examples_encode():
    for value, hexed in RFC_EXAMPLES:
        got = encode(value)
        if got != h(hexed):
            raise AssertionError("%r: %s != %s" % (value, got.hex(), hexed))


def test_rfc_examples_decode():
    for value, hexed in RFC_EXAMPLES:
        got = decode(h(hexed))
        if got != value or type(got) is not type(value):
            raise AssertionError("%s: %r != %r" % (hexed, got, value))


def test_edge_ints_round_trip():
    edges = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
             -1, -24, -25, -256, -257, -65536, -65537, -2**32, -2**32 - 1, -2**64]
    lengths = [1, 1, 1, 2, 2, 3, 3, 5, 5, 9, 9,
               1, 1, 2, 2, 3, 3, 5, 5, 9, 9]
    for v, n in zip(edges, lengths):
        b = encode(v)
        if len(b) != n:
            raise AssertionError("%d encoded in %d bytes, want %d" % (v, len(b), n))
        assert decode(b) == v


def test_ints_beyond_64_bits_rejected_by_encoder():
    enc_rejects(2**64)
    enc_rejects(-2**64 - 1)
    enc_rejects(2**100)


def test_round_trip_every_type():
    values = [
        None, True, False, 0, -1, 2**64 - 1, -2**64,
        b"", b"\x00\xff", "", "ascii", "\u00e9t\u00e9 \u6c34 \U0001f600",
        [], [None, [True, [False, []]]], (1, 2),
        {}, {0: b"x", 1: "y", 23: [1, 2], -5: {}}, {"k": {"n": {b"b": 1}}},
    ]
    for v in values:
        got = decode(encode(v))
        want = list(v) if isinstance(v, tuple) else v
        if got != want:
            raise AssertionError("%r -> %r" % (v, got))


def test_bytes_like_inputs():
    assert encode(bytearray(b"ab")) == h("426162")
    assert encode(memoryview(b"abc")[1:]) == h("426263")
    got = decode(h("426162"))
    assert got == b"ab" and isinstance(got, bytes)
    assert decode(bytearray(h("83010203"))) == [1, 2, 3]
    assert decode(memoryview(h("83010203"))) == [1, 2, 3]


def test_decode_range():
    buf = h("ff 1864 ff")
    assert decode(buf, 1, 3) == 100
    assert decode(memoryview(buf), 1, 3) == 100
    for start, end in ((3, 1), (-1, 3), (0, 9)):
        try:
            decode(buf, start, end)
        except CBORError:
            continue
        raise AssertionError("range %d:%d accepted" % (start, end))


def test_big_bytes_round_trip():
    payload = bytes(range(256)) * 128  # 32 KiB
    msg = encode([3, 7, payload])
    assert msg[:6] == h("83 03 07 59 8000") and len(msg) == 6 + 32768
    got = decode(msg)
    assert got[0] == 3 and got[1] == 7 and got[2] == payload


def test_map_key_order_rfc_section_4_2_1():
    # The RFC's example order, restricted to our key types: 10, 100, -1, "z", "aa".
    m = {"aa": 0, "z": 0, -1: 0, 100: 0, 10: 0}
    assert encode(m) == h("a5 0a00 186400 2000 617a00 62616100")
    assert decode(encode(m)) == m


def test_map_key_order_is_bytewise_not_length_first():
    # Bytewise: 24 (0x1818) sorts before -1 (0x20) although it is longer.
    assert encode({-1: 2, 24: 1}) == h("a2 1818 01 20 02")
    # 1000 (0x1903e8) before "a" (0x6161); b"aa" (0x426161) before "b" (0x6162).
    assert encode({"a": 1, 1000: 2}) == h("a2 1903e8 02 6161 01")
    assert encode({"b": 1, b"aa": 2}) == h("a2 426161 02 6162 01")
    # The length-first ("RFC 7049 canonical") order is refused.
    rejects(h("a2 20 02 1818 01"), "order")


def test_map_small_int_keys():
    m = {}
    for k in range(23, -1, -1):
        m[k] = k * 2
    b = encode(m)
    assert b[0] == 0xB8 and b[1] == 24
    assert b[2:6] == h("00 00 01 02")
    assert decode(b) == m


def test_map_key_types_encode():
    enc_rejects({True: 1})
    enc_rejects({None: 1})
    enc_rejects({(1, 2): 1})
    enc_rejects({2**64: 1})


def test_encode_rejects_other_types():
    enc_rejects(1.5)
    enc_rejects(0.0)
    enc_rejects(object())
    enc_rejects({1, 2})
    enc_rejects([1, [2, 1.0]])
    enc_rejects({"a": 1.0})


def test_encode_depth_limit():
    v = 0
    for i in range(MAX_DEPTH):
        v = [v]
    assert decode(encode(v)) == v
    enc_rejects([v])
    d = 0
    for i in range(MAX_DEPTH):
        d = {1: d}
    encode(d)
    enc_rejects({1: d})


def test_encode_items_limit():
    if MICROPYTHON:
        return  # a 65537-slot list does not fit a 256 KB heap; covered on CPython
    enc_rejects([0] * (MAX_ITEMS + 1))
    assert len(encode([0] * MAX_ITEMS)) == 5 + MAX_ITEMS


def test_reject_truncated():
    rejects(b"", "truncated")
    rejects(h("18"), "truncated")
    rejects(h("19 01"), "truncated")
    rejects(h("1a 0001 00"), "truncated")
    rejects(h("1b 0000 0001 0000 00"), "truncated")
    rejects(h("43 0102"), "truncated")
    rejects(h("63 6161"), "truncated")
    rejects(h("82 19 01"), "truncated")
    rejects(h("a2 01 19 0100"), "truncated")
    rejects(h("a1 01 19 01"), "truncated")


def test_reject_trailing_bytes():
    rejects(h("00 00"), "trailing")
    rejects(h("80 f6"), "trailing")


def test_reject_non_shortest_heads():
    for hexed in ("18 17", "18 00", "19 00ff", "1a 0000ffff", "1b 00000000ffffffff",
                  "38 17", "39 00ff", "3a 0000ffff", "3b 00000000ffffffff",
                  "58 01 00", "78 00", "98 01 00", "b8 00", "59 0000"):
        rejects(h(hexed), "non-shortest")


def test_reject_indefinite_lengths():
    for hexed in ("5f 41 00 ff", "7f 61 61 ff", "9f ff", "bf ff", "ff"):
        rejects(h(hexed), "indefinite")


def test_reject_reserved_additional_info():
    for hexed in ("1c", "1d", "1e", "3c", "5c", "9e", "1f", "3f"):
        try:
            decode(h(hexed))
        except CBORError:
            continue
        raise AssertionError(hexed + " accepted")


def test_reject_floats():
    for hexed in ("f9 0000", "f9 3c00", "fa 47c35000", "fb 3ff199999999999a"):
        rejects(h(hexed), "float")


def test_reject_tags():
    # RFC 8949 Appendix A: bignum 2**64, epoch time, embedded CBOR.
    for hexed in ("c2 49 010000000000000000", "c1 1a 514b67b0", "d8 18 45 6449455446",
                  "c0 60"):
        rejects(h(hexed), "tag")


def test_reject_other_simple_values():
    for hexed in ("f7", "f0", "e0", "f8 20", "f8 ff", "f3"):
        rejects(h(hexed), "simple")


def test_reject_invalid_utf8():
    for hexed in ("61 ff", "61 80", "62 c080", "62 c1bf", "63 eda080", "63 edbfbf",
                  "64 f4908080", "63 e08080", "64 f0808080", "62 c341", "61 c3",
                  "63 e282", "65 f888808080", "61 fe"):
        b = h(hexed)
        b = bytes([0x60 | (len(b) - 1)]) + b[1:]  # keep the length honest
        rejects(b, "UTF-8")


def test_utf8_validator_table():
    ok = [b"", b"abc", b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf",
          b"\xee\x80\x80", b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf",
          "\u00e9t\u00e9 \u6c34 \U0001f600".encode("utf-8")]
    bad = [b"\x80", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x9f\xbf", b"\xed\xa0\x80",
           b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff",
           b"\xc2", b"\xe1\x80", b"\xf1\x80\x80", b"\xc2\x41", b"\xe1\x80\x41",
           b"a\xf1\x80\x80\xc0"]
    for b in ok:
        if not cbor._utf8_ok(memoryview(b), 0, len(b)):
            raise AssertionError("%r judged invalid" % b)
        assert decode(encode(str(b, "utf-8"))) == str(b, "utf-8")
    for b in bad:
        if cbor._utf8_ok(memoryview(b), 0, len(b)):
            raise AssertionError("%r judged valid" % b)


def test_reject_map_key_disorder_and_duplicates():
    rejects(h("a2 02 00 01 00"), "order")
    rejects(h("a2 6162 00 6161 00"), "order")
    rejects(h("a2 6161 00 01 00"), "order")
    rejects(h("a2 01 00 01 00"), "duplicate")
    rejects(h("a3 01 00 02 00 02 00"), "duplicate")


def test_reject_map_key_types():
    for hexed in ("a1 80 00", "a1 a0 00", "a1 f4 00", "a1 f6 00"):
        rejects(h(hexed), "map key")


def test_reject_depth():
    ok = h("81" * (MAX_DEPTH - 1) + "80")
    assert decode(ok) is not None
    rejects(h("81" * MAX_DEPTH + "80"), "deeper")
    rejects(h("a1 01" * MAX_DEPTH + "a0"), "deeper")


def test_reject_item_counts():
    rejects(h("9a 00010001"), "exceeds")
    rejects(h("ba 00010001"), "exceeds")
    rejects(h("9b 0000000100000000"), "exceeds")
    # Counts that cannot fit in what remains are refused before allocating.
    rejects(h("99 ffff 00"), "cannot fit")
    rejects(h("b9 8000 0000"), "cannot fit")
    rejects(h("83 01 02"), "cannot fit")
    rejects(h("a2 01 02 03"), "cannot fit")
    rejects(h("5b 0000000100000000"), "truncated")
    rejects(h("7a ffffffff 61"), "truncated")


def test_error_offsets():
    try:
        decode(h("83 01 02 18 05"))
    except CBORError as e:
        assert "offset 3" in str(e)
    else:
        raise AssertionError("accepted")
    try:
        decode(h("00 82 01 f9 0000"), 1)
    except CBORError as e:
        assert "offset 3" in str(e)
    else:
        raise AssertionError("accepted")


def test_decoded_bytes_do_not_alias_input():
    buf = bytearray(h("42 6162"))
    got = decode(buf)
    buf[1] = 0x7A
    assert got == b"ab"


def test_decode_views_leave_large_byte_strings_in_place():
    buf = cbor.encode([15, b"x" * 2000, b"id"])
    msg = cbor.decode(buf, 0, None, 1024)
    assert type(msg[1]) is memoryview and bytes(msg[1]) == b"x" * 2000
    assert type(msg[2]) is bytes            # small strings are still copies
    assert type(cbor.decode(buf)[1]) is bytes


def test_decode_views_keep_map_keys_as_bytes():
    # Found by fuzzing: a byte-string map key as long as the views threshold came back as a
    # view into a bytearray, which is unhashable (ValueError on CPython, TypeError on
    # MicroPython instead of CBORError; a zero-copy Session let it escape).
    key = b"k" * 1024
    buf = bytearray(cbor.encode([{key: b"v" * 1024, b"a": 1}]))
    got = cbor.decode(buf, 0, None, 1024)
    assert type(list(got[0])[1]) is bytes and got[0][b"a"] == 1
    assert bytes(got[0][key]) == b"v" * 1024      # values may still be views
    assert cbor.encode(got) == bytes(buf)
    short = bytearray(cbor.encode({b"ab": 1}))
    assert cbor.decode(short, 0, None, 1) == {b"ab": 1}
