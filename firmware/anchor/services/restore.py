"""Restore: a snapshot's tree read back, entry by entry, with the content of its files.

CPython only. No transport here: entries() says what a restore holds (each entry and the
chunk ids of its content) and chunk() reads one chunk back, checked. The management API
frames them onto HTTP for `anchorctl restore`; a restore over a rover's link can take the
same entries, skip the chunks the rover still holds, and send the rest.

A record that cannot be read back whole (an object the catalog lost, a chunk gone from the
store or damaged in flash) costs that file and nothing else: entries() names what is known
to be missing before any byte of the file is read, and content() raises RestoreError naming
the file when a chunk then fails its check (CRC, SHA-256), never handing out bytes that are
not the file's. The caller goes on with the next entry.
"""
from anchor_core import messages as m
from anchor.storage.chunks import StoreError
from anchor.storage.integrity import object_id


class PathError(ValueError):
    """The path asked for is not one a snapshot can hold."""


class NotInSnapshot(LookupError):
    """The path asked for is not in the snapshot."""


class RestoreError(Exception):
    """The content of `path` cannot be read back whole; `why` says what failed."""

    def __init__(self, path, why):
        Exception.__init__(self, "%s: %s" % (path, why))
        self.path = path
        self.why = why


class RestoreService:
    def __init__(self, catalog, trees, store):
        self.catalog = catalog            # objects -> chunk lists
        self.trees = trees                # snapshot trees, by root digest
        self.store = store                # chunk bytes

    def records(self, snap, prefix=""):
        """Tree records (path, type, size, mtime_ns, mode, object, target) of `prefix` and
        everything below it, in canonical order; the whole snapshot for "". Raises PathError
        for a malformed prefix, NotInSnapshot when nothing matches it."""
        prefix = prefix.strip("/")
        if prefix:
            try:
                m.check_path(prefix)
            except m.ProtocolError as e:
                raise PathError(e.text)
        found = False
        for r in self.trees.read(snap["root"]):
            path = r[m.REC_PATH]
            if type(path) is bytes:           # a name that is not UTF-8
                path = path.decode("utf-8", "surrogateescape")
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                found = True
                yield r
        if prefix and not found:
            raise NotInSnapshot("no path %r in snapshot %d" % (prefix, snap["id"]))

    def entries(self, snap, prefix=""):
        """(record, chunk ids, problem) of each entry records() yields; ids are empty but for
        files with content. problem is None, or a RestoreError when the file's object or some
        of its chunks are not held: that file cannot be restored, the entries after it can."""
        for r in self.records(snap, prefix):
            ids = ()
            problem = None
            if r[m.REC_TYPE] == m.T_FILE and r[m.REC_SIZE]:
                info = self.catalog.object_chunks(r[m.REC_OID])
                if info is None:
                    problem = RestoreError(r[m.REC_PATH], "its object %s is not in the catalog"
                                           % r[m.REC_OID].hex()[:16])
                else:
                    ids = info[self.catalog.OBJECT_CHUNKS]
                    gone = self.store.missing(ids)
                    if object_id(info[self.catalog.OBJECT_SIZE], b"".join(ids)) != r[m.REC_OID]:
                        # every chunk would check out, and still be the wrong ones
                        problem = RestoreError(r[m.REC_PATH], "the catalog's chunk list of its object %s "
                                               "is damaged" % r[m.REC_OID].hex()[:16])
                    elif gone:
                        problem = RestoreError(r[m.REC_PATH], "%d of its %d chunks are not in the store "
                                               "(first: %s)" % (len(gone), len(ids), ids[gone[0]].hex()[:16]))
            yield r, ids, problem

    def chunk(self, path, cid):
        """The bytes of chunk `cid` of file `path`, checked against its id as they are read."""
        try:
            return self.store.get(cid)
        except (StoreError, OSError) as e:
            raise RestoreError(path, "chunk %s cannot be read: %s" % (cid.hex()[:16], e))

    def content(self, record, ids):
        """The content of an entry, chunk by chunk (nothing but for files); RestoreError if
        it would not add up to the file's size (a reader takes exactly that many bytes)."""
        if record[m.REC_TYPE] != m.T_FILE:
            return
        got = 0
        for cid in ids:
            b = self.chunk(record[m.REC_PATH], cid)
            got += len(b)
            if got > record[m.REC_SIZE]:
                raise RestoreError(record[m.REC_PATH], "its chunks hold more than its %d bytes" % record[m.REC_SIZE])
            yield b
        if got != record[m.REC_SIZE]:
            raise RestoreError(record[m.REC_PATH], "its chunks hold %d of its %d bytes" % (got, record[m.REC_SIZE]))
