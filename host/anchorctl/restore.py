"""Writing a restore stream to a folder, safely: nothing lands outside the target."""
import os

from anchorctl.errors import AnchorError


def safe_join(root_real, path):
    """Return root_real/path after checking `path` cannot leave root_real."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\x00" in path:
        raise AnchorError("refusing to restore unsafe path %r" % (path,))
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise AnchorError("refusing to restore unsafe path %r" % (path,))
    dest = os.path.join(root_real, *parts)
    # A symlink restored earlier (or already there) must not carry a later write outside.
    parent = os.path.dirname(dest)
    if os.path.realpath(parent) != os.path.normpath(parent):
        raise AnchorError("refusing to restore %r: its folder leads outside the target through a symlink" % path)
    return dest


class Restorer:
    def __init__(self, to):
        os.makedirs(to, exist_ok=True)
        self.root = os.path.realpath(to)
        self.dirs = []
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}

    def run(self, reader):
        while True:
            e = reader.header()
            if e is None:
                break
            dest = safe_join(self.root, e.get("path"))
            kind = e.get("type")
            if kind == "dir":
                if os.path.islink(dest) or (os.path.exists(dest) and not os.path.isdir(dest)):
                    os.unlink(dest)
                os.makedirs(dest, exist_ok=True)
                self.dirs.append((dest, e))
                self.counts["dirs"] += 1
            elif kind == "file":
                self._file(reader, dest, e)
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
        # Folders last and deepest first: writing into a folder changes its mtime.
        for dest, e in reversed(self.dirs):
            os.chmod(dest, e["mode"])
            os.utime(dest, ns=(e["mtime_ns"], e["mtime_ns"]))
        return self.counts

    def _file(self, reader, dest, e):
        if os.path.isdir(dest) and not os.path.islink(dest):
            raise AnchorError("refusing to replace folder %s with a file" % dest)
        if os.path.lexists(dest):
            os.unlink(dest)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            reader.copy(f, e["size"])
        os.chmod(dest, e["mode"])
        os.utime(dest, ns=(e["mtime_ns"], e["mtime_ns"]))
        self.counts["files"] += 1
        self.counts["bytes"] += e["size"]
