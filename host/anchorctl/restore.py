"""Writing a restore stream to a folder, safely: nothing lands outside the target, and no
file there is replaced by anything but a whole, checked copy.

Each file is written to a temporary name beside it, every chunk checked against its id
(SHA-256) as it arrives, and renamed over the path only once it is whole: a file the anchor
cannot read back (or that arrives damaged) is left out and named, and a good file already at
that path stays as it was. Runs of zero chunks become holes (seeks, then a truncate to the
size), so sparse files stay sparse. setuid and setgid bits are dropped unless asked for: a
restore by root must not hand out privileges a rover's files happened to carry."""
import hashlib
import os
import stat

from anchorctl.errors import AnchorError

SPECIAL_BITS = 0o6000     # setuid, setgid


def check_path(path):
    """The parts of a relative path that stays below where it is written; AnchorError for
    any other (the stream is broken or hostile)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\x00" in path:
        raise AnchorError("refusing to restore unsafe path %r" % (path,))
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise AnchorError("refusing to restore unsafe path %r" % (path,))
    return parts


def safe_join(root_real, path):
    """Return root_real/path after checking `path` cannot leave root_real."""
    dest = os.path.join(root_real, *check_path(path))
    # A symlink restored earlier (or already there) must not carry a later write outside.
    parent = os.path.dirname(dest)
    if os.path.realpath(parent) != os.path.normpath(parent):
        raise AnchorError("refusing to restore %r: its folder leads outside the target through a symlink" % path)
    return dest


class FileFailed(Exception):
    """One file cannot be restored; the stream goes on with the next entry."""


OVERWRITE = ("never", "if-changed", "always")


class Restorer:
    """overwrite: what to do with a file or symlink already at an entry's path: "never" (the
    default: it stays, the entry is listed as skipped), "if-changed" (replaced unless it is
    the same kind with the same size, mtime and mode, or the same symlink target), "always".
    dry_run: write nothing; the counts and `plan` say what a restore would do."""

    def __init__(self, to, keep_special_bits=False, overwrite="never", dry_run=False):
        if overwrite not in OVERWRITE:
            raise AnchorError("--overwrite %r: one of %s" % (overwrite, ", ".join(OVERWRITE)))
        if not dry_run:
            os.makedirs(to, exist_ok=True)
        self.root = os.path.realpath(to)
        self.mode_mask = 0o7777 if keep_special_bits else 0o7777 & ~SPECIAL_BITS
        self.overwrite = overwrite
        self.dry_run = dry_run
        self.plan = []          # dry run: (action, path) with action "write", "overwrite", "skip", "unchanged"
        self.dirs = []
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0, "failed": [], "incomplete": None,
                       "skipped": [], "unchanged": 0}

    def _decide(self, dest, e, kind):
        """"write" (nothing there), "overwrite", "skip" (there, and not to be replaced) or
        "unchanged" (if-changed found it the same)."""
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return "write"
        except OSError:
            return "overwrite"        # let the write itself report what is wrong
        if stat.S_ISDIR(st.st_mode):
            return "write"            # a folder in the way: the file fails, named, as before
        if self.overwrite == "always":
            return "overwrite"
        if self.overwrite == "if-changed":
            if kind == "file" and stat.S_ISREG(st.st_mode) and st.st_size == e["size"] \
                    and st.st_mtime_ns == e["mtime_ns"] \
                    and stat.S_IMODE(st.st_mode) == e["mode"] & self.mode_mask:
                return "unchanged"
            if kind == "symlink" and stat.S_ISLNK(st.st_mode) and os.readlink(dest) == e["target"]:
                return "unchanged"
            return "overwrite"
        return "skip"

    def _pass_over(self, reader, e, action):
        """An entry not written: its frames are read (the stream stays in step) and counted."""
        if e.get("type") == "file":
            problem = read_content(reader, e["size"], lambda data: None)
            if problem is not None and action not in ("skip", "unchanged"):
                self.counts["failed"].append({"path": e["path"], "error": problem})
                return
        if action == "skip":
            self.counts["skipped"].append(e["path"])
        elif action == "unchanged":
            self.counts["unchanged"] += 1
        elif e.get("type") == "file":
            self.counts["files"] += 1
            self.counts["bytes"] += e["size"]
        elif e.get("type") == "symlink":
            self.counts["symlinks"] += 1

    def run(self, reader):
        while True:
            try:
                e = reader.header()
            except FileFailed as why:
                # The anchor cannot read the rest of the snapshot (its tree): keep what came.
                self.counts["incomplete"] = str(why)
                break
            if e is None:
                break
            dest = safe_join(self.root, e.get("path"))
            kind = e.get("type")
            if kind in ("file", "symlink"):
                action = self._decide(dest, e, kind)
                if self.dry_run:
                    self.plan.append((action, e["path"]))
                if self.dry_run or action in ("skip", "unchanged"):
                    self._pass_over(reader, e, action)
                    continue
            elif self.dry_run:
                if kind == "dir":
                    self.counts["dirs"] += 1
                continue
            if kind == "file":
                try:
                    self._file(reader, dest, e)
                except FileFailed as why:
                    self.counts["failed"].append({"path": e["path"], "error": str(why)})
                continue
            try:
                self._other(dest, e, kind)
            except OSError as x:
                # a folder or symlink the target's filesystem refuses (permissions, a name too
                # long): named like a file that failed; what is below it fails on its own
                self.counts["failed"].append({"path": e["path"], "error": "cannot create it: %s" % x})
        # Folders last and deepest first: writing into a folder changes its mtime.
        for dest, e in reversed(self.dirs):
            os.chmod(dest, e["mode"] & self.mode_mask)
            os.utime(dest, ns=(e["mtime_ns"], e["mtime_ns"]))
        return self.counts

    def _other(self, dest, e, kind):
        """A folder or a symlink."""
        # Entries of a restore of one path (--path a/b/f) come without their folders.
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if kind == "dir":
            if os.path.islink(dest) or (os.path.exists(dest) and not os.path.isdir(dest)):
                os.unlink(dest)
            os.makedirs(dest, exist_ok=True)
            self.dirs.append((dest, e))
            self.counts["dirs"] += 1
        elif kind == "symlink":
            if os.path.lexists(dest):
                if os.path.isdir(dest) and not os.path.islink(dest):
                    raise AnchorError("refusing to replace folder %s with a symlink" % dest)
                os.unlink(dest)
            os.symlink(e["target"], dest)
            os.utime(dest, ns=(e["mtime_ns"], e["mtime_ns"]), follow_symlinks=False)
            self.counts["symlinks"] += 1
        else:
            raise AnchorError("unknown entry type %r in restore stream" % kind)

    def _file(self, reader, dest, e):
        """Write one file's frames to a temporary name, then rename it over dest. FileFailed
        (after reading the file's frames to their end, so the stream stays in step) when it
        cannot be written whole; dest is then untouched."""
        size = e["size"]
        parent = os.path.dirname(dest)
        problem = None
        fd = None
        tmp = None
        try:
            os.makedirs(parent, exist_ok=True)
            if os.path.isdir(dest) and not os.path.islink(dest):
                problem = "a folder is in the way"
            else:
                # a short name of our own: the file's may be near the length limit already
                tmp = os.path.join(parent, ".anchor-restore-%s" % os.urandom(6).hex())
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as x:
            problem = "cannot write it: %s" % x
        try:
            problem = self._content(reader, fd, size, problem)
            try:
                if problem is None:
                    os.ftruncate(fd, size)      # a file that ends in a hole gets its length
                    os.fchmod(fd, e["mode"] & self.mode_mask)
                    os.utime(fd, ns=(e["mtime_ns"], e["mtime_ns"]))
            except OSError as x:
                problem = "cannot write it: %s" % x
            finally:
                if fd is not None:
                    os.close(fd)
                    fd = None
            if problem is None:
                try:
                    os.rename(tmp, dest)        # replaces a file or a symlink, never follows one
                    tmp = None
                except OSError as x:
                    problem = "cannot put it in place: %s" % x
        finally:
            # whatever happened (a cut stream too), no half file is left behind
            if fd is not None:
                os.close(fd)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        if problem is not None:
            raise FileFailed(problem)
        self.counts["files"] += 1
        self.counts["bytes"] += size

    @staticmethod
    def _content(reader, fd, size, problem):
        """Read a file's frames to their end, writing them at fd while nothing is wrong;
        return what went wrong, or None."""
        def write(data):
            n = len(data)
            # ends first: a chunk that is not all zeros nearly always shows it there,
            # and count() is a pass over the chunk, as costly as its SHA-256
            if not data[0] and not data[-1] and data.count(0) == n:
                os.lseek(fd, n, os.SEEK_CUR)        # a hole, not n written zeros
            else:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
        return read_content(reader, size, write, problem)


def read_content(reader, size, write, problem=None):
    """Read a file's frames to their end (so the stream stays in step), handing each chunk
    to write(bytes) once it is checked against its id, while nothing is wrong; return what
    went wrong, or None. An OSError from write costs this file only; anything else it
    raises ends the stream's reading."""
    got = 0
    while True:
        try:
            frame = reader.frame()
        except FileFailed as x:
            return "the anchor cannot read it back: %s" % x
        if frame is None:
            break
        if problem is not None:
            continue                    # keep the stream in step; nothing more is written
        cid, data = frame
        got += len(data)
        if got > size:
            problem = "more bytes arrived than its %d" % size
        elif hashlib.sha256(data).digest() != cid:
            problem = "chunk %s arrived damaged (its bytes do not hash to its id)" % cid.hex()[:16]
        else:
            try:
                write(data)
            except OSError as x:
                problem = "cannot write it: %s" % x
    if problem is None and got != size:
        problem = "%d of its %d bytes arrived" % (got, size)
    return problem
