# The rover's side of a backup (docs/protocol.md §4), on MicroPython and CPython alike.
#
# Memory stays flat: the tree is walked one directory listing at a time, the previous
# tree is read back as a stream from flash, chunk lists of the current batch go to a
# scratch file, and chunk bytes are re-read from the file when the anchor asks for them.
import gc
import hashlib
import struct

from anchor_core.compat import const
from anchor_core import cbor
from anchor_core import chunker
from anchor_core import messages as m
from rover import buffers
from rover import fsys
from rover.conversation import Conversation, RoverError
from rover import treefile

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
STATE_VERSION = const(1)
_PROBE = const(4096)           # bytes tried first to see whether compressing a chunk pays


WINDOW = const(64)             # names of one folder held at a time

# Fields of a CHUNKLIST or NEED part: anchor_core/messages.py's _PART_*, copied as private consts
# for the chunk loops (tests/rover/test_message_copies.py keeps them equal). Public names
# there would cost the rover ~1 KB of heap (messages.py, "field indices").
_PART_INDEX = const(0)
_PART_START = const(1)
_PART_IDS = const(2)
_PART_WANTED = const(2)


def _next_names(path, after, log):
    """The WINDOW smallest names in folder `path` greater than `after`, sorted.

    Streams the listing and keeps only the window, so a folder of any size fits the heap;
    a folder of n names costs n / WINDOW listings (a 2,000-photo camera folder: 32).
    """
    best = []
    try:
        for name in fsys.iterdir(path):
            if after is not None and name <= after:
                continue
            if len(best) >= WINDOW:
                if name >= best[-1]:
                    continue
                best.pop()
            lo = 0
            hi = len(best)
            while lo < hi:
                mid = (lo + hi) // 2
                if best[mid] < name:
                    lo = mid + 1
                else:
                    hi = mid
            best.insert(lo, name)
    except OSError as e:
        log("cannot list %s (%s): backed up as empty" % (path, e))
        return []
    return best


def walk(root, log=None):
    """Yield (relative path, stat) in canonical order: depth first, names sorted.

    Memory holds one window of one folder's names plus the chain of folders above it;
    nothing grows with the number of files in a folder or in the tree.
    """
    log = log or (lambda s: None)
    fsys.stat(root)                # a missing root is an error, never an empty backup
    chain = [["", None]]           # [relative folder, last name handled in it]
    names = _next_names(root, None, log)
    i = 0
    while True:
        if i >= len(names):
            if len(names) == WINDOW:       # more names may follow the last one
                top = chain[-1]
                names = _next_names(root + "/" + top[0] if top[0] else root, top[1], log)
                i = 0
                continue
            if len(chain) == 1:
                return
            chain.pop()
            top = chain[-1]
            names = _next_names(root + "/" + top[0] if top[0] else root, top[1], log)
            i = 0
            continue
        top = chain[-1]
        top[1] = names[i]
        rel = fsys.join(top[0], names[i])
        i += 1
        full = root + "/" + rel
        try:
            s = fsys.stat(full)
        except OSError:
            continue          # vanished between listing and stat
        if s is None:
            continue          # sockets, devices, fifos: nothing to back up
        yield rel, s
        if s[0] == m.T_DIR:
            chain.append([rel, None])
            names = None
            gc.collect()
            names = _next_names(full, None, log)
            i = 0


def load_state(state_dir, device):
    try:
        f = open(state_dir + "/state.cbor", "rb")
    except OSError:
        return None
    with f:
        st = cbor.decode(f.read())
    if type(st) is not list or len(st) < 4 or st[0] != STATE_VERSION:
        raise RoverError("state in %s has an unknown format" % state_dir)
    if st[1] != device:
        raise RoverError("state in %s belongs to device %r, not %r" % (state_dir, st[1], device))
    return st


def save_state(state_dir, device, parent, root):
    tmp = state_dir + "/state.cbor.new"
    with open(tmp, "wb") as f:
        f.write(cbor.encode([STATE_VERSION, device, parent, root]))
    fsys.rename(tmp, state_dir + "/state.cbor")


class Backup(Conversation):
    def __init__(self, link, device, state_dir, root, log=None, outbox=None, watch_wait=600):
        Conversation.__init__(self, link, device, log)
        self.state_dir = state_dir
        self.root = root.rstrip("/") or "/"
        # Files under `outbox` (relative to root) are queued to go out through the relay:
        # the anchor may wait up to watch_wait seconds to see them pass instead.
        self.outbox = outbox.strip("/") if outbox else None
        self.watch_wait = watch_wait
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
        self.cfile = None
        self.cpath = state_dir + "/batch.chunks"
        self.stats = {"entries": 0, "bytes": 0, "changed": 0, "deleted": 0, "hashed_bytes": 0,
                      "chunks_sent": 0, "data_bytes_sent": 0, "snapshot": None}

    # --- the backup --------------------------------------------------------------------

    def run(self):
        fsys.makedirs(self.state_dir)
        st = load_state(self.state_dir, self.device)
        parent = st[2] if st else None
        w = self.hello(parent, (m.CAP_ZLIB if (zlib or buffers.compressor) else 0) | m.CAP_PROVE)
        tree_path = self.state_dir + "/tree"
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
            for rel, s in walk(self.root, self.log):
                key = m.path_key(rel)
                while old is not None and m.path_key(old[m.REC_PATH]) < key:
                    self._delete(old[m.REC_PATH])
                    old = next(old_iter, None)
                prev = None
                if old is not None and old[m.REC_PATH] == rel:
                    prev = old
                    old = next(old_iter, None)
                rec = self._record(rel, s, prev)
                if rec is None:          # vanished or unreadable: not in this snapshot
                    if prev is not None:
                        self._delete(rel)
                    continue
                enc = cbor.encode(rec)
                digest.update(enc)
                writer.add_encoded(enc)
                if rec[m.REC_TYPE] == m.T_FILE:
                    total += rec[m.REC_SIZE]
            while old is not None:
                self._delete(old[m.REC_PATH])
                old = next(old_iter, None)
            self._flush_batch()
            self._wait_for_watched()
            writer.close()
            root = digest.digest()
            self.send(m.commit(root, writer.count, total))
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
        save_state(self.state_dir, self.device, snap, root)
        self.stats["entries"] = writer.count
        self.stats["bytes"] = total
        self.stats["snapshot"] = snap
        return self.stats

    def _record(self, rel, s, prev):
        t, size, mtime, mode, target = s
        if (prev is not None and prev[m.REC_TYPE] == t and prev[m.REC_SIZE] == size and prev[m.REC_MTIME] == mtime
                and prev[m.REC_MODE] == mode and prev[m.REC_TARGET] == target):
            return prev       # unchanged: the anchor already has it, say nothing
        oid = None
        idx = len(self.batch)
        if t == m.T_FILE:
            try:
                oid, size, first, n = self._hash_file(self.root + "/" + rel)
            except OSError as e:
                self.log("skipping %s: %s" % (rel, e))
                return None
            self.files[idx] = (self.root + "/" + rel, oid, first, n)
        flags = 0
        if self.outbox and t == m.T_FILE and rel.startswith(self.outbox + "/"):
            flags = m.FLAG_QUEUED
        self.batch.append(m.put_entry(rel, t, size, mtime, mode, oid, target, flags))
        self.stats["changed"] += 1
        self._maybe_flush()
        return m.tree_record(rel, t, size, mtime, mode, oid, target)

    def _delete(self, path):
        self.batch.append(m.del_entry(path))
        self.stats["deleted"] += 1
        self._maybe_flush()

    def _hash_file(self, path):
        first = self.nrec
        oid = chunker.ObjectId()
        size = 0
        with open(path, "rb") as f:
            for off, ln, cid in chunker.chunks_of(f, self.cbuf):
                oid.add(cid)
                self.cfile.write(struct.pack(">QI", off, ln))
                self.cfile.write(cid)
                self.nrec += 1
                size = off + ln
        self.stats["hashed_bytes"] += size
        return oid.finish(size), size, first, self.nrec - first

    # --- batches -----------------------------------------------------------------------

    def _open_batch(self):
        self.cfile = open(self.cpath, "wb")
        self.nrec = 0
        self.batch_bytes = 0
        self.batch = []
        self.files = {}

    def _maybe_flush(self):
        e = self.batch[-1]
        self.batch_bytes += len(e[m.ENTRY_PATH]) + 64 + (
            len(e[m.ENTRY_TARGET]) if len(e) > m.ENTRY_TARGET and e[m.ENTRY_TARGET] else 0)
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
                     "fetches it again from its origin" % (path[len(self.root) + 1:], w[m.WATCH_SECONDS]))

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
        if len(msg) > m.NEED_CHALLENGE:
            self._prove(recs, parts, msg[m.NEED_CHALLENGE][m.CHALLENGE_NONCE],
                        msg[m.NEED_CHALLENGE][m.CHALLENGE_POSITIONS])
        for k in range(len(parts)):
            wanted = need[k][_PART_WANTED]
            if not wanted:
                continue
            idx, start, ids = parts[k][_PART_INDEX], parts[k][_PART_START], parts[k][_PART_IDS]
            path, first = self.files[idx][0], self.files[idx][2]
            f = open(path, "rb")
            try:
                for i in wanted:
                    if i >= len(ids):
                        raise RoverError("anchor asked for chunk %d of a list of %d" % (i, len(ids)))
                    off, ln, cid = self._read_rec(recs, first + start + i)
                    self._send_chunk(f, path, off, ln, cid)
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
            f = open(path, "rb")
            try:
                for i in positions[k]:
                    if i >= len(ids):
                        raise RoverError("anchor challenged chunk %d of a list of %d" % (i, len(ids)))
                    off, ln, cid = self._read_rec(recs, first + start + i)
                    f.seek(off)
                    mv = memoryview(self.cbuf)[:ln]
                    if f.readinto(mv) != ln or hashlib.sha256(mv).digest() != cid:
                        raise RoverError("%s changed during the backup; run it again" % path)
                    self.send(m.proof(cid, hmac_sha256(nonce, mv)[:m.PROOF_TAG]))
                    self.stats["chunks_proven"] = self.stats.get("chunks_proven", 0) + 1
            finally:
                f.close()

    def _send_chunk(self, f, path, off, ln, cid):
        f.seek(off)
        mv = memoryview(self.cbuf)[:ln]
        if f.readinto(mv) != ln or hashlib.sha256(mv).digest() != cid:
            raise RoverError("%s changed during the backup; run it again" % path)
        enc = m.ENC_RAW
        if zlib is not None:
            comp = zlib.compress(mv, 6)
            if len(comp) < ln:
                enc = m.ENC_ZLIB
                mv = comp
        elif buffers.compressor is not None and ln > 64:
            # Our own deflate (fixed Huffman); a photo's first 4 KiB show it won't pay for
            # an eighth of the cost of trying the whole chunk.
            c = buffers.compressor
            if ln <= _PROBE or c.compress(mv, _PROBE) > 0:
                k = c.compress(mv, ln)
                if k > 0:
                    enc = m.ENC_ZLIB
                    mv = memoryview(c.out)[:k]
        self.send_blob([m.DATA, cid, enc], mv)
        self.stats["chunks_sent"] += 1
        self.stats["data_bytes_sent"] += len(mv)
