# File system access for the rover on both runtimes: MicroPython's os has ilistdir and a
# tuple stat with whole seconds; CPython has lstat with nanoseconds and symlinks.
#
# The tree walk works on raw bytes paths (entries(), entry()): a name that is not UTF-8 is
# still a name (MicroPython's ilistdir of a text path raises UnicodeError on one).
import os

from anchor_core.compat import MICROPYTHON
from anchor_core import messages as m

S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000


def _signed(t):
    # MicroPython's stat gives time_t as an unsigned machine word: a time before 1970
    # comes back as 2**64 - seconds.
    if t >= 1 << 63:
        return t - (1 << 64)
    return t


if MICROPYTHON:
    def fsencode(p):
        return p.encode() if type(p) is str else p

    def entries(path):
        """(name, kind) of folder `path` (bytes): kind is the entry's own S_IFMT bits >> 12
        (a symlink is S_IFLNK), 0 where the file system does not say."""
        for e in os.ilistdir(path):
            yield e[0], (e[1] & S_IFMT) >> 12

    def entry(path, kind):
        """(type, size, mtime_ns, mode, target) of the entry `path` (bytes) itself, never
        what a symlink points at; None for things a backup skips. A symlink comes back with
        target None: MicroPython cannot read link targets. Only the listing's kind tells a
        symlink here (stat follows them). FAT and LittleFS have no symlinks; a Unix file
        system whose listing gives no kinds (0, DT_UNKNOWN: some network file systems)
        cannot be told apart, and a link to a folder there is walked into (README.md)."""
        kind <<= 12
        if kind == S_IFLNK:
            return (m.T_LINK, 0, 0, 0, None)
        s = os.stat(path)         # follows symlinks: the listing's kind says what it is
        fmt = s[0] & S_IFMT
        if kind and fmt != kind and (kind == S_IFDIR or fmt == S_IFDIR):
            # Replaced between listing and stat (a link now, or another type): not followed.
            return (m.T_LINK, 0, 0, 0, None)
        if fmt == S_IFDIR:
            t = m.T_DIR
        elif fmt == S_IFREG:
            t = m.T_FILE
        else:
            return None
        return (t, s[6] if t == m.T_FILE else 0, _signed(s[8]) * 1000000000, s[0] & 0o7777, None)

    def fsync(f):
        # No fsync here: flush hands the bytes to the VFS (FAT and LittleFS commit a file on
        # close, and on the Unix port the kernel has them).
        f.flush()

    def stat(path):
        """(type, size, mtime_ns, mode, None) or None for things a backup skips."""
        return entry(path, 0)

    def rename(a, b):
        os.rename(a, b)

    def exists(path):
        try:
            os.stat(path)
            return True
        except OSError:
            return False

    def makedirs(path):
        cur = ""
        for p in path.split("/"):
            cur = cur + "/" + p if cur or path.startswith("/") else p
            if p and not exists(cur):
                os.mkdir(cur)

    def remove(path):
        try:
            os.remove(path)
        except OSError:
            pass
else:
    fsencode = os.fsencode

    def entries(path):
        with os.scandir(path) as it:
            for e in it:
                yield e.name, 0

    def entry(path, kind):
        s = os.lstat(path)
        fmt = s.st_mode & S_IFMT
        target = None
        if fmt == S_IFDIR:
            t = m.T_DIR
        elif fmt == S_IFREG:
            t = m.T_FILE
        elif fmt == S_IFLNK:
            t = m.T_LINK
            target = os.readlink(path)
        else:
            return None
        return (t, s.st_size if t == m.T_FILE else 0, s.st_mtime_ns, s.st_mode & 0o7777, target)

    def fsync(f):
        f.flush()
        os.fsync(f.fileno())

    def stat(path):
        return entry(path, 0)

    def rename(a, b):
        os.replace(a, b)

    def exists(path):
        return os.path.lexists(path)

    def makedirs(path):
        os.makedirs(path, exist_ok=True)

    def remove(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def drop_lock(state_dir):
    """Give back the state folder's lock (rover/state.py StateLock takes it): the owner file,
    then the folder. Here, not in state.py, because a backup, a restore and a run give it back
    after that module has left the heap."""
    remove(state_dir + "/lock/owner")
    try:
        os.rmdir(state_dir + "/lock")
    except OSError:
        pass
