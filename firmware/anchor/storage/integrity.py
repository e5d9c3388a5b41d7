"""What a restore of a snapshot depends on, checked across the catalog, the trees and the
chunk store (CPython only): the backup service asks it before it builds on a parent and before
it commits, and verify asks it of every snapshot."""
from anchor_core.chunker import EMPTY_OBJECT_ID
from anchor.storage.trees import TreeError

_BATCH = 4096


def not_held(catalog, store, oids, known=None):
    """None when the store holds every chunk of every object in oids (chunk lists taken from
    `known` {oid: (size, ids bytes)} first, else the catalog); else what is missing (text)."""
    batch = []
    for oid in oids:
        if oid == EMPTY_OBJECT_ID:
            continue                    # nothing to hold (never declared, never in the catalog)
        if known is not None and oid in known:
            ids = known[oid][1]
            ids = [ids[i:i + 32] for i in range(0, len(ids), 32)]
        else:
            info = catalog.object_chunks(oid)
            if info is None:
                return "object %s is not in the catalog" % oid.hex()[:16]
            ids = info[catalog.OBJECT_CHUNKS]
        batch += ids
        if len(batch) >= _BATCH:
            gone = store.missing(batch)
            if gone:
                return "chunk %s is not in the store" % batch[gone[0]].hex()[:16]
            batch = []
    gone = store.missing(batch) if batch else ()
    if gone:
        return "chunk %s is not in the store" % batch[gone[0]].hex()[:16]
    return None


def snapshot_problem(catalog, trees, store, snap):
    """None when snapshot `snap` can be restored whole (and built on): its tree reads back
    and hashes to its root, holds the entries and bytes the catalog says, and every chunk of
    its files is held; else why not (text)."""
    try:
        count, total = trees.check(snap["root"])
    except TreeError as e:
        return str(e)
    if (count, total) != (snap["entries"], snap["bytes"]):
        return "its tree holds %d entries, %d bytes; the catalog says %d, %d" % (
            count, total, snap["entries"], snap["bytes"])
    return not_held(catalog, store, catalog.tree_objects(snap["root"]))
