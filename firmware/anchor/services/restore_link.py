"""A restore over the rover's own link (docs/protocol.md §9): the anchor's half.

CPython only. The rover first says what it holds (SEEDS: every entry under its target folder
and any --seed folders, and on request the chunk lists of those files); the anchor then
streams a plan in the snapshot's canonical order: what to create, what is there already,
which bytes to copy from the rover's own files (RCOPY), and only the chunks the rover holds
nowhere (RDATA, compressed). Deletions and folder times come last, when every file that
could serve as a source has been written.

What the rover holds is charged to the session's memory budget like a backup's manifest
(services/backup.py): a flood of seeds ends the session, not the anchor. Only the device the
link speaks for is served, and only its own snapshots: a plain link at an --open anchor may
not restore a device that is paired (that one restores over its secure link).
"""
import logging
import zlib

from anchor_core import messages as m
from anchor_core import restoremsg as rm
from anchor.services.restore import NotInSnapshot, PathError, RestoreError
from anchor.storage.integrity import object_id

log = logging.getLogger("anchor")

RESTORE_TYPES = (rm.RESTORE, rm.SEEDS, rm.SEEDLIST, rm.SEEDEND)
# Reserved names in the rover's folders: the file a restore is writing, and one left by a cut
# restore, which the next restore uses as a seed and then removes (rover/restore.py).
PART_NAME = ".anchor-restore-part"
SEED_NAME = ".anchor-restore-seed"
_SEED_COST = 200            # what holding one seed costs here, plus its path
_CHUNK_COST = 160           # one chunk of a seed (as a backup's chunk id)
_LEVEL = 6
_EMPTY = object_id(0, b"")


def _key(path):
    return m.path_key(path)


def _parent(path):
    sep = b"/" if type(path) is bytes else "/"
    i = path.rfind(sep)
    return path[:i] if i > 0 else None


def _under(path, prefix):
    if not prefix:
        return True
    if type(path) is bytes:
        path = path.decode("utf-8", "surrogateescape")
    return path == prefix or path.startswith(prefix + "/")


def _last(path):
    sep = b"/" if type(path) is bytes else "/"
    return path.rsplit(sep, 1)[-1]


class _Seed:
    __slots__ = ("type", "size", "mtime", "mode", "target", "oid")

    def __init__(self, e):
        self.type = e[m.ENTRY_TYPE]
        self.size = e[m.ENTRY_SIZE]
        self.mtime = e[m.ENTRY_MTIME]
        self.mode = e[m.ENTRY_MODE]
        self.target = e[m.ENTRY_TARGET] if len(e) > m.ENTRY_TARGET else None
        self.oid = None


class LinkRestore:
    """One link session's restore (at most one at a time; the session table says when)."""

    def __init__(self, service, session_info, authenticated, catalog):
        rm.install()
        self.service = service            # services.restore.RestoreService
        self.info = session_info          # the session's BackupHandler: .dev, .device, _charge
        self.authenticated = authenticated
        self.catalog = catalog
        self.counts = {"restore_tx_data": 0, "restore_chunks": 0, "restore_files": 0}
        self._clear()

    def _clear(self):
        self.snap = None
        self.prefix = ""
        self.flags = 0
        self.wbits = 15
        self.recs = {}                    # path -> (type, size, mtime, oid) of the snapshot
        self.local = {}                   # path -> _Seed: what the rover holds in its target
        self.leftovers = []               # paths of SEED_NAME files to remove at the end
        self.batch = None                 # batch number of the last SEEDS
        self.asked = {}                   # index -> (root, path) of the last SEEDS' askings
        self.listing = None               # (index, ids, lens) of the chunk list arriving
        self.by_chunk = {}                # chunk id -> (root, path, offset, length)
        self.by_oid = {}                  # object id -> (root, path)
        self.seeds = 0
        self.z = None                     # the restore's zlib stream (see _send_content)

    def _charge(self, n):
        self.info._charge(n)

    async def handle(self, msg, send):
        t = msg[m.MSG_TYPE]
        if t == rm.RESTORE:
            await self._restore(msg, send)
        elif t == rm.SEEDS:
            await send(self._seeds(msg))
        elif t == rm.SEEDLIST:
            self._seedlist(msg)
        elif t == rm.SEEDEND:
            try:
                await self._plan(send)
            finally:
                self._clear()

    # --- RESTORE ----------------------------------------------------------------------

    async def _restore(self, msg, send):
        self._clear()
        dev, device = self.info.dev, self.info.device
        if not self.authenticated and self.catalog.pairing_key(device) is not None:
            # The device name alone proves nothing on a plain link.
            log.warning("rover %s: restore over a plain link refused: the device is paired", device)
            await send(m.fail(m.F_BAD_REQUEST, "device %s is paired: restore over its paired link" % device))
            return
        want = msg[1]
        n = want if want is not None else self.catalog.latest(dev)
        snap = self.catalog.snapshot(dev, n) if n is not None else None
        if snap is None:
            what = "no snapshot %d" % want if want is not None else "no snapshot"
            await send(m.fail(m.F_BAD_REQUEST, "%s of device %s on this anchor" % (what, device)))
            return
        prefix = msg[2]
        if type(prefix) is bytes:
            prefix = prefix.decode("utf-8", "surrogateescape")
        try:
            count = size = 0
            for r in self.service.records(snap, prefix):
                path = r[m.REC_PATH]
                self._charge(_SEED_COST + len(path))
                self.recs[path] = (r[m.REC_TYPE], r[m.REC_SIZE], r[m.REC_MTIME], r[m.REC_OID])
                count += 1
                if r[m.REC_TYPE] == m.T_FILE:
                    size += r[m.REC_SIZE]
        except (PathError, NotInSnapshot) as e:
            self.recs = {}
            await send(m.fail(m.F_BAD_REQUEST, str(e)))
            return
        self.snap, self.prefix, self.flags, self.wbits = snap, prefix.strip("/"), msg[3], msg[4]
        log.info("rover %s: restore of snapshot %d%s over its link (%d entries, %d bytes)%s", device,
                 snap["id"], " path %s" % prefix if prefix else "", count, size,
                 " (dry run)" if self.flags & rm.F_DRY_RUN else "")
        await send([rm.RSNAP, snap["id"], count, size])

    # --- what the rover holds ------------------------------------------------------------

    def _seeds(self, msg):
        if self.snap is None:
            raise m.ProtocolError(m.E_PROTOCOL, "SEEDS without a restore")
        if self.asked or self.listing is not None:
            raise m.ProtocolError(m.E_PROTOCOL, "SEEDS before the chunk lists asked for")
        root = msg[2]
        ask = []
        self.asked = {}
        self.batch = msg[1]
        for i, e in enumerate(msg[3]):
            path = e[m.ENTRY_PATH]
            self._charge(_SEED_COST + len(path))
            self.seeds += 1
            s = _Seed(e)
            if root == 0:
                if _last(path) in (SEED_NAME, PART_NAME):
                    self.leftovers.append(path)
                else:
                    self.local[path] = s
            if s.type == m.T_FILE and not s.size:
                s.oid = _EMPTY
            if s.type != m.T_FILE or not s.size:
                continue
            r = self.recs.get(path) if root == 0 else None
            if r is not None and r[0] == m.T_FILE and r[1] == s.size and r[2] == s.mtime:
                # Size and mtime as in the snapshot: taken as the snapshot's content unread
                # (rsync's quick check). The rover checks every file it writes from it.
                s.oid = r[3]
                self.by_oid.setdefault(r[3], (0, path))
                continue
            if self.flags & rm.F_NO_SEEDS:
                continue
            self.asked[i] = (root, path, s)
            ask.append(i)
        return [rm.SEEDASK, self.batch, ask]

    def _seedlist(self, msg):
        i, first, ids, lens, last, size = msg[1], msg[2], msg[3], msg[4], msg[5], msg[6]
        if i not in self.asked:
            raise m.ProtocolError(m.E_PROTOCOL, "SEEDLIST for seed %d, which was not asked for" % i)
        if self.listing is None or self.listing[0] != i:
            if first != 0 or (self.listing is not None and self.listing[0] != i):
                raise m.ProtocolError(m.E_PROTOCOL, "SEEDLIST parts out of order")
            self.listing = (i, [], [])
        _, all_ids, all_lens = self.listing
        if first != len(all_ids):
            raise m.ProtocolError(m.E_PROTOCOL, "SEEDLIST part starts at chunk %d, expected %d" % (first, len(all_ids)))
        self._charge(_CHUNK_COST * len(ids))
        all_ids.extend(ids)
        all_lens.extend(lens)
        if not last:
            return
        root, path, s = self.asked.pop(i)
        self.listing = None
        if sum(all_lens) != size:
            raise m.ProtocolError(m.E_BAD_DATA, "the chunk lengths of seed %r add up to %d, not %d"
                                  % (path, sum(all_lens), size))
        oid = object_id(size, b"".join(all_ids))
        if size == s.size:
            s.oid = oid
        self.by_oid.setdefault(oid, (root, path))
        off = 0
        for cid, ln in zip(all_ids, all_lens):
            self.by_chunk.setdefault(cid, (root, path, off, ln))
            off += ln

    # --- the plan ----------------------------------------------------------------------

    async def _plan(self, send):
        if self.snap is None:
            raise m.ProtocolError(m.E_PROTOCOL, "SEEDEND without a restore")
        dry = bool(self.flags & rm.F_DRY_RUN)
        device = self.info.device
        # Walked twice: first for the totals the rover shows progress against (RTOTAL), then
        # sent. The plan is a function of the snapshot and the seeds only, so both walks agree.
        files = size = link = 0
        for a in self._actions():
            if a[0] == "write":
                files += 1
                size += a[1][m.REC_SIZE]
                link += a[3]
        await send([rm.RTOTAL, files, size, link])
        done = {"files": 0, "bytes": 0, "chunks": 0, "failed": 0}
        for a in self._actions():
            kind = a[0]
            if kind == "msg":
                if a[1][0] == rm.RPUT and a[1][8] == rm.H_FAILED:
                    done["failed"] += 1
                    log.error("rover %s: restore of snapshot %d: %s: %s", device, self.snap["id"], a[1][1], a[1][10])
                await send(a[1])
                continue
            r, steps, n = a[1], a[2], a[3]
            await send(self._put(r, rm.H_WRITE, n))
            if dry:
                done["files"] += 1
                done["bytes"] += r[m.REC_SIZE]
                continue
            try:
                await self._send_content(r, steps, send, done)
            except RestoreError as e:
                done["failed"] += 1
                log.error("rover %s: restore of snapshot %d: %s", device, self.snap["id"], e)
                await send(self._put(r, rm.H_FAILED, 0, e.why))
                continue
            done["files"] += 1
            done["bytes"] += r[m.REC_SIZE]
        self.counts["restore_files"] += done["files"]
        log.info("rover %s: restore of snapshot %d%s: %d files (%d bytes) written, %d chunks (%d bytes) sent, "
                 "%d could not be restored", device, self.snap["id"], " (dry run)" if dry else "", done["files"],
                 done["bytes"], done["chunks"], self.counts["restore_tx_data"], done["failed"])
        await send([rm.RDONE, done["files"], done["bytes"], done["chunks"], done["failed"]])

    def _actions(self):
        """The plan, in the order it goes out: ("msg", message) for what needs no content,
        ("write", record, steps, link bytes) for a file written (its RPUT, then its steps)."""
        dry = bool(self.flags & rm.F_DRY_RUN)
        meta = not self.flags & rm.F_NO_META      # differences in mode and mtime alone matter
        delete = bool(self.flags & rm.F_DELETE)
        gone = set()            # (root, path) whose old content a write or delete replaced
        dirty = set()           # folders whose mtime our writes changed
        dirs = []               # (path, mtime, mode, local) of the snapshot's folders
        seen = set()            # local paths the snapshot holds
        for r, ids, problem in self.service.entries(self.snap, self.prefix):
            path, typ = r[m.REC_PATH], r[m.REC_TYPE]
            local = self.local.get(path)
            if local is not None:
                seen.add(path)
                if local.type == m.T_DIR and typ != m.T_DIR:
                    if not delete:
                        yield ("msg", self._put(r, rm.H_FAILED, 0, "a folder is in the way (restore with "
                                                                    "--delete to replace it)"))
                        continue
                    for p in self._below(path):
                        gone.add((0, p))
                        seen.add(p)
                        yield ("msg", [rm.RDEL, p])
                    dirty.add(_parent(path))
                    local = None
            if typ == m.T_DIR:
                dirs.append((path, r[m.REC_MTIME], r[m.REC_MODE], local))
                if local is None or local.type != m.T_DIR:
                    if local is not None:
                        gone.add((0, path))
                    dirty.add(_parent(path))
                    yield ("msg", self._put(r, rm.H_WRITE))
                continue
            if typ == m.T_LINK:
                if local is not None and local.type == m.T_LINK and local.target == r[m.REC_TARGET]:
                    if meta and local.mtime != r[m.REC_MTIME]:
                        yield ("msg", self._put(r, rm.H_META))
                    continue
                gone.add((0, path))
                dirty.add(_parent(path))
                yield ("msg", self._put(r, rm.H_WRITE))
                continue
            oid = r[m.REC_OID]
            if local is not None and local.type == m.T_FILE and local.oid == oid and (0, path) not in gone:
                if meta and (local.mtime != r[m.REC_MTIME] or local.mode != r[m.REC_MODE]):
                    yield ("msg", self._put(r, rm.H_META))
                continue
            if problem is not None:
                yield ("msg", self._put(r, rm.H_FAILED, 0, problem.why))
                continue
            steps, link = self._content(r, ids, gone)
            dirty.add(_parent(path))
            yield ("write", r, steps, link)
            gone.add((0, path))
        if delete:
            extra = [p for p in self.local if p not in seen and _under(p, self.prefix)]
            extra.sort(key=_key, reverse=True)      # what is inside a folder before the folder
            for p in extra:
                gone.add((0, p))
                dirty.add(_parent(p))
                yield ("msg", [rm.RDEL, p])
        if not dry:
            for p in self.leftovers:
                yield ("msg", [rm.RDEL, p])
        for path, mtime, mode, local in reversed(dirs):
            if meta and (path in dirty or local is None or local.type != m.T_DIR or local.mtime != mtime
                         or local.mode != mode):
                yield ("msg", [rm.RPUT, path, m.T_DIR, 0, mtime, mode, None, None, rm.H_DIR_TIMES, 0, None])

    def _below(self, path):
        """A folder of the rover's where the snapshot has a file or a link: all of it goes
        (only with --delete), deepest first, then the folder."""
        sep = b"/" if type(path) is bytes else "/"
        below = [p for p in self.local if type(p) is type(path) and p.startswith(path + sep)]
        below.sort(key=_key, reverse=True)
        return below + [path]

    def _put(self, r, how, link=0, text=None):
        target = r[m.REC_TARGET] if r[m.REC_TYPE] == m.T_LINK else None
        return [rm.RPUT, r[m.REC_PATH], r[m.REC_TYPE], r[m.REC_SIZE], r[m.REC_MTIME], r[m.REC_MODE], r[m.REC_OID],
                target, how, link, text]

    def _usable(self, src, gone):
        return src is not None and (src[0], src[1]) not in gone and not self.flags & rm.F_NO_SEEDS

    def _content(self, r, ids, gone):
        """The steps that build file `r` at the rover: ("copy", root, path, offset, length)
        for bytes it holds (runs merged), ("data", chunk id) for the rest; and the raw bytes of
        those chunks (what the link must carry, before compression)."""
        size = r[m.REC_SIZE]
        if not size:
            return [], 0
        src = self.by_oid.get(r[m.REC_OID])
        if self._usable(src, gone):
            return [("copy", src[0], src[1], 0, size)], 0
        steps = []
        link = 0
        for cid in ids:
            c = self.by_chunk.get(cid)
            if self._usable(c, gone):
                root, p, off, ln = c
                if steps and steps[-1][0] == "copy":
                    s = steps[-1]
                    if s[1] == root and s[2] == p and s[3] + s[4] == off:
                        steps[-1] = ("copy", root, p, s[3], s[4] + ln)
                        continue
                steps.append(("copy", root, p, off, ln))
            else:
                info = self.service.store.info(cid)
                link += info["raw_len"] if info else 0
                steps.append(("data", cid))
        return steps, link

    async def _send_content(self, r, steps, send, done):
        path = r[m.REC_PATH]
        for s in steps:
            if s[0] == "copy":
                await send([rm.RCOPY, s[1], s[2], s[3], s[4]])
                continue
            cid = s[1]
            raw = self.service.chunk(path, cid)
            enc, payload = m.ENC_RAW, raw
            # One zlib stream per restore, flushed at each chunk's end: the rover keeps one
            # inflater (one window) for the session, and later chunks reach back into earlier
            # ones. A chunk that does not shrink goes raw and leaves the stream as it was.
            if self.z is None:
                self.z = zlib.compressobj(_LEVEL, zlib.DEFLATED, self.wbits)
            z = self.z.copy()
            packed = z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH)
            if len(packed) < len(raw):
                enc, payload = m.ENC_ZLIB, packed
                self.z = z
            view = memoryview(payload)
            await send([rm.RDATA, cid, enc, len(raw), len(payload), bytes(view[:rm.PIECE])])
            for o in range(rm.PIECE, len(payload), rm.PIECE):
                await send(m.body(bytes(view[o:o + rm.PIECE])))
            done["chunks"] += 1
            self.counts["restore_tx_data"] += len(payload)
            self.counts["restore_chunks"] += 1
