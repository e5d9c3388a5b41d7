"""Cross-checks anchor_core.cbor against cbor2 (CPython only).

cbor2's canonical=True sorts map keys length-first (RFC 7049 section 3.9,
"old canonical"); anchor_core.cbor sorts them bytewise (RFC 8949 section 4.2.1). The
two orders agree whenever all keys of a map share one major type (all
non-negative ints, all negative ints, all text, or all bytes) or all keys
encode to the same number of bytes (e.g. small ints -24..23). The byte-equality
claim below is restricted to such maps; test_known_order_differences pins the
mixed cases where they differ.
"""
import random

import cbor2
import pytest

from anchor_core import cbor
from anchor_core.cbor import CBORError, decode, encode

BOUNDARIES = [0, 1, 23, 24, 25, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1]
INTS = sorted(set(BOUNDARIES + [-1 - b for b in BOUNDARIES]))
TEXTS = ["", "a", "z", "aa", "IETF", "\u00fc", "\u6c34", "\U00010151", "caf\u00e9 \U0001f600",
         "x" * 23, "x" * 24, "\u00e9" * 200, "k" * 300]
BYTES_ = [b"", b"\x00", b"\xff" * 23, b"\xa7" * 24, bytes(range(256)), b"\x5c" * 65536]


def _int(rng):
    if rng.random() < 0.5:
        return rng.choice(INTS)
    bits = rng.choice([5, 8, 16, 32, 64])
    v = rng.getrandbits(bits)
    return v if rng.random() < 0.5 else -1 - v


def _text(rng):
    if rng.random() < 0.5:
        return rng.choice(TEXTS)
    alphabet = "abcXYZ09 \u00e9\u00fc\u03bb\u6c34\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))


def _bytes(rng):
    if rng.random() < 0.3:
        return rng.choice(BYTES_)
    return rng.randbytes(rng.choice([0, 1, 5, 23, 24, 100, 255, 256, 1000]))


def _uint(rng):
    v = _int(rng)
    return v if v >= 0 else -1 - v


def _keys(rng, n):
    # One map's keys, drawn so that both key orders coincide (see module doc).
    kind = rng.choice(["small", "uint", "nint", "text", "bytes"])
    if kind == "small":
        pool = list(range(-24, 24))
        return rng.sample(pool, min(n, len(pool)))
    draw = {"uint": lambda: _uint(rng), "nint": lambda: -1 - _uint(rng),
            "text": lambda: _text(rng), "bytes": lambda: _bytes(rng)[:40]}[kind]
    return list({draw(): None for _ in range(n)})


def _value(rng, depth):
    r = rng.random()
    if depth >= 4 or r < 0.45:
        return rng.choice([_int, _text, _bytes, lambda _: rng.choice([True, False, None])])(rng)
    if r < 0.7:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    return {k: _value(rng, depth + 1) for k in _keys(rng, rng.randint(0, 8))}


def corpus(n=600, seed=8949):
    rng = random.Random(seed)
    out = [*INTS, *TEXTS, *BYTES_, True, False, None, [], {}, list(range(30)),
           {k: k for k in range(-24, 24)}, {t: i for i, t in enumerate(TEXTS)},
           {b: 0 for b in BYTES_[:5]}, {k: None for k in INTS if k >= 0},
           {k: None for k in INTS if k < 0}]
    out += [_value(rng, 0) for _ in range(n)]
    return out


CORPUS = corpus()


def test_corpus_covers_every_head_width():
    heads = set()
    for v in INTS:
        heads.add(encode(v)[0] & 31)
    assert {0, 1, 23, 24, 25, 26, 27} <= heads


@pytest.mark.parametrize("i", range(0, len(CORPUS), 50))
def test_same_bytes_as_cbor2_canonical(i):
    for obj in CORPUS[i:i + 50]:
        assert encode(obj) == cbor2.dumps(obj, canonical=True), obj


def test_decodes_cbor2_canonical():
    for obj in CORPUS:
        assert decode(cbor2.dumps(obj, canonical=True)) == obj


def test_cbor2_decodes_ours():
    for obj in CORPUS:
        assert cbor2.loads(encode(obj)) == obj


# Maps where length-first and bytewise orders disagree: the shorter key has the
# higher major type. (map, ours, cbor2's)
DIFFERENT = [
    ({24: 1, -1: 2}, "a2 1818 01 20 02", "a2 20 02 1818 01"),
    ({1000: 1, "a": 2}, "a2 1903e8 01 6161 02", "a2 6161 02 1903e8 01"),
    ({b"aa": 1, "b": 2}, "a2 426161 01 6162 02", "a2 6162 02 426161 01"),
    ({-1000: 1, "a": 2}, "a2 3903e7 01 6161 02", "a2 6161 02 3903e7 01"),
    ({256: 1, -25: 2}, "a2 190100 01 3818 02", "a2 3818 02 190100 01"),
    ({b"": 1, 1000: 2}, "a2 1903e8 02 40 01", "a2 40 01 1903e8 02"),
]


@pytest.mark.parametrize("obj,ours,theirs", DIFFERENT)
def test_known_order_differences(obj, ours, theirs):
    ours_b = bytes.fromhex(ours.replace(" ", ""))
    theirs_b = bytes.fromhex(theirs.replace(" ", ""))
    assert encode(obj) == ours_b
    assert cbor2.dumps(obj, canonical=True) == theirs_b
    assert cbor2.loads(ours_b) == obj
    with pytest.raises(CBORError, match="order"):
        decode(theirs_b)


def test_utf8_validator_matches_cpython():
    # anchor_core.cbor._utf8_ok is what MicroPython relies on; CPython's strict
    # decoder is the reference.
    rng = random.Random(3629)
    tricky = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2,
              0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
    for _ in range(50000):
        b = bytes(rng.choice(tricky) if rng.random() < 0.8 else rng.randrange(256)
                  for _ in range(rng.randint(1, 6)))
        try:
            b.decode("utf-8")
            want = True
        except UnicodeDecodeError:
            want = False
        assert cbor._utf8_ok(memoryview(b), 0, len(b)) == want, b.hex()
