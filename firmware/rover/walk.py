# The rover's tree walk, shared by backups and restores (each loads only this of the other).
#
# Memory stays flat: one window of one folder's names and the current folder's path.
import gc

from anchor_core.compat import const
from anchor_core import messages as m
from rover import fsys

WINDOW = const(64)             # names of one folder held at a time
_ENOENT = const(2)
# Why an item is not stored: rover/notstored.py's texts, in its order (backup.py's _S_*).
_S_LIST = const(0)
_S_READ = const(1)
_S_MEMORY = const(2)


def _order(a, b):
    """-1, 0 or 1: paths a and b (text or raw bytes) in canonical order, their bytes compared
    component by component. m.path_key says the same with two copies of each path; this
    compares 64 bytes at a time, so a path of kilobytes costs no block of its size (a
    256 KB heap that is in pieces has none). Text compares by code point, which is UTF-8's
    byte order."""
    if type(a) is not type(b):       # only around a name that is not UTF-8: rare
        a = m.path_key(a)
        b = m.path_key(b)
    if a == b:
        return 0
    n = len(a) if len(a) < len(b) else len(b)
    i = 0
    while i < n:
        j = i + 64 if i + 64 < n else n
        if a[i:j] != b[i:j]:
            break
        i = j
    else:
        return -1 if len(a) < len(b) else 1
    while a[i] == b[i]:
        i += 1
    x = a[i]
    y = b[i]
    if x == "/" or x == 47:          # '/' sorts lowest (text, bytes)
        return -1
    if y == "/" or y == 47:
        return 1
    return -1 if x < y else 1


def _next_names(path, after, skip, rel, kinds):
    """The WINDOW smallest names in folder `path` greater than `after`, sorted; kinds[i]
    gets the listing's kind of names[i] (fsys.entries).

    Streams the listing and keeps only the window, so a folder of any size fits the heap;
    a folder of n names costs n / WINDOW listings (a 2,000-photo camera folder: 32).
    """
    best = []
    try:
        for name, kind in fsys.entries(path):
            if after is not None and name <= after:
                continue
            n = len(best)
            if n >= WINDOW:
                if name >= best[-1]:
                    continue
                best.pop()
                n -= 1
            lo = 0
            hi = n
            while lo < hi:
                mid = (lo + hi) // 2
                if best[mid] < name:
                    lo = mid + 1
                else:
                    hi = mid
            best.insert(lo, name)
            for k in range(n, lo, -1):
                kinds[k] = kinds[k - 1]
            kinds[lo] = kind
    except (OSError, MemoryError) as e:
        if not rel:
            raise             # the root itself: never commit a snapshot of nothing
        best = None
        gc.collect()
        skip(rel, _S_LIST, e)
        return []
    return best


def walk(root, skip=None):
    """Yield (relative path as bytes, entry) in canonical order: depth first, names sorted.
    Symlinks are entries, never followed. What cannot be read goes to skip(path, reason, detail).

    Memory holds one window of one folder's names and the current folder's path: nothing
    grows with the number of files in a folder, the tree, or its depth.
    """
    skip = skip or (lambda p, code, arg: None)
    if type(root) is str:
        root = fsys.fsencode(root)
    fsys.entry(root, 0)            # a missing root is an error, never an empty backup
    folder = b""                   # the folder being listed, relative to root
    last = None                    # the last name handled in it
    kinds = bytearray(WINDOW)
    names = _next_names(root, None, skip, b"", kinds)
    i = 0
    while True:
        if i >= len(names):
            if len(names) < WINDOW:
                if not folder:
                    return
                # Back up one level: the folder just finished is the last name handled there.
                j = folder.rfind(b"/")
                last = folder[j + 1:]
                folder = folder[:j] if j >= 0 else b""
            names = None
            names = _next_names(root + b"/" + folder if folder else root, last, skip, folder, kinds)
            i = 0
            continue
        last = names[i]
        kind = kinds[i]
        i += 1
        rel = folder + b"/" + last if folder else last
        full = root + b"/" + rel
        try:
            s = fsys.entry(full, kind)
        except OSError as x:
            if x.args and x.args[0] != _ENOENT:    # gone between listing and stat: not an error
                skip(rel, _S_READ, x)
            continue
        except MemoryError:
            if len(rel) <= 512:
                raise
            full = None
            gc.collect()
            skip(rel, _S_MEMORY, None)
            continue
        if s is None:
            continue          # sockets, devices, fifos: nothing to back up
        yield rel, s
        if s[0] == m.T_DIR:
            folder = rel
            last = None
            names = None
            gc.collect()
            names = _next_names(full, None, skip, rel, kinds)
            i = 0
