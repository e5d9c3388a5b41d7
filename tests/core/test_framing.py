# Framing over byte streams. Plain functions: runs under pytest (CPython) and
# under tests/core/mpy_runner.py (MicroPython), so no pytest, no CPython-only code.
import struct
from binascii import crc32

from anchor_core.framing import encode_frame, Deframer, MAX_PAYLOAD, frame_overhead, SYNC

SMALL = 64  # max_payload for most tests: keeps MicroPython's heap use small


def h(s):
    return bytes.fromhex(s.replace(" ", ""))


def drain(d):
    out = []
    while True:
        p = d.next_frame()
        if p is None:
            return out
        out.append(p)


def feed_all(d, data):
    # The documented backpressure loop: push what fits, drain, push the rest.
    out = []
    mv = memoryview(data)
    while len(mv):
        k = d.receive_data(mv)
        mv = mv[k:]
        out.extend(drain(d))
    return out


def accounted(d, fed, payloads):
    # Every byte accepted is in a frame, counted as garbage, or still pending.
    framed = 0
    for p in payloads:
        framed += len(p) + frame_overhead
    return framed + d.garbage_bytes + d.pending == fed


def raw_frame(payload, length=None, check=None, crc=None):
    # Builds a frame with any field forced, to make bogus ones.
    n = len(payload) if length is None else length
    c = (n ^ 0xFFFF) if check is None else check
    r = (crc32(payload) & 0xFFFFFFFF) if crc is None else crc
    return SYNC + struct.pack(">HH", n, c) + payload + struct.pack(">I", r)


def test_layout():
    assert frame_overhead == 10
    assert MAX_PAYLOAD == 36 * 1024
    assert encode_frame(b"") == h("a75c 0000 ffff 00000000")
    assert encode_frame(b"abc") == h("a75c 0003 fffc 616263 352441c2")
    f = encode_frame(b"123456789")
    assert f[-4:] == h("cbf43926")  # the CRC-32 check value
    assert encode_frame(bytearray(b"abc")) == encode_frame(memoryview(b"xabc")[1:])


def test_size_limits():
    f = encode_frame(b"\x55" * MAX_PAYLOAD)
    assert len(f) == MAX_PAYLOAD + frame_overhead
    try:
        encode_frame(b"\x55" * (MAX_PAYLOAD + 1))
    except ValueError:
        pass
    else:
        raise AssertionError("oversize payload encoded")
    d = Deframer()
    assert feed_all(d, f) == [b"\x55" * MAX_PAYLOAD]
    # A well-formed frame one byte over the receiver's limit is refused, and
    # the next frame is still found.
    d = Deframer(SMALL)
    big = encode_frame(b"\x01" * (SMALL + 1), SMALL + 1)
    ok = encode_frame(b"\x01" * SMALL, SMALL)
    assert feed_all(d, big + ok) == [b"\x01" * SMALL]
    assert d.bad_frames >= 1 and d.frames == 1
    try:
        Deframer(0x10000)
    except ValueError:
        pass
    else:
        raise AssertionError("max_payload above u16 accepted")


def test_several_frames_one_push():
    payloads = [b"", b"a", b"\xa7\x5c\xa7", bytes(range(64))]
    stream = b"".join([encode_frame(p) for p in payloads])
    d = Deframer(SMALL)
    assert feed_all(d, stream) == payloads
    assert d.frames == 4 and d.bad_frames == 0 and d.garbage_bytes == 0
    assert d.pending == 0


def test_input_types():
    f = encode_frame(b"xyz")
    for data in (f, bytearray(f), memoryview(f)):
        d = Deframer(SMALL)
        assert d.receive_data(data) == len(f)
        assert d.next_frame() == b"xyz"
        assert d.next_frame() is None


def test_split_at_every_byte_boundary():
    payloads = [b"first", b"", b"\xa7\x5c\x00\x05third"]
    stream = b"".join([encode_frame(p) for p in payloads])
    for i in range(len(stream) + 1):
        d = Deframer(SMALL)
        got = feed_all(d, stream[:i]) + feed_all(d, stream[i:])
        if got != payloads:
            raise AssertionError("split at %d: %r" % (i, got))
        assert d.garbage_bytes == 0 and d.bad_frames == 0


def test_one_byte_at_a_time():
    payloads = [b"one", b"two", b"three"]
    stream = b"\xa7junk\xa7" + b"".join([encode_frame(p) for p in payloads])
    d = Deframer(SMALL)
    got = []
    for i in range(len(stream)):
        assert d.receive_data(stream[i:i + 1]) == 1
        got.extend(drain(d))
    assert got == payloads
    assert d.garbage_bytes == 6


def test_garbage_before_and_between_frames():
    a = encode_frame(b"alpha")
    b = encode_frame(b"beta")
    junk1 = b"\x00\xff\xa7\xa7\x5c\x12\x34garbage\xa7"
    junk2 = b"\x5c\xa7\x5c\x00\x01\x00\x00noise"
    stream = junk1 + a + junk2 + b + b"\xa7"
    d = Deframer(SMALL)
    assert feed_all(d, stream) == [b"alpha", b"beta"]
    assert d.frames == 2
    assert d.pending == 1  # a trailing first SYNC byte is kept
    assert d.garbage_bytes == len(junk1) + len(junk2)
    assert accounted(d, len(stream), [b"alpha", b"beta"])


def test_bit_flips_are_caught():
    good = encode_frame(b"payload")
    nxt = encode_frame(b"next")
    for bit in range(len(good) * 8):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        d = Deframer(SMALL)
        got = feed_all(d, bytes(bad) + nxt)
        if got != [b"next"]:
            raise AssertionError("bit %d: %r" % (bit, got))
        assert accounted(d, len(good) + len(nxt), got)
        assert d.garbage_bytes == len(good)
        if bit >= 16:  # SYNC intact: the candidate is rejected as a bad frame
            assert d.bad_frames >= 1


def test_crc_mismatch_and_bad_header_counters():
    d = Deframer(SMALL)
    assert feed_all(d, raw_frame(b"abc", crc=0)) == []
    assert d.bad_frames == 1
    d = Deframer(SMALL)
    assert feed_all(d, raw_frame(b"abc", check=0x1234) + encode_frame(b"z")) == [b"z"]
    assert d.bad_frames == 1


def test_bogus_header_swallowing_a_real_frame():
    real = encode_frame(b"real frame")
    after = encode_frame(b"after")
    bogus = SYNC + struct.pack(">HH", 40, 40 ^ 0xFFFF)
    # Enough bytes follow for the bogus frame to "complete": its CRC fails and
    # the scan resumes one byte after its SYNC, finding the real frame inside.
    stream = bogus + real + after + b"\x00" * 40
    d = Deframer(SMALL)
    assert feed_all(d, stream) == [b"real frame", b"after"]
    assert d.bad_frames == 1
    assert d.garbage_bytes == len(bogus) + 40
    # The same at end of stream: the bogus frame can never complete.
    d = Deframer(SMALL)
    assert feed_all(d, bogus + real) == []  # waits for the bogus LEN
    d.eof()
    assert drain(d) == [b"real frame"]
    assert d.truncated == 0 and d.bad_frames == 1 and d.pending == 0
    assert accounted(d, len(bogus) + len(real), [b"real frame"])


def test_bogus_length_above_limit_is_skipped():
    bogus = SYNC + struct.pack(">HH", SMALL + 1, (SMALL + 1) ^ 0xFFFF)
    real = encode_frame(b"hidden")
    d = Deframer(SMALL)
    assert feed_all(d, bogus + real) == [b"hidden"]
    assert d.bad_frames == 1


def test_eof_truncated_frame():
    f = encode_frame(b"complete")
    for cut in range(2, len(f)):
        d = Deframer(SMALL)
        assert feed_all(d, f + f[:cut]) == [b"complete"]
        d.eof()
        assert d.next_frame() is None
        assert d.truncated == 1 and d.pending == 0
        assert accounted(d, len(f) + cut, [b"complete"])
    d = Deframer(SMALL)
    assert feed_all(d, f + b"\xa7") == [b"complete"]
    assert d.pending == 1
    d.eof()
    assert drain(d) == []
    assert d.truncated == 0 and d.garbage_bytes == 1


def test_eof_clean_and_receive_after_eof():
    d = Deframer(SMALL)
    assert d.receive_data(b"") == 0
    assert d.at_eof is False
    feed_all(d, encode_frame(b"x"))
    d.eof()
    assert d.at_eof is True
    assert d.next_frame() is None
    assert d.truncated == 0 and d.garbage_bytes == 0
    try:
        d.receive_data(b"more")
    except ValueError:
        pass
    else:
        raise AssertionError("receive_data after eof accepted")


def test_backpressure():
    d = Deframer(16)
    cap = 2 * (16 + frame_overhead)
    payloads = [bytes([i]) * (i % 17) for i in range(40)]
    stream = b"".join([encode_frame(p, 16) for p in payloads])
    buf = d._buf
    got = []
    mv = memoryview(stream)
    partial = 0
    while len(mv):
        k = d.receive_data(mv)
        if k < len(mv):
            partial += 1
        assert d.pending <= cap
        mv = mv[k:]
        got.extend(drain(d))
        # After next_frame() returned None there is room for a whole frame.
        assert cap - d.pending >= 16 + frame_overhead
    assert got == payloads and partial > 0
    assert d._buf is buf and len(buf) == cap
    # Full buffer: nothing more is taken until frames are drained.
    d = Deframer(16)
    assert d.receive_data(stream) == cap
    assert d.receive_data(b"\x00") == 0
    first = d.next_frame()
    assert first == payloads[0]
    assert d.receive_data(stream[cap:cap + 100]) == len(encode_frame(first, 16))


def test_smallest_buffer():
    # buffer_size may be as small as one whole frame; the loop still progresses.
    payloads = [bytes([i]) * (i % 17) for i in range(30)]
    stream = b"\xa7" + b"\xa7\x5c\x00".join([encode_frame(p, 16) for p in payloads])
    d = Deframer(16, 16 + frame_overhead)
    assert len(d._buf) == 26
    assert feed_all(d, stream) == payloads
    assert accounted(d, len(stream), payloads)
    try:
        Deframer(16, 16 + frame_overhead - 1)
    except ValueError:
        pass
    else:
        raise AssertionError("buffer smaller than a frame accepted")


def test_accounting_with_noise():
    payloads = [("p%d" % i).encode() for i in range(20)]
    pieces = []
    for i, p in enumerate(payloads):
        pieces.append(b"\xa7\x5c\x00"[: i % 4] + b"\x13" * (i % 5))
        pieces.append(encode_frame(p))
    stream = b"".join(pieces)
    d = Deframer(SMALL)
    got = []
    for i in range(0, len(stream), 7):
        got.extend(feed_all(d, stream[i:i + 7]))
    assert got == payloads
    assert accounted(d, len(stream), payloads)


def test_a_given_buffer_is_the_one_used():
    # A rover takes its receive buffer at start-up and hands it over (rover/buffers.py).
    buf = bytearray(2 * (SMALL + frame_overhead))
    d = Deframer(SMALL, buf)
    frames = [b"a" * SMALL, b"", b"xyz"]
    assert feed_all(d, b"".join(encode_frame(p) for p in frames)) == frames
    assert bytes(buf[:len(SYNC)]) == SYNC      # the frames went through it
    try:
        Deframer(SMALL, bytearray(SMALL))      # smaller than one frame
        raise AssertionError("a buffer too small for one frame was taken")
    except ValueError:
        pass


def test_a_body_framed_in_pieces_is_the_frame_of_the_whole():
    # frame_open/frame_tail (a chunk compressed as it goes out) and frame_around make the
    # frame encode_frame makes of prefix + body, and the deframer takes it back.
    from anchor_core.framing import frame_around, frame_open, frame_tail
    prefix = b"\x83\x05\x58\x20" + bytes(32)
    body = bytes(range(256)) * 3
    whole = encode_frame(prefix + body)
    head, tail = frame_around(prefix, body)
    assert head + body + tail == whole
    head, crc = frame_open(prefix, len(body))
    mv = memoryview(body)
    for a, b in ((0, 1), (1, 300), (300, 301), (301, 768)):
        crc = crc32(mv[a:b], crc)
    assert head + body + frame_tail(crc) == whole
    d = Deframer(1024)
    assert feed_all(d, whole) == [prefix + body]
    try:
        frame_open(prefix, MAX_PAYLOAD)
    except ValueError:
        pass
    else:
        raise AssertionError("a frame over the limit was opened")
