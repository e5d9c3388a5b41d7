# File system access for the rover on both runtimes: MicroPython's os has ilistdir and a
# tuple stat with whole seconds; CPython has lstat with nanoseconds and symlinks.
import os

from anchor_core.compat import MICROPYTHON
from anchor_core import messages as m

S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000


def join(a, b):
    if not a:
        return b
    return a + "/" + b


if MICROPYTHON:
    def listdir(path):
        return [e[0] for e in os.ilistdir(path)]

    def iterdir(path):
        for e in os.ilistdir(path):
            yield e[0]

    def stat(path):
        """(type, size, mtime_ns, mode) or None for things a backup skips."""
        s = os.stat(path)
        fmt = s[0] & S_IFMT
        if fmt == S_IFDIR:
            t = m.T_DIR
        elif fmt == S_IFREG:
            t = m.T_FILE
        else:
            return None
        return (t, s[6] if t == m.T_FILE else 0, s[8] * 1000000000, s[0] & 0o7777, None)

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
    def listdir(path):
        return os.listdir(path)

    def iterdir(path):
        with os.scandir(path) as it:
            for e in it:
                yield e.name

    def stat(path):
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
