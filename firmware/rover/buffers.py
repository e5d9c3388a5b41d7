# The rover's two large buffers, taken once at start-up, before compiling the rest of the
# firmware leaves the heap in pieces (a 32 KiB block is the first thing that stops fitting).
CHUNK_SIZE = 32768   # core.chunker.MAX_SIZE: file reads while hashing, one chunk to upload
TX_SIZE = 8192       # every message the rover sends is encoded here

chunk = None
tx = None


def allocate():
    global chunk, tx
    if chunk is None:
        chunk = bytearray(CHUNK_SIZE)
        tx = bytearray(TX_SIZE)
