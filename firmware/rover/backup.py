# The rover's side of a backup (docs/protocol.md §4), on MicroPython and CPython alike.
#
# Memory stays flat: the tree is walked one directory listing at a time, the previous
# tree is read back as a stream from flash, chunk lists of the current batch go to a
# scratch file, and chunk bytes are re-read from the file when the anchor asks for them.
import gc
import hashlib
import struct

from anchor_core.compat import const, unload
from anchor_core import cbor
from anchor_core import chunker
from anchor_core import messages as m
from rover import buffers
from rover import fsys
from rover.conversation import Conversation, RoverError, RX_SMALL
from rover import treefile
from rover.walk import walk, _order  # noqa: F401  (_order: tests and callers of old)

try:
    import zlib   # CPython; MicroPython's deflate module here cannot compress
except ImportError:
    zlib = None

# Batch sizes are set by the heap: with 32 entries and 128 ids a paired rover on a radio
# link (channel, secure records, MQTT client) ran out of 256 KB at the first full batch
# (docs/decisions.md, "The rover's 256 KB heap").
BATCH_ENTRIES = const(16)      # entries per ENTRIES message
BATCH_BYTES = const(4096)      # ...and about this many bytes, so it fits TX_BUFFER
BATCH_CHUNKS = const(4096)     # chunk records per batch scratch file
LIST_IDS = const(64)           # chunk ids per CHUNKLIST message, all parts (2.3 KB)
_REC = const(44)               # scratch record: offset u64, length u32, chunk id
_PROBE = const(4096)           # bytes tried first to see whether compressing a chunk pays
_ENOENT = const(2)

# Names and times (docs/protocol.md §3, "Entries"). An anchor without CAP_NAMES takes paths
# of 1024 bytes and 64 components, text names only and 64-bit signed mtimes.
_WELCOME_CAPS = const(4)       # messages._WELCOME_CAPS, copied (test_message_copies)
_CAP_NAMES = const(4)          # messages._CAP_NAMES, copied
_MAX_PATH = const(4096)
_OLD_PATH = const(1024)
_OLD_DEPTH = const(64)
_ENTRY_ROOM = const(7680)      # path + link target of one entry: one message in TX_SIZE
_READS = const(3)              # reads of a file that changes under them, then it is skipped
# Why an item is not stored: rover/notstored.py's texts, in its order.
_S_LIST = const(0)
_S_READ = const(1)
_S_MEMORY = const(2)
_S_RAW = const(3)
_S_LINK = const(4)
_S_LONG = const(5)
_S_DEEP = const(6)
_S_TARGET = const(7)
_S_UPLOAD = const(8)
_S_MTIME = const(9)
_S_REPLACED = const(10)
_S_CHANGING = const(11)
CHANGED = const(-1)            # RoverError code: a file changed under upload; run again
# An entry whose mtime is not older than the backup's start (less this margin) is re-read
# by the next backup whatever its size and mtime say: an edit within the file system's
# timestamp granularity (whole seconds on MicroPython, 2 s on FAT) keeps both. The margin
# covers that granularity and a state folder on another file system than the tree.
_RACY_MARGIN = 2000000000

# Fields of a CHUNKLIST or NEED part: anchor_core/messages.py's _PART_*, copied as private consts
# for the chunk loops (tests/rover/test_message_copies.py keeps them equal). Public names
# there would cost the rover ~1 KB of heap (messages.py, "field indices").
_PART_INDEX = const(0)
_PART_START = const(1)
_PART_IDS = const(2)
_PART_WANTED = const(2)


_DELTA_MIN = const(512)    # smaller chunks go whole: a block of signatures is 64 bytes of them


class _Skip(Exception):
    pass


class Backup(Conversation):
    def __init__(self, link, device, state_dir, root, log=None, outbox=None, watch_wait=600,
                 warn=None, volatile=None, full=False, about=None):
        Conversation.__init__(self, link, device, log, RX_SMALL)
        self.about = about           # [root as named, host, tag] for the COMMIT
        self.state_dir = state_dir
        self.root = fsys.fsencode(root.rstrip("/") or "/")
        # Files under `outbox` (relative to root) are queued to go out through the relay:
        # the anchor may wait up to watch_wait seconds to see them pass instead.
        self.outbox = fsys.fsencode(outbox.strip("/")) + b"/" if outbox else None
        self.watch_wait = watch_wait
        # What could not be stored goes to warn (printed even with --quiet).
        self.warn = warn or self.log
        # rel -> times it changed while uploaded, over the sessions of one run (CHANGED).
        self.volatile = volatile if volatile is not None else {}
        self.full = full             # describe the whole tree, whatever the state says
        self.names = False           # the anchor takes raw names, long paths, wide mtimes
        self.racy = None
        self.watches = []        # (path, oid, first record in the watch file, count)
        self.wpath = state_dir + "/watch.chunks"
        self.wfile = None
        # self.cbuf serves file reads while hashing and the chunk being uploaded: a batch
        # is hashed completely before any of it is uploaded, so the two never overlap.
        self.recbuf = bytearray(_REC)
        self.seq = 0
        self.batch = []
        self.files = {}          # batch index -> (full path, oid, first record, count)
        self.nrec = 0
        self.batch_bytes = 0
        self.next_bytes = 0
        self.cfile = None
        self.cpath = state_dir + "/batch.chunks"
        self.stats = {"entries": 0, "bytes": 0, "changed": 0, "deleted": 0, "hashed_bytes": 0,
                      "chunks_sent": 0, "data_bytes_sent": 0, "snapshot": None, "skipped": 0,
                      "chunks_delta": 0, "delta_sig_bytes": 0}
        self._ds = None          # rover.deltasend.Sender once a NEED offered a base; False: no room

    def skip(self, rel, code, arg):
        from rover import notstored
        self.stats["skipped"] += 1
        if len(rel) > 512:
            gc.collect()
        self.warn("not stored: %s: %s" % (notstored.show(rel), notstored.why(code, arg)))

    # --- the backup --------------------------------------------------------------------

    def run(self, locked=False):
        # locked: the caller holds STATE/lock and keeps it after this backup (rover run)
        if locked:
            return self._run()
        fsys.makedirs(self.state_dir)
        from rover import state
        state.StateLock(self.state_dir, self.log).take()
        state = None                  # _run drops the module once it read the state
        try:
            return self._run()
        finally:
            fsys.drop_lock(self.state_dir)

    def _run(self):
        from rover import state
        # The file system's own clock at the start, from a file it just wrote: what
        # changes from here on has an mtime at least this (less the margin).
        racy_from = state.scan_start(self.state_dir) - _RACY_MARGIN
        tree_path = self.state_dir + "/tree"
        st = None if self.full else state.load_state(self.state_dir, self.device, self.log, self.cbuf)
        parent = st[2] if st else None
        if parent is not None and not state.verify_tree(tree_path, st[3]):
            self.log("the local copy of snapshot %d is damaged: describing the whole tree" % parent)
            parent = None
        if parent is not None:
            self.racy = st[4]
        unload(state)
        state = st = None
        w = self.hello(parent, (m.CAP_ZLIB if (zlib or buffers.compressor) else 0) | m.CAP_PROVE | m.CAP_DELTA)
        self.names = len(w) > _WELCOME_CAPS and bool(w[_WELCOME_CAPS] & _CAP_NAMES)
        if parent is not None and not w[m.WELCOME_PARENT_OK]:
            self.log("anchor does not hold snapshot %d; describing the whole tree" % parent)
            parent = None
        old_iter = treefile.read_records(tree_path) if parent is not None else iter(())
        new_path = tree_path + ".new"
        writer = treefile.TreeWriter(new_path)
        digest = hashlib.sha256()
        total = 0
        self._open_batch()
        old = next(old_iter, None)
        try:
            for rel, s in walk(self.root, self.skip):
                if len(rel) > 512:
                    # Paths of kilobytes: free their copies before the next ones, or a
                    # fragmented 256 KB heap has no block left that holds one.
                    gc.collect()
                try:
                    path = self._name(rel, "name")
                except _Skip as e:
                    self.skip(rel, e.args[0], e.args[1])
                    continue          # an old record of it, if any, is deleted below
                c = _order(old[m.REC_PATH], path) if old is not None else 1
                while c < 0:
                    self._delete(old[m.REC_PATH])
                    old = next(old_iter, None)
                    c = _order(old[m.REC_PATH], path) if old is not None else 1
                prev = None
                if c == 0:
                    prev = old
                    old = next(old_iter, None)
                try:
                    rec = self._record(rel, path, s, prev)
                except _Skip as e:
                    self.skip(rel, e.args[0], e.args[1])
                    rec = None
                except MemoryError:
                    # A path of kilobytes in a fragmented heap: this entry only. Any other
                    # entry's MemoryError is the backup's (a batch may be half sent).
                    if len(rel) <= 512:
                        raise
                    gc.collect()
                    self.skip(rel, _S_MEMORY, None)
                    rec = None
                if rec is None:          # vanished or not stored: not in this snapshot
                    if prev is not None:
                        self._delete(prev[m.REC_PATH])
                    continue
                # Encoded in the send buffer, free between messages: a record with a path of
                # kilobytes needs no fresh block (cbor.encode would take three of its size).
                enc = memoryview(buffers.tx)[:cbor.encode_into(rec, buffers.tx, 0)]
                digest.update(enc)
                writer.add_encoded(enc)
                enc = None
                if rec[m.REC_TYPE] == m.T_FILE:
                    total += rec[m.REC_SIZE]
            while old is not None:
                self._delete(old[m.REC_PATH])
                old = next(old_iter, None)
            self._flush_batch()
            self._wait_for_watched()
            writer.close()
            root = digest.digest()
            self.send(m.commit(root, writer.count, total, self.about))
            snap = self.recv(m.COMMITTED)[m.COMMITTED_SNAPSHOT]
        finally:
            if self.cfile:
                self.cfile.close()
                self.cfile = None
            fsys.remove(self.cpath)
            if self.wfile:
                self.wfile.close()
                self.wfile = None
            fsys.remove(self.wpath)
        fsys.rename(new_path, tree_path)
        from rover import state
        state.save_state(self.state_dir, self.device, snap, root, racy_from)
        unload(state)
        self.stats["entries"] = writer.count
        self.stats["bytes"] = total
        self.stats["snapshot"] = snap
        return self.stats

    def _name(self, raw, what):
        """The wire form of a raw name: text if it is UTF-8, else the bytes themselves."""
        try:
            return raw.decode()
        except UnicodeError:
            if not self.names:
                raise _Skip(_S_RAW, what)
            return raw

    def _mtime(self, t):
        lo, hi = (-(1 << 64), (1 << 64) - 1) if self.names else (-(1 << 63), (1 << 63) - 1)
        return lo if t < lo else (hi if t > hi else t)

    def _record(self, rel, path, s, prev):
        t, size, mtime, mode, target = s
        if t == m.T_LINK and target is None:
            raise _Skip(_S_LINK, None)
        if len(rel) > (_MAX_PATH if self.names else _OLD_PATH):
            raise _Skip(_S_LONG, len(rel))
        if not self.names and rel.count(b"/") >= _OLD_DEPTH:
            raise _Skip(_S_DEEP, None)
        if target is not None:
            if len(rel) + len(target) > _ENTRY_ROOM or len(target) > (_MAX_PATH if self.names else _OLD_PATH):
                raise _Skip(_S_TARGET, len(target))
            target = self._name(target, "link target")
        if (prev is not None and prev[m.REC_TYPE] == t and prev[m.REC_SIZE] == size and prev[m.REC_MTIME] == self._mtime(mtime)
                and prev[m.REC_MODE] == mode and prev[m.REC_TARGET] == target
                and (t != m.T_FILE or (self.racy is not None and mtime < self.racy))):
            return prev       # unchanged: the anchor already has it, say nothing
        # Room in this batch's message first: a flush after hashing would lose the file's
        # chunk records with the batch scratch file.
        self._room(len(rel) + (len(s[4]) if s[4] is not None else 0))
        oid = None
        idx = len(self.batch)
        if t == m.T_FILE:
            if self.volatile.get(rel, 0) >= 2:
                raise _Skip(_S_UPLOAD, None)
            first = self.nrec
            try:
                oid, size, mtime = self._hash_file(rel, size, mtime)
            except OSError as e:
                if e.args and e.args[0] == _ENOENT:
                    return None
                raise _Skip(_S_READ, e)
            if (prev is not None and prev[m.REC_TYPE] == t and prev[m.REC_OID] == oid and prev[m.REC_SIZE] == size
                    and prev[m.REC_MTIME] == self._mtime(mtime) and prev[m.REC_MODE] == mode):
                # Re-read because its mtime was racy, and the same after all: nothing to send.
                self.nrec = first
                self.cfile.seek(first * _REC)
                return prev
            self.files[idx] = (self.root + b"/" + rel, oid, first, self.nrec - first)
        if self._mtime(mtime) != mtime:
            self.skip(rel, _S_MTIME, mtime)
            mtime = self._mtime(mtime)
        flags = 0
        if self.outbox and t == m.T_FILE and rel.startswith(self.outbox):
            flags = m.FLAG_QUEUED
        self.batch.append(m.put_entry(path, t, size, mtime, mode, oid, target, flags))
        self.stats["changed"] += 1
        self._maybe_flush()
        return m.tree_record(path, t, size, mtime, mode, oid, target)

    def _delete(self, path):
        self._room(len(m.path_key(path)))
        self.batch.append(m.del_entry(path))
        self.stats["deleted"] += 1
        self._maybe_flush()

    def _hash_file(self, rel, size, mtime):
        """(object id, size, mtime) of a consistent read of file `rel`: its size and mtime
        the same before and after, and as many bytes read. A file that changes while it is
        read is read again, up to _READS times; then it is skipped."""
        path = self.root + b"/" + rel
        first = self.nrec
        for _ in range(_READS):
            self.nrec = first
            self.cfile.seek(first * _REC)
            oid = chunker.ObjectId()
            got = 0
            with open(path, "rb") as f:
                for off, ln, cid in chunker.chunks_of(f, self.cbuf):
                    oid.add(cid)
                    self.cfile.write(struct.pack(">QI", off, ln))
                    self.cfile.write(cid)
                    self.nrec += 1
                    got = off + ln
            self.stats["hashed_bytes"] += got
            after = fsys.entry(path, fsys.S_IFREG >> 12)
            if after is None or after[0] != m.T_FILE:
                raise _Skip(_S_REPLACED, None)
            if got == size and after[1] == size and after[2] == mtime:
                return oid.finish(size), size, mtime
            size, mtime = after[1], after[2]
        self.nrec = first
        self.cfile.seek(first * _REC)
        raise _Skip(_S_CHANGING, None)

    def _changed(self, path):
        """The bytes of `path` are no longer those hashed: end this session (the anchor
        keeps what arrived) and let the run start another one (RoverError of code CHANGED,
        its .rel the file)."""
        from rover.notstored import show
        try:
            self.send(m.error(m.E_BAD_DATA, "a file changed during the backup"))
        except Exception:
            pass
        rel = path[len(self.root) + 1:]
        e = RoverError("%s changed during the backup" % show(rel), CHANGED)
        e.rel = rel
        raise e

    def _open(self, path):
        try:
            return open(path, "rb")
        except OSError:
            self._changed(path)       # deleted or replaced since it was hashed

    # --- batches -----------------------------------------------------------------------

    def _open_batch(self):
        self.cfile = open(self.cpath, "wb")
        self.nrec = 0
        self.batch_bytes = 0
        self.batch = []
        self.files = {}

    def _room(self, nbytes):
        # Long paths and link targets (4 KiB each) must still fit one message in TX_SIZE.
        if self.batch and self.batch_bytes + nbytes + 64 > _ENTRY_ROOM:
            self._flush_batch()
            self._open_batch()
        self.next_bytes = nbytes       # the raw bytes of the entry's names, for _maybe_flush

    def _maybe_flush(self):
        self.batch_bytes += self.next_bytes + 64
        if len(self.batch) >= BATCH_ENTRIES or self.nrec >= BATCH_CHUNKS or self.batch_bytes >= BATCH_BYTES:
            self._flush_batch()
            self._open_batch()

    def _flush_batch(self):
        if not self.batch:
            return
        self.cfile.close()
        self.cfile = None
        self.send(m.entries(self.seq, self.batch))
        v = self.recv(m.VERDICT)
        self.seq += 1
        if v[m.VERDICT_WANTED] or len(v) > m.VERDICT_WATCHED:
            recs = open(self.cpath, "rb")
            try:
                if len(v) > m.VERDICT_WATCHED:
                    self._keep_watched(recs, v[m.VERDICT_WATCHED])
                if v[m.VERDICT_WANTED]:
                    self._upload(recs, v[m.VERDICT_WANTED])
            finally:
                recs.close()
        self.batch = []

    # --- watch list ----------------------------------------------------------------------

    def _keep_watched(self, recs, watched):
        """Copy the chunk records of entries the anchor watches for: the batch scratch file
        is reused, and they may still have to be uploaded before COMMIT."""
        from rover.notstored import show
        if self.wfile is None:
            self.wfile = open(self.wpath, "wb")
        for w in watched:
            info = self.files.get(w[m.WATCH_INDEX])
            if info is None:
                raise RoverError("anchor watches entry %d, which has no content" % w[m.WATCH_INDEX])
            path, oid, first, n = info
            start = sum(x[3] for x in self.watches)
            for j in range(n):
                recs.seek((first + j) * _REC)
                recs.readinto(self.recbuf)
                self.wfile.write(self.recbuf)
            self.watches.append((path, oid, start, n))
            self.log("the anchor watches for %s (up to %d s): it is to pass through, or the anchor "
                     "fetches it again from its origin" % (show(path[len(self.root) + 1:]), w[m.WATCH_SECONDS]))

    def _wait_for_watched(self):
        if not self.watches:
            return
        self.wfile.close()
        self.wfile = None
        self.link.set_timeout(self.watch_wait + 60)
        try:
            self.send(m.watchwait(self.watch_wait))
            missing = self.recv(m.WATCHED)[m.WATCHED_MISSING]
        finally:
            self.link.set_timeout(None)
        self.log("%d of %d watched files reached the anchor without the radio; uploading %d"
                 % (len(self.watches) - len(missing), len(self.watches), len(missing)))
        if missing:
            # Upload them as usual, named by watch number instead of batch index.
            self.files = dict((k, self.watches[k]) for k in range(len(self.watches)))
            recs = open(self.wpath, "rb")
            try:
                self._upload(recs, missing)
            finally:
                recs.close()

    def _read_rec(self, recs, i):
        recs.seek(i * _REC)
        if recs.readinto(self.recbuf) != _REC:
            raise RoverError("scratch file %s is short" % self.cpath)
        off, ln = struct.unpack_from(">QI", self.recbuf, 0)
        return off, ln, bytes(self.recbuf[12:])

    def _upload(self, recs, wanted):
        """Chunk lists of the wanted entries, packed up to LIST_IDS ids per CHUNKLIST (one
        round trip for many small files); after each NEED, the chunks it asks for."""
        parts = []
        room = LIST_IDS
        for idx in wanted:
            info = self.files.get(idx)
            if info is None:
                raise RoverError("anchor asked for entry %d, which has no content" % idx)
            first, n = info[2], info[3]
            start = 0
            while True:
                cnt = n - start
                if cnt > room:
                    cnt = room
                ids = []
                for j in range(cnt):
                    ids.append(self._read_rec(recs, first + start + j)[2])
                parts.append(m.list_part(idx, start, ids, start + cnt >= n))
                start += cnt
                room -= cnt
                if room == 0 or len(parts) >= BATCH_ENTRIES:
                    self._exchange(recs, parts)
                    parts = []
                    room = LIST_IDS
                if start >= n:
                    break
        if parts:
            self._exchange(recs, parts)

    def _exchange(self, recs, parts):
        self.send(m.chunklist(parts))
        msg = self.recv(m.NEED)          # the session checked it echoes these parts
        need = msg[m.NEED_PARTS]
        if len(msg) > m.NEED_CHALLENGE and msg[m.NEED_CHALLENGE] is not None:
            self._prove(recs, parts, msg[m.NEED_CHALLENGE][m.CHALLENGE_NONCE],
                        msg[m.NEED_CHALLENGE][m.CHALLENGE_POSITIONS])
        bases = msg[m.NEED_CHALLENGE + 1] if len(msg) > m.NEED_CHALLENGE + 1 else None
        for k in range(len(parts)):
            wanted = need[k][_PART_WANTED]
            if not wanted:
                continue
            idx, start, ids = parts[k][_PART_INDEX], parts[k][_PART_START], parts[k][_PART_IDS]
            path, first = self.files[idx][0], self.files[idx][2]
            f = self._open(path)
            try:
                for i in wanted:
                    if i >= len(ids):
                        raise RoverError("anchor asked for chunk %d of a list of %d" % (i, len(ids)))
                    off, ln, cid = self._read_rec(recs, first + start + i)
                    self._send_chunk(f, path, off, ln, cid, bases is not None and i in bases[k])
            finally:
                f.close()

    def _prove(self, recs, parts, nonce, positions):
        """Chunks the anchor holds from another rover: prove we hold them too (a keyed hash
        of the bytes under the anchor's fresh nonce, 16 bytes) instead of sending them."""
        from anchor_core.hmac256 import hmac_sha256
        for k in range(len(parts)):
            if not positions[k]:
                continue
            idx, start, ids = parts[k][_PART_INDEX], parts[k][_PART_START], parts[k][_PART_IDS]
            path, first = self.files[idx][0], self.files[idx][2]
            f = self._open(path)
            try:
                for i in positions[k]:
                    if i >= len(ids):
                        raise RoverError("anchor challenged chunk %d of a list of %d" % (i, len(ids)))
                    off, ln, cid = self._read_rec(recs, first + start + i)
                    f.seek(off)
                    mv = memoryview(self.cbuf)[:ln]
                    if f.readinto(mv) != ln or hashlib.sha256(mv).digest() != cid:
                        self._changed(path)
                    self.send(m.proof(cid, hmac_sha256(nonce, mv)[:m.PROOF_TAG]))
                    self.stats["chunks_proven"] = self.stats.get("chunks_proven", 0) + 1
            finally:
                f.close()

    def _send_chunk(self, f, path, off, ln, cid, based=False):
        f.seek(off)
        mv = memoryview(self.cbuf)[:ln]
        if f.readinto(mv) != ln or hashlib.sha256(mv).digest() != cid:
            self._changed(path)
        if based and ln >= _DELTA_MIN:
            ds = self._delta_sender()
            k = ds.send(self, cid, mv, ln) if ds is not None else -1
            if k >= 0:
                self.stats["chunks_delta"] += 1
                self._count_sent(k)
                return
        enc = m.ENC_RAW
        if zlib is not None:
            comp = zlib.compress(mv, 6)
            if len(comp) < ln:
                enc = m.ENC_ZLIB
                mv = comp
        elif buffers.compressor is not None and ln > 64:
            # Our own deflate; a photo's first 4 KiB show it won't pay for an eighth of the
            # cost of trying the whole chunk (probe: the encoder's counting pass only). The
            # stream goes onto the link in pieces as the second pass writes them.
            c = buffers.compressor
            if ln <= _PROBE or c.plan(mv, _PROBE, False, True) > 0:
                k = c.plan(mv, ln, False, True)
                if k > 0:
                    self.send_compressed([m.DATA, cid, m.ENC_ZLIB], c, mv, ln, k)
                    self._count_sent(k)
                    return
        self.send_blob([m.DATA, cid, enc], mv)
        self._count_sent(len(mv))

    def _delta_sender(self):
        if self._ds is None:
            try:
                d = buffers.delta
                if d is None:
                    from rover import deltasend as d
                self._ds = d.Sender(buffers.compressor)
            except MemoryError:
                self._ds = False
        return self._ds or None

    def _count_sent(self, k):
        self.stats["chunks_sent"] += 1
        self.stats["data_bytes_sent"] += k
