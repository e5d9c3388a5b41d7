# The rover's side of a restore over its own link (docs/protocol.md §9), on MicroPython and
# CPython alike.
#
# The rover says what it holds (its target folder and any --seed folders, walked as a backup
# walks; the chunk lists of files the anchor asks for), then carries out the anchor's plan:
# every file is written to a temporary name beside it, from bytes the rover already holds
# (RCOPY) and chunks that come down the link (RDATA, checked against their ids), checked
# whole against the snapshot's object id, flushed, and only then renamed over its path.
# A cut restore leaves at most one temporary file; the next restore uses it as a seed, so
# what had arrived does not cross the link again.
#
# Memory stays flat: one folder window of the walk, one batch of seeds, one chunk.
import gc
import hashlib
import os

from anchor_core.compat import MICROPYTHON, const
from anchor_core import chunker
from anchor_core import messages as m
from anchor_core import restoremsg as rm
from rover import buffers
from rover import fsys
from rover.conversation import Conversation, RoverError
from rover.walk import walk

try:
    import zlib   # CPython
except ImportError:
    zlib = None

_BATCH = const(16)             # seeds per SEEDS message
_BATCH_BYTES = const(4096)     # ...and about this many bytes of names
_PART = b".anchor-restore-part"
_SEED = b".anchor-restore-seed"
# Window of the anchor's zlib streams: the decompressor's buffer. CPython takes zlib's
# largest; a 256 KB heap 8 KiB (measured: 13 bits cost 3.5% more bytes than 15 on source
# text, docs/decisions.md).
WBITS = 13 if zlib is None else 15
_SPECIAL = const(0o6000)       # setuid, setgid: never handed out by a restore


class VerifyFailed(Exception):
    pass


def _text(raw):
    # a name goes as text when it is UTF-8, else as the raw bytes (docs/protocol.md §3)
    try:
        return raw.decode()
    except UnicodeError:
        return raw


def _raw(path):
    return path if type(path) is bytes else path.encode()


if MICROPYTHON:
    import io
    _StreamBase = io.IOBase
else:
    _StreamBase = object


class _Pieces(_StreamBase):
    # The restore's compressed bytes as they come down: each RDATA's piece, then BODY messages
    # up to its encoded length. The anchor sends the compressed chunks of a session as one
    # zlib stream, flushed (Z_SYNC_FLUSH) at the end of each, so one inflater with one window
    # serves the whole restore: the heap takes its block once, not once per chunk (a 256 KB
    # heap in pieces has no 8 KiB block for the tenth). deflate.DeflateIO reads through
    # readinto, a byte at a time; what it leaves of a chunk (the flush's marker) is carried to
    # the next. The pieces are views into the session's receive buffer: used before the next.
    def __init__(self, conv):
        self.conv = conv
        self.piece = b""
        self.p = 0
        self.left = 0
        self.carry = b""
        self.cp = 0

    def start(self, first, n):
        self.piece = first
        self.p = 0
        self.left = n - len(first)

    def _next(self):
        self.piece = self.conv.recv(m.BODY)[m.BODY_DATA]
        self.p = 0
        if len(self.piece) > self.left:
            raise RoverError("anchor sent more bytes of a chunk than it announced")
        self.left -= len(self.piece)

    def readinto(self, out):
        if self.cp < len(self.carry):
            out[0] = self.carry[self.cp]
            self.cp += 1
            return 1
        while self.p >= len(self.piece):
            if self.left <= 0:
                return 0
            self._next()
        out[0] = self.piece[self.p]
        self.p += 1
        return 1

    def next(self):
        """The rest of the current piece, or the next one; None at the chunk's end."""
        if self.p < len(self.piece):
            v = self.piece[self.p:]
            self.p = len(self.piece)
            return v
        if self.left <= 0:
            return None
        self._next()
        self.p = len(self.piece)
        return self.piece

    def finish(self):
        """What the inflater did not read of this chunk, kept for the next (a few bytes)."""
        rest = bytes(self.carry[self.cp:]) + bytes(self.piece[self.p:])
        while self.left > 0:
            self._next()
            rest += bytes(self.piece)
            self.p = len(self.piece)
            if len(rest) > 64:
                break
        if len(rest) > 64:
            raise RoverError("a compressed chunk holds more than its content")
        self.carry = rest
        self.cp = 0
        self.piece = b""
        self.p = 0


class Restore(Conversation):
    def __init__(self, link, device, to, seeds=(), prefix="", flags=0, snapshot=None, log=None, warn=None,
                 prog=None):
        Conversation.__init__(self, link, device, log)
        self.prog = prog                           # rover/progress.py, when it is shown
        rm.install()
        self.to = fsys.fsencode(to.rstrip("/") or "/")
        self.roots = [self.to] + [fsys.fsencode(s.rstrip("/") or "/") for s in seeds]
        self.prefix = prefix.strip("/")
        self.flags = flags
        self.snapshot = snapshot
        self.warn = warn or self.log
        self.dry = bool(flags & rm.F_DRY_RUN)
        self.real = [None] * len(self.roots)      # CPython: the roots' real paths
        self.checked = None                        # the last folder found free of symlinks
        self.renamed = None                        # a leftover renamed to _SEED during the walk
        self.cur = None                            # [file, temp path, final path, record, written, copied]
        self.src = _Pieces(self)                   # the chunk bytes coming down
        if zlib is None and buffers.inflate_room is None:
            # Started without main.py's restore buffers (buffers.allocate(True)): the block
            # for the inflater's window is taken now, while one may still be had.
            try:
                buffers.inflate_room = bytearray(buffers.INFLATE_ROOM)
            except MemoryError:
                pass
        self.inflater = None                       # the session's zlib stream, once it starts
        self.oid = None                            # object id of the RDATA chunks of cur, in order
        self.stats = {"snapshot": None, "entries": 0, "bytes": 0, "files": 0, "written": 0, "copied": 0,
                      "chunks": 0, "data_bytes": 0, "deleted": 0, "kept": 0, "failed": 0, "seeds": 0,
                      "listed": 0, "verify_failed": 0, "would_send": 0, "plan_files": 0, "plan_bytes": 0}

    # --- the restore -------------------------------------------------------------------

    def run(self):
        self.hello(None, 0)
        self.send(rm.restore(self.snapshot, self.prefix, self.flags | (rm.F_NO_META if MICROPYTHON else 0), WBITS))
        r = self.recv(rm.RSNAP, m.FAIL)
        if r[0] == m.FAIL:
            raise RoverError("anchor refused the restore: %s" % r[m.FAIL_TEXT])
        self.stats["snapshot"], self.stats["entries"], self.stats["bytes"] = r[1], r[2], r[3]
        if not self.dry:
            fsys.makedirs(self.to.decode() if MICROPYTHON else self.to)
        if not MICROPYTHON:
            for i, root in enumerate(self.roots):
                self.real[i] = os.path.realpath(root)
        self._send_seeds()
        return self._apply()

    # --- what the rover holds ------------------------------------------------------------

    def _send_seeds(self):
        seq = 0
        count = 0
        prog = self.prog
        if prog:
            prog.begin("list")
        for i, root in enumerate(self.roots):
            if not fsys.exists(root):
                if i:
                    raise RoverError("seed folder %s does not exist" % root.decode())
                continue
            batch = []
            names = []
            size = 0
            for rel, s in walk(root, self._skip):
                if i == 0 and not self.dry:
                    rel = self._leftover(root, rel)
                    if rel is None:
                        continue
                target = None
                if s[0] == m.T_LINK:
                    # MicroPython cannot read a link's target: "" matches no snapshot's
                    target = _text(s[4]) if s[4] is not None else ""
                e = m.put_entry(_text(rel), s[0], s[1], s[2], s[3], None, target)
                batch.append(e)
                names.append(rel)
                size += len(rel) + (len(target) if target else 0) + 32
                count += 1
                if prog:
                    prog.files_done = count
                    prog.poke()
                if len(batch) >= _BATCH or size >= _BATCH_BYTES:
                    self._seed_batch(seq, i, batch, names)
                    seq += 1
                    batch = []
                    names = []
                    size = 0
                    gc.collect()
            if batch:
                self._seed_batch(seq, i, batch, names)
                seq += 1
        self.stats["seeds"] = count
        self.send([rm.SEEDEND, count])

    def _leftover(self, root, rel):
        """A temporary file a cut restore left: kept as a seed under another name, so that the
        file it was becoming can be written afresh beside it."""
        if rel == self.renamed:
            return None                           # listed again under its new name
        j = rel.rfind(b"/")
        if rel[j + 1:] != _PART:
            return rel
        new = rel[:j + 1] + _SEED
        fsys.rename(root + b"/" + rel, root + b"/" + new)
        self.renamed = new
        return new

    def _skip(self, rel, code, arg):
        from rover import notstored
        self.warn("not used as a seed: %s: %s" % (notstored.show(rel), notstored.why(code, arg)))

    def _seed_batch(self, seq, root, batch, names):
        self.send(rm.seeds(seq, root, batch))
        ask = self.recv(rm.SEEDASK)[2]
        for i in ask:
            self._seed_list(i, self.roots[root] + b"/" + names[i])

    def _seed_list(self, i, path):
        ids = []
        lens = []
        first = 0
        got = 0
        try:
            f = open(path, "rb")
        except OSError:
            f = None
        if f is not None:
            with f:
                try:
                    for off, ln, cid in chunker.chunks_of(f, self.cbuf):
                        ids.append(cid)
                        lens.append(ln)
                        got = off + ln
                        if len(ids) >= rm.MAX_SEED_IDS:
                            self.send(rm.seedlist(i, first, ids, lens, False, 0))
                            first += len(ids)
                            ids = []
                            lens = []
                except OSError as e:
                    # A file the flash cannot read back whole seeds with what was read: the
                    # chunks listed so far are whole, and every copy is checked anyway.
                    self._skip(path, 1, e)
        self.send(rm.seedlist(i, first, ids, lens, True, got))
        self.stats["listed"] += 1

    # --- the plan ------------------------------------------------------------------------

    def _apply(self):
        while True:
            msg = self.recv(rm.RPUT, rm.RCOPY, rm.RDATA, rm.RDEL, rm.RDONE, rm.RTOTAL, m.FAIL)
            t = msg[0]
            if t == rm.RTOTAL:
                self.stats["plan_files"], self.stats["plan_bytes"], self.stats["would_send"] = msg[1], msg[2], msg[3]
                p = self.prog
                if p:
                    p.files_total, p.bytes_total = msg[1], msg[2]
                    p.files_done = p.bytes_done = p.part = 0
                    p.begin("restore")
            elif t == rm.RDATA:
                self._data(msg)
            elif t == rm.RCOPY:
                self._copy(msg)
            elif t == rm.RPUT:
                self._put(msg)
            elif t == rm.RDEL:
                self._delete(msg[1])
            elif t == m.FAIL:
                self._abandon()
                raise RoverError("anchor stopped the restore: %s" % msg[m.FAIL_TEXT])
            else:
                if self.cur is not None:
                    raise RoverError("anchor ended the restore in the middle of %s" % self._show(self.cur[3][1]))
                return self.stats

    def _show(self, path):
        from rover.notstored import show
        return show(_raw(path))

    def _local(self, path, root=0):
        """The rover's path for `path` (checked by the message check: relative, no '..'),
        after making sure no folder on the way is a symlink: nothing is written, and nothing
        read as a seed, outside the roots."""
        base = self.roots[root]
        full = base + b"/" + _raw(path)
        j = full.rfind(b"/")
        parent = full[:j]
        if parent == self.checked or parent == base:
            return full
        if MICROPYTHON:
            # No lstat: each folder on the way is looked up in its parent's listing.
            cur = base
            for name in _raw(path).split(b"/")[:-1]:
                kind = None
                for n, k in fsys.entries(cur):
                    if n == name:
                        kind = k
                        break
                if kind == fsys.S_IFLNK >> 12:
                    raise RoverError("refusing %s: a folder on its way is a symlink" % self._show(path))
                cur = cur + b"/" + name
                if kind is None:
                    break            # not there yet: created by makedirs
        else:
            real = os.path.realpath(parent)
            root_real = self.real[root]
            if real != root_real and not real.startswith(root_real.rstrip(b"/") + b"/"):
                raise RoverError("refusing %s: a folder on its way leads outside %s through a symlink"
                                 % (self._show(path), base.decode("utf-8", "replace")))
        self.checked = parent
        return full

    def _put(self, msg):
        path, typ, size, mtime, mode, target, how = msg[1], msg[2], msg[3], msg[4], msg[5], msg[7], msg[8]
        if self.cur is not None:
            if how == rm.H_FAILED and self.cur[3][1] == path:
                self._abandon()
            else:
                raise RoverError("anchor moved on from %s before its last byte" % self._show(self.cur[3][1]))
        if how == rm.H_FAILED:
            self.stats["failed"] += 1
            self.warn("not restored: %s: %s" % (self._show(path), msg[10]))
            return
        if self.dry:
            self._report(msg)
            return
        full = self._local(path)
        if how == rm.H_META or how == rm.H_DIR_TIMES:
            self._times(full, typ, mtime, mode)
            if how == rm.H_META:
                self.stats["kept"] += 1
            return
        s = self._entry(full)
        if typ == m.T_DIR:
            if s is not None and s[0] != m.T_DIR:
                os.remove(full)
            if s is None or s[0] != m.T_DIR:
                fsys.makedirs(full.decode() if MICROPYTHON else full)
            return
        if s is not None and s[0] == m.T_DIR:
            raise RoverError("anchor would replace the folder %s without removing it" % self._show(path))
        parent = full[:full.rfind(b"/")]
        if self._entry(parent) is None:
            fsys.makedirs(parent.decode() if MICROPYTHON else parent)
        tmp = parent + b"/" + _PART
        if typ == m.T_LINK:
            if MICROPYTHON or not hasattr(os, "symlink"):
                self.stats["failed"] += 1
                self.warn("not restored: %s: this rover cannot make symlinks" % self._show(path))
                return
            fsys.remove(tmp)
            os.symlink(target, tmp)
            try:
                os.utime(tmp, ns=(mtime, mtime), follow_symlinks=False)
            except (NotImplementedError, OSError):
                pass
            os.replace(tmp, full)
            self.stats["files"] += 1
            return
        f = open(tmp, "wb")
        self.cur = [f, tmp, full, msg, 0, False]
        self.oid = chunker.ObjectId()
        if size == 0:
            self._finish()

    def _report(self, msg):
        path, typ, size, how, link = msg[1], msg[2], msg[3], msg[8], msg[9]
        if how == rm.H_WRITE:
            if typ == m.T_FILE:
                self.stats["files"] += 1
                self.stats["written"] += size
                self.log("would write %s (%d bytes, %d of them over the link before compression)"
                         % (self._show(path), size, link))
            else:
                self.log("would create %s" % self._show(path))
        elif how == rm.H_META:
            self.log("would set the mode and mtime of %s" % self._show(path))

    def _entry(self, full):
        try:
            return fsys.entry(full, 0)
        except OSError:
            return None

    def _times(self, full, typ, mtime, mode):
        if MICROPYTHON:
            return                    # no chmod or utime here (and F_NO_META says so)
        if typ != m.T_LINK:
            os.chmod(full, mode & ~_SPECIAL)
        try:
            os.utime(full, ns=(mtime, mtime), follow_symlinks=False)
        except (NotImplementedError, OSError):
            pass

    def _copy(self, msg):
        cur = self.cur
        if cur is None:
            raise RoverError("anchor sent RCOPY outside a file")
        src = self._local(msg[2], msg[1])
        s = self._entry(src)
        if s is None or s[0] != m.T_FILE:
            # Only files the walk listed are sources; a symlink is never followed to one.
            raise RoverError("anchor named %s as a source, which is not a file here" % self._show(msg[2]))
        off, n = msg[3], msg[4]
        if cur[4] + n > cur[3][3]:
            raise RoverError("anchor's plan for %s runs past its size" % self._show(cur[3][1]))
        # A seed that shrank or went since it was listed leaves the file short or wrong: it
        # then fails its object-id check in _finish and is written afresh by another round.
        try:
            with open(src, "rb") as f:
                f.seek(off)
                left = n
                buf = self.cbuf
                while left:
                    k = f.readinto(buf) if left >= len(buf) else f.readinto(memoryview(buf)[:left])
                    if not k:
                        break
                    cur[0].write(memoryview(buf)[:k])
                    left -= k
        except OSError:
            pass
        cur[4] += n
        cur[5] = True
        self.stats["copied"] += n
        if self.prog:
            self.prog.sent(n)
        if cur[4] >= cur[3][3]:
            self._finish()

    def _data(self, msg):
        cur = self.cur
        if cur is None:
            raise RoverError("anchor sent chunk bytes outside a file")
        cid, enc, raw_len, enc_len = msg[1], msg[2], msg[3], msg[4]
        if cur[4] + raw_len > cur[3][3]:
            raise RoverError("anchor's chunks for %s run past its size" % self._show(cur[3][1]))
        if enc == m.ENC_RAW and enc_len != raw_len:
            raise RoverError("anchor sent a raw chunk of %d bytes as %d" % (raw_len, enc_len))
        src = self.src
        src.start(msg[5], enc_len)
        h = hashlib.sha256()
        f = cur[0]
        got = 0
        if enc == m.ENC_RAW:
            while True:
                v = src.next()
                if v is None:
                    break
                h.update(v)
                f.write(v)
                got += len(v)
        elif zlib is not None:
            if self.inflater is None:
                self.inflater = zlib.decompressobj(WBITS)
            d = self.inflater
            while True:
                v = src.next()
                if v is None:
                    break
                out = d.decompress(v, raw_len + 1 - got)
                if d.unconsumed_tail:
                    got = -1                   # more than the chunk: refused below
                    break
                h.update(out)
                f.write(out)
                got += len(out)
        else:
            if self.inflater is None:
                import deflate
                # Its window goes where the block reserved at start-up was (rover/buffers.py):
                # by now the heap has 70 KB free in pieces of at most 3.5 KB (measured).
                buffers.inflate_room = None
                gc.collect()
                self.inflater = deflate.DeflateIO(src, deflate.ZLIB, WBITS)
            d = self.inflater
            out = memoryview(self.cbuf)
            while got < raw_len:
                n = raw_len - got
                k = d.readinto(out if n >= len(out) else out[:n])
                if not k:
                    break
                h.update(out[:k])
                f.write(out[:k])
                got += k
            src.finish()
        if got != raw_len:
            raise RoverError("a chunk of %s did not inflate to its %d bytes: the link or the anchor damaged it"
                             % (self._show(cur[3][1]), raw_len))
        if h.digest() != cid:
            raise RoverError("a chunk of %s does not match its id: the link or the anchor damaged it"
                             % self._show(cur[3][1]))
        self.oid.add(cid)
        cur[4] += raw_len
        self.stats["chunks"] += 1
        self.stats["data_bytes"] += enc_len
        if self.prog:
            self.prog.sent(raw_len)
        if cur[4] >= cur[3][3]:
            self._finish()

    def _finish(self):
        f, tmp, full, rec, written, copied = self.cur
        self.cur = None
        fsys.fsync(f)
        f.close()
        size, oid = rec[3], rec[6]
        if copied:
            # Bytes copied from the rover's own files are checked here, whole: a seed that
            # changed since it was listed must not become the restored file.
            with open(tmp, "rb") as g:
                got = chunker.object_of(g, self.cbuf)[1]
        else:
            got = self.oid.finish(size)
        self.oid = None
        if got != oid:
            fsys.remove(tmp)
            self.stats["verify_failed"] += 1
            self.warn("%s did not check out against the snapshot (a seed changed during the restore); "
                      "it is written again" % self._show(rec[1]))
            return
        self._times(tmp, m.T_FILE, rec[4], rec[5])
        fsys.rename(tmp, full)
        self.stats["files"] += 1
        self.stats["written"] += size
        if self.prog:
            self.prog.queue(size)
            self.prog.flushed()

    def _abandon(self):
        if self.cur is not None:
            self.cur[0].close()
            fsys.remove(self.cur[1])
            self.cur = None

    def _delete(self, path):
        if self.dry:
            self.log("would delete %s" % self._show(path))
            self.stats["deleted"] += 1
            return
        full = self._local(path)
        s = self._entry(full)
        if s is None:
            return
        try:
            if s[0] == m.T_DIR:
                os.rmdir(full)
            else:
                os.remove(full)
            self.stats["deleted"] += 1
        except OSError as e:
            self.warn("could not delete %s: %s" % (self._show(path), e))
