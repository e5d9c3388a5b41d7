# The rover's copy of the tree the anchor last acknowledged: records in canonical order,
# each a u16 length and its CBOR encoding, read and written streaming.
import struct

from anchor_core import cbor
from rover import fsys


class TreeWriter:
    def __init__(self, path):
        self.f = open(path, "wb")
        self.count = 0

    def add_encoded(self, enc):
        self.f.write(struct.pack(">H", len(enc)))
        self.f.write(enc)
        self.count += 1

    def close(self):
        fsys.fsync(self.f)         # on flash before the rename that makes it the parent
        self.f.close()


def read_records(path):
    """Yield the records of a tree file; an empty iterator if there is none."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    try:
        hdr = bytearray(2)
        while True:
            n = f.readinto(hdr)
            if not n:
                return
            if n != 2:
                raise ValueError("tree file %s is truncated" % path)
            ln = (hdr[0] << 8) | hdr[1]
            enc = f.read(ln)
            if len(enc) != ln:
                raise ValueError("tree file %s is truncated" % path)
            yield cbor.decode(enc)
    finally:
        f.close()
