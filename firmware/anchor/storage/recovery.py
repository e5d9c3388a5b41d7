"""Opening a chunk store after a crash or power cut: the recovery rules (CPython only).

docs/storage.md, "Recovery rules", states them and why; recover() applies them. Chunk rows of
commits lost with the index's WAL tail are rebuilt from the segments, torn tails are cut, files
no flush ever promised are deleted, and nothing below a segment's committed_end is re-indexed
(that would undo a drop()).
"""

import os

from anchor.storage.segments import (SEGMENT_HEADER_SIZE, StoreError, fsync_dir, list_segments,
                                     read_header, scan, segment_name, truncate)


def recover(seg_dir, index, counts, now):
    """Bring the index (a ChunkIndex) and the segment files in seg_dir back in line. counts
    (reindexed, truncated_bytes, removed_files, lost_rows) is added to; re-indexed chunks get
    last use `now`. Returns (seq, end) where appends continue."""
    committed = index.segments()
    on_disk = list_segments(seg_dir)
    for seq in committed:
        if seq not in on_disk:
            raise StoreError("segment %s is in the index but missing on flash" % segment_name(seq))
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
        state = read_header(path, seq, fresh=seq not in committed and seq > last_committed)
        if seq not in committed:
            if state == "torn":
                if seq < last_committed:
                    raise StoreError("%s has a damaged header" % path)
                # A segment created by a flush that never completed: nothing in it was promised.
                os.unlink(path)
                dir_changed = True
                counts["removed_files"] += 1
                continue
            start = SEGMENT_HEADER_SIZE
        else:
            if state == "torn":
                raise StoreError("%s has a damaged header" % path)
            start = committed[seq]
        size = os.path.getsize(path)
        do_scan = True
        if size < start:
            # Committed bytes are gone (the medium lost them): forget the rows that point there.
            lost, start = index.cut(seq, size)
            counts["lost_rows"] += lost
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

