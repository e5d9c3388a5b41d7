# The rover's side of a sub-chunk delta over a backup conversation (docs/protocol.md §4,
# "Sub-chunk deltas"): a module of its own, loaded with anchor_core/delta.py only by a backup
# that has a parent (rover/buffers.py), so a first backup carries none of its code.
import gc

from anchor_core import delta
from anchor_core.compat import const

try:
    import zlib   # CPython; MicroPython's deflate module here cannot compress
except ImportError:
    zlib = None

_OUT = const(4096)    # a CPython rover's instructions; a larger delta pays too little
_ROOM = const(8192)   # free heap a MicroPython rover wants before it asks for a base
_mem_free = getattr(gc, "mem_free", None)


class Sender:
    def __init__(self, compressor):
        delta.install()
        # a MicroPython rover lends the compressor's chain table and staging buffer, idle
        # between chunks; its instructions are at most that buffer
        self.c = compressor
        self.enc = delta.Encoder(compressor.prev if compressor is not None else None)
        self.out = compressor.out if compressor is not None else bytearray(_OUT)

    def send(self, conv, cid, mv, ln):
        """src mv[:ln] (chunk `cid`) as a delta against the old chunk the anchor named
        (NEED's bases), if that is smaller than DATA would carry: the bytes sent once the
        anchor rebuilt it, or -1 (the caller sends it whole).  Two round trips: BASEQ/BASE
        for the signatures, DELTA/DELTAOK for the verdict."""
        if _mem_free is not None:
            # BASE's signatures (up to 2 KiB) and what decoding and encoding allocate must
            # fit: a MemoryError past BASEQ would end the backup, a whole chunk does not
            gc.collect()
            if _mem_free() < _ROOM:
                return -1
        conv.send([delta.BASEQ, cid])
        b = conv.recv(delta.BASE)
        blk, sigs = b[2], b[3]
        conv.stats["delta_sig_bytes"] += len(sigs)
        if not blk:
            return -1
        c = self.c
        k = self.enc.encode(mv, ln, blk, sigs, self.out)
        if k < 0:
            return -1
        if zlib is not None:
            if len(zlib.compress(mv, 6)) <= k:
                return -1
        elif c is not None and k > ln // 4:
            # maybe compression does better: its counting pass says (and takes the table)
            p = c.plan(mv, ln, False, True)
            if 0 < p <= k:
                return -1
            k = self.enc.encode(mv, ln, blk, sigs, self.out)
        conv.send_blob([delta.DELTA, cid, ln], memoryview(self.out)[:k])
        if not conv.recv(delta.DELTAOK)[2]:
            conv.log("the anchor could not rebuild a chunk from its delta; sending it whole")
            return -1
        return k
