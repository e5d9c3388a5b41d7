"""One data directory, one anchor (CPython only).

Two anchors on one store both append segments and commit catalog rows, and each one's
recovery truncates what the other is writing: the store ends with bad chunks and snapshots
that cannot be restored. So an anchor holds an exclusive lock on DATA/lock for as long as it
runs, taken before anything in the directory is opened or recovered, and a second anchor
refuses to start, naming the holder.

flock(2) rather than a pid file: the kernel drops the lock when the holder dies, however it
dies, so a crash never leaves a stale lock that an operator must clear by hand. The file's
text (pid, host, when, what it serves) is only there to name the holder in the error.
"""
import fcntl
import os
import socket
import time

LOCK_NAME = "lock"


class DataDirBusy(Exception):
    """Another process holds the data directory."""


class DataLock:
    """Holds DATA/lock until release() (or the process ends). what: a short text saying
    what this process serves, written into the lock for the next one to name."""

    def __init__(self, data_dir, what="anchor"):
        self.path = os.path.join(data_dir, LOCK_NAME)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise DataDirBusy("data directory %s is in use by another anchor (lock %s held by %s); "
                              "one data directory serves one anchor"
                              % (data_dir, self.path, holder or "a process that has not named itself yet"))
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        text = "pid %d on %s since %s: %s\n" % (
            os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8", "replace"), 0)

    def describe(self, what):
        """Say what this process serves, once it knows (the bound port, say)."""
        if self.fd is None:
            return
        text = _read(self.fd).split(": ", 1)[0] + ": " + what + "\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode("utf-8", "replace"), 0)

    def release(self):
        if self.fd is not None:
            # Unlocked by close; the file stays (removing it would race a starting anchor
            # that already opened it and would then lock a file nobody else can see).
            os.close(self.fd)
            self.fd = None


def _read(fd):
    try:
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
