"""Opening a chunk store after a crash or power cut: the recovery rules (CPython only).

docs/storage.md, "Recovery rules", states them and why; recover() applies them. Chunk rows of
commits lost with the index's WAL tail are rebuilt from the segments, torn tails are cut, files
no flush ever promised are deleted, and nothing below a segment's committed_end is re-indexed
(that would undo a drop()).
"""

import os

from anchor.storage.segments import (SEGMENT_HEADER_SIZE, HeaderDamaged, StoreError, fsync_dir, list_segments,
                                     header_problem, read_header, salvage_scan, scan, segment_name,
                                     truncate)


def quarantine_segment(index, seq):
    """Segment seq is gone: remove its rows and deregister it, in durable transactions (so
    appends never recreate it under its old offsets). Returns the ids removed."""
    ids = [r[0] for r in index.rows_in(seq)]
    index.delete(ids)
    index.relocate([], {}, [seq])
    return ids


def recover(seg_dir, index, counts, now, damage=None):
    """Bring the index (a ChunkIndex) and the segment files in seg_dir back in line. counts
    (reindexed, truncated_bytes, removed_files, lost_rows) is added to; re-indexed chunks get
    last use `now`; what is damaged is appended to the list `damage` as text. Returns (seq,
    end) where appends continue."""
    if damage is None:
        damage = []
    committed = index.segments()
    on_disk = list_segments(seg_dir)
    for seq in sorted(committed):
        if seq not in on_disk:
            lost = quarantine_segment(index, seq)
            counts["lost_rows"] += len(lost)
            damage.append("segment %s is missing: %d chunks it held are quarantined (backups of rovers "
                          "that still have them upload them again)" % (segment_name(seq), len(lost)))
    if len(committed) != len(index.segments()):
        committed = index.segments()
    last_committed = max(committed) if committed else 0
    rows = []
    ends = {}
    dir_changed = False
    for seq in sorted(on_disk):
        path = on_disk[seq]
        if seq not in committed and seq < last_committed and not index.segment_has_rows(seq):
            # Below the last committed segment, yet not in the index and holding no row: a
            # segment compact() had emptied and deregistered, whose unlink did not happen (or
            # was not yet durable) before the crash.  Everything in it lives elsewhere or was
            # dropped; scanning it would bring dropped chunks back, so it goes.
            os.unlink(path)
            dir_changed = True
            counts["removed_files"] += 1
            continue
        fresh = seq not in committed and seq > last_committed
        try:
            state = read_header(path, seq, fresh=fresh)
        except StoreError as e:
            # Past every committed segment, another format version is a newer anchor's file:
            # refused. Where this index (version 1) committed, it is a flipped byte.
            if fresh and not isinstance(e, HeaderDamaged):
                raise
            state = "damaged"
            damage.append("%s; its records are still read, each checked" % e)
        if state == "torn" and (seq in committed or seq < last_committed):
            state = "damaged"
            damage.append("%s has a damaged header (short or zeros); its records are still read, "
                          "each checked" % path)
        if seq not in committed:
            if state == "damaged":
                continue        # rows point into it, yet the index never committed it: leave it
            if state == "torn":
                # A segment created by a flush that never completed: nothing in it was promised.
                os.unlink(path)
                dir_changed = True
                counts["removed_files"] += 1
                continue
            start = SEGMENT_HEADER_SIZE
        else:
            start = committed[seq]
        size = os.path.getsize(path)
        do_scan = True
        start_was = start
        if size < start:
            # Committed bytes are gone (the medium lost them): forget the rows that point there.
            lost, start = index.cut(seq, size)
            counts["lost_rows"] += lost
            damage.append("%s is %d bytes shorter than the index says: %d chunks in what was lost are "
                          "quarantined (backups of rovers that still have them upload them again)"
                          % (path, start_was - size, lost))
            start = start or SEGMENT_HEADER_SIZE
            # ...and do not scan what is left past the last intact row: it lies below the old
            # committed_end, where every record without a row was dropped (drop()), so
            # re-indexing it would undo a drop.  It is cut off like a torn tail.
            do_scan = False
        end = start
        if size > start:
            found, end = scan(path, start) if do_scan else ((), start)
            for cid, off, raw_len, stored_len, enc in found:
                rows += (cid, seq, off, raw_len, stored_len, enc, now)
            if end < size:
                truncate(path, end)
                counts["truncated_bytes"] += size - end
        if end != committed.get(seq):
            ends[seq] = end
    if dir_changed:
        fsync_dir(seg_dir)
    if rows or ends:
        counts["reindexed"] += index.insert(rows, ends)
    last = index.last_segment()
    return (1, SEGMENT_HEADER_SIZE) if last is None else tuple(last)



def rebuild(seg_dir, index, counts, now, damage):
    """Fill an empty index from every segment on flash (the old index was unreadable): each
    intact record is indexed, stepping over damaged ones, and nothing is deleted or cut,
    whatever a header says. Chunks drop() had evicted come back as pass-through data (the
    next eviction takes them again). Returns (seq, end) where appends continue."""
    rows = []
    ends = {}
    for seq, path in sorted(list_segments(seg_dir).items()):
        problem = header_problem(path, seq)
        if problem is not None:
            damage.append("%s; its records are still read, each checked" % problem)
        found, end = salvage_scan(path)
        for cid, off, raw_len, stored_len, enc in found:
            rows += (cid, seq, off, raw_len, stored_len, enc, now)
        ends[seq] = max(end, SEGMENT_HEADER_SIZE)
    counts["reindexed"] += index.insert(rows, ends)
    last = index.last_segment()
    return (1, SEGMENT_HEADER_SIZE) if last is None else tuple(last)
