# The rover's two large buffers, taken once at start-up, before compiling the rest of the
# firmware leaves the heap in pieces (a 32 KiB block is the first thing that stops fitting).
CHUNK_SIZE = 32768   # anchor_core.chunker.MAX_SIZE: file reads while hashing, one chunk to upload
TX_SIZE = 8192       # every message the rover sends is encoded here
# The compressor's output buffer: half a whole chunk, so that the rover fits 256 KB on a
# radio link (docs/decisions.md, "The rover's 256 KB heap"). Chunks average 8 KiB; only those
# over 16 KiB that do not shrink below it go raw because of it. Measured with the rover's own
# compressor: 1.67 MB of source text and docs, and a 1.5 MB SQLite file, compress to the same
# bytes with 16 KiB as with 20 KiB (12 KiB: 3-4% more).
COMPRESSED_MAX = 16384
# ...and 12 KiB when the rover shows progress (a terminal, or --json) or backs up over TLS
# (mqtts://): the progress module's code takes ~7 KB, mbedtls ~4 KB more. Measured with the
# rover's compressor: 12 KiB gives the same bytes on 1.9 MB of source text and 4.5% more on
# a 2.2 MB SQLite file (8 KiB: 20-23% more on both; docs/decisions.md).
COMPRESSED_SHOWN = 12288


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
compressor = None    # anchor_core.zcompress.Compressor where the runtime has no zlib (~23 KB:
                     # its output, 4 KiB of hash-chain links, ~3 KB of counts and code tables)
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


def allocate(restore=False, out=0, rx_payload=0, paired=False):
    """out: the compressor's output size (default COMPRESSED_MAX); rx_payload: the largest
    message the rover's conversations will take (RX_SMALL or RX_PAYLOAD; 0: none taken
    here, each conversation takes its own); paired: the rover has a pairing key, so its
    links are secured (records)."""
    global chunk, tx, compressor, inflate_room, rx, rread, records
    if chunk is None:
        chunk = bytearray(RESTORE_CHUNK if restore else CHUNK_SIZE)
        tx = bytearray(TX_SIZE)
        if paired:
            records = (bytearray(SEAL_RECORD + RECORD_OVERHEAD), bytearray(OPEN_RECORD + RECORD_OVERHEAD))
        if rx_payload:
            rx = bytearray(rx_payload + RX_OVERHEAD)
            rread = bytearray(READ_SIZE)
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
            # Chunks go raw unless smaller; over COMPRESSED_MAX only if they shrink below it.
            compressor = Compressor(CHUNK_SIZE, False, out or COMPRESSED_MAX)


def start(argv):
    """main.py's first step: take what the command will hold for its whole length while the
    heap is in one piece. A restore takes other buffers; a backup that shows progress, or
    goes over TLS, a smaller compressor output."""
    import os
    out = 0
    paired = False
    # Opening a link leaves the heap in pieces of a few KB (and mbedtls over TLS in smaller
    # ones): the session's receive buffers and a paired rover's record buffers, taken after
    # it, were what backups over serial, MQTT and TLS ran out of.
    rx = RX_SMALL if "backup" in argv or "run" in argv else RX_PAYLOAD
    for a in argv:
        if "mqtts://" in a:
            out = COMPRESSED_SHOWN
    if "--json" in argv or ("-q" not in argv and "--quiet" not in argv and tty()):
        out = COMPRESSED_SHOWN
    for i in range(len(argv) - 1):
        if argv[i] == "--state":
            try:
                paired = os.stat(argv[i + 1] + "/pairing.key")[6] > 0
            except OSError:
                pass
    allocate("restore" in argv, out, rx, paired)
