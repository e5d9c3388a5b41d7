"""What a restore of a snapshot depends on, checked across the catalog, the trees and the
chunk store (CPython only): the backup service asks it before it builds on a parent and before
it commits, and verify asks it of every snapshot."""
import hashlib

from anchor_core.chunker import EMPTY_OBJECT_ID, OBJECT_ID_PREFIX
from anchor.storage.trees import TreeError

_BATCH = 4096


def object_id(size, ids):
    """The id an object of `size` bytes made of chunks `ids` (concatenated) has
    (anchor_core.chunker.ObjectId, in one call): a chunk list damaged in the catalog no longer
    hashes to its object's id."""
    return hashlib.sha256(OBJECT_ID_PREFIX + bytes(ids) + size.to_bytes(8, "big")).digest()


def not_held(catalog, store, oids, known=None, via=None):
    """None when the store holds every chunk of every object in oids (an iterable of object
    ids); else what is missing (text). Chunk lists come from `known` {oid: (size, ids bytes)}
    first, then from the catalog: those of objects tree `via` holds in one query, the rest
    one by one (so a check of a tree of 50,000 files costs one query, not 50,000)."""
    todo = set(oids)
    todo.discard(EMPTY_OBJECT_ID)       # nothing to hold (never declared, never in the catalog)
    batch = []

    def lists():
        if known:
            for oid in [o for o in todo if o in known]:
                todo.discard(oid)
                yield oid, known[oid][0], known[oid][1]
        if via is not None:
            for oid, size, ids in catalog.tree_chunk_lists(via):
                if oid in todo:
                    todo.discard(oid)
                    yield oid, size, ids
        for oid in list(todo):
            info = catalog.object_chunk_bytes(oid)
            if info is None:
                raise LookupError("object %s is not in the catalog" % oid.hex()[:16])
            yield oid, info[0], info[1]

    try:
        for oid, size, ids in lists():
            if object_id(size, ids) != oid:
                return "the catalog's chunk list of object %s is damaged" % oid.hex()[:16]
            batch += [ids[i:i + 32] for i in range(0, len(ids), 32)]
            if len(batch) >= _BATCH:
                gone = store.missing(batch)
                if gone:
                    return "chunk %s is not in the store" % batch[gone[0]].hex()[:16]
                batch = []
    except LookupError as e:
        return str(e)
    gone = store.missing(batch) if batch else ()
    if gone:
        return "chunk %s is not in the store" % batch[gone[0]].hex()[:16]
    return None


def snapshot_problem(catalog, trees, store, snap):
    """None when snapshot `snap` can be restored whole (and built on): its tree reads back
    and hashes to its root, holds as many entries as the catalog says, and every chunk of its
    files is held; else why not (text)."""
    try:
        count = trees.check(snap["root"])
    except TreeError as e:
        return str(e)
    if count != snap["entries"]:
        return "its tree holds %d entries; the catalog says %d" % (count, snap["entries"])
    return not_held(catalog, store, catalog.tree_objects(snap["root"]), via=snap["root"])
