# The rover's two large buffers, taken once at start-up, before compiling the rest of the
# firmware leaves the heap in pieces (a 32 KiB block is the first thing that stops fitting).
CHUNK_SIZE = 32768   # anchor_core.chunker.MAX_SIZE: file reads while hashing, one chunk to upload
TX_SIZE = 8192       # every message the rover sends is encoded here
# The compressor's output buffer: 8 KiB of heap less than a whole chunk, so that the rover
# fits 256 KB on a radio link (20 KiB since the odd-tree handling took ~5 KB more code,
# docs/decisions.md). Chunks average 8 KiB; only those over 20 KiB that do not shrink below
# it (log-like text shrinks to ~44%) go raw because of it.
COMPRESSED_MAX = 20480

chunk = None
tx = None
compressor = None    # anchor_core.zcompress.Compressor where the runtime has no zlib (~45 KB)
zin = None           # a restore's compressed chunk (rover/restore.py), instead of the compressor


def allocate(restore=False):
    global chunk, tx, compressor, zin
    if chunk is None:
        chunk = bytearray(CHUNK_SIZE)
        tx = bytearray(TX_SIZE)
        if restore:
            # A restore compresses nothing: the compressor's heap holds the chunk as it came.
            zin = bytearray(CHUNK_SIZE + 1024)
            return
        try:
            import zlib  # noqa: F401  (CPython: the rover compresses with zlib instead)
        except ImportError:
            from anchor_core.zcompress import Compressor
            # Chunks go raw unless smaller; over COMPRESSED_MAX only if they shrink below it.
            compressor = Compressor(CHUNK_SIZE, False, COMPRESSED_MAX)
