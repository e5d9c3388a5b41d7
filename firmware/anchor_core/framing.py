# Frames over byte-stream links (TCP, UART). Sans-I/O: bytes in, payloads out.
#
# One frame on the wire (all integers big-endian):
#
#   offset  size  field
#   0       2     SYNC   0xA7 0x5C
#   2       2     LEN    payload length, 0..max_payload
#   4       2     CHK    LEN ^ 0xFFFF (header check)
#   6       LEN   payload
#   6+LEN   4     CRC    binascii.crc32(payload) (zlib/IEEE CRC-32), unsigned
#
# The Deframer resynchronises after line noise: it skips bytes up to the next
# SYNC; a candidate whose CHK fails, whose LEN exceeds max_payload or whose CRC
# does not match costs only its first SYNC byte, and the scan restarts at the
# next byte, so a real frame hidden inside a bogus "payload" is still found.
#
# Memory: one bytearray, by default 2 * (max_payload + 10) bytes (about 72 KiB;
# a rover short of heap may pass buffer_size down to max_payload + 10),
# allocated once and compacted in place. See Deframer.receive_data for the
# backpressure contract.

import struct
from binascii import crc32

from anchor_core.compat import const

SYNC = b"\xa7\x5c"
MAX_PAYLOAD = const(36 * 1024)
frame_overhead = const(10)

_SYNC0 = const(0xA7)
_HDR = const(6)


def encode_frame(payload, max_payload=MAX_PAYLOAD):
    """Returns SYNC | LEN | LEN^0xFFFF | payload | CRC-32 as bytes."""
    if isinstance(payload, memoryview):
        payload = bytes(payload)
    n = len(payload)
    if n > max_payload or n > 0xFFFF:
        raise ValueError("payload of %d bytes exceeds %d" % (n, max_payload))
    return b"".join((
        struct.pack(">BBHH", 0xA7, 0x5C, n, n ^ 0xFFFF),
        payload,
        struct.pack(">I", crc32(payload) & 0xFFFFFFFF),
    ))


def frame_in_place(buf, n):
    """Frame a payload already encoded at buf[6:6+n]; returns the frame's length.

    buf is a preallocated bytearray; nothing is allocated beyond small ints.
    """
    if n > 0xFFFF or n + 10 > len(buf):
        raise ValueError("payload of %d bytes does not fit the frame buffer" % n)
    struct.pack_into(">BBHH", buf, 0, 0xA7, 0x5C, n, n ^ 0xFFFF)
    struct.pack_into(">I", buf, 6 + n, crc32(memoryview(buf)[6:6 + n]) & 0xFFFFFFFF)
    return n + 10


def frame_around(prefix, body, max_payload=MAX_PAYLOAD):
    """(head, tail) such that head + body + tail is the frame of payload prefix + body.

    Lets a sender put a large body (a chunk) on the link straight from its own buffer,
    with no copy: on a 256 KB heap, two extra 32 KiB copies per chunk do not fit.
    """
    head, crc = frame_open(prefix, len(body), max_payload)
    return head, frame_tail(crc32(body, crc))


def frame_open(prefix, n, max_payload=MAX_PAYLOAD):
    """(head, crc) for a frame of payload prefix + a body of n bytes that the sender writes
    in pieces after head, each passed through crc = crc32(piece, crc); frame_tail(crc) ends
    it.  A body made as it goes out (a chunk compressed through a small buffer) never has to
    be whole in memory."""
    n += len(prefix)
    if n > max_payload or n > 0xFFFF:
        raise ValueError("payload of %d bytes exceeds %d" % (n, max_payload))
    return (struct.pack(">BBHH", 0xA7, 0x5C, n, n ^ 0xFFFF) + bytes(prefix), crc32(prefix))


def frame_tail(crc):
    return struct.pack(">I", crc & 0xFFFFFFFF)


class Deframer:
    """Turns a byte stream into frame payloads.

    Counters (every byte pushed ends up in exactly one place):
      frames        payloads returned by next_frame()
      bad_frames    candidates rejected: header check, LEN too large, CRC
                    mismatch, or (after eof) cut short but not the last one
      pending       bytes buffered, not yet returned or dropped
      garbage_bytes bytes dropped as not belonging to a good frame, including
                    the bytes of bad and truncated frames
      truncated     frames cut off by eof() (0 or 1 per stream)
    so  sum(len(payload) + 10) + garbage_bytes + pending == bytes accepted.
    """

    def __init__(self, max_payload=MAX_PAYLOAD, buffer_size=None, views=False):
        # views: next_frame() returns a memoryview into the buffer (valid until the next
        # receive_data) instead of a copy, for a heap that cannot spare a block per frame.
        # buffer_size: a size, or a bytearray to use (a rover takes its buffers at start-up,
        # while its heap still has blocks that size; one deframer at a time uses it).
        self.views = views
        if max_payload < 0 or max_payload > 0xFFFF:
            raise ValueError("max_payload must be in 0..65535")
        frame_max = max_payload + frame_overhead
        buf = None
        if type(buffer_size) is bytearray:
            buf = buffer_size
            buffer_size = len(buf)
        if buffer_size is None:
            buffer_size = 2 * frame_max
        elif buffer_size < frame_max:
            raise ValueError("buffer_size must hold one whole frame (%d bytes)" % frame_max)
        self.max_payload = max_payload
        self._cap = buffer_size
        self._buf = buf if buf is not None else bytearray(self._cap)
        self._mv = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._eof = False
        self._cut = -1  # EOF: offset of an incomplete candidate not yet judged
        self.frames = 0
        self.bad_frames = 0
        self.garbage_bytes = 0
        self.truncated = 0

    @property
    def pending(self):
        """Bytes buffered and not yet returned or discarded."""
        return self._end - self._start

    @property
    def at_eof(self):
        return self._eof

    def receive_data(self, data):
        """Buffers as much of data as fits; returns how many bytes it took.

        Backpressure: if the buffer is full this takes fewer than len(data)
        bytes (possibly 0). The caller then drains next_frame() until it
        returns None and pushes the rest. Once next_frame() has returned None
        at most max_payload + 9 bytes are pending, so buffer_size minus that
        fit (max_payload + 11 with the default size, at least 1 with the
        smallest): the loop always progresses.
        An empty data is a no-op (EOF is signalled only by eof()).
        """
        if self._eof:
            raise ValueError("receive_data after eof")
        n = len(data)
        if n == 0:
            return 0
        end = self._end
        if self._cap - end < n and self._start > 0:
            # Compact: slice assignment on a memoryview is a memmove, no copy.
            keep = end - self._start
            self._mv[0:keep] = self._mv[self._start:end]
            self._start = 0
            end = keep
        k = self._cap - end
        if k > n:
            k = n
        if k:
            self._mv[end:end + k] = memoryview(data)[:k]
            self._end = end + k
        return k

    def eof(self):
        """Marks the end of the stream; a partial frame left over counts as truncated."""
        self._eof = True

    def next_frame(self):
        """Returns the next payload as bytes, or None if more data is needed
        (after eof(): None means the stream is exhausted)."""
        buf = self._buf
        mv = self._mv
        eof = self._eof
        while True:
            s = self._start
            e = self._end
            i = buf.find(SYNC, s, e)
            if i < 0:
                # Keep a trailing first SYNC byte: its partner may be in flight.
                if e > s and not eof and buf[e - 1] == _SYNC0:
                    i = e - 1
                else:
                    i = e
            if i > s:
                self.garbage_bytes += i - s
                self._start = s = i
            avail = e - s
            if avail < _HDR:
                if eof and avail:
                    self._drop_incomplete(s)
                    continue
                if eof:
                    self._finish()
                return None
            n, chk = struct.unpack_from(">HH", buf, s + 2)
            if n ^ chk != 0xFFFF or n > self.max_payload:
                self._drop_bad(s)
                continue
            total = n + frame_overhead
            if avail < total:
                if eof:
                    self._drop_incomplete(s)
                    continue
                return None
            p = s + _HDR
            crc = struct.unpack_from(">I", buf, p + n)[0]
            if crc32(mv[p:p + n]) & 0xFFFFFFFF != crc:
                self._drop_bad(s)
                continue
            self._start = s + total
            self.frames += 1
            if self._cut >= 0:
                # A candidate cut off by EOF was followed by a real frame: it
                # was a bogus header, not a truncated frame.
                self._cut = -1
                self.bad_frames += 1
            if self.views:
                return mv[p:p + n]
            return bytes(mv[p:p + n])

    def _drop_bad(self, s):
        self.bad_frames += 1
        self.garbage_bytes += 1
        self._start = s + 1

    def _drop_incomplete(self, s):
        # Only at EOF: the candidate at s can never complete. Rescan from the
        # next byte in case it hid a real frame; decide later what it was.
        if self._cut < 0:
            self._cut = s
        else:
            self.bad_frames += 1  # nested inside the first cut-off candidate
        self.garbage_bytes += 1
        self._start = s + 1

    def _finish(self):
        # EOF and nothing left to scan: an unjudged candidate was truncated.
        self.garbage_bytes += self._end - self._start
        self._start = self._end
        if self._cut >= 0:
            self._cut = -1
            self.truncated += 1
