"""`anchorctl clone`: a snapshot written as the filesystem a replacement rover starts from, a
littlefs v2 image that MicroPython mounts as it is (`vfs.VfsLfs2`), or a folder tree.

CPython only (the operator's machine). Both read the restore stream `anchorctl restore`
reads, every chunk checked against its id, and write to OUT.tmp, renamed to OUT only when
the clone is done: a clone that fails or is interrupted leaves neither OUT nor OUT.tmp.

littlefs keeps folders, files, their bytes and (as MicroPython writes it) an mtime; it has
no symlinks, modes or owners, and MicroPython's names are text. Entries it cannot hold are
left out and named ("not cloned"); lost modes are counted. Everything is written with
MicroPython's own littlefs configuration (docs/decisions.md, "Clone images").
"""
import os
import shutil
import struct

from anchorctl.errors import AnchorError
from anchorctl.restore import FileFailed, Restorer, check_path, read_content

# MicroPython's littlefs v2 (extmod/vfs_lfs.c, extmod/vfs_lfsx.c): VfsLfs2(bdev) mounts with
# readsize=32, progsize=32, lookahead=32 (bytes), block_cycles=100, cache_size =
# min(block_size, 4 * max(readsize, progsize)), name_max, file_max and attr_max at littlefs's
# defaults (255, 2**31-1, 1022). The image is formatted with the same numbers.
READ_SIZE = 32
PROG_SIZE = 32
LOOKAHEAD = 32
BLOCK_CYCLES = 100
NAME_MAX = 255
# MicroPython's LFS_ATTR_MTIME: a custom attribute of type 1, 8 bytes little-endian,
# nanoseconds since 1970-01-01; os.stat() on the board reads it (whole seconds).
ATTR_MTIME = 1
MTIME_MAX = (1 << 64) - 1
MIN_BLOCK = 128             # littlefs's smallest block; the cache (128 here) must divide it
MAX_IMAGE = 1 << 31         # littlefs addresses a file's bytes with 32-bit signed offsets

_MTIME = struct.Struct("<Q")
_FILL = b"\xff" * 65536      # erased flash reads as 0xFF


class NoRoom(Exception):
    """The image is full: the clone cannot be made at this size."""


def check_geometry(block_size, block_count):
    """An AnchorError unless a littlefs image of these numbers can be made and mounted."""
    if block_size < MIN_BLOCK or block_size % MIN_BLOCK:
        raise AnchorError("--block-size %d: littlefs needs a multiple of %d bytes (a board's flash "
                          "erase size, 4096 on ESP32 and RP2)" % (block_size, MIN_BLOCK))
    if block_count < 2:
        raise AnchorError("--block-count %d: littlefs needs at least 2 blocks" % block_count)
    if block_size * block_count > MAX_IMAGE:
        raise AnchorError("--block-size x --block-count is %d bytes; a littlefs image takes %d at most"
                          % (block_size * block_count, MAX_IMAGE))


def _unrepresentable(path, kind):
    """Why littlefs (as MicroPython reads it) cannot hold this entry, or None."""
    if kind == "symlink":
        return "a symlink (littlefs has none)"
    try:
        parts = path.encode("utf-8").split(b"/")
    except UnicodeEncodeError:
        return "its name is not UTF-8 (MicroPython's names are text)"
    for p in parts:
        if len(p) > NAME_MAX:
            return "a name of %d bytes (littlefs takes %d at most)" % (len(p), NAME_MAX)
    return None


def _context_class():
    import littlefs

    class BlockFile(littlefs.UserContext):
        """littlefs's block device over an open file. Bytes never written (past the end of a
        sparse sizing file) read as erased flash."""

        def __init__(self, f):
            self.f = f

        def read(self, cfg, block, off, size):
            self.f.seek(block * cfg.block_size + off)
            data = self.f.read(size)
            if len(data) < size:
                data += b"\xff" * (size - len(data))
            return bytearray(data)

        def prog(self, cfg, block, off, data):
            self.f.seek(block * cfg.block_size + off)
            self.f.write(data)
            return 0

        def erase(self, cfg, block):
            self.f.seek(block * cfg.block_size)
            self.f.write(_FILL[:cfg.block_size] if cfg.block_size <= len(_FILL) else b"\xff" * cfg.block_size)
            return 0

        def sync(self, cfg):
            return 0

    return BlockFile


class LfsWriter:
    """Writes a restore stream into a fresh littlefs image held in the open file `f`
    (block_size x block_count bytes). NoRoom when it does not fit."""

    def __init__(self, f, block_size, block_count):
        import littlefs
        self.lfs = littlefs.lfs
        self.Error = littlefs.LittleFSError
        self.block_size = block_size
        self.image = littlefs.LittleFS(
            context=_context_class()(f), mount=False, block_size=block_size, block_count=block_count,
            read_size=READ_SIZE, prog_size=PROG_SIZE, lookahead_size=LOOKAHEAD, block_cycles=BLOCK_CYCLES,
            cache_size=min(block_size, 4 * max(READ_SIZE, PROG_SIZE)), name_max=NAME_MAX)
        self.fs = self.image.fs
        self._call(self.image.format)
        self._call(self.image.mount)
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0, "failed": [], "not_cloned": [],
                       "modes_lost": 0, "incomplete": None, "blocks_used": 0, "block_count": block_count}

    def _call(self, fn, *args):
        """fn(*args); littlefs's 'no space' is NoRoom, its other errors OSError."""
        try:
            return fn(*args)
        except self.Error as e:
            if e.code == self.Error.Error.LFS_ERR_NOSPC:
                raise NoRoom()
            raise OSError("littlefs: %s" % e.name)

    def run(self, reader):
        while True:
            try:
                e = reader.header()
            except FileFailed as why:
                self.counts["incomplete"] = str(why)
                break
            if e is None:
                break
            path = e.get("path")
            check_path(path)
            kind = e.get("type")
            if kind not in ("file", "dir", "symlink"):
                raise AnchorError("unknown entry type %r in restore stream" % (kind,))
            why = _unrepresentable(path, kind)
            if why is not None:
                if kind == "file":
                    read_content(reader, e["size"], None, why)      # its frames, unread
                self.counts["not_cloned"].append({"path": path, "error": why})
                continue
            if kind == "file" and e["mode"] & 0o7111:
                self.counts["modes_lost"] += 1      # executable or setuid/setgid/sticky
            try:
                if kind == "file":
                    self._file(reader, path, e)
                else:
                    self._call(self.lfs.mkdir, self.fs, path)
                    self._mtime(path, e)
                    self.counts["dirs"] += 1
            except FileFailed as why:
                self.counts["failed"].append({"path": path, "error": str(why)})
            except OSError as x:
                self.counts["failed"].append({"path": path, "error": "cannot create it: %s" % x})
        self.counts["blocks_used"] = self._call(self.lfs.fs_size, self.fs)
        self._call(self.image.unmount)
        return self.counts

    def _mtime(self, path, e):
        # MicroPython's field is unsigned 64-bit: a snapshot's wider times (docs/decisions.md,
        # "Odd trees") are held at its ends, 1970 and 2554
        self._call(self.lfs.setattr, self.fs, path, ATTR_MTIME, _MTIME.pack(min(max(0, e["mtime_ns"]), MTIME_MAX)))

    def _file(self, reader, path, e):
        """The file's frames written into the image; FileFailed (and no file at path) when
        they do not arrive whole and checked."""
        fh = None
        problem = None
        try:
            fh = self._call(self.lfs.file_open, self.fs, path, "xb")
        except OSError as x:
            problem = "cannot create it: %s" % x

        def write(data):
            view = memoryview(data)
            while view:
                view = view[self._call(self.lfs.file_write, self.fs, fh, bytes(view)):]

        problem = read_content(reader, e["size"], write, problem)
        if fh is not None:
            try:
                self._call(self.lfs.file_close, self.fs, fh)
                if problem is None:
                    self._mtime(path, e)
            except OSError as x:
                problem = problem or "cannot write it: %s" % x
            if problem is not None:
                try:
                    self._call(self.lfs.remove, self.fs, path)
                except OSError as x:
                    # a prefix left in the image would pass for the file on the board
                    raise AnchorError("cannot take the partial %s out of the image: %s" % (path, x))
        if problem is not None:
            raise FileFailed(problem)
        self.counts["files"] += 1
        self.counts["bytes"] += e["size"]


def _blocks_estimate(client, device, snapshot, block_size):
    """A block count the snapshot surely fits in (for measuring what it takes): each file's
    bytes in whole blocks and one more for its skip-list pointers, two blocks per folder's
    metadata pair, twice over."""
    n = 16
    for r in client.ls(device, snapshot, "", True):
        n += (r["size"] // (block_size - 64) + 2) if r["type"] == "file" else 4
    return 2 * n


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def clone_littlefs(client, device, snapshot, out, block_size, block_count):
    """Write snapshot `snapshot` of `device` as a littlefs v2 image of block_size x
    block_count bytes at `out` (which must not exist). Returns the counts; raises
    AnchorError (nothing left at out or out.tmp) when no image can be made."""
    check_geometry(block_size, block_count)
    if os.path.lexists(out):
        raise AnchorError("%s exists; clone writes a new image only (remove it first)" % out)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise AnchorError("no folder %s for the image" % parent)
    try:
        import littlefs  # noqa: F401  (a clear error now, not halfway)
    except ImportError:
        raise AnchorError("littlefs images need the littlefs-python package (pip install littlefs-python)")
    tmp = out + ".tmp"
    with client.restore_stream(device, snapshot) as reader:
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            raise AnchorError("%s exists (left by an interrupted clone?); remove it first" % tmp)
        except OSError as x:
            raise AnchorError("cannot create %s: %s" % (tmp, x))
        done = False
        try:
            with os.fdopen(fd, "r+b") as f:
                # the whole image up front, erased: a host disk that is too small says so now
                left = block_size * block_count
                while left:
                    left -= f.write(_FILL[:min(left, len(_FILL))])
                try:
                    counts = LfsWriter(f, block_size, block_count).run(reader)
                except NoRoom:
                    counts = None
                except OSError as x:
                    raise AnchorError("cannot write the image: %s" % x)
                if counts is not None:
                    if counts["incomplete"]:
                        raise AnchorError("clone not made: the anchor cannot read the rest of the "
                                          "snapshot: %s" % counts["incomplete"])
                    f.flush()
                    os.fsync(f.fileno())
            if counts is not None:
                os.rename(tmp, out)
                done = True
                return counts
        finally:
            if not done:
                _remove(tmp)
    _too_small(client, device, snapshot, out, block_size, block_count)


def _too_small(client, device, snapshot, out, block_size, block_count):
    """The snapshot did not fit: measure what it takes (the stream once more, into a sparse
    scratch image that cannot fill up) and say it."""
    scratch = out + ".sizing.tmp"
    need = None
    try:
        big = max(2 * block_count, _blocks_estimate(client, device, snapshot, block_size))
        big = min(big, MAX_IMAGE // block_size)
        with client.restore_stream(device, snapshot) as reader:
            with open(scratch, "x+b") as f:
                f.truncate(big * block_size)    # sparse: costs what is written only
                try:
                    need = LfsWriter(f, block_size, big).run(reader)["blocks_used"]
                except (NoRoom, OSError):
                    pass
    except (AnchorError, OSError):
        pass
    finally:
        _remove(scratch)
    have = "%d blocks of %d bytes (%d KiB)" % (block_count, block_size, block_count * block_size // 1024)
    if need is None:
        raise AnchorError("the snapshot does not fit in %s: no image written" % have)
    raise AnchorError("the snapshot does not fit in %s: it takes %d blocks (%d KiB) on littlefs, "
                      "before the board writes anything of its own; no image written (a board's "
                      "data partition holds size/%d blocks: docs/management.md, \"Clone\")"
                      % (have, need, need * block_size // 1024, block_size))


def clone_dir(client, device, snapshot, out):
    """Write the snapshot as a folder tree at `out` (absent, or an empty folder), the way
    `anchorctl restore` writes it (modes, mtimes, symlinks; setuid/setgid bits dropped)."""
    out = os.path.abspath(out)
    if os.path.islink(out) or (os.path.lexists(out) and not os.path.isdir(out)):
        raise AnchorError("%s exists and is not a folder; clone --fs dir writes into a new or empty folder" % out)
    if os.path.isdir(out) and os.listdir(out):
        raise AnchorError("%s is not empty; clone --fs dir writes into a new or empty folder" % out)
    if not os.path.isdir(os.path.dirname(out)):
        raise AnchorError("no folder %s for the clone" % os.path.dirname(out))
    tmp = out + ".tmp"
    with client.restore_stream(device, snapshot) as reader:
        try:
            os.mkdir(tmp, 0o755)
        except FileExistsError:
            raise AnchorError("%s exists (left by an interrupted clone?); remove it first" % tmp)
        except OSError as x:
            raise AnchorError("cannot create %s: %s" % (tmp, x))
        done = False
        try:
            try:
                counts = Restorer(tmp).run(reader)
            except OSError as x:
                raise AnchorError("cannot write the clone: %s" % x)
            if counts["incomplete"]:
                raise AnchorError("clone not made: the anchor cannot read the rest of the snapshot: %s"
                                  % counts["incomplete"])
            try:
                if os.path.isdir(out):
                    os.rmdir(out)       # still empty, or this fails and nothing is replaced
                os.rename(tmp, out)
            except OSError as x:
                raise AnchorError("cannot put the clone in place at %s: %s" % (out, x))
            done = True
            counts["not_cloned"] = []
            return counts
        finally:
            if not done:
                shutil.rmtree(tmp, ignore_errors=True)
