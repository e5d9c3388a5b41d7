"""The anchor's chunk store: append-only segment files of compressed chunks plus a SQLite index.

On-flash format, write order and recovery rules: docs/storage.md (storage format version 1).

    root/segments/NNNNNNNN.seg   16-byte header, then records (RECORD_HEAD + crc32 + payload)
    root/index.sqlite            chunk id -> segment, offset, lengths, encoding, class, last use

Writes are batched: put()/ingest() append records to an in-memory buffer; flush() writes them
with one gathered write per segment, fsyncs the segments (and the directory when a file is new)
and only then commits the index transaction.  An automatic flush (flush_bytes buffered) does the
same on a writer thread so the caller is not blocked by the card.  open() re-indexes complete
records written after the last commit and truncates torn tails, so everything a returned
flush() promised is readable.  drop() evicts chunks (index rows only) and compact() rewrites
sparse sealed segments; how neither can be undone by recovery: docs/storage.md, "Eviction and
compaction".

One thread uses a store at a time (the daemon's asyncio thread).  ingest() hands batches of
chunks to a compressor thread, each batch one zstandard call that runs without the GIL, while
the calling thread hashes the next batch; the compressor thread also frames each record (head +
CRC) and the calling thread buffers finished batches (see ingest()).
"""

import hashlib
import os
import re
import sqlite3
import struct
import threading
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import zstandard

FORMAT_VERSION = 1

SEGMENT_MAGIC = b"ANCHSEG\x00"
SEGMENT_HEADER = struct.Struct("<8sHHI")       # magic, format version, reserved (0), segment number
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size      # 16

RECORD_MAGIC = b"\x89CHK"
RECORD_HEAD = struct.Struct("<4s32sBII")       # magic, chunk id, encoding, raw length, stored length
RECORD_CRC = struct.Struct("<I")               # crc32 of the 45 head bytes, then of the payload
RECORD_HEADER_SIZE = RECORD_HEAD.size + RECORD_CRC.size   # 49

ENC_RAW = 0
ENC_ZLIB = 1
ENC_ZSTD = 2
ENCODINGS = (ENC_RAW, ENC_ZLIB, ENC_ZSTD)

MAX_CHUNK = 64 * 1024

CLASS_PASS_THROUGH = 0      # evictable under the capacity budget, least recently useful first
CLASS_PINNED = 1            # referenced by a snapshot: never evicted

ZSTD_LEVEL = 1

SEGMENT_NAME = re.compile(r"^(\d{8})\.seg$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS segments (
    seq           INTEGER PRIMARY KEY,
    committed_end INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id         BLOB PRIMARY KEY,
    seg        INTEGER NOT NULL,
    off        INTEGER NOT NULL,
    raw_len    INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    enc        INTEGER NOT NULL,
    class      INTEGER NOT NULL DEFAULT 0,
    last_use   INTEGER NOT NULL
) WITHOUT ROWID;
"""

INSERT_CHUNK = "INSERT OR IGNORE INTO chunks VALUES (?,?,?,?,?,?,?,?)"
ROW_FIELDS = 8
# Chunk rows go in as multi-row INSERTs of up to _INSERT_WIDTH rows: one sqlite3_step (one GIL
# release) per statement instead of one per row, which other threads waiting for the GIL made
# costly (see docs/decisions.md, "Chunk store ingest: the store's own path").
_INSERT_WIDTH = 256
_INSERT_QUERIES = {}

# SQLite's default limit on host parameters in one statement is 32766 (since 3.32).
_MAX_VARS = 32000
_IN_QUERIES = {}

_pack_head = RECORD_HEAD.pack
_pack_crc = RECORD_CRC.pack
_crc32 = zlib.crc32
_sha256 = hashlib.sha256


def _now_ms():
    # last_use in milliseconds: eviction order must tell apart what happened in one second
    return int(time.time() * 1000)


class StoreError(Exception):
    """Raised for anything the store refuses or cannot do: bad input, missing or corrupt data."""


def segment_name(seq):
    return "%08d.seg" % seq


def make_head(chunk_id, encoding, raw_len, payload):
    """The 49 bytes that precede a payload: head fields, then CRC-32 over them and the payload."""
    head = _pack_head(RECORD_MAGIC, chunk_id, encoding, raw_len, len(payload))
    return head + _pack_crc(_crc32(payload, _crc32(head)))


def make_record(chunk_id, encoding, raw_len, payload):
    """One whole record as bytes."""
    return make_head(chunk_id, encoding, raw_len, payload) + bytes(payload)


def decode_payload(encoding, raw_len, payload):
    """Return the raw bytes of a payload, never producing more than raw_len bytes."""
    if encoding == ENC_RAW:
        return bytes(payload)
    if encoding == ENC_ZLIB:
        d = zlib.decompressobj()
        try:
            out = d.decompress(payload, raw_len)
        except zlib.error as e:
            raise StoreError("zlib payload does not decode: %s" % e) from None
        if not d.eof or d.unconsumed_tail or d.unused_data:
            raise StoreError("zlib payload is not one stream of %d bytes" % raw_len)
        return out
    if encoding == ENC_ZSTD:
        try:
            size = zstandard.frame_content_size(payload)
        except zstandard.ZstdError:
            raise StoreError("zstd payload has no valid frame header") from None
        if size not in (-1, raw_len):
            raise StoreError("zstd frame declares %d bytes, expected %d" % (size, raw_len))
        try:
            return zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise StoreError("zstd payload does not decode: %s" % e) from None
    raise StoreError("unknown encoding %r" % (encoding,))


def parse_record(buf, pos):
    """Check the record at buf[pos:] (magic, lengths, CRC). Return (id, enc, raw_len, stored_len,
    end) or None when it is incomplete or damaged."""
    if len(buf) - pos < RECORD_HEADER_SIZE:
        return None
    magic, cid, enc, raw_len, stored_len = RECORD_HEAD.unpack_from(buf, pos)
    if magic != RECORD_MAGIC or enc not in ENCODINGS or raw_len > MAX_CHUNK:
        return None
    if (enc == ENC_RAW and stored_len != raw_len) or (enc != ENC_RAW and stored_len >= raw_len):
        return None
    start = pos + RECORD_HEADER_SIZE
    end = start + stored_len
    if end > len(buf):
        return None
    (crc,) = RECORD_CRC.unpack_from(buf, pos + RECORD_HEAD.size)
    mv = memoryview(buf)
    if _crc32(mv[start:end], _crc32(mv[pos:pos + RECORD_HEAD.size])) != crc:
        return None
    return cid, enc, raw_len, stored_len, end


_tls = threading.local()


def _compressor(level=ZSTD_LEVEL):
    """This thread's zstd context for level (contexts are not thread-safe)."""
    cache = getattr(_tls, "cctx", None)
    if cache is None:
        cache = _tls.cctx = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level)
    return c


def _compress_many(raws, level=ZSTD_LEVEL):
    """Compress a batch of chunks, each to its own zstd frame, in one call that drops the GIL once
    (a per-chunk loop would hand the GIL back and forth for every chunk). Returns a sequence of
    buffers in input order."""
    cctx = _compressor(level)
    if hasattr(cctx, "multi_compress_to_buffer") and all(raws):
        return cctx.multi_compress_to_buffer(raws)
    return [cctx.compress(r) for r in raws]


def _stable(raw):
    """raw itself when it cannot change under us (bytes, a read-only view), else a copy."""
    if type(raw) is bytes or (type(raw) is memoryview and raw.readonly):
        return raw
    return bytes(raw)


def _as_id(chunk_id):
    if type(chunk_id) is not bytes:
        chunk_id = bytes(chunk_id)
    if len(chunk_id) != 32:
        raise StoreError("chunk id must be 32 bytes, got %d" % len(chunk_id))
    return chunk_id


_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def _pwrite_all(fd, buffers, off):
    """Write buffers back to back at off with gathered writes (no joined copy); return the end."""
    for i in range(0, len(buffers), _IOV_MAX):
        part = buffers[i:i + _IOV_MAX]
        want = sum(map(len, part))
        done = os.pwritev(fd, part, off)
        if done < want:                         # short write: finish the rest plainly
            rest = memoryview(b"".join(part))
            while done < want:
                done += os.pwrite(fd, rest[done:], off + done)
        off += want
    return off


def _plan(batch):
    """Group buffered records by segment for gathered writes; make their index rows (one flat
    list, ROW_FIELDS values per row, for _insert_rows)."""
    groups = []                 # [seq, first offset, [head, payload, head, payload, ...]]
    rows = []
    cur = -1
    bufs = None
    for cid, p in batch.items():
        seq, off, raw_len, enc, head, payload, cls, last_use = p
        if seq != cur:
            cur = seq
            bufs = []
            groups.append([seq, off, bufs])
        bufs += (head, payload)
        rows += (cid, seq, off, raw_len, len(payload), enc, cls, last_use)
    return groups, rows


def _insert_rows(db, flat):
    """Insert chunk rows given as one flat list (ROW_FIELDS values per row), in statements of
    power-of-two widths up to _INSERT_WIDTH rows (prepared once each, then cached). Returns the
    number of rows inserted."""
    n = len(flat) // ROW_FIELDS
    done = 0
    i = 0
    while i < n:
        w = min(_INSERT_WIDTH, 1 << ((n - i).bit_length() - 1))
        q = _INSERT_QUERIES.get(w)
        if q is None:
            q = _INSERT_QUERIES[w] = ("INSERT OR IGNORE INTO chunks VALUES "
                                      + ",".join(["(?,?,?,?,?,?,?,?)"] * w))
        done += max(db.execute(q, flat[i * ROW_FIELDS:(i + w) * ROW_FIELDS]).rowcount, 0)
        i += w
    return done


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A buffered (appended, not yet flushed) record is a list, indexed by these:
P_SEG, P_OFF, P_RAW_LEN, P_ENC, P_HEAD, P_PAYLOAD, P_CLASS, P_LAST_USE = range(8)


class ChunkStore:
    CLASS_PASS_THROUGH = CLASS_PASS_THROUGH
    CLASS_PINNED = CLASS_PINNED

    def __init__(self, root, segment_size=4 << 20, flush_bytes=8 << 20, workers=None,
                 zstd_level=ZSTD_LEVEL):
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
        self._inflight = deque()    # ingest batches being compressed: (ids, raws, Future)
        self._waiting = {}          # id -> raw chunk, for every chunk in _inflight
        self._sealed = {}           # records an automatic flush handed to the writer thread
        self._sealed_job = None     # that flush's Future; _settle() waits for it
        self._io = None             # the writer thread (one), created on first automatic flush
        self._wdb = None            # index connection that commits chunk rows
        self._wfd = None            # fd of the current (last) segment, opened O_RDWR
        self._wseq = 0
        self._rfds = {}             # seq -> read-only fd, a small cache
        self._pool = None
        self._closed = False
        self.recovery = {"reindexed": 0, "truncated_bytes": 0, "removed_files": 0, "lost_rows": 0}

        made = not os.path.isdir(self.seg_dir)
        os.makedirs(self.seg_dir, exist_ok=True)
        if made:
            _fsync_dir(root)
            _fsync_dir(os.path.dirname(os.path.abspath(root)))
        self.db = sqlite3.connect(self.index_path, isolation_level=None, check_same_thread=False,
                                  cached_statements=256)
        try:
            self._open_index()
            self._recover()
        except BaseException:
            self.db.close()
            raise

    def _open_index(self):
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is enough: every row describes a record that was fsynced in its segment first,
        # and open() rebuilds rows of commits lost with the WAL tail.  pin() commits with FULL.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('format_version', ?)", (FORMAT_VERSION,))
        elif row[0] != FORMAT_VERSION:
            raise StoreError("index %s has storage format version %r; this anchor reads version %d"
                             % (self.index_path, row[0], FORMAT_VERSION))

    # ------------------------------------------------------------------ open and recovery

    def _read_header(self, path, seq, fresh=False):
        """Return 'ok', or 'torn' for a header that is short or all zero; raise for a foreign or
        newer file. fresh: a segment past every committed one, which no flush ever promised:
        there a header without the magic is 'torn' too (the power went before the header
        landed, and the file holds whatever the card had in those blocks)."""
        with open(path, "rb") as f:
            head = f.read(SEGMENT_HEADER_SIZE)
        if len(head) < SEGMENT_HEADER_SIZE or head == bytes(SEGMENT_HEADER_SIZE):
            return "torn"
        magic, version, _reserved, number = SEGMENT_HEADER.unpack(head)
        if magic != SEGMENT_MAGIC:
            if fresh:
                return "torn"
            raise StoreError("%s is not an Anchor segment (bad magic)" % path)
        if version != FORMAT_VERSION:
            raise StoreError("%s has segment format version %d; this anchor reads version %d "
                             "(upgrade the anchor software, or restore a matching backup)"
                             % (path, version, FORMAT_VERSION))
        if number != seq:
            raise StoreError("%s says it is segment %d" % (path, number))
        return "ok"

    def _recover(self):
        db = self.db
        committed = dict(db.execute("SELECT seq, committed_end FROM segments"))
        on_disk = {}
        for name in os.listdir(self.seg_dir):
            m = SEGMENT_NAME.match(name)
            if m:
                on_disk[int(m.group(1))] = os.path.join(self.seg_dir, name)
        for seq in committed:
            if seq not in on_disk:
                raise StoreError("segment %s is in the index but missing on flash" % segment_name(seq))
        last_committed = max(committed) if committed else 0
        now = _now_ms()
        rows = []
        ends = {}
        dir_changed = False
        for seq in sorted(on_disk):
            path = on_disk[seq]
            if (seq not in committed and seq < last_committed and db.execute(
                    "SELECT 1 FROM chunks WHERE seg=? LIMIT 1", (seq,)).fetchone() is None):
                # Below the last committed segment, yet not in the index and holding no row: a
                # segment compact() had emptied and deregistered, whose unlink did not happen (or
                # was not yet durable) before the crash.  Everything in it lives elsewhere or was
                # dropped; scanning it would bring dropped chunks back, so it goes.
                os.unlink(path)
                dir_changed = True
                self.recovery["removed_files"] += 1
                continue
            state = self._read_header(path, seq, fresh=seq not in committed and seq > last_committed)
            if seq not in committed:
                if state == "torn":
                    if seq < last_committed:
                        raise StoreError("%s has a damaged header" % path)
                    # A segment created by a flush that never completed: nothing in it was promised.
                    os.unlink(path)
                    dir_changed = True
                    self.recovery["removed_files"] += 1
                    continue
                start = SEGMENT_HEADER_SIZE
            else:
                if state == "torn":
                    raise StoreError("%s has a damaged header" % path)
                start = committed[seq]
            size = os.path.getsize(path)
            scan = True
            if size < start:
                # Committed bytes are gone (the medium lost them): forget the rows that point there.
                lost = db.execute("SELECT count(*) FROM chunks WHERE seg=? AND off+?+stored_len>?",
                                  (seq, RECORD_HEADER_SIZE, size)).fetchone()[0]
                db.execute("DELETE FROM chunks WHERE seg=? AND off+?+stored_len>?",
                           (seq, RECORD_HEADER_SIZE, size))
                self.recovery["lost_rows"] += lost
                start = db.execute("SELECT max(off+?+stored_len) FROM chunks WHERE seg=?",
                                   (RECORD_HEADER_SIZE, seq)).fetchone()[0] or SEGMENT_HEADER_SIZE
                # ...and do not scan what is left past the last intact row: it lies below the old
                # committed_end, where every record without a row was dropped (drop()), so
                # re-indexing it would undo a drop.  It is cut off like a torn tail.
                scan = False
            end = start
            if size > start:
                tail = b""
                if scan:
                    with open(path, "rb") as f:
                        f.seek(start)
                        tail = f.read()
                pos = 0
                while True:
                    r = parse_record(tail, pos)
                    if r is None:
                        break
                    cid, enc, raw_len, stored_len, nxt = r
                    rows.append((cid, seq, start + pos, raw_len, stored_len, enc,
                                 self.CLASS_PASS_THROUGH, now))
                    pos = nxt
                end = start + pos
                if end < size:
                    fd = os.open(path, os.O_RDWR)
                    try:
                        os.ftruncate(fd, end)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    self.recovery["truncated_bytes"] += size - end
            if end != committed.get(seq):
                ends[seq] = end
        if dir_changed:
            _fsync_dir(self.seg_dir)
        if rows or ends:
            db.execute("BEGIN")
            cur = db.executemany(INSERT_CHUNK, rows)
            self.recovery["reindexed"] += max(cur.rowcount, 0)
            db.executemany("INSERT OR REPLACE INTO segments VALUES (?,?)", ends.items())
            db.execute("COMMIT")
        last = db.execute("SELECT seq, committed_end FROM segments ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            self._wseq, self._wend = 1, SEGMENT_HEADER_SIZE
        else:
            self._wseq, self._wend = last

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
        return self.db.execute("SELECT 1 FROM chunks WHERE id=?", (chunk_id,)).fetchone() is not None

    def _present(self, ids):
        """The subset of ids (bytes) that are indexed. Lists are padded (to a multiple of 32, or
        a power of two) so that a few IN (...) statements are prepared once and then cached."""
        found = set()
        execute = self.db.execute
        for i in range(0, len(ids), _MAX_VARS):
            part = ids[i:i + _MAX_VARS]
            n = len(part)
            width = (n + 31) & ~31 if n <= 1024 else min(1 << (n - 1).bit_length(), _MAX_VARS)
            if len(part) < width:
                part = part + [b""] * (width - len(part))     # b"" is never a chunk id
            q = _IN_QUERIES.get(width)
            if q is None:
                q = _IN_QUERIES[width] = "SELECT id FROM chunks WHERE id IN (%s)" % ",".join("?" * width)
            found.update(r[0] for r in execute(q, part))
        return found

    def missing(self, chunk_ids):
        """Indices (into chunk_ids) of the ids the store does not hold."""
        ids = [_as_id(c) for c in chunk_ids]
        buffered = self._buffered
        waiting = self._waiting
        ask = [c for c in ids if c not in waiting and buffered(c) is None]
        found = self._present(ask) if ask else ()
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
            pend[cid] = [seq, end, raw_len, enc, head, payload, CLASS_PASS_THROUGH, now]
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
            payload = _compressor(self.zstd_level).compress(raw)
            enc = ENC_ZSTD
        if enc == ENC_RAW or len(payload) >= n:
            enc, payload = ENC_RAW, raw
        self._append(((chunk_id, n, enc, bytes(payload)),), _now_ms())
        return True

    def ingest(self, chunks, batch_bytes=1 << 20):
        """Store many raw chunks (bytes-like, e.g. pyfastcdc chunk.data) and return their ids in
        input order; the store ends up as if each had been put() in turn.

        Pipeline: this thread takes batches of about batch_bytes from the iterable, hashes them,
        drops chunks already stored and hands the rest to a compressor thread, one zstandard call
        per batch, which also frames the records; finished batches are buffered here. The last
        batches may still be compressing when ingest returns, so that consecutive calls (one per
        object) keep the compressor busy; has() and missing() count them, and get(), flush() and
        the rest wait for them. Chunks in read-only buffers (bytes, cut_buf views of bytes) are
        used in place; others are copied, so the caller may reuse its buffer."""
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
                self._start(bids, batch)
                batch = []
                size = 0
        if batch:
            bids = [sha(r).digest() for r in batch]
            ids += bids
            self._start(bids, batch)
        return ids

    def _start(self, bids, batch):
        """Send the chunks of a hashed batch that the store lacks to the compressor thread, then
        buffer the batches that are done (or wait, if too many are in flight)."""
        pend = self._pending
        sealed = self._sealed
        waiting = self._waiting
        ask = [c for c in bids if c not in pend and c not in sealed and c not in waiting]
        known = self._present(ask) if ask else ()
        new_ids, new_raws = [], []
        for cid, raw in zip(bids, batch):
            if cid in pend or cid in sealed or cid in waiting or cid in known:
                continue
            raw = _stable(raw)
            waiting[cid] = raw
            new_ids.append(cid)
            new_raws.append(raw)
        if new_ids:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="chunkstore-zstd")
            fut = self._pool.submit(self._frame_batch, new_ids, new_raws)
            self._inflight.append((new_ids, new_raws, fut))
        inflight = self._inflight
        while inflight and (len(inflight) > 2 * self.workers + 2 or inflight[0][2].done()):
            self._finish()

    # What ingest() compresses with: _compress_batch runs on a compressor thread, takes a list of
    # raw chunks and returns one payload per chunk in _batch_encoding (None: keep that chunk raw).
    # tools/bench_anchor_ingest.py replaces the two to time other compressors in this pipeline.
    _batch_encoding = ENC_ZSTD

    def _compress_batch(self, raws):
        return _compress_many(raws, self.zstd_level)

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
        new_ids, new_raws, fut = self._inflight[0]
        try:
            recs = fut.result()
        except Exception as e:
            self._inflight.popleft()
            for cid in new_ids:
                self._waiting.pop(cid, None)
            raise StoreError("compressing chunks failed: %s" % e) from e
        self._inflight.popleft()
        waiting = self._waiting
        for cid in new_ids:
            del waiting[cid]
        self._append_framed(recs, _now_ms())

    def _drain(self):
        """Buffer every batch still being compressed."""
        while self._inflight:
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
        ends = {}
        fds = []                    # (seq, fd) in group order; the last one stays open for appends
        new_file = False
        try:
            try:
                for seq, off, buffers in groups:
                    fd, created = self._segment_fd(seq)
                    fds.append((seq, fd))
                    new_file |= created
                    ends[seq] = _pwrite_all(fd, buffers, off)
                for _, fd in fds:
                    os.fsync(fd)
                if new_file:
                    _fsync_dir(self.seg_dir)
            finally:
                keep = fds[-1] if fds else self._wfd
                opened = {fd for _, fd in fds}
                if self._wfd is not None:
                    opened.add(self._wfd[1])
                for fd in opened - {keep[1] if keep else None}:
                    os.close(fd)
                self._wfd = keep
        except OSError as e:
            raise StoreError("writing segments failed: %s" % e) from e
        return ends

    def _segment_fd(self, seq):
        """An O_RDWR fd for segment seq, creating the file (with its header) if needed."""
        if self._wfd is not None and self._wfd[0] == seq:
            return self._wfd[1], False
        path = os.path.join(self.seg_dir, segment_name(seq))
        created = False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        except FileExistsError:
            fd = os.open(path, os.O_RDWR)
        if created or os.fstat(fd).st_size < SEGMENT_HEADER_SIZE:
            os.pwrite(fd, SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, seq), 0)
        return fd, created

    def _writer(self):
        """The connection chunk rows are committed on: its own, because automatic flushes commit
        from the writer thread while this thread keeps reading through self.db."""
        if self._wdb is None:
            db = sqlite3.connect(self.index_path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._wdb = db
        return self._wdb

    def _commit(self, rows, ends):
        """Step 3 of the write order: one index transaction for everything just fsynced."""
        db = self._writer()
        db.execute("BEGIN")
        try:
            _insert_rows(db, rows)
            db.executemany("INSERT OR REPLACE INTO segments VALUES (?,?)", ends.items())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ reading

    def _read_fd(self, seq):
        fd = self._rfds.get(seq)
        if fd is None:
            if len(self._rfds) >= 32:
                for old in self._rfds.values():
                    os.close(old)
                self._rfds.clear()
            try:
                fd = os.open(os.path.join(self.seg_dir, segment_name(seq)), os.O_RDONLY)
            except FileNotFoundError:
                raise StoreError("segment %s is missing" % segment_name(seq)) from None
            self._rfds[seq] = fd
        return fd

    def _read_record(self, chunk_id, seq, off, stored_len):
        """Raw bytes of the record at seq/off, verified by CRC and by re-hashing."""
        want = RECORD_HEADER_SIZE + stored_len
        buf = os.pread(self._read_fd(seq), want, off)
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
        row = self.db.execute("SELECT seg, off, stored_len FROM chunks WHERE id=?",
                              (chunk_id,)).fetchone()
        if row is None:
            raise StoreError("chunk %s is not stored" % chunk_id.hex())
        return self._read_record(chunk_id, *row)

    # ------------------------------------------------------------------ retention

    def set_class(self, chunk_ids, cls):
        """Set the retention class of stored chunks; durable on return (the index commit is
        fsynced, because, unlike chunk rows, a class cannot be rebuilt from the segments).
        Returns how many of the ids were found."""
        ids = [_as_id(c) for c in chunk_ids]
        if any(self._buffered(c) is not None or c in self._waiting for c in ids):
            self.flush()
        db = self.db
        db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN")
            try:
                n = db.executemany("UPDATE chunks SET class=? WHERE id=?",
                                   [(cls, c) for c in ids]).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return n

    def pin(self, chunk_ids):
        return self.set_class(chunk_ids, self.CLASS_PINNED)

    def unpin(self, chunk_ids):
        return self.set_class(chunk_ids, self.CLASS_PASS_THROUGH)

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
                rows.append((now, c))
        if rows:
            db = self.db
            db.execute("BEGIN")
            db.executemany("UPDATE chunks SET last_use=? WHERE id=?", rows)
            db.execute("COMMIT")

    # ------------------------------------------------------------------ eviction and compaction

    def drop(self, chunk_ids):
        """Evict chunks: remove their index rows; their records become garbage in their segments
        (compact() reclaims it). Durable on return. Returns how many rows were removed.

        Why a drop cannot be undone by recovery, without a table of dropped ids: open() re-indexes
        only records past a segment's committed_end (and whole segments the index never knew).
        A dropped chunk had a committed row, and that row was committed in the same transaction
        as a committed_end covering its record, so the record lies below committed_end.  The
        drop commits with synchronous=FULL, which makes every earlier WAL transaction durable
        too: a power cut cannot keep the drop yet lose that committed_end.  The two places that
        used to scan below a committed_end no longer do: a segment shorter than its
        committed_end is cut at its last intact row instead of rescanned, and a segment that
        compact() deregistered is deleted on open instead of scanned (see _recover)."""
        self._check_open()
        ids = [_as_id(c) for c in chunk_ids]
        if any(self._buffered(c) is not None or c in self._waiting for c in ids):
            self.flush()
        self._settle()              # an automatic flush may still be committing rows
        return self._commit_full([("DELETE FROM chunks WHERE id=?", [(c,) for c in ids])])[0]

    def _commit_full(self, statements):
        """Run [(sql, rows)] through executemany in one transaction committed with
        synchronous=FULL (what cannot be rebuilt from the segments). Returns the rowcounts."""
        db = self.db
        db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN")
            try:
                counts = [max(db.executemany(q, rows).rowcount, 0) for q, rows in statements]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return counts

    def pass_through(self, limit):
        """Eviction candidates: up to limit [(chunk_id, stored_len)] of indexed pass-through
        (class 0) chunks, least recently used first (last_use, then id). Chunks still buffered
        are the newest of all and are not listed until flushed."""
        self._check_open()
        return self.db.execute("SELECT id, stored_len FROM chunks WHERE class=? "
                               "ORDER BY last_use, id LIMIT ?",
                               (CLASS_PASS_THROUGH, int(limit))).fetchall()

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
        db = self.db
        live = dict(db.execute("SELECT seg, sum(stored_len) + count(*) * ? FROM chunks "
                               "GROUP BY seg", (RECORD_HEADER_SIZE,)))
        batch, batch_bytes = [], 0
        for (seq,) in db.execute("SELECT seq FROM segments WHERE seq < ? ORDER BY seq",
                                 (self._wseq,)).fetchall():
            n = live.get(seq, 0)
            if n >= max_live_fraction * os.path.getsize(os.path.join(self.seg_dir,
                                                                     segment_name(seq))):
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
        db = self.db
        recs = []                   # (id, record bytes)
        removed = []
        for seq in seqs:
            rows = db.execute("SELECT id, off, stored_len FROM chunks WHERE seg=? ORDER BY off",
                              (seq,)).fetchall()
            fd = self._read_fd(seq) if rows else None
            got = []
            for chunk_id, off, stored_len in rows:
                n = RECORD_HEADER_SIZE + stored_len
                buf = os.pread(fd, n, off)
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
        sizes = sum(os.path.getsize(os.path.join(self.seg_dir, segment_name(s))) for s in removed)
        self._remove_segments(removed)
        res["segments_removed"] += len(removed)
        res["records_moved"] += len(moves)
        res["bytes_reclaimed"] += sizes - sum(len(b) for _, b in recs)

    def _compact_commit(self, moves, ends, removed):
        """compact(): the one index transaction of a round (a test hook: crash before it)."""
        self._commit_full([
            ("UPDATE chunks SET seg=?, off=? WHERE id=?", moves),
            ("INSERT OR REPLACE INTO segments VALUES (?,?)", list(ends.items())),
            ("DELETE FROM segments WHERE seq=?", [(s,) for s in removed]),
        ])

    def _remove_segments(self, seqs):
        """compact(): unlink deregistered segment files, then fsync the directory."""
        for seq in seqs:
            fd = self._rfds.pop(seq, None)
            if fd is not None:
                os.close(fd)
            if self._wfd is not None and self._wfd[0] == seq:
                os.close(self._wfd[1])
                self._wfd = None
            try:
                os.unlink(os.path.join(self.seg_dir, segment_name(seq)))
            except FileNotFoundError:
                pass
        _fsync_dir(self.seg_dir)

    def info(self, chunk_id):
        """Index entry of one chunk as a dict, or None."""
        chunk_id = _as_id(chunk_id)
        if chunk_id in self._waiting:
            self._drain()
        p = self._buffered(chunk_id)
        if p is not None:
            return {"seg": p[P_SEG], "off": p[P_OFF], "raw_len": p[P_RAW_LEN],
                    "stored_len": len(p[P_PAYLOAD]), "enc": p[P_ENC],
                    "class": p[P_CLASS], "last_use": p[P_LAST_USE], "flushed": False}
        row = self.db.execute("SELECT seg, off, raw_len, stored_len, enc, class, last_use "
                              "FROM chunks WHERE id=?", (chunk_id,)).fetchone()
        if row is None:
            return None
        keys = ("seg", "off", "raw_len", "stored_len", "enc", "class", "last_use")
        return dict(zip(keys, row), flushed=True)

    # ------------------------------------------------------------------ whole-store checks

    def stats(self):
        """Totals over stored and buffered chunks."""
        self._drain()
        self._settle()              # else rows committed behind us would count twice
        n, raw, stored = self.db.execute(
            "SELECT count(*), coalesce(sum(raw_len),0), coalesce(sum(stored_len),0) FROM chunks"
        ).fetchone()
        live = self.db.execute("SELECT coalesce(sum(stored_len),0) + count(*) * ? FROM chunks",
                               (RECORD_HEADER_SIZE,)).fetchone()[0]
        segs = set()
        disk = 0
        for name in os.listdir(self.seg_dir):
            m = SEGMENT_NAME.match(name)
            if m:
                segs.add(int(m.group(1)))
                try:
                    disk += os.path.getsize(os.path.join(self.seg_dir, name))
                except FileNotFoundError:
                    pass
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
        re-hash it. Returns {"chunks": n, "bad": [hex ids]}."""
        self.flush()
        bad = []
        n = 0
        cur = self.db.execute("SELECT id, seg, off, stored_len FROM chunks ORDER BY seg, off")
        seq_checked = set()
        for cid, seq, off, stored_len in cur:
            n += 1
            try:
                if seq not in seq_checked:
                    self._read_header(os.path.join(self.seg_dir, segment_name(seq)), seq)
                    seq_checked.add(seq)
                self._read_record(cid, seq, off, stored_len)
            except (StoreError, OSError):
                bad.append(cid.hex())
        return {"chunks": n, "bad": bad}

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self):
        if self._closed:
            raise StoreError("store is closed")

    def _release(self):
        self._closed = True
        self._inflight.clear()
        self._waiting.clear()
        for pool in (self._pool, self._io):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._io = None
        if self._wfd is not None:
            os.close(self._wfd[1])
            self._wfd = None
        for fd in self._rfds.values():
            os.close(fd)
        self._rfds.clear()
        if self._wdb is not None:
            self._wdb.close()
            self._wdb = None
        self.db.close()

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
