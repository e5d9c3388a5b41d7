# The rover's two large buffers, taken once at start-up, before compiling the rest of the
# firmware leaves the heap in pieces (a 32 KiB block is the first thing that stops fitting).
CHUNK_SIZE = 32768   # anchor_core.chunker.MAX_SIZE: file reads while hashing, one chunk to upload
TX_SIZE = 8192       # every message the rover sends is encoded here
# The compressor's staging buffer: a compressed chunk goes onto the link in pieces of this
# size as the encoder's second pass writes them (its length is known after the first pass),
# so no buffer holds a whole compressed chunk. It was 16 KiB (12 KiB with progress shown or
# over TLS), which sent raw the chunks that did not shrink below it; the 14 KiB it spares is
# what buys the send window over MQTT (MQTT_RING; docs/decisions.md).
STREAM_OUT = 2048
# A MicroPython rover's send window over an MQTT broker: the channel's tx ring holds what is
# in flight until the anchor acknowledges it. Over cellular (100 kB/s, 50 ms each way,
# tools/bench-goodput) 2 KiB moved 17.7% of the link, 8 KiB 70.6%, 12 KiB 84.4%, 16 KiB
# 85.2%. Taken at start-up with the other buffers, while the heap is whole; other links keep
# the channel's 2 KiB.
MQTT_RING = 12288
# ...taken later, when the link opens (a board's main.py cannot know its link before it
# reads rover.json), only if this much heap stays free besides: a board running frozen
# firmware has ~55 KB more than the unix port's 256K with .mpy files (docs/rover.md), where
# a paired MQTT backup keeps ~18 KB free without the ring at its peak.
RING_RESERVE = 49152


# A session's receive buffer (anchor_core/framing.py Deframer: one frame and its overhead)
# and the link read buffer, taken here for the same reason: allocated when the session
# starts, after the link (and TLS) had broken the heap up, they were what paired backups
# ran out of.
from anchor_core.compat import MICROPYTHON
# The rover receives small messages and BODY of <= 4096 bytes; a CPython rover, whose heap
# is not the limit, takes whole BODYs (16 KiB, anchor_core/messages.py CAP_BODY).
RX_PAYLOAD = 4608 if MICROPYTHON else 16384 + 512
# A backup receives small messages only (WELCOME, VERDICT and NEED of its batches of 16
# entries and 64 ids, COMMITTED; an ERROR's 512 characters are at most 2,048 bytes): its
# receive buffer is half a relay's.
RX_SMALL = 2304
RX_OVERHEAD = 16     # RX_* + this: anchor_core/framing.py frame_overhead and some slack
READ_SIZE = 1024 if MICROPYTHON else 65536     # bytes read from the link at a time

# A paired rover's secure-channel record buffers, for the same reason: records it makes and
# records it takes (the anchor seals no more per record), plus anchor_core/secure.py's
# header and tag (secure._Records takes a fresh buffer if these ever disagree).
SEAL_RECORD = 2048
OPEN_RECORD = 1024
RECORD_OVERHEAD = 2 + 16

chunk = None
tx = None
records = (None, None)   # (seal, open) buffers for one secure link at a time, or Nones: securelink takes its own
rx = None            # bytearray(RX_* + RX_OVERHEAD), for a conversation (one at a time)
rread = None         # bytearray(READ_SIZE)
compressor = None    # anchor_core.zcompress.Compressor where the runtime has no zlib (~9 KB:
                     # its staging buffer, 4 KiB of hash-chain links, ~3 KB of counts and code tables)
delta = None         # rover.deltasend (and anchor_core.delta), loaded by start() for a backup with a parent
ring = None          # bytearray(MQTT_RING) for the MQTT channel's send window; 0: none (the
                     # channel's 2 KiB); None: not decided (a board's link opens take it)
# A restore (rover/restore.py) compresses nothing and inflates chunks as they arrive: its
# reads, copies and inflated pieces go through this much, and it takes no compressor.
RESTORE_CHUNK = 8192
# ...and holds this block from start-up for the inflater's window (8 KiB, rover/restore.py
# WBITS) and state, freed just before the inflater takes it: after the link is up the heap
# has tens of KB free in pieces of a few KB (measured: 70 KB free, none over 3.5 KB).
INFLATE_ROOM = 10240
inflate_room = None


def tty():
    """MicroPython: whether stderr is a terminal. It has no isatty: a character device that is
    not /dev/null is one; where /proc cannot tell (a board), it is not."""
    import os
    try:
        st = os.stat("/proc/self/fd/2")
        return st[0] & 0o170000 == 0o020000 and st[1:3] != os.stat("/dev/null")[1:3]
    except OSError:
        return False


def allocate(restore=False, rx_payload=0, paired=False, mqtt=0):
    """rx_payload: the largest message the rover's conversations will take (RX_SMALL or
    RX_PAYLOAD; 0: none taken here, each conversation takes its own); paired: the rover has
    a pairing key, so its links are secured (records); mqtt: 1 the link is an MQTT broker
    (take the send window's ring), -1 an MQTT broker with no room for it."""
    global chunk, tx, compressor, inflate_room, rx, rread, records, ring
    if chunk is None:
        chunk = bytearray(RESTORE_CHUNK if restore else CHUNK_SIZE)
        tx = bytearray(TX_SIZE)
        if paired:
            records = (bytearray(SEAL_RECORD + RECORD_OVERHEAD), bytearray(OPEN_RECORD + RECORD_OVERHEAD))
        if rx_payload:
            rx = bytearray(rx_payload + RX_OVERHEAD)
            rread = bytearray(READ_SIZE)
        if mqtt and MICROPYTHON:
            ring = bytearray(MQTT_RING) if mqtt > 0 else 0
        if restore:
            try:
                import zlib  # noqa: F401  (CPython inflates with zlib: no reserve)
            except ImportError:
                inflate_room = bytearray(INFLATE_ROOM)
            return
        try:
            import zlib  # noqa: F401  (CPython: the rover compresses with zlib instead)
        except ImportError:
            from anchor_core.zcompress import Compressor
            # Chunks go raw unless smaller; the stream goes out through STREAM_OUT.
            compressor = Compressor(CHUNK_SIZE, False, STREAM_OUT)


def start(argv):
    """main.py's first step: take what the command will hold for its whole length while the
    heap is in one piece. A restore takes other buffers."""
    import os
    paired = False
    mqtt = 0
    # Opening a link leaves the heap in pieces of a few KB (and mbedtls over TLS in smaller
    # ones): the session's receive buffers and a paired rover's record buffers, taken after
    # it, were what backups over serial, MQTT and TLS ran out of.
    rx = RX_SMALL if "backup" in argv or "run" in argv else RX_PAYLOAD
    for a in argv:
        if a.startswith("mqtt://") or a.startswith("mqtts://"):
            mqtt = 1
    # Shown progress keeps its code on the heap (~7 KB) and a thread drawing it: a paired
    # MQTT backup then needed 267,776 B with the ring, so it goes without (2 KiB in flight,
    # 17.7% of a cellular hop instead of 84%; a board shows no progress).
    if mqtt and ("--json" in argv or ("-q" not in argv and "--quiet" not in argv and tty())):
        mqtt = -1
    state = None
    for i in range(len(argv) - 1):
        if argv[i] == "--state":
            state = argv[i + 1]
            try:
                paired = os.stat(argv[i + 1] + "/pairing.key")[6] > 0
            except OSError:
                pass
    allocate("restore" in argv, rx, paired, mqtt)
    if state is not None and ("backup" in argv or "run" in argv):
        # A backup with a parent may be offered bases for sub-chunk deltas (anchor_core/
        # delta.py). Loaded when the first one comes, deep in the upload, the module did not
        # fit: a paired MQTT rover's heap there was 21 KB free in pieces of at most 288 bytes.
        # So it is loaded now, while the heap is whole (with rover/deltasend.py), and only
        # when the state folder holds a parent: a first backup never gets a base.
        try:
            os.stat(state + "/state.cbor")
        except OSError:
            return
        global delta
        from rover import deltasend
        deltasend.delta.install()    # its message types: the tables grow now, not mid-upload
        delta = deltasend
