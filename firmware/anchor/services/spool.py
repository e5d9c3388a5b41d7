"""Room for relayed bodies on their way, with a budget (CPython only).

Every body the relay, the HTTP proxy or regeneration keeps draws on one budget while it
passes: a body captured as it streams (services.capture), and an upload the relay must hold
whole before sending it on (SEND, PUBLISH), which waits in a spool file here. Each body is
bounded by the relay limit (256 MiB by default), and the admission pools bound how many run at
once, but together that is still tens of GB: enough for paired rovers (or one hostile proxy
client with many connections) to fill the SD card the store lives on. So every body draws on
one budget for the whole anchor, and on the free space of the data filesystem: past either,
it stops being kept. The body still passes (the rover or the client gets it whole); it is only
not kept, and a later backup uploads it as if it had never passed. An upload the relay must
hold whole is refused instead, with the reason.
"""
import logging
import os
import tempfile
import time

log = logging.getLogger("anchor.spool")

DEFAULT_BUDGET = 1 << 30        # bytes of all spool files at once
FREE_FLOOR = 256 << 20          # never spool into the last this many bytes of the filesystem
CHECK_EVERY = 8 << 20          # look at the filesystem's free space every this many bytes
LOG_EVERY = 60.0                # seconds between "spool full" lines


class SpoolRoom:
    """The budget every spool file draws on. budget: bytes of spool files at once (None:
    DEFAULT_BUDGET); free_floor: bytes of the data filesystem a spool never writes into."""

    def __init__(self, spool_dir, budget=None, free_floor=FREE_FLOOR):
        self.spool_dir = spool_dir
        self.budget = DEFAULT_BUDGET if budget is None else budget
        self.free_floor = free_floor
        self.in_use = 0
        self.dropped = 0            # spools that ran out of room (a counter for status)
        self._logged_at = None

    def open(self, prefix):
        return Spool(self, prefix)

    def _take(self, n):
        if self.in_use + n > self.budget:
            return False
        self.in_use += n
        return True

    def _free(self):
        st = os.statvfs(self.spool_dir)
        return st.f_bavail * st.f_frsize

    def _full(self, why):
        self.dropped += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning("spool full (%s): relayed bodies pass without being kept (%d so far)",
                        why, self.dropped)


class Claim:
    """The bytes of one body on its way, drawn on the room: admit(n) before keeping n more
    bytes. Once the room runs out, `kept` is False, the claim lets go of what it held and
    admits nothing more (the body passes without being kept)."""

    def __init__(self, room):
        self.room = room
        self.kept = True
        self.size = 0
        self._held = 0              # bytes drawn on the budget
        self._next_check = 0

    def admit(self, n):
        if not self.kept:
            return False
        room = self.room
        if not room._take(n):
            self._drop("the budget of %d bytes is in use" % room.budget)
            return False
        self._held += n
        if self.size + n >= self._next_check:
            self._next_check = self.size + n + CHECK_EVERY
            if room._free() - n < room.free_floor:
                self._drop("less than %d MiB free on the data filesystem" % (room.free_floor >> 20))
                return False
        self.size += n
        return True

    def _drop(self, why):
        self.kept = False
        self.room._full(why)
        self._release()
        self._dropped()

    def _dropped(self):
        """What the holder lets go of when the room runs out."""

    def _release(self):
        self.room.in_use -= self._held
        self._held = 0


class Spool(Claim):
    """One body on its way in a file: write() it as it passes; `kept` is False once the spool
    ran out of room (what it held is gone, and the body must not be used)."""

    def __init__(self, room, prefix):
        Claim.__init__(self, room)
        self.f = tempfile.NamedTemporaryFile(dir=room.spool_dir, prefix=prefix, delete=False)
        self.name = self.f.name

    def write(self, data):
        if self.admit(len(data)):
            self.f.write(data)

    def _dropped(self):
        try:
            self.f.truncate(0)
        except (OSError, ValueError):
            pass

    def close(self):
        """The body has passed; its bytes stay (and count) until discard()."""
        self.f.close()

    def discard(self):
        """Done with the body (sent on or not): the file goes and its bytes leave the budget."""
        self.f.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass
        self._release()
