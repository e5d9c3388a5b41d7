"""The anchor's chunk store: append-only segment files of compressed chunks plus a chunk index
(CPython only).

    root/segments/NNNNNNNN.seg   storage/segments.py: header, records, scan, torn tails
    root/index.sqlite            storage/index.py (interface), storage/index_sqlite.py:
                                 chunk id -> segment, offset, lengths, encoding, last use

On-flash format, write order and recovery rules: docs/storage.md (storage format version 1).

Writes are batched: put()/ingest() append records to an in-memory buffer; flush() writes them
with one gathered write per segment, fsyncs the segments (and the directory when a file is new)
and only then commits the index transaction.  An automatic flush (flush_bytes buffered) does the
same on a writer thread so the caller is not blocked by the card.  open() re-indexes complete
records written after the last commit and truncates torn tails, so everything a returned
flush() promised is readable.  drop() evicts chunks (index rows only) and compact() rewrites
sparse sealed segments; how neither can be undone by recovery: docs/storage.md, "Eviction and
compaction".  Which chunks may be evicted is not the store's to know: the catalog says what
snapshots keep (storage/retention.py asks it).

One thread uses a store at a time (the daemon's asyncio thread).  ingest() hands batches of
chunks to a compressor thread, each batch one zstandard call that runs without the GIL, while
the calling thread hashes the next batch; the compressor thread also frames each record (head +
CRC) and the calling thread buffers finished batches (see ingest()).
"""

import hashlib
import logging
import os
import sqlite3
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from anchor.storage.compress import ZSTD_LEVEL, CompressorPool, compress_many, compressor, stable
from anchor.storage.index_sqlite import SqliteIndex
from anchor.storage.recovery import rebuild, recover
from anchor.storage.segments import (
    ENC_RAW, ENC_ZSTD, ENCODINGS, MAX_CHUNK, RECORD_CRC, RECORD_HEAD, RECORD_HEADER_SIZE,
    RECORD_MAGIC, SEGMENT_HEADER_SIZE, SegmentFiles, StoreError, decode_payload, fsync_dir,
    header_problem, list_segments, make_head, parse_record, write_header)

log = logging.getLogger("anchor.store")

_pack_head = RECORD_HEAD.pack
_pack_crc = RECORD_CRC.pack
_crc32 = zlib.crc32
_sha256 = hashlib.sha256


def _now_ms():
    # last_use in milliseconds: eviction order must tell apart what happened in one second
    return int(time.time() * 1000)


def _as_id(chunk_id):
    if type(chunk_id) is not bytes:
        chunk_id = bytes(chunk_id)
    if len(chunk_id) != 32:
        raise StoreError("chunk id must be 32 bytes, got %d" % len(chunk_id))
    return chunk_id


def _plan(batch):
    """Group buffered records by segment for gathered writes; make their index rows (one flat
    list, index.ROW_FIELDS values per row, for ChunkIndex.insert)."""
    groups = []                 # [seq, first offset, [head, payload, head, payload, ...]]
    rows = []
    cur = -1
    bufs = None
    for cid, p in batch.items():
        seq, off, raw_len, enc, head, payload, last_use = p
        if seq != cur:
            cur = seq
            bufs = []
            groups.append([seq, off, bufs])
        bufs += (head, payload)
        rows += (cid, seq, off, raw_len, len(payload), enc, last_use)
    return groups, rows


# A buffered (appended, not yet flushed) record is a list, indexed by these:
P_SEG, P_OFF, P_RAW_LEN, P_ENC, P_HEAD, P_PAYLOAD, P_LAST_USE = range(7)


class ChunkStore:
    def __init__(self, root, segment_size=4 << 20, flush_bytes=8 << 20, workers=None,
                 zstd_level=ZSTD_LEVEL, index=None):
        """index: an open ChunkIndex to use instead of the SqliteIndex at root/index.sqlite
        (the store closes it)."""
        self.root = root
        self.zstd_level = zstd_level
        self.segment_size = segment_size
        self.flush_bytes = flush_bytes
        # compressor threads for ingest(); the calling thread is busy too (cutting, hashing)
        self.workers = workers or max(1, min(4, (os.cpu_count() or 2) - 1))
        self.seg_dir = os.path.join(root, "segments")
        self.index_path = os.path.join(root, "index.sqlite")
        self._pending = {}          # id -> buffered record (a list, see P_*), in append order
        self._pending_bytes = 0
        self._compressing = CompressorPool(self.workers, self._frame_batch)   # ingest batches
        self._waiting = self._compressing.waiting   # id -> raw chunk, for every chunk in them
        self._sealed = {}           # records an automatic flush handed to the writer thread
        self._sealed_job = None     # that flush's Future; _settle() waits for it
        self._io = None             # the writer thread (one), created on first automatic flush
        self._wseq = 0
        self._closed = False
        self.recovery = {"reindexed": 0, "truncated_bytes": 0, "removed_files": 0, "lost_rows": 0}
        self.damage = []            # what recovery found damaged (text), reported by verify

        made = not os.path.isdir(self.seg_dir)
        os.makedirs(self.seg_dir, exist_ok=True)
        if made:
            fsync_dir(root)
            fsync_dir(os.path.dirname(os.path.abspath(root)))
        self.files = SegmentFiles(self.seg_dir)
        if index is not None:
            self.index = index
            try:
                self._recover()
            except BaseException:
                self.index.close()
                raise
        else:
            self._open_index()
        for d in self.damage:
            log.warning("chunk store %s: %s", root, d)

    # ------------------------------------------------------------------ open and recovery

    def _recover(self):
        """storage/recovery.py; appends continue where it says."""
        self._wseq, self._wend = recover(self.seg_dir, self.index, self.recovery, _now_ms(), self.damage)

    def _open_index(self):
        """Open index.sqlite, check it and recover; an index SQLite cannot read, or finds
        damaged, is moved aside and rebuilt from the segments, so the store still starts
        (docs/storage.md, "Damage")."""
        self.index = None
        try:
            self.index = SqliteIndex(self.index_path)
            # SQLite opens a file with damaged pages and fails only on the query that meets
            # them, later, in the middle of a session: check every page now (0.14 s for an
            # index of 500,000 chunks, 30 MB, cached; a cold read of those 30 MB from an SD card
            # is the rest)
            why = self.index.check()
            if why is None:
                self._recover()
                return
        except sqlite3.DatabaseError as e:
            why = e
        except BaseException:
            if self.index is not None:
                self.index.close()
            raise
        if self.index is not None:
            self.index.close()
        self._rebuild_index("index.sqlite could not be read (%s)" % why)

    def _rebuild_index(self, why):
        aside = self.index_path + ".damaged-%d" % int(time.time())
        for ext in ("", "-wal", "-shm"):
            try:
                os.rename(self.index_path + ext, aside + ext)
            except FileNotFoundError:
                pass
        fsync_dir(self.root)
        self.index = SqliteIndex(self.index_path)
        before = self.recovery["reindexed"]
        try:
            self._wseq, self._wend = rebuild(self.seg_dir, self.index, self.recovery, _now_ms(), self.damage)
        except BaseException:
            self.index.close()
            raise
        self.damage.append("%s: moved to %s and rebuilt from the segments (%d chunks)"
                           % (why, os.path.basename(aside), self.recovery["reindexed"] - before))

    # ------------------------------------------------------------------ lookups

    def _buffered(self, chunk_id):
        """The in-memory record of a chunk whose index row is not committed yet, or None."""
        p = self._pending.get(chunk_id)
        if p is None and self._sealed:
            p = self._sealed.get(chunk_id)
        return p

    def has(self, chunk_id):
        chunk_id = _as_id(chunk_id)
        if self._buffered(chunk_id) is not None or chunk_id in self._waiting:
            return True
        return self.index.get(chunk_id) is not None

    def missing(self, chunk_ids):
        """Indices (into chunk_ids) of the ids the store does not hold."""
        ids = [_as_id(c) for c in chunk_ids]
        buffered = self._buffered
        waiting = self._waiting
        ask = [c for c in ids if c not in waiting and buffered(c) is None]
        found = self.index.present(ask) if ask else ()
        return [i for i, c in enumerate(ids)
                if c not in found and c not in waiting and buffered(c) is None]
    # ------------------------------------------------------------------ writing

    def _append(self, records, now):
        """Buffer records [(id, raw_len, encoding, payload)] in order: frame each (head + CRC) and
        give it its segment and offset. Flushes whenever flush_bytes are buffered."""
        self._append_framed([(cid, raw_len, enc, make_head(cid, enc, raw_len, payload), payload)
                             for cid, raw_len, enc, payload in records], now)

    def _append_framed(self, records, now):
        """Buffer framed records [(id, raw_len, encoding, head, payload)] in order, giving each
        its segment and offset. Flushes whenever flush_bytes are buffered."""
        pend = self._pending
        limit = self.segment_size
        flush_at = self.flush_bytes
        seq, end = self._wseq, self._wend
        buffered = self._pending_bytes
        for cid, raw_len, enc, head, payload in records:
            n = RECORD_HEADER_SIZE + len(payload)
            if end + n > limit and end > SEGMENT_HEADER_SIZE:
                seq += 1
                end = SEGMENT_HEADER_SIZE
            pend[cid] = [seq, end, raw_len, enc, head, payload, now]
            end += n
            buffered += n
            if buffered >= flush_at:
                self._wseq, self._wend, self._pending_bytes = seq, end, buffered
                self._flush_behind()
                pend = self._pending
                buffered = self._pending_bytes
        self._wseq, self._wend, self._pending_bytes = seq, end, buffered

    def put(self, chunk_id, raw, encoding=ENC_RAW, payload=None):
        """Store one chunk; False when it is already present. raw must hash to chunk_id. With
        payload, the chunk arrived compressed (encoding 1 zlib stream, 2 zstd frame): it must
        decode to raw, and is stored as it is (raw instead, if it is not smaller)."""
        self._check_open()
        if payload is not None:
            if encoding not in ENCODINGS:
                raise StoreError("unknown encoding %r" % (encoding,))
            if decode_payload(encoding, len(raw), payload) != raw:
                raise StoreError("payload does not decode to the chunk's bytes")
        return self._put_checked(_as_id(chunk_id), raw, encoding if payload is not None else None, payload)

    def put_encoded(self, chunk_id, encoding, payload):
        """Store a chunk as it came off the wire: payload in `encoding`, decoded once and never
        past MAX_CHUNK bytes, checked against the id, kept as it is when that is smaller.
        Returns (stored_new, raw length)."""
        self._check_open()
        if encoding not in ENCODINGS:
            raise StoreError("unknown encoding %r" % (encoding,))
        if encoding == ENC_RAW and len(payload) > MAX_CHUNK:
            raise StoreError("chunk of %d bytes exceeds the %d byte limit" % (len(payload), MAX_CHUNK))
        raw = decode_payload(encoding, MAX_CHUNK, payload)
        new = self._put_checked(_as_id(chunk_id), raw, encoding if encoding != ENC_RAW else None,
                                payload if encoding != ENC_RAW else None)
        return new, len(raw)

    def _put_checked(self, chunk_id, raw, enc, payload):
        # payload, when given, is already known to decode to raw
        n = len(raw)
        if n > MAX_CHUNK:
            raise StoreError("chunk of %d bytes exceeds the %d byte limit" % (n, MAX_CHUNK))
        if _sha256(raw).digest() != chunk_id:
            raise StoreError("chunk bytes do not hash to id %s" % chunk_id.hex())
        if self.has(chunk_id):
            return False
        if payload is None:
            payload = compressor(self.zstd_level).compress(raw)
            enc = ENC_ZSTD
        if enc == ENC_RAW or len(payload) >= n:
            enc, payload = ENC_RAW, raw
        self._append(((chunk_id, n, enc, bytes(payload)),), _now_ms())
        return True

    def ingest(self, chunks, batch_bytes=1 << 20, touch=False):
        """Store many raw chunks (bytes-like, e.g. pyfastcdc chunk.data) and return their ids in
        input order; the store ends up as if each had been put() in turn.

        Pipeline: this thread takes batches of about batch_bytes from the iterable, hashes them,
        drops chunks already stored and hands the rest to a compressor thread, one zstandard call
        per batch, which also frames the records; finished batches are buffered here. The last
        batches may still be compressing when ingest returns, so that consecutive calls (one per
        object) keep the compressor busy; has() and missing() count them, and get(), flush() and
        the rest wait for them. Chunks in read-only buffers (bytes, cut_buf views of bytes) are
        used in place; others are copied, so the caller may reuse its buffer.

        touch=True: chunks the index already held count as used now, as touch() would have
        them, without touch()'s wait for the batches still being compressed (what is buffered
        was stored just now and counts as recently used anyway)."""
        self._check_open()
        sha = _sha256
        ids = []
        batch = []
        size = 0
        for raw in chunks:
            n = len(raw)
            if n > MAX_CHUNK:
                raise StoreError("chunk of %d bytes exceeds the %d byte limit" % (n, MAX_CHUNK))
            batch.append(raw)
            size += n
            if size >= batch_bytes:
                bids = [sha(r).digest() for r in batch]
                ids += bids
                self._start(bids, batch, touch)
                batch = []
                size = 0
        if batch:
            bids = [sha(r).digest() for r in batch]
            ids += bids
            self._start(bids, batch, touch)
        return ids

    def _start(self, bids, batch, touch=False):
        """Send the chunks of a hashed batch that the store lacks to the compressor thread, then
        buffer the batches that are done (or wait, if too many are in flight)."""
        pend = self._pending
        sealed = self._sealed
        waiting = self._waiting
        ask = [c for c in bids if c not in pend and c not in sealed and c not in waiting]
        known = self.index.present(ask) if ask else ()
        if touch and known:
            self.index.touch(list(known), _now_ms())
        new_ids, new_raws = [], []
        for cid, raw in zip(bids, batch):
            if cid in pend or cid in sealed or cid in waiting or cid in known:
                continue
            raw = stable(raw)
            waiting[cid] = raw
            new_ids.append(cid)
            new_raws.append(raw)
        if new_ids:
            self._compressing.submit(new_ids, new_raws)
        while self._compressing.should_take():
            self._finish()

    # What ingest() compresses with: _compress_batch runs on a compressor thread, takes a list of
    # raw chunks and returns one payload per chunk in _batch_encoding (None: keep that chunk raw).
    # tools/bench_anchor_ingest.py replaces the two to time other compressors in this pipeline.
    _batch_encoding = ENC_ZSTD

    def _compress_batch(self, raws):
        return compress_many(raws, self.zstd_level)

    def _frame_batch(self, ids, raws):
        """Compressor thread: compress a batch, then pick each chunk's encoding and make its head
        (CRC included; zlib.crc32 drops the GIL for payloads over 5 KiB, so this overlaps with
        the caller's hashing). Returns [(id, raw_len, encoding, head, payload)] in input order."""
        comp = self._compress_batch(raws)
        benc = self._batch_encoding
        pack, crc32, out = _pack_head, _crc32, []
        add = out.append
        for cid, raw, p in zip(ids, raws, comp):
            n = len(raw)
            if p is not None and len(p) < n:
                enc = benc
            else:
                enc, p = ENC_RAW, raw
            head = pack(RECORD_MAGIC, cid, enc, n, len(p))
            add((cid, n, enc, head + _pack_crc(crc32(p, crc32(head))), p))
        return out

    def _finish(self):
        """Buffer the oldest compressed batch."""
        self._append_framed(self._compressing.take(), _now_ms())

    def _drain(self):
        """Buffer every batch still being compressed."""
        while self._compressing:
            self._finish()

    def flush(self):
        """Write buffered records, fsync them, then commit the index. Durable on return."""
        self._check_open()
        self._drain()
        self._flush_buffers()

    def _flush_buffers(self):
        """flush() without waiting for ingest batches still being compressed."""
        self._settle()
        if self._sealed:            # an automatic flush failed: retry its records first
            self._write_and_commit(self._sealed)
            self._sealed = {}
        if self._pending:
            self._write_and_commit(self._pending)
            self._pending = {}
            self._pending_bytes = 0

    def _flush_behind(self):
        """Automatic flush (flush_bytes reached): the writer thread writes, fsyncs and commits the
        buffered records while this thread goes on buffering. The write order is the same; the
        next flush, automatic or not, first waits for this one."""
        self._settle()
        if self._sealed:
            self._flush_buffers()
            return
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="chunkstore-writer")
        self._sealed = self._pending
        self._pending = {}
        self._pending_bytes = 0
        self._sealed_job = self._io.submit(self._write_and_commit, self._sealed)

    def _settle(self):
        """Wait for the automatic flush in progress, if any. If it failed, its records stay
        buffered (flush() retries them) and the error is raised here."""
        job = self._sealed_job
        if job is None:
            return
        self._sealed_job = None
        try:
            job.result()
        except StoreError:
            raise
        except Exception as e:
            raise StoreError("flush failed: %s" % e) from e
        self._sealed = {}

    def _write_and_commit(self, batch):
        """The write order for one batch of buffered records (dict id -> record)."""
        groups, rows = _plan(batch)
        ends = self._write_groups(groups)
        self._commit(rows, ends)

    def _write_groups(self, groups):
        """Steps 1 and 2 of the write order: append to segment files and fsync them. Returns the
        new end of each segment written."""
        return self.files.write_groups(groups)

    def _commit(self, rows, ends):
        """Step 3 of the write order: one index transaction for everything just fsynced."""
        self.index.insert(rows, ends)

    # ------------------------------------------------------------------ reading

    def _read_record(self, chunk_id, seq, off, stored_len):
        """Raw bytes of the record at seq/off, verified by CRC and by re-hashing."""
        want = RECORD_HEADER_SIZE + stored_len
        buf = self.files.read(seq, off, want)
        return self._check_record(chunk_id, buf, 0)

    def _check_record(self, chunk_id, buf, pos):
        r = parse_record(buf, pos)
        if r is None:
            raise StoreError("chunk %s: record damaged" % chunk_id.hex())
        cid, enc, raw_len, stored_len, end = r
        if cid != chunk_id:
            raise StoreError("chunk %s: record holds %s" % (chunk_id.hex(), cid.hex()))
        return self._decode_checked(chunk_id, enc, raw_len, memoryview(buf)[end - stored_len:end])

    @staticmethod
    def _decode_checked(chunk_id, enc, raw_len, payload):
        raw = decode_payload(enc, raw_len, payload)
        if len(raw) != raw_len or _sha256(raw).digest() != chunk_id:
            raise StoreError("chunk %s: bytes do not match the id" % chunk_id.hex())
        return raw

    def get(self, chunk_id):
        self._check_open()
        chunk_id = _as_id(chunk_id)
        if chunk_id in self._waiting:
            self._drain()
        p = self._buffered(chunk_id)
        if p is not None:
            return self._decode_checked(chunk_id, p[P_ENC], p[P_RAW_LEN], p[P_PAYLOAD])
        row = self.index.get(chunk_id)
        if row is None:
            raise StoreError("chunk %s is not stored" % chunk_id.hex())
        return self._read_record(chunk_id, row[0], row[1], row[3])

    # ------------------------------------------------------------------ retention

    def touch(self, chunk_ids):
        """Mark chunks as used now (input to least-recently-useful eviction). Not fsynced."""
        self._drain()
        now = _now_ms()
        rows = []
        for c in chunk_ids:
            c = _as_id(c)
            p = self._buffered(c)
            if p is not None:
                p[P_LAST_USE] = now
            else:
                rows.append(c)
        if rows:
            self.index.touch(rows, now)

    # ------------------------------------------------------------------ eviction and compaction

    def drop(self, chunk_ids):
        """Evict chunks: remove their index rows; their records become garbage in their segments
        (compact() reclaims it). Durable on return. Returns how many rows were removed.

        Why a drop cannot be undone by recovery, without a table of dropped ids: open() re-indexes
        only records past a segment's committed_end (and whole segments the index never knew).
        A dropped chunk had a committed row, and that row was committed in the same transaction
        as a committed_end covering its record, so the record lies below committed_end.  The
        drop is durable, and so is every earlier index transaction (ChunkIndex.delete; in SQLite a
        FULL commit of the one WAL): a power cut cannot keep the drop yet lose that committed_end.
        The two places that used to scan below a committed_end no longer do: a segment shorter
        than its committed_end is cut at its last intact row instead of rescanned, and a segment
        that compact() deregistered is deleted on open instead of scanned (storage/recovery.py)."""
        self._check_open()
        ids = [_as_id(c) for c in chunk_ids]
        if any(self._buffered(c) is not None or c in self._waiting for c in ids):
            self.flush()
        self._settle()              # an automatic flush may still be committing rows
        return self.index.delete(ids)

    def lru(self, limit, after=None):
        """Up to limit [(chunk_id, stored_len, last_use)] of indexed chunks, least recently used
        first (last_use, then id), strictly after the key after = (last_use, id): the order
        eviction takes them in. Chunks still buffered are the newest of all and are not listed
        until flushed."""
        self._check_open()
        return self.index.lru(limit, after)

    def record_bytes(self, chunk_ids=None):
        """Record bytes (49 + stored length) of the indexed chunks among chunk_ids (distinct
        ids), or of all of them; buffered ones count once flushed."""
        self._check_open()
        return self.index.record_bytes(chunk_ids)

    def compact(self, max_live_fraction=0.5):
        """Rewrite sparse sealed segments: each segment other than the one being appended to whose
        live records (indexed rows, 49 + stored_len bytes each) take less than max_live_fraction
        of its file has them copied to the end of the current segment(s), then is deleted.

        Per round (up to flush_bytes of live records): read and CRC-check the records, append
        them like a flush (write, fsync, directory fsync for a new file), then one index
        transaction (synchronous=FULL) moves their rows, sets the new committed_end values and
        deregisters the old segments, and only then are the old files unlinked (then the
        directory fsynced). A crash before the commit leaves copies past committed_end, which
        recovery finds already indexed (ignored); a crash after it leaves deregistered files
        with no rows, which recovery deletes. A segment with a damaged live record is left as it
        is (counted in segments_skipped): its chunk is unreadable anyway and verify() names it.

        Returns {"segments_removed", "bytes_reclaimed" (file bytes removed minus bytes copied),
        "records_moved", "segments_skipped"}."""
        self._check_open()
        self.flush()
        res = {"segments_removed": 0, "bytes_reclaimed": 0, "records_moved": 0,
               "segments_skipped": 0}
        live = self.index.live_by_segment()
        batch, batch_bytes = [], 0
        for seq in sorted(s for s in self.index.segments() if s < self._wseq):
            n = live.get(seq, 0)
            if n >= max_live_fraction * self.files.size(seq):
                continue
            batch.append(seq)
            batch_bytes += n
            if batch_bytes >= self.flush_bytes:
                self._compact_round(batch, res)
                batch, batch_bytes = [], 0
        if batch:
            self._compact_round(batch, res)
        return res

    def _compact_round(self, seqs, res):
        recs = []                   # (id, record bytes)
        removed = []
        for seq in seqs:
            rows = self.index.rows_in(seq)
            got = []
            for chunk_id, off, stored_len in rows:
                n = RECORD_HEADER_SIZE + stored_len
                buf = self.files.read(seq, off, n)
                r = parse_record(buf, 0)
                if r is None or r[0] != chunk_id or r[4] != n:
                    got = None
                    break
                got.append((chunk_id, buf))
            if got is None:
                res["segments_skipped"] += 1
                continue
            recs += got
            removed.append(seq)
        if not removed:
            return
        # place the copies as _append_framed would: after the current end, rolling over
        seq, end = self._wseq, self._wend
        groups, moves, cur = [], [], None
        for chunk_id, buf in recs:
            n = len(buf)
            if end + n > self.segment_size and end > SEGMENT_HEADER_SIZE:
                seq += 1
                end = SEGMENT_HEADER_SIZE
            if seq != cur:
                cur = seq
                bufs = []
                groups.append([seq, end, bufs])
            bufs.append(buf)
            moves.append((seq, end, chunk_id))
            end += n
        ends = self._write_groups(groups) if groups else {}
        self._compact_commit(moves, ends, removed)
        if groups:
            self._wseq, self._wend = seq, end
        sizes = sum(self.files.size(s) for s in removed)
        self._remove_segments(removed)
        res["segments_removed"] += len(removed)
        res["records_moved"] += len(moves)
        res["bytes_reclaimed"] += sizes - sum(len(b) for _, b in recs)

    def _compact_commit(self, moves, ends, removed):
        """compact(): the one index transaction of a round (a test hook: crash before it)."""
        self.index.relocate(moves, ends, removed)

    def _remove_segments(self, seqs):
        """compact(): unlink deregistered segment files, then fsync the directory (a test hook:
        crash before it)."""
        self.files.remove(seqs)

    def info(self, chunk_id):
        """Index entry of one chunk as a dict, or None."""
        chunk_id = _as_id(chunk_id)
        if chunk_id in self._waiting:
            self._drain()
        p = self._buffered(chunk_id)
        if p is not None:
            return {"seg": p[P_SEG], "off": p[P_OFF], "raw_len": p[P_RAW_LEN],
                    "stored_len": len(p[P_PAYLOAD]), "enc": p[P_ENC],
                    "last_use": p[P_LAST_USE], "flushed": False}
        row = self.index.get(chunk_id)
        if row is None:
            return None
        keys = ("seg", "off", "raw_len", "stored_len", "enc", "last_use")
        return dict(zip(keys, row), flushed=True)

    # ------------------------------------------------------------------ whole-store checks

    def stats(self):
        """Totals over stored and buffered chunks."""
        self._drain()
        self._settle()              # else rows committed behind us would count twice
        n, raw, stored = self.index.totals()
        live = self.index.record_bytes()
        segs, disk = self.files.usage()
        for p in list(self._pending.values()) + list(self._sealed.values()):
            n += 1
            raw += p[P_RAW_LEN]
            stored += len(p[P_PAYLOAD])
            segs.add(p[P_SEG])
        return {"chunks": n, "raw_bytes": raw, "stored_bytes": stored, "segments": len(segs),
                "pending_chunks": len(self._pending) + len(self._sealed),
                # on flash: segment files as they are; live: records of indexed chunks (49 +
                # stored length each; buffered ones count once flushed)
                "disk_bytes": disk, "live_bytes": live}

    def verify(self):
        """Flush, then re-read every indexed record in segment order, check its CRC, decode it and
        re-hash it. Returns {"chunks": n, "bad": [hex ids]}. A segment's header is not the
        records' business: segment_problems() checks headers."""
        self.flush()
        bad = []
        n = 0
        for cid, seq, off, stored_len in self.index.by_place():
            n += 1
            try:
                self._read_record(cid, seq, off, stored_len)
            except (StoreError, OSError):
                bad.append(cid.hex())
        return {"chunks": n, "bad": bad}

    def segment_problems(self):
        """What is wrong with the segments the index lists, and with the index itself: a
        missing file, a damaged header, an index SQLite finds inconsistent (text each)."""
        self.flush()
        out = []
        for seq in sorted(self.index.segments()):
            p = header_problem(self.files.path(seq), seq)
            if p is not None:
                out.append(p)
        p = self.index.check()
        if p is not None:
            out.append("index: %s" % p)
        return out

    def quarantine(self, chunk_ids):
        """Chunks found damaged or unreadable: remove their index rows (durably), so the store no
        longer claims them (has() is false, a backup answers NEED and the next upload stores
        them anew). Returns how many rows were removed."""
        n = self.drop(chunk_ids)
        if n:
            log.warning("chunk store %s: %d damaged chunks quarantined", self.root, n)
        return n

    def repair(self, bad_ids):
        """What `verify --repair` does to the store: quarantine bad_ids (from verify()); a
        segment the index lists but that is gone has its rows quarantined; a damaged header is
        written again; an index SQLite finds inconsistent is rebuilt from the segments. Returns
        {"quarantined", "headers_rewritten", "segments_lost", "index_rebuilt"}."""
        from anchor.storage.recovery import quarantine_segment
        self.flush()
        out = {"quarantined": self.quarantine([bytes.fromhex(h) for h in bad_ids]),
               "headers_rewritten": 0, "segments_lost": 0, "index_rebuilt": False}
        on_disk = list_segments(self.seg_dir)
        for seq in sorted(self.index.segments()):
            path = self.files.path(seq)
            if seq not in on_disk:
                self.files.remove([seq])
                out["quarantined"] += len(quarantine_segment(self.index, seq))
                out["segments_lost"] += 1
            elif header_problem(path, seq) is not None:
                write_header(path, seq)
                out["headers_rewritten"] += 1
        if self.index.check() is not None:
            self._settle()
            self.files.close()
            self.index.close()
            self._rebuild_index("index.sqlite failed its integrity check")
            out["index_rebuilt"] = True
        elif self._wseq not in self.index.segments():
            # the segment appends went to is gone: continue after the last one left
            last = self.index.last_segment()
            self._wseq, self._wend = (1, SEGMENT_HEADER_SIZE) if last is None else tuple(last)
        self.damage = []
        return out

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self):
        if self._closed:
            raise StoreError("store is closed")

    def _release(self):
        self._closed = True
        self._compressing.shutdown()
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        self.files.close()
        self.index.close()

    def close(self):
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
