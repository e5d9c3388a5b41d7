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
# ...and 12 KiB when the rover shows progress (a terminal, or --json) or may back up over
# MQTT: the progress module's code takes ~7 KB, the MQTT client's ~9 KB more than a serial
# port's, of a heap where a paired MQTT backup of a phone-like tree had 256 B to spare.
# 12 KiB costs 3-4% more bytes on text and SQLite chunks (measured; docs/decisions.md).
COMPRESSED_SHOWN = 12288


chunk = None
tx = None
compressor = None    # anchor_core.zcompress.Compressor where the runtime has no zlib (~45 KB)
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


def allocate(restore=False, out=0):
    """out: the compressor's output size (default COMPRESSED_MAX)."""
    global chunk, tx, compressor, inflate_room
    if chunk is None:
        chunk = bytearray(RESTORE_CHUNK if restore else CHUNK_SIZE)
        tx = bytearray(TX_SIZE)
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
