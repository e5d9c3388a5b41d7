# What a backup is of (COMMIT's description: the folder as named, this host, a tag), and the
# note when the folder is not the one the state folder last backed up. Loaded for a moment
# before and after a backup, never during it (rover/cli.py unloads it): its bytecode would
# take the 256 KB heap the backup needs.
import sys


def _host():
    try:
        import socket
        return socket.gethostname()
    except (ImportError, AttributeError):
        import os
        try:
            return os.uname()[1]        # a board: its name, e.g. "esp32"
        except AttributeError:
            return sys.platform


def before(state, root, tag, warn):
    """The description to send; warns once if the last backup from `state` was of another folder."""
    try:
        with open(state + "/root") as f:
            last = f.read()
    except OSError:
        last = None
    if last is not None and last != root:
        warn("note: backing up %s, not %s as last time: this snapshot replaces the whole tree" % (root, last))
    return [root, _host(), tag]


def after(state, root):
    try:
        with open(state + "/root.new", "w") as f:
            f.write(root)
        import os
        os.rename(state + "/root.new", state + "/root")
    except OSError:
        pass                            # only the note depends on it
