"""Snapshot trees on the anchor: one file per distinct tree, named by its root digest
(CPython only).

A tree is the sorted list of entry records of one snapshot (docs/storage.md §Trees).
Content addressing means a backup in which nothing changed adds no file at all.
"""
import hashlib
import os
import struct
import zlib

from anchor_core import cbor
from anchor_core import messages as m

TREE_MAGIC = b"ANTR"
# 2: records may hold byte-string paths and link targets (names that are not UTF-8), paths
# up to 4096 bytes and mtimes beyond 64 bits signed (protocol CAP_NAMES). Version 1 files
# hold a subset and are read as they are; an older anchor refuses a version 2 file by name
# instead of misreading it.
TREE_VERSION = 2
_HDR = TREE_MAGIC + bytes([TREE_VERSION])
_READABLE = (TREE_MAGIC + b"\x01", _HDR)


class TreeError(Exception):
    pass


class TreeStore:
    def __init__(self, root):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path(self, digest):
        return os.path.join(self.root, digest.hex() + ".tree")

    def exists(self, digest):
        return os.path.exists(self.path(digest))

    def write(self, records):
        """Write records (already in canonical order) and return (digest, count, bytes).

        The file lands under its digest only after fsync and rename, so a crash leaves
        either no tree or a whole one.
        """
        h = hashlib.sha256()
        count = 0
        total = 0
        tmp = os.path.join(self.root, ".tmp-%d" % os.getpid())
        comp = zlib.compressobj(6)
        with open(tmp, "wb") as f:
            f.write(_HDR)
            for rec in records:
                enc = cbor.encode(rec)
                h.update(enc)
                count += 1
                if rec[m.REC_TYPE] == m.T_FILE:
                    total += rec[m.REC_SIZE]
                f.write(comp.compress(struct.pack(">I", len(enc)) + enc))
            f.write(comp.flush())
            f.flush()
            os.fsync(f.fileno())
        digest = h.digest()
        final = self.path(digest)
        if os.path.exists(final) and self.problem(digest) is None:
            os.unlink(tmp)
        else:
            # new, or the file under this name is damaged: a backup with the same tree heals it
            self._land(tmp, final)
        return digest, count, total

    def _land(self, tmp, final):
        """rename, then fsync the folder: the name survives a power cut."""
        os.rename(tmp, final)
        dfd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def install(self, digest, data):
        """Put a whole tree file (as another anchor of the fleet wrote it) under its digest:
        written beside, checked to hash to `digest`, then renamed; TreeError if it does not."""
        tmp = os.path.join(self.root, ".in-%d" % os.getpid())
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            self._hashed(tmp, digest, "from the fleet store does not match:")
        except BaseException:
            os.unlink(tmp)
            raise
        self._land(tmp, self.path(digest))

    def check(self, digest):
        """Read tree `digest` whole and re-hash it: its number of entries when it is the tree
        its name says, else TreeError naming what is wrong. Records are not decoded (that
        costs ten times the hashing): a tree that hashes to its root is the one the rover
        committed, and its records were checked then."""
        return self._hashed(self.path(digest), digest, "is damaged:")

    def _hashed(self, p, digest, what):
        """The number of records of the tree file at `p`; TreeError unless they hash to digest."""
        h = hashlib.sha256()
        count = 0
        for enc in self._encodings_of(p, digest):
            h.update(enc)
            count += 1
        if h.digest() != digest:
            raise TreeError("tree %s %s its records hash to %s" % (digest.hex(), what, h.hexdigest()[:16]))
        return count

    def problem(self, digest):
        """None when tree `digest` reads back whole and hashes to its name, else why not."""
        try:
            self.check(digest)
        except TreeError as e:
            return str(e)
        return None

    def delete(self, digest):
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def read(self, digest):
        """Yield the records of a tree, streaming. Reading does not re-hash: check() does."""
        if digest is None:
            return
        for enc in self._encodings(digest):
            try:
                rec = cbor.decode(enc, 0, len(enc))
            except Exception as e:      # a flipped byte inside the stream's records
                raise TreeError("tree %s is damaged: %s" % (digest.hex(), e))
            yield rec

    def _encodings(self, digest):
        """Yield the CBOR encoding of each record of a tree, streaming."""
        return self._encodings_of(self.path(digest), digest)

    def _encodings_of(self, p, digest):
        try:
            f = open(p, "rb")
        except FileNotFoundError:
            raise TreeError("tree %s is missing (no file %s)" % (digest.hex(), p))
        with f:
            if f.read(len(_HDR)) not in _READABLE:
                raise TreeError("tree %s has an unknown header (format version 1 or %d expected)"
                                % (digest.hex(), TREE_VERSION))
            d = zlib.decompressobj()
            buf = b""
            while True:
                block = f.read(65536)
                try:
                    buf += d.decompress(block) if block else d.flush()
                except zlib.error as e:
                    raise TreeError("tree %s is damaged: %s" % (digest.hex(), e))
                pos = 0
                while len(buf) - pos >= 4:
                    n = struct.unpack_from(">I", buf, pos)[0]
                    if len(buf) - pos - 4 < n:
                        break
                    yield buf[pos + 4:pos + 4 + n]
                    pos += 4 + n
                buf = buf[pos:]
                if not block:
                    if buf or not d.eof:
                        raise TreeError("tree %s is truncated" % digest.hex())
                    return


def apply_delta(parent_records, delta):
    """Merge a sorted parent tree with a sorted delta (PUT/DEL entries) into new records."""
    it = iter(parent_records)
    old = next(it, None)
    for e in delta:
        key = m.path_key(e[m.ENTRY_PATH])
        while old is not None and m.path_key(old[m.REC_PATH]) < key:
            yield old
            old = next(it, None)
        if old is not None and m.path_key(old[m.REC_PATH]) == key:
            old = next(it, None)
        if e[m.ENTRY_OP] == m.OP_PUT:
            yield m.tree_record(e[m.ENTRY_PATH], e[m.ENTRY_TYPE], e[m.ENTRY_SIZE], e[m.ENTRY_MTIME], e[m.ENTRY_MODE],
                                e[m.ENTRY_OID], e[m.ENTRY_TARGET] if len(e) > m.ENTRY_TARGET else None)
    while old is not None:
        yield old
        old = next(it, None)
