# Deterministic CBOR, the subset of RFC 8949 that Anchor messages use.
#
# Runs unchanged on CPython and MicroPython. Both directions agree on one
# canonical form, so a message has exactly one valid encoding and the decoder
# accepts nothing else:
#   * ints in [-2**64, 2**64-1] (major 0/1), byte strings (2), UTF-8 text (3),
#     arrays (4), maps (5), false/true/null; no floats, tags, other simple values;
#   * every head (value or length) in its shortest form, definite lengths only;
#   * map keys are ints, text or byte strings, sorted by the bytewise order of
#     their encodings with no duplicates (RFC 8949 section 4.2.1);
#   * at most MAX_DEPTH nested containers and MAX_ITEMS entries per container.
# The decoder also refuses counts that the remaining input cannot hold, so a
# hostile length cannot make it allocate more than the input justifies.
#
# API: encode(obj) -> bytes, encode_into(obj, buf, pos) -> end,
#      decode(buf, start=0, end=None) -> obj, CBORError.

import struct

from anchor_core.compat import const, MICROPYTHON

MAX_DEPTH = const(16)
MAX_ITEMS = const(65536)

_U64_MAX = 0xFFFFFFFFFFFFFFFF  # a big int on MicroPython, so not const()
_U32_LIMIT = 0x100000000


class CBORError(ValueError):
    pass


# ---------------------------------------------------------------- encoding

def encode(obj):
    out = bytearray()
    _enc(obj, out, 0)
    return bytes(out)


class _Fixed:
    # Writes into a caller's preallocated buffer: on a fragmented 256 KB heap a message
    # must not need a fresh contiguous block (the encoder only uses append and +=).
    def __init__(self, buf, pos):
        self.buf = buf
        self.pos = pos
        self.cap = len(buf)

    def append(self, b):
        if self.pos >= self.cap:
            raise CBORError("message does not fit in %d bytes" % self.cap)
        self.buf[self.pos] = b
        self.pos += 1

    def __iadd__(self, b):
        n = len(b)
        if self.pos + n > self.cap:
            raise CBORError("message does not fit in %d bytes" % self.cap)
        self.buf[self.pos:self.pos + n] = b
        self.pos += n
        return self


def encode_into(obj, buf, pos=0):
    """Encode obj into bytearray buf at pos; returns the end position."""
    w = _Fixed(buf, pos)
    _enc(obj, w, 0)
    return w.pos


def _head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out += struct.pack(">BH", mt | 25, n)
    elif n < _U32_LIMIT:
        out += struct.pack(">BI", mt | 26, n)
    else:
        out += struct.pack(">BQ", mt | 27, n)


def _enc_int(obj, out):
    if obj >= 0:
        if obj > _U64_MAX:
            raise CBORError("int too large for CBOR: %d" % obj)
        _head(out, 0, obj)
    else:
        n = -1 - obj
        if n > _U64_MAX:
            raise CBORError("int too small for CBOR: %d" % obj)
        _head(out, 1, n)


def _key_bytes(k):
    # Map keys are restricted to types whose encodings are distinct whenever
    # the Python values are distinct (bool is excluded: True == 1).
    kb = bytearray()
    if k is True or k is False:
        raise CBORError("map key must be int, text or bytes, not bool")
    if isinstance(k, int):
        _enc_int(k, kb)
    elif isinstance(k, str):
        _enc_text(k, kb)
    elif isinstance(k, bytes):
        _head(kb, 2, len(k))
        kb += k
    else:
        raise CBORError("map key must be int, text or bytes, not %s" % type(k).__name__)
    return bytes(kb)


def _first(pair):
    return pair[0]


def _enc_text(obj, out):
    try:
        b = obj.encode("utf-8")
    except UnicodeError:
        raise CBORError("text is not encodable as UTF-8")
    _head(out, 3, len(b))
    out += b


def _enc(obj, out, depth):
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        _enc_int(obj, out)
    elif isinstance(obj, (bytes, bytearray)):
        _head(out, 2, len(obj))
        out += obj
    elif isinstance(obj, memoryview):
        b = bytes(obj)  # len() of a memoryview counts items, not bytes
        _head(out, 2, len(b))
        out += b
    elif isinstance(obj, str):
        _enc_text(obj, out)
    elif isinstance(obj, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise CBORError("nesting deeper than %d" % MAX_DEPTH)
        if len(obj) > MAX_ITEMS:
            raise CBORError("array of %d items exceeds %d" % (len(obj), MAX_ITEMS))
        _head(out, 4, len(obj))
        for item in obj:
            _enc(item, out, depth + 1)
    elif isinstance(obj, dict):
        if depth >= MAX_DEPTH:
            raise CBORError("nesting deeper than %d" % MAX_DEPTH)
        if len(obj) > MAX_ITEMS:
            raise CBORError("map of %d items exceeds %d" % (len(obj), MAX_ITEMS))
        pairs = [(_key_bytes(k), v) for k, v in obj.items()]
        pairs.sort(key=_first)
        _head(out, 5, len(pairs))
        prev = None
        for kb, v in pairs:
            if kb == prev:
                raise CBORError("duplicate map key")
            prev = kb
            out += kb
            _enc(v, out, depth + 1)
    else:
        raise CBORError("cannot encode %s" % type(obj).__name__)


# ---------------------------------------------------------------- decoding

def decode(buf, start=0, end=None, views=0):
    """One CBOR item from buf[start:end]. views > 0: byte strings of at least that many
    bytes come back as memoryviews into buf, not copies (a rover's heap in pieces may hold
    no free block of 4 KiB); they are valid only as long as buf's contents are."""
    mv = memoryview(buf)
    size = len(mv)
    if end is None:
        end = size
    if start < 0 or end > size or start > end:
        raise CBORError("bad range [%d:%d] for %d bytes" % (start, end, size))
    obj, pos = _item(mv, start, end, 0, views)
    if pos != end:
        raise CBORError("%d trailing bytes at offset %d" % (end - pos, pos))
    return obj


def _arg(mv, pos, end):
    # Reads the head at pos (known to exist). Returns (argument, next offset).
    ai = mv[pos] & 31
    p = pos + 1
    if ai < 24:
        return ai, p
    if ai == 24:
        if p + 1 > end:
            raise CBORError("truncated head at offset %d" % pos)
        v = mv[p]
        if v < 24:
            raise CBORError("non-shortest head at offset %d" % pos)
        return v, p + 1
    if ai == 25:
        if p + 2 > end:
            raise CBORError("truncated head at offset %d" % pos)
        v = (mv[p] << 8) | mv[p + 1]
        if v < 0x100:
            raise CBORError("non-shortest head at offset %d" % pos)
        return v, p + 2
    if ai == 26:
        if p + 4 > end:
            raise CBORError("truncated head at offset %d" % pos)
        v = struct.unpack_from(">I", mv, p)[0]
        if v < 0x10000:
            raise CBORError("non-shortest head at offset %d" % pos)
        return v, p + 4
    if ai == 27:
        if p + 8 > end:
            raise CBORError("truncated head at offset %d" % pos)
        v = struct.unpack_from(">Q", mv, p)[0]
        if v < _U32_LIMIT:
            raise CBORError("non-shortest head at offset %d" % pos)
        return v, p + 8
    if ai == 31:
        raise CBORError("indefinite length at offset %d" % pos)
    raise CBORError("reserved additional info %d at offset %d" % (ai, pos))


def _item(mv, pos, end, depth, views=0):
    if pos >= end:
        raise CBORError("truncated input at offset %d" % pos)
    ib = mv[pos]
    major = ib >> 5
    if major == 7:
        if ib == 0xF4:
            return False, pos + 1
        if ib == 0xF5:
            return True, pos + 1
        if ib == 0xF6:
            return None, pos + 1
        ai = ib & 31
        if 25 <= ai <= 27:
            raise CBORError("float at offset %d" % pos)
        if ai == 31:
            raise CBORError("unexpected break (indefinite length) at offset %d" % pos)
        raise CBORError("unsupported simple value at offset %d" % pos)
    if major == 6:
        raise CBORError("tag at offset %d" % pos)
    n, p = _arg(mv, pos, end)
    if major == 0:
        return n, p
    if major == 1:
        return -1 - n, p
    if major <= 3:
        if n > end - p:
            raise CBORError("truncated string of %d bytes at offset %d" % (n, pos))
        q = p + n
        if major == 2:
            if views and n >= views:
                return mv[p:q], q
            return bytes(mv[p:q]), q
        return _text(mv, p, q), q
    # arrays and maps
    if depth >= MAX_DEPTH:
        raise CBORError("nesting deeper than %d at offset %d" % (MAX_DEPTH, pos))
    if n > MAX_ITEMS:
        raise CBORError("container of %d items exceeds %d at offset %d" % (n, MAX_ITEMS, pos))
    if major == 4:
        if n > end - p:
            raise CBORError("array of %d items cannot fit in remaining input at offset %d" % (n, pos))
        items = [None] * n
        for i in range(n):
            items[i], p = _item(mv, p, end, depth + 1, views)
        return items, p
    if 2 * n > end - p:
        raise CBORError("map of %d pairs cannot fit in remaining input at offset %d" % (n, pos))
    d = {}
    prev = None
    for i in range(n):
        ks = p
        if ks >= end:
            raise CBORError("truncated input at offset %d" % ks)
        if (mv[ks] >> 5) > 3:
            raise CBORError("map key must be int, text or bytes at offset %d" % ks)
        k, p = _item(mv, ks, end, depth + 1)  # a key is a copy: a view is not hashable
        kb = bytes(mv[ks:p])
        if prev is not None and kb <= prev:
            if kb == prev:
                raise CBORError("duplicate map key at offset %d" % ks)
            raise CBORError("map keys out of order at offset %d" % ks)
        prev = kb
        d[k], p = _item(mv, p, end, depth + 1, views)
    return d, p


def _text(mv, p, q):
    try:
        s = str(mv[p:q], "utf-8")
    except UnicodeError:
        raise CBORError("invalid UTF-8 in text at offset %d" % p)
    # CPython's decoder is strict. MicroPython's only checks the byte
    # structure (it lets overlong forms, surrogates and code points above
    # U+10FFFF through), so non-ASCII text gets a full check there. The
    # ASCII shortcut relies on that structural check, which builds get from
    # MICROPY_PY_BUILTINS_STR_UNICODE_CHECK (tests/core/test_cbor.py would
    # fail on a build without it).
    if MICROPYTHON and len(s) != q - p and not _utf8_ok(mv, p, q):
        raise CBORError("invalid UTF-8 in text at offset %d" % p)
    return s


def _utf8_ok(mv, p, q):
    # Well-formed UTF-8 per RFC 3629 (Unicode table 3-7): no overlong forms,
    # no surrogates, nothing above U+10FFFF.
    i = p
    while i < q:
        c = mv[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            n = 1
        elif c == 0xE0:
            n = 2
            lo = 0xA0
        elif c == 0xED:
            n = 2
            hi = 0x9F
        elif 0xE1 <= c <= 0xEF:
            n = 2
        elif c == 0xF0:
            n = 3
            lo = 0x90
        elif c == 0xF4:
            n = 3
            hi = 0x8F
        elif 0xF1 <= c <= 0xF3:
            n = 3
        else:
            return False
        if i + n >= q:
            return False
        c = mv[i + 1]
        if c < lo or c > hi:
            return False
        j = i + 2
        i += n + 1
        while j < i:
            if mv[j] & 0xC0 != 0x80:
                return False
            j += 1
    return True
