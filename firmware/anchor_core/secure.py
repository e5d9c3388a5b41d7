# The secure channel under every session: mutual authentication with the per-rover secret
# from pairing, fresh keys per session, and every record encrypted (AES-128-CTR) and
# authenticated (HMAC-SHA-256, 16 bytes) with an implicit sequence number, so a replayed,
# reordered, dropped or altered record ends the session. Sans-I/O: bytes in, bytes out.
# The handshake that proves the pairing and derives the keys: anchor_core/handshake.py.
# Construction and threat model: docs/security.md.
#
# Only what MicroPython's unix port has: hashlib.sha256 and cryptolib AES in ECB mode. CTR
# is built from ECB (the keystream of record `seq` is AES(k, seq || block index)); on
# CPython the `cryptography` package's CTR gives the same bytes (its counter is the same
# 128-bit block, incremented from seq || 0).
import struct

from anchor_core.compat import const, MICROPYTHON
from anchor_core.hmac256 import hmac_sha256  # noqa: F401  (part of this module's interface)

MAGIC = b"ANC1"
NONCE = const(16)
PROOF = const(16)
TAG = const(16)
HEADER = const(2)              # record length, big-endian: ciphertext bytes
MAX_RECORD = const(4096)       # plaintext bytes per record
OVERHEAD = const(18)           # per record: length + tag
KEY_BYTES = const(32)

ST_OK = const(0)
ST_NOT_PAIRED = const(1)


class SecureError(Exception):
    pass


# --- primitives ----------------------------------------------------------------------

def equal(a, b):
    """Constant-time comparison of two byte strings of equal length."""
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


if MICROPYTHON:
    import cryptolib
    import micropython

    @micropython.viper
    def _xor(dst: ptr8, src: ptr8, n: int):
        i = 0
        while i < n:
            dst[i] = dst[i] ^ src[i]
            i += 1

    @micropython.viper
    def _counters(buf: ptr8, seq_hi: int, seq_lo: int, first: int, blocks: int):
        # block i = seq (8 bytes) || first + i (8 bytes), big-endian
        i = 0
        while i < blocks:
            o = i * 16
            c = first + i
            buf[o] = (seq_hi >> 24) & 0xFF
            buf[o + 1] = (seq_hi >> 16) & 0xFF
            buf[o + 2] = (seq_hi >> 8) & 0xFF
            buf[o + 3] = seq_hi & 0xFF
            buf[o + 4] = (seq_lo >> 24) & 0xFF
            buf[o + 5] = (seq_lo >> 16) & 0xFF
            buf[o + 6] = (seq_lo >> 8) & 0xFF
            buf[o + 7] = seq_lo & 0xFF
            j = 8
            while j < 12:
                buf[o + j] = 0
                j += 1
            buf[o + 12] = (c >> 24) & 0xFF
            buf[o + 13] = (c >> 16) & 0xFF
            buf[o + 14] = (c >> 8) & 0xFF
            buf[o + 15] = c & 0xFF
            i += 1

    _KS = const(256)     # keystream made this many bytes at a time: the heap is the limit

    class _Ctr:
        def __init__(self, key):
            self.aes = cryptolib.aes(key, 1)           # ECB
            self.ks = bytearray(_KS)

        def apply(self, seq, mv, n):
            """XOR the keystream of record `seq` into mv[:n], in place."""
            ks = self.ks
            hi = (seq >> 32) & 0xFFFFFFFF
            lo = seq & 0xFFFFFFFF
            off = 0
            while off < n:
                k = min(_KS, n - off)
                blocks = (k + 15) >> 4
                _counters(ks, hi, lo, off >> 4, blocks)
                self.aes.encrypt(ks, ks)
                _xor(mv[off:off + k], ks, k)
                off += k
else:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    class _Ctr:
        def __init__(self, key):
            self.key = bytes(key)

        def apply(self, seq, mv, n):
            enc = Cipher(algorithms.AES(self.key), modes.CTR(struct.pack(">QQ", seq, 0))).encryptor()
            mv[:n] = enc.update(bytes(mv[:n]))


# --- keys and proofs -------------------------------------------------------------------

def proof(key, who, device, nr, na):
    return hmac_sha256(key, who, b"\0", device, b"\0", nr, na)[:PROOF]


def session_keys(key, nr, na):
    """(rover->anchor enc, mac, anchor->rover enc, mac): fresh for every pair of nonces."""
    out = []
    for label in (b"r2a enc", b"r2a mac", b"a2r enc", b"a2r mac"):
        k = hmac_sha256(key, label, nr, na)
        out.append(k[:16] if label.endswith(b"enc") else k)
    return out


def code_to_key(code, device):
    """The pairing secret from the code a person types: letters and digits, any case,
    dashes and spaces ignored."""
    clean = "".join(c for c in code.upper() if c.isalpha() or c.isdigit())
    if len(clean) < 20:
        raise SecureError("pairing code too short")
    return hmac_sha256(b"anchor pairing v1", device.encode(), b"\0", clean.encode())


# --- records -----------------------------------------------------------------------------

class _Records:
    """What both directions hold: the keys, the record counter and one record buffer."""

    def __init__(self, enc_key, mac_key, max_record, buf=None):
        # buf: the caller's buffer of HEADER + max_record + TAG bytes, taken while its heap
        # still had a block that size (the rover takes it at start-up); another size is
        # not used
        self.ctr = _Ctr(enc_key)
        self.mac_key = mac_key
        self.seq = 0
        self.max = max_record
        self.buf = buf if buf is not None and len(buf) == HEADER + max_record + TAG else bytearray(
            HEADER + max_record + TAG)
        self.mv = memoryview(self.buf)

    def _tag(self, n):
        return hmac_sha256(self.mac_key, struct.pack(">Q", self.seq), self.mv[:HEADER + n])[:TAG]


class Sealer(_Records):
    """Seals plaintext into records: LEN | AES-CTR(plaintext) | HMAC(seq, LEN, ct)[:16].

    Plaintext may be gathered in place first (room/add, then flush), so a message written
    in pieces (a chunk's header, body and CRC) costs one record, not three."""

    def __init__(self, enc_key, mac_key, max_record=MAX_RECORD, buf=None):
        _Records.__init__(self, enc_key, mac_key, max_record, buf)
        self.pending = 0

    def room(self):
        """Where the next plaintext bytes go (empty when a record is full: flush)."""
        return self.mv[HEADER + self.pending:HEADER + self.max]

    def add(self, k):
        self.pending += k

    def flush(self):
        """The record of what was gathered (a view valid until the next call), or None."""
        n = self.pending
        if not n:
            return None
        self.pending = 0
        struct.pack_into(">H", self.buf, 0, n)
        self.ctr.apply(self.seq, self.mv[HEADER:HEADER + n], n)
        self.mv[HEADER + n:HEADER + n + TAG] = self._tag(n)
        self.seq += 1
        return self.mv[:HEADER + n + TAG]

    def seal(self, data):
        """One record of `data` (at most max_record bytes; nothing may be gathered)."""
        n = len(data)
        if n > self.max or self.pending:
            raise SecureError("record too large")
        if n == 0:
            struct.pack_into(">H", self.buf, 0, 0)
            self.mv[HEADER:HEADER + TAG] = self._tag(0)
            self.seq += 1
            return self.mv[:HEADER + TAG]
        self.mv[HEADER:HEADER + n] = data
        self.pending = n
        return self.flush()


class Opener(_Records):
    """Takes bytes from the link, gives back the plaintext of each whole, authentic record."""

    def __init__(self, enc_key, mac_key, max_record=MAX_RECORD, buf=None):
        _Records.__init__(self, enc_key, mac_key, max_record, buf)
        self.have = 0

    def feed(self, data):
        """Plaintext of every record completed by `data` (copies; for the anchor)."""
        out = []
        mv = memoryview(data)
        while len(mv):
            room = self.room()
            k = min(len(room), len(mv))
            room[:k] = mv[:k]
            mv = mv[k:]
            p = self.filled(k)
            if p is not None:
                out.append(bytes(p))
        return out

    def room(self):
        """A view to read link bytes into (at most up to the end of the current record)."""
        if self.have < HEADER:
            return self.mv[self.have:HEADER]
        n = struct.unpack_from(">H", self.buf, 0)[0]
        return self.mv[self.have:HEADER + n + TAG]

    def filled(self, k):
        """k bytes were read into room(); returns the plaintext view of a completed record
        (valid until the next call), or None. Raises SecureError on a bad record."""
        self.have += k
        if self.have < HEADER:
            return None
        n = struct.unpack_from(">H", self.buf, 0)[0]
        if n > self.max:
            raise SecureError("record of %d bytes: not from our peer" % n)
        if self.have < HEADER + n + TAG:
            return None
        if not equal(self._tag(n), self.mv[HEADER + n:HEADER + n + TAG]):
            raise SecureError("record %d failed authentication (tampered, replayed or out of order)" % self.seq)
        body = self.mv[HEADER:HEADER + n]
        self.ctr.apply(self.seq, body, n)
        self.seq += 1
        self.have = 0
        return body
