# Sub-chunk deltas: a changed chunk sent as its difference from the chunk it replaces.
#
# The anchor holds the old chunk (the base).  It sends the base's block signatures; the
# rover finds those blocks in the new chunk with a rolling checksum and answers with copy
# and literal instructions; the anchor rebuilds the chunk and keeps it only if it hashes to
# its id.  The idea is rsync's (a cheap rolling sum finds candidates, a strong hash confirms
# them), sized for a radio: at most MAX_BLOCKS blocks per base, 8 bytes of signature each.
#
# Signatures (docs/protocol.md, "Sub-chunk deltas"): per full block of the base, in order,
#   a (u16 BE) = sum of the block's bytes mod 2**16
#   b (u16 BE) = sum of (blk - k) * byte[k] mod 2**16
#   the first 4 bytes of SHA-256 of the block
# (a base's last, partial block has none: the bytes it held come as literals.)
#
# Instructions: unsigned LEB128 varints.  v even: v >> 1 literal bytes follow (at least 1);
# v odd: copy v >> 1 blocks (at least 1) of the base, the first block's index follows.
#
# MicroPython: the rolling scan and the table fill are @micropython.viper over preallocated
# buffers (the table is 16-bit words lent by the caller: the rover lends its compressor's
# chain table, idle between chunks); nothing here grows with the chunk.  CPython runs the
# same functions as plain Python.
import hashlib
from array import array

from anchor_core.compat import const, micropython, MICROPYTHON

if not MICROPYTHON:
    ptr8 = ptr16 = ptr32 = None  # viper's pointer annotations (CPython: plain Python)

MAX_BLOCKS = const(256)   # signatures of one base: at most 2 KiB, one BASE message
SIG = const(8)            # bytes of signature per block
_STRONG = const(4)        # bytes of SHA-256 per block
MIN_BLOCK = const(64)
MAX_BLOCK = const(4096)
TABLE_WORDS = const(1024)  # the encoder's lookup table: 16-bit words, >= 2 * MAX_BLOCKS
_NONE = const(0xFFFFF)  # st[2]: the rolling sums hold no window (past any chunk position)


@micropython.viper
def _fill(tab: ptr16, mask: int, sigs: ptr8, nb: int):
    i = 0
    while i <= mask:
        tab[i] = 0
        i += 1
    i = 0
    while i < nb:
        o = i * 8
        a = (sigs[o] << 8) | sigs[o + 1]
        b = (sigs[o + 2] << 8) | sigs[o + 3]
        h = (a + b * 31) & mask
        while tab[h] != 0:
            h = (h + 1) & mask
        tab[h] = i + 1
        i += 1


@micropython.viper
def _scan(src: ptr8, pos: int, end: int, blk: int, st: ptr32, sigs: ptr8, tab: ptr16,
          mask: int) -> int:
    # The first window start >= pos whose rolling sums equal some block's (st[3]: that
    # block), or -1.  st[0], st[1] carry the sums of the window at st[2] between calls.
    if pos + blk > end:
        return -1
    a = int(st[0])
    b = int(st[1])
    if int(st[2]) == pos - 1 and pos > 0:
        x = src[pos - 1]
        a = (a - x + src[pos + blk - 1]) & 0xFFFF
        b = (b - blk * x + a) & 0xFFFF
    elif int(st[2]) != pos:
        a = 0
        b = 0
        k = 0
        while k < blk:
            x = src[pos + k]
            a += x
            b += (blk - k) * x
            k += 1
        a &= 0xFFFF
        b &= 0xFFFF
    while True:
        h = (a + b * 31) & mask
        while tab[h] != 0:
            i = tab[h] - 1
            o = i * 8
            if ((sigs[o] << 8) | sigs[o + 1]) == a and ((sigs[o + 2] << 8) | sigs[o + 3]) == b:
                st[0] = a
                st[1] = b
                st[2] = pos
                st[3] = i
                return pos
            h = (h + 1) & mask
        if pos + blk >= end:
            st[2] = _NONE
            return -1
        x = src[pos]
        a = (a - x + src[pos + blk]) & 0xFFFF
        b = (b - blk * x + a) & 0xFFFF
        pos += 1


def _varint(out, o, v):
    """v into out at o as LEB128; the new offset, or -1 if out has no room."""
    lim = len(out)
    while True:
        if o >= lim:
            return -1
        if v < 0x80:
            out[o] = v
            return o + 1
        out[o] = (v & 0x7F) | 0x80
        v >>= 7
        o += 1


class Encoder:
    """The rover's side: instructions that turn the base into src[:n]."""

    def __init__(self, table=None):
        if table is None:
            if MICROPYTHON:
                table = bytearray(2 * TABLE_WORDS)
            else:
                table = array("H", bytes(2 * TABLE_WORDS))
        words = len(table) // 2 if MICROPYTHON else len(table)
        mask = 1
        while mask * 2 <= words and mask * 2 <= TABLE_WORDS:
            mask *= 2
        if mask < 2 * MAX_BLOCKS:
            raise ValueError("delta: table of %d words is too small" % words)
        self.tab = table
        self.mask = mask - 1
        self.st = array("i", (0, 0, 0, 0))   # the scan's state: sums, their window, the block

    def encode(self, src, n, blk, sigs, out):
        """Instructions into out; their length, or -1 if they do not fit out (the chunk
        changed too much for a delta to pay)."""
        nb = len(sigs) // SIG
        if nb > MAX_BLOCKS or nb * SIG != len(sigs) or blk < MIN_BLOCK or blk > MAX_BLOCK:
            raise ValueError("delta: bad signatures")
        mv = memoryview(src)
        st = self.st
        _fill(self.tab, self.mask, sigs, nb)
        st[2] = _NONE
        o = 0
        lit = 0            # start of the bytes not yet covered
        pos = 0
        run_i = 0          # the pending copy: blocks run_i .. run_i + run_n - 1
        run_n = 0
        while True:
            p = _scan(mv, pos, n, blk, st, sigs, self.tab, self.mask)
            if p < 0:
                break
            i = st[3]
            so = i * SIG + 4
            if hashlib.sha256(mv[p:p + blk]).digest()[:_STRONG] != sigs[so:so + _STRONG]:
                pos = p + 1
                continue
            if p > lit or (run_n and i != run_i + run_n):
                if run_n:
                    o = _copy(out, o, run_i, run_n)
                    run_n = 0
                if p > lit:
                    o = _literal(out, o, mv, lit, p)
                if o < 0:
                    return -1
            if run_n:
                run_n += 1
            else:
                run_i = i
                run_n = 1
            pos = lit = p + blk
            st[2] = _NONE
        if run_n:
            o = _copy(out, o, run_i, run_n)
        if o >= 0 and n > lit:
            o = _literal(out, o, mv, lit, n)
        return o


def _copy(out, o, first, count):
    if o < 0:
        return -1
    o = _varint(out, o, count << 1 | 1)
    return _varint(out, o, first) if o >= 0 else -1


def _literal(out, o, mv, start, end):
    if o < 0:
        return -1
    k = end - start
    o = _varint(out, o, k << 1)
    if o < 0 or o + k > len(out):
        return -1
    out[o:o + k] = mv[start:end]
    return o + k


# --- messages (docs/protocol.md, "Sub-chunk deltas") ---------------------------------------
# Installed into messages.py and states.py by install(), as the restore's are: a rover that
# is never offered a base never loads this module.
BASEQ = const(33)     # rover: [chunk id]: the signatures of the base the anchor named for it
BASE = const(34)      # anchor: [chunk id, block size, signatures]; block size 0: no base now
DELTA = const(35)     # rover: [chunk id, size, instructions]
DELTAOK = const(36)   # anchor: [chunk id, bool]: stored; false: send the chunk whole (DATA)
D_AWAIT_BASE = const(16)   # anchor owes BASE for the last BASEQ
D_AWAIT_OK = const(17)     # anchor owes DELTAOK for the last DELTA
MAX_CHUNK = const(65536)


def install():
    from anchor_core import messages as m
    from anchor_core import states as st
    if BASEQ in m.NAMES:
        return
    for t, name in ((BASEQ, "BASEQ"), (BASE, "BASE"), (DELTA, "DELTA"), (DELTAOK, "DELTAOK")):
        m.NAMES[t] = name
    st.name_states(D_AWAIT_BASE, ("D_AWAIT_BASE", "D_AWAIT_OK"))
    tr = st.TRANSITIONS
    tr[(st.READY, st.ROVER, BASEQ)] = D_AWAIT_BASE
    tr[(D_AWAIT_BASE, st.ANCHOR, BASE)] = st.READY
    tr[(st.READY, st.ROVER, DELTA)] = D_AWAIT_OK
    tr[(D_AWAIT_OK, st.ANCHOR, DELTAOK)] = st.READY
    m.extend(BASEQ, DELTAOK, check)


def check(msg):
    """messages.check() for the delta's types; raises ProtocolError."""
    from anchor_core import messages as m
    t = msg[0]
    if len(msg) < (2, 4, 4, 3)[t - BASEQ]:
        m._fail("%s too short" % m.NAMES[t])
    if type(msg[1]) is not bytes or len(msg[1]) != 32:
        m._fail("chunk id must be 32 bytes")
    if t == BASE:
        blk, sigs = msg[2], msg[3]
        if type(blk) is not int or (blk and (blk < MIN_BLOCK or blk > MAX_BLOCK or blk & (blk - 1))):
            m._fail("block size must be 0 or a power of two in [%d, %d]" % (MIN_BLOCK, MAX_BLOCK))
        # a view into a rover's receive buffer (session.py zero_copy), or bytes
        if type(sigs) not in (bytes, memoryview) or len(sigs) % SIG or len(sigs) > MAX_BLOCKS * SIG:
            m._fail("signatures must be bytes, %d per block, at most %d blocks" % (SIG, MAX_BLOCKS))
    elif t == DELTA:
        if type(msg[2]) is not int or msg[2] < 1 or msg[2] > MAX_CHUNK:
            m._fail("delta size must be in [1, %d]" % MAX_CHUNK)
        if type(msg[3]) is not bytes or len(msg[3]) > MAX_CHUNK + 1024:
            m._fail("delta instructions must be bytes of at most %d" % (MAX_CHUNK + 1024), m.E_TOO_LARGE)
    elif t == DELTAOK:
        if type(msg[2]) is not bool:
            m._fail("DELTAOK's verdict must be a bool")
    return msg
