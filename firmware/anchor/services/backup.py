"""The anchor's side of a backup: answers a rover's manifest from what it holds.

One BackupHandler per session. It turns checked messages into replies and touches the
store and catalog only in ways that are safe to repeat: chunks land in the store as they
arrive (so a resumed session never re-sends them), and nothing becomes part of a snapshot
until COMMIT, which checks the whole tree against the rover's root digest first. CPython only.
"""
import asyncio
import hashlib
import logging
import os

from anchor_core import chunker
from anchor_core import delta
from anchor_core import deltabase
from anchor_core import messages as m
from anchor_core import resumemsg
from anchor_core.hmac256 import hmac_sha256
from anchor_core.secure import equal
from anchor.storage.chunks import StoreError
from anchor.storage.integrity import not_held, object_id, snapshot_problem
from anchor.storage.trees import TreeError, apply_delta
from anchor.storage import retention

FLUSH_BYTES = 1 << 20   # received bytes between flushes: an SD erase block or so
WATCH_SECONDS = 600     # how long queued data may take to pass through (docs/protocol.md section 6)

log = logging.getLogger("anchor.backup")
delta.install()

# What a session may hold in the anchor's memory until COMMIT (docs/protocol.md section 4,
# "Session limits"): the manifest delta, the objects it names, their chunk lists and the
# sets of chunk ids in flight, charged as they grow at about what CPython spends on each.
SESSION_STATE_MAX = 96 << 20      # per session
TOTAL_STATE_MAX = 256 << 20       # all sessions together
ENTRY_COST = 400                  # plus its path and symlink target
CHUNK_COST = 160                  # a chunk id listed, needed, proven, uploaded or in use


def check_about(about):
    """COMMIT's optional description: an array of at most 3 texts (root, host, tag) of at
    most 255 characters, or nulls; anything else is refused before the snapshot is made."""
    if type(about) is not list or len(about) > 3 or any(
            v is not None and (type(v) is not str or len(v) > 255) for v in about):
        raise m.ProtocolError(m.E_PROTOCOL, "COMMIT's description must be up to 3 texts of at most "
                              "255 characters (root, host, tag)")
    return about


class BackupService:
    """What every backup session shares. One BackupHandler per link session (session())."""

    def __init__(self, catalog, store, trees, retention, watchlist, regenerator):
        self.catalog = catalog
        self.store = store
        self.trees = trees
        self.retention = retention
        self.watchlist = watchlist
        self.regenerator = regenerator
        self.state_bytes = 0              # charged by all live sessions (TOTAL_STATE_MAX)

    def session(self):
        return BackupHandler(self.catalog, self.store, self.trees, self.retention, self.watchlist,
                             self.regenerator, self)


class BackupHandler:
    def __init__(self, catalog, store, trees, retention, watchlist, regenerator, budget=None):
        self.budget = budget              # BackupService: what all sessions hold together
        self.state_bytes = 0              # what this one holds (charged by _charge)
        self.catalog = catalog
        self.store = store
        self.trees = trees
        self.retention = retention        # room before chunks are stored; holds for the session
        self.watchlist = watchlist        # queued objects waited for at the relay
        self.regenerator = regenerator    # evicted objects fetched again from their origin
        self.dev = None
        self.device = None
        self.parent = None
        self.delta = []               # PUT/DEL entries in canonical order
        self.last_key = None
        self.expected = {}            # oid -> size, for objects we asked the chunk list of
        self.wanted = {}              # entry index -> oid, of the batch last answered
        self.watching = []            # oids answered WATCH, by watch number
        self.regenerating = set()     # ...of which the anchor re-fetches from their origin
        self.declaring = {}           # oid -> bytearray of chunk ids received so far
        self.declared = {}            # oid -> (size, ids) complete chunk lists
        self.needed = set()           # chunk ids asked for and not yet received
        self.proving = {}             # chunk id -> nonce: held from another rover, to be proven
        self.can_prove = False        # the rover answers proof challenges (CAP_PROVE)
        self.caps = 0                 # HELLO's capability bits
        self.can_delta = False        # the rover sends changed chunks as deltas (CAP_DELTA)
        self.parent_walk = None       # the parent tree, read along with the manifest
        self.parent_rec = None        # ...its record at or after the last path asked about
        self.old_of = {}              # oid -> oid of the parent snapshot's file at its path
        self.old_lists = {}           # old oid -> (its chunk ids, set of them)
        self.bases = {}               # needed chunk id -> the old chunk it may be a delta of
        self.base_sent = {}           # chunk id -> block size of the signatures sent (BASE)
        self.base_slot = None         # (old chunk id, its bytes): read for BASE, used by DELTA
        self.uploaded_set = set()     # chunk ids received this session
        self.in_use = set()           # chunk ids of objects answered "have" this session
        self.unscoped = []            # ...of which not yet durable and in the device's scope
        self.unflushed = 0
        self.counts = {"backup_rx_data": 0, "chunks_uploaded": 0, "raw_uploaded": 0}
        # Store full (retention.StoreFull) while chunks were arriving: the rest of them are
        # read and dropped, and the refusal goes out as the answer to the rover's next request,
        # when it reads (an ERROR in the middle of its DATA stream could be lost in a reset).
        self.refused = None
        self.refused_more = 0         # bytes of the chunks dropped after the refusal
        self.rx_sent = 0              # payload bytes and raw bytes of the chunks received: how
        self.rx_raw = 0               # well this session's data compresses, for estimates

    def _charge(self, n):
        """Count n more bytes of session state; past a limit the session ends (E_TOO_LARGE)
        before it holds them."""
        total = self.budget.state_bytes if self.budget is not None else 0
        if self.state_bytes + n > SESSION_STATE_MAX:
            raise m.ProtocolError(m.E_TOO_LARGE, "this backup session holds %d entries and needs more than "
                                  "the %d MiB of anchor memory a session may use before COMMIT; back up "
                                  "the tree in parts (fewer changed files per snapshot)"
                                  % (len(self.delta), SESSION_STATE_MAX >> 20))
        if total + n > TOTAL_STATE_MAX:
            raise m.ProtocolError(m.E_TOO_LARGE, "the anchor's sessions hold the %d MiB of memory they may "
                                  "use together; try again later" % (TOTAL_STATE_MAX >> 20))
        self.state_bytes += n
        if self.budget is not None:
            self.budget.state_bytes += n

    def _uncharge(self):
        if self.budget is not None:
            self.budget.state_bytes -= self.state_bytes
        self.state_bytes = 0

    def handle(self, msg):
        t = msg[m.MSG_TYPE]
        if self.refused is not None and t not in (m.DATA, m.ERROR):
            raise self._full()
        if t == m.HELLO:
            return [self._hello(msg)]
        if t == m.ENTRIES:
            return [self._entries(msg)]
        if t == m.CHUNKLIST:
            return [self._chunklist(msg)]
        if t == m.DATA:
            self._data(msg)
            return []
        if t == m.PROOF:
            self._proof(msg)
            return []
        if t == delta.BASEQ:
            return [self._baseq(msg)]
        if t == delta.DELTA:
            return [self._delta(msg)]
        if t == m.COMMIT:
            return [self._commit(msg)]
        if t == m.ERROR:
            log.info("rover %s ended the session: %s", self.device, msg[m.ERROR_TEXT])
            return []
        raise m.ProtocolError(m.E_PROTOCOL, "unexpected %s" % m.NAMES.get(t, t))

    # --- HELLO -------------------------------------------------------------------------

    def _hello(self, msg):
        self.retention.protect(self.uploaded_set)
        self.retention.protect(self.in_use)
        self.device = msg[m.HELLO_DEVICE]
        self.can_prove = bool(msg[m.HELLO_CAPS] & m.CAP_PROVE)
        self.can_delta = bool(msg[m.HELLO_CAPS] & m.CAP_DELTA)
        self.caps = msg[m.HELLO_CAPS]
        self.dev = self.catalog.device_id(self.device)
        self.catalog.seen(self.dev)
        latest = self.catalog.latest(self.dev)
        parent = msg[m.HELLO_PARENT]
        ok = True
        snap = None
        if parent is not None:
            snap = self.catalog.snapshot(self.dev, parent)
            # The rover's base is unknown here, or damaged (its tree, or chunks of its files,
            # gone or unreadable): it must describe its whole tree, so the anchor asks again
            # for what it lost (NEED) and the store heals, instead of every later backup
            # failing on a base it cannot build on.
            why = "unknown" if snap is None else snapshot_problem(self.catalog, self.trees, self.store, snap)
            if why is not None:
                if snap is not None:
                    log.warning("rover %s: parent snapshot %d cannot be built on (%s); the rover "
                                "describes its whole tree", self.device, parent, why)
                ok = False
                parent = None
        self.parent = parent
        log.info("rover %s: backup session, parent %s (%s), latest %s", self.device, msg[m.HELLO_PARENT],
                 "ok" if ok else ("unknown" if snap is None else "damaged"), latest)
        return m.welcome(latest, ok, m.CAP_ZLIB | m._CAP_NAMES | m.CAP_DELTA | resumemsg.CAP_UPRESUME)

    # --- manifest ----------------------------------------------------------------------

    def _entries(self, msg):
        wanted = []
        watched = []
        self.wanted = {}                  # entry index in this batch -> object id
        items = msg[m.ENTRIES_ITEMS]
        self._charge(sum(ENTRY_COST + len(e[m.ENTRY_PATH])
                         + len(e[m.ENTRY_TARGET] or "" if len(e) > m.ENTRY_TARGET else "") for e in items))
        for i, e in enumerate(items):
            key = m.path_key(e[m.ENTRY_PATH])
            if self.last_key is not None and key <= self.last_key:
                raise m.ProtocolError(m.E_PROTOCOL, "entries out of order at %r" % e[m.ENTRY_PATH])
            self.last_key = key
            self.delta.append(e)
            if e[m.ENTRY_OP] != m.OP_PUT or e[m.ENTRY_TYPE] != m.T_FILE:
                continue
            oid, size = e[m.ENTRY_OID], e[m.ENTRY_SIZE]
            if self._have_object(oid, size):
                # accounting: where the anchor already had it from
                src = "supplied_passthrough" if self.catalog.object_captured(self.dev, oid) else "supplied_backups"
                self.counts[src] = self.counts.get(src, 0) + size
                continue
            if oid in self.expected:
                if self.expected[oid] != size:
                    raise m.ProtocolError(m.E_BAD_DATA, "object %s named with two sizes" % oid.hex()[:16])
                continue                  # already asked for (the same content twice)
            self.expected[oid] = size
            if len(e) > m.ENTRY_FLAGS and e[m.ENTRY_FLAGS] & m.FLAG_QUEUED and len(self.watching) < m.MAX_ENTRIES:
                # In the outbox: it will pass through the relay soon; wait for it there.
                secs = WATCH_SECONDS
                self.watching.append(oid)
                self.watchlist.add(self.dev, self.device, oid, e[m.ENTRY_PATH], size, secs)
                watched.append([i, secs])
                continue
            recipe = self._recipe(oid)
            if recipe is not None and len(self.watching) < m.MAX_ENTRIES:
                # Evicted, but fetched over HTTP once: fetch it again over the anchor's
                # uplink instead of the radio, and watch for it like outbox data.
                secs = self.regenerator.watch_seconds
                self.watching.append(oid)
                self.regenerating.add(oid)
                self.watchlist.add(self.dev, self.device, oid, e[m.ENTRY_PATH], size, secs)
                watched.append([i, secs])
                asyncio.get_running_loop().create_task(self.regenerator.regenerate(self.dev, oid, recipe))
                continue
            self.wanted[i] = oid
            wanted.append(i)
            old = self._old_version(e[m.ENTRY_PATH], key)
            if old is not None and old != oid:
                self.old_of[oid] = old
        return m.verdict(msg[m.ENTRIES_SEQ], wanted, watched)

    def _old_version(self, path, key):
        """The object id the parent snapshot held at `path` (a file), or None.  The manifest
        comes in canonical order, so the parent tree is read along with it, once."""
        if not self.can_delta or self.parent is None:
            return None
        try:
            if self.parent_walk is None:
                snap = self.catalog.snapshot(self.dev, self.parent)
                self.parent_walk = self.trees.read(snap["root"] if snap else None)
                self.parent_rec = next(self.parent_walk, None)
            rec = self.parent_rec
            while rec is not None and m.path_key(rec[m.REC_PATH]) < key:
                rec = self.parent_rec = next(self.parent_walk, None)
        except TreeError as e:
            log.warning("rover %s: no deltas this session: %s", self.device, e)
            self.can_delta = False
            return None
        if rec is None or rec[m.REC_PATH] != path or rec[m.REC_TYPE] != m.T_FILE:
            return None
        return rec[m.REC_OID]

    def _recipe(self, oid):
        if not self.catalog.device_has_object(self.dev, oid):
            return None
        return self.catalog.recipe(self.dev, oid)

    def _have_object(self, oid, size):
        if size == 0 and oid == chunker.EMPTY_OBJECT_ID:
            return True
        if oid in self.declared:
            return True
        if not self.catalog.device_has_object(self.dev, oid):
            return False
        # In scope is not enough: pass-through chunks may have been evicted since. Then the
        # rover describes the object and NEED names just the chunks that are gone.
        # A chunk list damaged in the catalog counts as not held too: the rover describes the
        # object again, and the commit writes the list it proved (hashes to the id) over it.
        info = self.catalog.object_chunks(oid)
        if (info is None or self.store.missing(info[self.catalog.OBJECT_CHUNKS])
                or object_id(info[self.catalog.OBJECT_SIZE], b"".join(info[self.catalog.OBJECT_CHUNKS])) != oid):
            return False
        in_use = self.in_use
        self._charge(CHUNK_COST * sum(1 for c in info[self.catalog.OBJECT_CHUNKS] if c not in in_use))
        self.in_use.update(info[self.catalog.OBJECT_CHUNKS])      # kept from eviction until this session ends
        return True

    def _chunklist(self, msg):
        out = []
        estimate = 0
        self.nonce = os.urandom(16) if self.can_prove else None
        prove = []
        bases = []
        for index, start, ids, last in (p[:4] for p in msg[m.CHUNKLIST_PARTS]):
            oid = self.wanted.get(index)
            if oid is None or oid in self.declared:
                raise m.ProtocolError(m.E_PROTOCOL, "chunk list for entry %d, which was not asked for" % index)
            size = self.expected[oid]
            old = self.old_of.get(oid)
            needed, challenged = self._list_part(oid, start, ids, last)
            if needed:
                estimate += self._estimate(oid, size, len(needed), last)
            out.append(m.need_part(index, start, needed))
            prove.append(challenged)
            bases.append(self._bases(oid, old, start, ids, needed) if old is not None and needed else [])
        if estimate:
            # Before the upload: will what this NEED asks for fit? An estimate from the file
            # sizes (scaled by how well this session's chunks compressed so far); _data makes
            # the exact check, chunk by chunk.
            try:
                self.retention.make_room(estimate, reserve=False)
            except retention.StoreFull as e:
                log.warning("rover %s: %s", self.device, e.text())
                raise m.ProtocolError(m.E_FULL, e.text())
        return m.need(out, [self.nonce, prove] if any(prove) else None, bases if any(bases) else None)

    def _bases(self, oid, old, start, ids, needed):
        """Positions (in this part) of needed chunks the rover may send as deltas, each
        against the old version's chunk in the same place: after the nearest chunk before it
        that both versions hold (or before the nearest such chunk after it), else at the
        same index.  Only when the versions share a chunk or the old one is at most two
        chunks long: a file whose every chunk is new (a photo replaced) gets whole chunks."""
        got = self.old_lists.get(old)
        if got is None:
            info = self.catalog.object_chunks(old)
            if info is None:
                return []
            old_ids = info[self.catalog.OBJECT_CHUNKS]
            self._charge(CHUNK_COST * len(old_ids))
            got = self.old_lists[old] = (old_ids, dict((c, i) for i, c in enumerate(old_ids)))
        old_ids, where = got
        if len(old_ids) > 2 and not any(c in where for c in ids):
            known = self.declared.get(oid) or (None, self.declaring.get(oid, b""))
            if not any(bytes(known[1][k:k + 32]) in where for k in range(0, len(known[1]), 32)):
                return []
        out = []
        for i in needed:
            pos = None
            for j in range(i - 1, -1, -1):
                if ids[j] in where:
                    pos = where[ids[j]] + (i - j)
                    break
            if pos is None:
                for j in range(i + 1, len(ids)):
                    if ids[j] in where:
                        pos = where[ids[j]] - (j - i)
                        break
            if pos is None or not 0 <= pos < len(old_ids):
                pos = start + i
            if pos >= len(old_ids):
                continue
            base = old_ids[pos]
            if base != ids[i] and self.store.has(base):
                self.bases[ids[i]] = base
                out.append(i)
        return out

    def _estimate(self, oid, size, n, last):
        """Store bytes of n chunks of object `oid` (of `size` bytes): the object's mean chunk
        size once its whole list is known, else the chunker's average (at most the object)."""
        count = len(self.declared[oid][1]) // 32 if last else 0
        mean = size / count if count else min(chunker.AVG_SIZE, size)
        ratio = min(1.0, self.rx_sent / self.rx_raw) if self.rx_raw else 1.0
        return int(n * (mean * ratio + retention.RECORD))

    def _list_part(self, oid, start, ids, last):
        self._charge(CHUNK_COST * len(ids))
        got = self.declaring.setdefault(oid, bytearray())
        if start != len(got) // 32:
            raise m.ProtocolError(m.E_PROTOCOL, "chunk list resumes at %d, expected %d" % (start, len(got) // 32))
        for c in ids:
            got += c
        if len(got) // 32 > self.expected[oid] // chunker.MIN_SIZE + 2:
            raise m.ProtocolError(m.E_BAD_DATA, "more chunks than the object's size allows")
        # A chunk counts as held only if this device brought it in: knowing a hash must
        # never be enough to claim another rover's data.
        in_scope = self.catalog.chunks_in_scope(self.dev, ids)
        needed = []
        challenged = []
        for i, c in enumerate(ids):
            if c in self.uploaded_set or c in self.needed or c in self.proving:
                continue
            if c in in_scope and self.store.has(c):
                self.in_use.add(c)          # counted on: kept from eviction until the session ends
                info = self.store.info(c)
                src = "supplied_passthrough" if in_scope[c] == 1 else "supplied_backups"
                self.counts[src] = self.counts.get(src, 0) + (info["raw_len"] if info else 0)
                continue
            if self.nonce is not None and self.store.has(c):
                # Another rover brought it in: matched only when this one proves it holds
                # the bytes, with a keyed hash over them under a nonce of ours.
                self.in_use.add(c)
                self.proving[c] = self.nonce
                challenged.append(i)
                continue
            needed.append(i)
            self.needed.add(c)
        if last:
            h = chunker.ObjectId()
            for i in range(0, len(got), 32):
                h.add(bytes(got[i:i + 32]))
            if h.finish(self.expected[oid]) != oid:
                raise m.ProtocolError(m.E_BAD_DATA, "chunk list does not hash to object %s" % oid.hex()[:16])
            self.declared[oid] = (self.expected[oid], bytes(got))
            del self.declaring[oid]
        return needed, challenged

    # --- data --------------------------------------------------------------------------

    def _proof(self, msg):
        cid, tag = msg[m.PROOF_ID], msg[m.PROOF_MAC]
        nonce = self.proving.pop(cid, None)
        if nonce is None:
            raise m.ProtocolError(m.E_PROTOCOL, "proof for chunk %s, which was not challenged" % cid.hex()[:16])
        try:
            raw = self.store.get(cid)
        except StoreError as e:
            raise m.ProtocolError(m.E_MISSING, "chunk %s went from the store during the backup: %s"
                                  % (cid.hex()[:16], e))
        if not equal(hmac_sha256(nonce, raw)[:m.PROOF_TAG], tag):
            raise m.ProtocolError(m.E_BAD_DATA, "proof of possession failed for chunk %s: the rover does "
                                  "not hold these bytes" % cid.hex()[:16])
        # Proven: the chunk joins this device's scope as if uploaded, without the upload.
        self.uploaded_set.add(cid)
        self.unscoped.append(cid)
        self.counts["chunks_proven"] = self.counts.get("chunks_proven", 0) + 1
        self.counts["supplied_proven"] = self.counts.get("supplied_proven", 0) + len(raw)

    def _baseq(self, msg):
        cid = msg[1]
        base = self.bases.get(cid)
        if base is None or cid not in self.needed:
            raise m.ProtocolError(m.E_PROTOCOL, "BASEQ for chunk %s, which was offered no base" % cid.hex()[:16])
        raw = self._base_bytes(base)
        if raw is None or len(raw) < delta.MIN_BLOCK:
            return [delta.BASE, cid, 0, b""]          # gone since NEED: the rover sends it whole
        blk = deltabase.block_size(len(raw))
        sigs = deltabase.signatures(raw, blk)
        self.base_sent[cid] = blk
        self.counts["delta_sig_bytes"] = self.counts.get("delta_sig_bytes", 0) + len(sigs)
        return [delta.BASE, cid, blk, sigs]

    def _base_bytes(self, base):
        """The old chunk a delta is against, or None if it is gone since NEED (evicted, or on a
        fleet anchor not readable from the store now): the rover then sends the chunk whole.
        The chunk last read is kept for the DELTA that follows its BASE."""
        slot = self.base_slot
        if slot is not None and slot[0] == base:
            return slot[1]
        try:
            raw = self.store.get(base)
        except StoreError as e:
            log.info("rover %s: base chunk %s cannot be read (%s); the chunk goes whole", self.device,
                     base.hex()[:16], e)
            return None
        self.base_slot = (base, raw)
        return raw

    def _delta(self, msg):
        cid, size, ops = msg[1], msg[2], msg[3]
        blk = self.base_sent.pop(cid, None)
        if blk is None or cid not in self.needed:
            raise m.ProtocolError(m.E_PROTOCOL, "DELTA for chunk %s without its BASE" % cid.hex()[:16])
        raw = self._base_bytes(self.bases[cid])
        if raw is None:
            return [delta.DELTAOK, cid, False]
        try:
            new = deltabase.apply(raw, blk, ops, size)
        except ValueError as e:
            raise m.ProtocolError(m.E_BAD_DATA, "chunk %s: %s" % (cid.hex()[:16], e))
        if hashlib.sha256(new).digest() != cid:
            # the base was not what the rover's signatures matched (a collision of the weak
            # and short strong sums): nothing is stored, the rover sends the chunk whole
            log.info("rover %s: delta of chunk %s does not rebuild it; asking for the whole chunk",
                     self.device, cid.hex()[:16])
            self.counts["delta_refused"] = self.counts.get("delta_refused", 0) + 1
            return [delta.DELTAOK, cid, False]
        self._accept(cid, m.ENC_RAW, new, len(ops))
        self.counts["chunks_delta"] = self.counts.get("chunks_delta", 0) + 1
        return [delta.DELTAOK, cid, True]

    def _data(self, msg):
        cid, enc, payload = msg[m.DATA_ID], msg[m.DATA_ENC], msg[m.DATA_PAYLOAD]
        if cid in self.proving:
            # a rover may upload a challenged chunk instead of proving it
            del self.proving[cid]
            self.needed.add(cid)
        if cid not in self.needed:
            raise m.ProtocolError(m.E_PROTOCOL, "chunk %s was not asked for" % cid.hex()[:16])
        self._accept(cid, enc, payload, len(payload))

    def _accept(self, cid, enc, payload, radio):
        """Store a needed chunk that came as `radio` bytes (DATA's payload, DELTA's
        instructions)."""
        # At most this much once stored: the payload as it came, or the raw bytes when they
        # are smaller. Room first (evicting pass-through data), then the bytes.
        nbytes = retention.RECORD + len(payload)
        if self.refused is not None:
            self.needed.discard(cid)
            self.refused_more += nbytes
            return
        try:
            self.retention.make_room(nbytes)
        except retention.StoreFull as e:
            self.refused = e          # its shortfall counts this chunk
            self.needed.discard(cid)
            log.warning("rover %s: %s", self.device, e.text())
            return
        try:
            # decoded once, bounded, and checked against the id before anything is written
            _, raw_len = self.store.put_encoded(cid, enc, payload)
        except StoreError as e:
            raise m.ProtocolError(m.E_BAD_DATA, "chunk %s: %s" % (cid.hex()[:16], e))
        self.needed.discard(cid)
        self.uploaded_set.add(cid)
        self.unscoped.append(cid)
        self.unflushed += len(payload)
        self.counts["backup_rx_data"] += radio
        self.counts["chunks_uploaded"] += 1
        self.counts["raw_uploaded"] += raw_len
        self.rx_sent += radio
        self.rx_raw += raw_len
        self.counts["supplied_uploaded"] = self.counts.get("supplied_uploaded", 0) + raw_len
        if self.unflushed >= FLUSH_BYTES:
            self.flush()

    def _full(self):
        return m.ProtocolError(m.E_FULL, self.refused.text(self.refused_more))

    def end(self):
        """The session is over: what it held from eviction may go, and its watches end (a
        watch lives as long as the session that waits on it)."""
        self.retention.release(self.uploaded_set)
        self.retention.release(self.in_use)
        for oid in self.watching:
            self.watchlist.remove(self.dev, oid)
        self._uncharge()

    def flush(self):
        """Make received chunks durable, then record that this device holds them.

        In that order: scope never names bytes that a crash could lose, and a session
        resumed after a crash is not asked again for anything made durable here.
        """
        self.store.flush()
        if self.unscoped and self.dev is not None:
            self.catalog.add_scope(self.dev, self.unscoped)
        self.unscoped = []
        self.unflushed = 0

    # --- watch list -----------------------------------------------------------------------

    async def watch_wait(self, msg, send):
        """Wait until every watched object passed through (a capture put it in this
        device's scope) or its deadline came, at most msg[m.WATCHWAIT_SECONDS] seconds; then answer WATCHED
        with the watch numbers still missing, which the rover uploads as usual."""
        if self.refused is not None:
            raise self._full()
        loop = asyncio.get_running_loop()
        wl = self.watchlist
        until = loop.time() + msg[m.WATCHWAIT_SECONDS]
        event = asyncio.Event()
        wl.listeners.add(event)
        try:
            while True:
                event.clear()
                missing = [k for k, oid in enumerate(self.watching)
                           if not self._have_object(oid, self.expected[oid])]
                left = max([wl.deadline_in(self.dev, self.watching[k]) for k in missing] or [0])
                left = min(left, until - loop.time())
                if not missing or left <= 0:
                    break
                try:
                    await asyncio.wait_for(event.wait(), left)
                except asyncio.TimeoutError:
                    pass
        finally:
            wl.listeners.discard(event)
        for k, oid in enumerate(self.watching):
            if k not in missing:
                src = "supplied_regenerated" if oid in self.regenerating else "supplied_passthrough"
                self.counts[src] = self.counts.get(src, 0) + self.expected[oid]
        seen = len(self.watching) - len(missing)
        self.counts["watch_passed"] = self.counts.get("watch_passed", 0) + seen
        self.counts["watch_expired"] = self.counts.get("watch_expired", 0) + len(missing)
        for oid in self.watching:
            wl.remove(self.dev, oid)
        # From here the rover describes the missing ones, named by watch number.
        self.wanted = dict((k, self.watching[k]) for k in missing)
        await send(m.watched(missing))

    # --- commit ------------------------------------------------------------------------

    def _committed_unheard(self, root, count, nbytes, about):
        """The snapshot this COMMIT already made, if its COMMITTED was lost with the link: the
        latest snapshot is not the parent the rover names (so the rover never heard of it), and
        has the same parent, tree and description, and is whole. A rover that backs up an
        unchanged tree on purpose names the latest as its parent and gets a new snapshot."""
        latest = self.catalog.latest(self.dev)
        if latest is None or latest == self.parent:
            return None
        last = self.catalog.snapshot(self.dev, latest)
        ab = list(about or []) + [None] * (3 - len(about or []))
        if (last["parent"] != self.parent or last["root"] != root or last["entries"] != count
                or last["bytes"] != nbytes or [last["path"], last["host"], last["tag"]] != ab):
            return None
        if snapshot_problem(self.catalog, self.trees, self.store, last) is not None:
            return None        # committing again heals it (the objects' chunk lists, its tree)
        log.info("rover %s: COMMIT of snapshot %d again (its answer was lost with the link): not "
                 "committed twice", self.device, latest)
        return latest

    def _commit(self, msg):
        root, n_entries, total = msg[m.COMMIT_ROOT], msg[m.COMMIT_COUNT], msg[m.COMMIT_BYTES]
        if self.needed:
            raise m.ProtocolError(m.E_MISSING, "%d asked-for chunks never arrived" % len(self.needed))
        if self.proving:
            raise m.ProtocolError(m.E_MISSING, "%d challenged chunks were neither proven nor sent" % len(self.proving))
        if self.declaring:
            raise m.ProtocolError(m.E_MISSING, "%d chunk lists were left unfinished" % len(self.declaring))
        missing = [oid for oid in self.expected if oid not in self.declared
                   and not self._have_object(oid, self.expected[oid])]      # passed through
        if missing:
            raise m.ProtocolError(m.E_MISSING, "%d objects were named but never described" % len(missing))
        # Chunks first, so the catalog never points at bytes that are not durable.
        self.flush()
        parent_root = None
        if self.parent is not None:
            snap = self.catalog.snapshot(self.dev, self.parent)
            if snap is None:
                raise m.ProtocolError(m.E_MISSING, "parent snapshot %d was forgotten during the backup; "
                                      "run it again" % self.parent)
            parent_root = snap["root"]
        tree_oids = set()

        def noting_objects(records):
            for r in records:
                if r[m.REC_TYPE] == m.T_FILE and r[m.REC_OID] is not None:
                    tree_oids.add(r[m.REC_OID])
                yield r
        try:
            digest, count, nbytes = self.trees.write(noting_objects(apply_delta(self.trees.read(parent_root),
                                                                                self.delta)))
        except TreeError as e:
            raise m.ProtocolError(m.E_TREE, "the parent snapshot's tree went bad during the backup (%s); "
                                  "run it again" % e)
        if digest != root or count != n_entries or nbytes != total:
            raise m.ProtocolError(m.E_TREE, "tree mismatch: anchor built %d entries/%d bytes (%s), rover has %d/%d (%s)"
                                  % (count, nbytes, digest.hex()[:16], n_entries, total, root.hex()[:16]))
        # Every chunk the new snapshot needs must be held now, not only those uploaded in this
        # session: files carried over from the parent, or answered HAVE, may have lost chunks
        # to damage since (a truncated segment, a quarantine). Such a snapshot is refused,
        # never committed against data the store does not hold.
        why = not_held(self.catalog, self.store, tree_oids, self.declared, parent_root)
        if why is not None:
            raise m.ProtocolError(m.E_MISSING, "the new snapshot would refer to data the anchor does not "
                                  "hold (%s); run the backup again" % why)
        new_objects = [(oid, size, ids) for oid, (size, ids) in self.declared.items()]
        about = check_about(msg[m.COMMIT_ABOUT]) if len(msg) > m.COMMIT_ABOUT else None
        again = self._committed_unheard(root, count, nbytes, about)
        if again is not None:
            return m.committed(again)
        seq, _pinned = self.catalog.commit_snapshot(self.dev, self.parent, root, count, nbytes, new_objects,
                                                   tree_oids, about)
        self.retention.enforce()
        self.counts["backups"] = 1
        self.counts["bytes_protected"] = nbytes
        log.info("rover %s: snapshot %d committed (%d entries, %d bytes, %d chunks uploaded)",
                 self.device, seq, count, nbytes, len(self.uploaded_set))
        return m.committed(seq)
