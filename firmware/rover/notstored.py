# Why an item was not stored exactly, in words: loaded only when a backup lists one. Every
# string a module holds is interned when it loads, and on MicroPython one interned string too
# many can cost a new pool of several KB of the rover's 256 KB heap (docs/decisions.md).
# backup.py names the reasons by number (its _S_* consts, in this order).
_TEXT = (
    "cannot list this folder (%s): what it holds is not in this snapshot",
    "cannot read it (%s)",
    "its path is too long for this rover's memory",
    "its %s is not UTF-8, and the anchor is too old to store raw names",
    "a symbolic link, not followed; this runtime cannot read its target",
    "its path is %s bytes long, longer than the anchor stores",
    "its path is deeper than the anchor stores (64)",
    "its link target is too long to store (%s bytes)",
    "it changed while it was being uploaded, in two sessions",
    "its modification time (%s ns) is beyond what the anchor stores: its content is stored, "
    "with the nearest time it takes",
    "it was replaced while it was read",
    "it kept changing while it was read (3 reads)",
)


def why(code, arg):
    text = _TEXT[code]
    if "%s" not in text:
        return text
    if isinstance(arg, OSError) and arg.args and type(arg.args[0]) is int:
        # The errno, not str(e): CPython's text repeats the path, which may be kilobytes long.
        s = getattr(arg, "strerror", None)
        arg = "error %d%s" % (arg.args[0], (", " + s) if s else "")
    elif isinstance(arg, MemoryError):
        arg = "out of memory"
    return text % (arg,)


def show(p):
    """A path for people: raw bytes that are not UTF-8 are shown escaped."""
    if type(p) is str:
        return p
    try:
        return p.decode()
    except UnicodeError:
        return repr(p)[2:-1]
