"""Link emulator: a TCP relay between a rover and an anchor that counts the bytes it moves.

This is the measuring point for "bytes on the link": it counts what crosses the socket,
not what either program believes it sent. Used by tests and benchmarks in-process
(`CountingRelay`) or from the shell (`.venv/bin/python -m tests.support.linkemu --listen PORT --to
HOST:PORT`).

Optionally it is also a slow link: `rate` (bytes/s, each direction on its own, as on a
full-duplex radio) is enforced by a token bucket in each pump thread, and `latency_ms` delays
every byte by that much one way (a second thread per direction delivers what is due, through
a bounded queue, so latency does not eat into the bandwidth). Bytes are counted as they enter
the link, as before. `cut_every=(min_s, max_s)` also cuts the link now and then: every
connection open at that moment is closed (a radio dropping out under a TCP session).

`PtyLink` is the same measuring point for serial links: two pseudo-terminals, one per
program, joined by pump threads that carry bytes at a line rate, with latency, bit errors,
garbage bursts, outages and a UART receive buffer that overruns when its reader is busy.
"""
import argparse
import collections
import errno
import fcntl
import math
import os
import random
import select
import shutil
import socket
import struct
import tempfile
import termios
import threading
import time
import tty

PIECE = 65536          # the most a pump reads at once
DELAY_QUEUE = 256      # pieces in flight per direction on a link with latency (bounded memory)


class TokenBucket:
    """`rate` bytes/s with bursts of at most `burst` bytes; take(n) sleeps until n may pass."""

    def __init__(self, rate, burst):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.t = time.monotonic()

    def take(self, n):
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= n:
                self.tokens -= n
                return
            time.sleep(min(1.0, (n - self.tokens) / self.rate))


class CountingRelay:
    """Accepts on 127.0.0.1 and relays each connection to `target`, counting per direction.

    rate: bytes per second in each direction (None: as fast as loopback); latency_ms: one-way
    delay added to every byte (0: none); cut_every: (min_s, max_s), close every open
    connection after a random wait in that range (seeded by `seed`), again and again;
    `cuts` counts the cuts that closed at least one connection."""

    def __init__(self, target_host, target_port, listen_host="127.0.0.1", listen_port=0,
                 rate=None, latency_ms=0, cut_every=None, seed=0):
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive bytes/s")
        if latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        if cut_every is not None:
            lo, hi = cut_every
            if not 0 < lo <= hi:
                raise ValueError("cut_every must be (min_s, max_s) with 0 < min_s <= max_s")
        self.rate = rate
        self.latency = latency_ms / 1000.0
        # A piece never exceeds the bucket, and a bucket holds at most ~50 ms of the link's
        # bytes (at least 512), so the link does not pass bursts a real radio could not.
        self.piece = PIECE if rate is None else max(512, min(PIECE, int(rate / 20)))
        self.target = (target_host, target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((listen_host, listen_port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.up = 0      # rover -> anchor
        self.down = 0    # anchor -> rover
        self.connections = 0
        self.cuts = 0
        self._lock = threading.Condition()
        self._closing = False
        self._stop = threading.Event()
        self._threads = []
        self._conns = []   # (client, upstream) socket pairs open now, for a cut
        self._cut_at = None  # cut_down_at()
        self._cut_up_at = None  # cut_up_at()
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        if cut_every is not None:
            self._cut_range = (float(cut_every[0]), float(cut_every[1]))
            self._rng = random.Random(seed)
            t = threading.Thread(target=self._cutter, daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def total(self):
        return self.up + self.down

    def reset(self):
        with self._lock:
            self.up = self.down = 0

    def wait_for(self, predicate, timeout):
        """Block until predicate(relay) holds (checked as bytes move); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self), timeout)

    def _accept(self):
        while not self._closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=30)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                # a relay must not add Nagle delays the real link does not have
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._conns.append((c, u))
            for a, b, up in ((c, u, True), (u, c, False)):
                t = threading.Thread(target=self._pump, args=(a, b, up), daemon=True)
                t.start()
                self._threads.append(t)

    def _count(self, n, up):
        with self._lock:
            if up:
                self.up += n
            else:
                self.down += n
            self._lock.notify_all()

    def cut_down_at(self, n):
        """Cut every connection once `n` bytes in all have gone anchor -> rover: at most n
        pass (a radio that drops out at a chosen point of a transfer)."""
        with self._lock:
            self._cut_at = n

    def cut_up_at(self, n):
        """Cut every connection once `n` bytes in all have gone rover -> anchor (counted
        across connections, like `up`): at most n pass."""
        with self._lock:
            self._cut_up_at = n

    def _cutter(self):
        lo, hi = self._cut_range
        while not self._stop.wait(self._rng.uniform(lo, hi)):
            self.cut()

    def cut(self):
        """Break every connection open now, as a radio that drops out; True if any was."""
        with self._lock:
            conns = list(self._conns)
            if conns:
                # Counted first: whoever sees a connection drop can rely on the count.
                self.cuts += 1
                self._lock.notify_all()
        for pair in conns:
            for s in pair:
                try:
                    # The pumps see EOF or an error and close both sides as usual.
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return bool(conns)

    def _forget(self, a, b):
        with self._lock:
            self._conns = [p for p in self._conns if a not in p and b not in p]

    def _close_pair(self, src, dst):
        self._forget(src, dst)
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _pump(self, src, dst, up):
        if self.latency > 0:
            return self._pump_delayed(src, dst, up)
        bucket = TokenBucket(self.rate, self.piece) if self.rate else None
        try:
            while True:
                data = src.recv(self.piece)
                if not data:
                    break
                cut = False
                if not up and self._cut_at is not None:
                    with self._lock:
                        if self._cut_at is not None and self.down + len(data) >= self._cut_at:
                            data = data[:self._cut_at - self.down]
                            self._cut_at = None
                            cut = True
                elif up and self._cut_up_at is not None:
                    with self._lock:
                        if self._cut_up_at is not None and self.up + len(data) >= self._cut_up_at:
                            data = data[:self._cut_up_at - self.up]
                            self._cut_up_at = None
                            cut = True
                self._count(len(data), up)
                if bucket:
                    bucket.take(len(data))
                dst.sendall(data)
                if cut:
                    self.cut()
                    break
        except OSError:
            pass
        finally:
            self._close_pair(src, dst)

    def _pump_delayed(self, src, dst, up):
        """Reader half of a link with latency: paces at the rate, then queues each piece with
        the time it is due at the far end; a deliverer thread sends it then."""
        bucket = TokenBucket(self.rate, self.piece) if self.rate else None
        q = collections.deque()
        cv = threading.Condition()
        state = {"eof": False, "dead": False}

        def deliver():
            try:
                while True:
                    with cv:
                        while not q and not state["eof"] and not state["dead"]:
                            cv.wait(1.0)
                        if state["dead"] or (not q and state["eof"]):
                            return
                        due, data = q.popleft()
                        cv.notify_all()
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with cv:
                    state["dead"] = True
                    cv.notify_all()
                self._close_pair(src, dst)

        t = threading.Thread(target=deliver, daemon=True)
        t.start()
        self._threads.append(t)
        try:
            while True:
                data = src.recv(self.piece)
                if not data:
                    break
                self._count(len(data), up)
                if bucket:
                    bucket.take(len(data))
                due = time.monotonic() + self.latency
                with cv:
                    while len(q) >= DELAY_QUEUE and not state["dead"]:
                        cv.wait(1.0)
                    if state["dead"]:
                        break
                    q.append((due, data))
                    cv.notify_all()
        except OSError:
            pass
        finally:
            with cv:
                state["eof"] = True
                cv.notify_all()

    def close(self):
        self._closing = True
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# Serial links: two pseudo-terminals joined by pump threads.

SIDES = ("rover", "anchor")
DIRECTIONS = ("up", "down")        # up: rover -> anchor, down: anchor -> rover
N_TTY_MAX_UNREAD = 4095            # FIONREAD on a pty never reports more (the N_TTY buffer)
PTY_PIECE = 4096                   # the most a pty read returns anyway
TICK = 0.5                         # longest a pump waits without looking at the schedule
LANDING = 5.0                      # longest the kernel may take to show written bytes unread


def _unread(fd):
    """Bytes sitting in a tty's receive buffer that no program has read yet."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _land(fd, before, k):
    """Waits (bounded) until the k bytes just written to a pty master show as unread on its
    slave, which showed `before` unread bytes when they were written.

    The kernel moves bytes written to a pty master into the slave's receive buffer later,
    on a worker thread (later still on a loaded machine), so FIONREAD right after a write
    may still show the old count: a UART buffer sized from it would take more than it
    holds, and whoever reads the count next would miss bytes the link calls delivered.
    A program reading meanwhile can keep the count below before + k; it sees the bytes as
    they land anyway, so the wait also ends when the count drops, or when poll() finds
    nothing to read (poll moves pending bytes into an empty buffer before it answers)."""
    deadline = time.monotonic() + LANDING
    last = before
    while True:
        n = _unread(fd)
        if n >= before + k or n < last:
            return
        if not select.select([fd], [], [], 0)[0]:
            return
        if time.monotonic() >= deadline:
            return
        last = n
        time.sleep(0.0005)


class _End:
    """One side's pty pair. The program opens the slave (via `link`, a symlink in the link's
    temp dir); the emulator works the master and keeps a slave fd of its own, never read,
    so the pair stays up when the program closes and reopens it, and FIONREAD on it tells
    how much the program has not read."""

    def __init__(self, name, link):
        self.name = name
        self.link = link
        self.path = None
        self.master = -1
        self.slave = -1
        self.present = False
        self.retiring = False   # vanish() in progress: pumps must not start using the fds
        self.busy = 0           # pumps inside an I/O call on the fds now

    def open(self):
        m, s = os.openpty()
        # Raw: the line discipline must not translate, echo or eat a single byte.
        tty.setraw(s)
        os.set_blocking(m, False)
        self.master, self.slave = m, s
        self.path = os.ttyname(s)
        tmp = self.link + ".new"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(self.path, tmp)
        os.replace(tmp, self.link)
        self.present = True

    def shut(self):
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1
        self.present = False


class PtyLink:
    """A serial line between two programs, as a pair of ptys joined by two pump threads.

    `rover_path` / `anchor_path` are the devices each program opens (`rover_link` /
    `anchor_link`: symlinks to them that `vanish()` removes and `reappear()` re-points).

    rate: bytes/s each way (None: as fast as the ptys go); the pump reads its source no
      faster than that, so a sender that outruns the line blocks in its own tty buffer.
    latency_ms: one-way delay.  bit_error_rate: chance per bit of a flip (seeded).
    garbage: (every_s, nbytes): a burst of random bytes into each direction that often.
    outages: [(start_s, duration_s), ...] from start, or f(seconds_since_start) -> True
      while the link is down; bytes sent then are taken from the sender and lost.
    rxbuf: the receiving program's UART buffer in bytes (<= 4095): what does not fit next
      to the bytes it has not read yet is dropped, as an overrun UART drops it. Without
      it a receiver that stops reading fills its tty (~20 KB) and then the line stalls
      back to the sender, as with hardware flow control. With it, a byte counts as
      delivered once the receiver's tty shows it unread (see `_land`).

    Counters: up, down (bytes entering the link from the rover / anchor) and, per
    direction ("up", "down"): delivered, corrupted_bits, overrun_bytes, garbage_bytes
    (injected), outage_bytes (lost in outages), lost_bytes (for a side that had vanished).
    """

    def __init__(self, rate=None, latency_ms=0, bit_error_rate=0.0, garbage=None, outages=None,
                 rxbuf=None, seed=0):
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive bytes/s")
        if latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        if not 0.0 <= bit_error_rate <= 1.0:
            raise ValueError("bit_error_rate must be in 0..1")
        if garbage is not None and not (garbage[0] > 0 and garbage[1] >= 1):
            raise ValueError("garbage must be (every_s > 0, nbytes >= 1)")
        if rxbuf is not None and not 1 <= rxbuf <= N_TTY_MAX_UNREAD:
            raise ValueError("rxbuf must be 1..%d bytes: a pty cannot show more unread bytes"
                             % N_TTY_MAX_UNREAD)
        if outages is None:
            self._down = lambda t: False
        elif callable(outages):
            self._down = outages
        else:
            spans = [(float(a), float(a) + float(d)) for a, d in outages]
            self._down = lambda t: any(a <= t < b for a, b in spans)
        self.rate = rate
        self.latency = latency_ms / 1000.0
        self.bit_error_rate = bit_error_rate
        self.garbage = garbage
        self.rxbuf = rxbuf
        # A piece is at most ~10 ms of the line (a UART does not deliver in big bursts).
        self.piece = PTY_PIECE if rate is None else max(1, min(PTY_PIECE, int(rate / 100)))
        # Bytes in flight per direction: one piece, plus what the latency holds at the rate.
        if self.latency > 0:
            held = (rate if rate else 4 * 1024 * 1024) * self.latency
            self.in_flight = int(held) + self.piece
        else:
            self.in_flight = self.piece
        self.up = 0
        self.down = 0
        zero = lambda: {d: 0 for d in DIRECTIONS}  # noqa: E731
        self.delivered = zero()
        self.corrupted_bits = zero()
        self.overrun_bytes = zero()
        self.garbage_bytes = zero()
        self.outage_bytes = zero()
        self.lost_bytes = zero()
        self.pump_errors = []
        self._cv = threading.Condition()
        self._closing = False
        self._dir = tempfile.mkdtemp(prefix="ptylink-")
        self._ends = {name: _End(name, os.path.join(self._dir, name)) for name in SIDES}
        for e in self._ends.values():
            e.open()
        self._t0 = time.monotonic()
        # One wake-up pipe per pump: vanish() and close() interrupt its select.
        self._wake = {d: os.pipe() for d in DIRECTIONS}
        for _, w in self._wake.values():
            os.set_blocking(w, False)
        self._threads = []
        for d in DIRECTIONS:
            rng = random.Random("%s/%s" % (seed, d))
            t = threading.Thread(target=self._run_pump, args=(d, rng), daemon=True,
                                 name="ptylink-" + d)
            t.start()
            self._threads.append(t)

    # --- what tests use ---------------------------------------------------------------

    @property
    def rover_path(self):
        return self._ends["rover"].path

    @property
    def anchor_path(self):
        return self._ends["anchor"].path

    @property
    def rover_link(self):
        return self._ends["rover"].link

    @property
    def anchor_link(self):
        return self._ends["anchor"].link

    @property
    def total(self):
        return self.up + self.down

    def wait_for(self, predicate, timeout):
        """Block until predicate(link) holds (checked as bytes move); False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: predicate(self), timeout)

    def elapsed(self):
        """Seconds since the link started: the clock outages are scheduled on."""
        return time.monotonic() - self._t0

    def is_down(self):
        """True during an outage."""
        return bool(self._down(self.elapsed()))

    def vanish(self, side):
        """The device goes away: its pty pair is closed (the program's reads and writes
        fail) and its symlink removed."""
        end = self._ends[side]
        with self._cv:
            if not end.present:
                raise ValueError("%s has already vanished" % side)
            end.retiring = True
            self._poke()
            if not self._cv.wait_for(lambda: end.busy == 0, 10):
                end.retiring = False
                raise RuntimeError("pump did not let go of the %s pty" % side)
            end.shut()
            end.retiring = False
            self._cv.notify_all()

    def reappear(self, side):
        """The device comes back as a fresh pty pair behind the same symlink."""
        end = self._ends[side]
        with self._cv:
            if end.present:
                raise ValueError("%s is present" % side)
            end.open()
            self._poke()
            self._cv.notify_all()

    def close(self):
        with self._cv:
            self._closing = True
            self._poke()
        for t in self._threads:
            t.join(timeout=10)
        for e in self._ends.values():
            if e.present:
                e.shut()
        for r, w in self._wake.values():
            os.close(r)
            os.close(w)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- pumps ------------------------------------------------------------------------

    def _poke(self):
        for _, w in self._wake.values():
            try:
                os.write(w, b"x")
            except BlockingIOError:
                pass

    def _gap(self, rng):
        """Bits until the next flipped bit: geometric with p = bit_error_rate."""
        p = self.bit_error_rate
        if p <= 0:
            return math.inf
        if p >= 1:
            return 0
        return int(math.log(1.0 - rng.random()) / math.log(1.0 - p))

    def _flip(self, data, d, state, rng):
        nbits = len(data) * 8
        pos = state["gap"]
        if pos >= nbits:
            state["gap"] = pos - nbits
            return data
        buf = bytearray(data)
        flips = 0
        while pos < nbits:
            buf[pos >> 3] ^= 1 << (pos & 7)
            flips += 1
            pos += 1 + self._gap(rng)
        state["gap"] = pos - nbits
        with self._cv:
            self.corrupted_bits[d] += flips
        return bytes(buf)

    def _run_pump(self, d, rng):
        try:
            self._pump(d, rng)
        except BaseException as e:
            # A dead pump is a dead line: keep the reason where a failing test can show it.
            with self._cv:
                self.pump_errors.append((d, e))
                self._cv.notify_all()
            raise

    def _pump(self, d, rng):
        src, dst = (self._ends["rover"], self._ends["anchor"]) if d == "up" else \
            (self._ends["anchor"], self._ends["rover"])
        wake_r = self._wake[d][0]
        queue = collections.deque()   # [due, bytes] waiting for the far end
        queued = 0
        state = {"gap": self._gap(rng)}
        tokens = float(self.piece)
        t_tok = time.monotonic()
        # Read only once a few ms of line time have built up: a wake-up per byte would
        # cost more CPU than the programs under test.
        grain = 1 if self.rate is None else max(1, min(self.piece, int(self.rate * 0.005)))
        next_garbage = self._t0 + self.garbage[0] if self.garbage else math.inf
        while True:
            with self._cv:
                if self._closing:
                    return
                s_fd = src.master if src.present and not src.retiring else -1
                d_fd = dst.master if dst.present and not dst.retiring else -1
                d_slave = dst.slave
                if s_fd >= 0:
                    src.busy += 1
                if d_fd >= 0:
                    dst.busy += 1
            try:
                now = time.monotonic()
                if now >= next_garbage:
                    next_garbage += self.garbage[0]
                    junk = bytes(rng.getrandbits(8) for _ in range(self.garbage[1]))
                    if not self._down(now - self._t0):
                        queue.append([now + self.latency, junk])
                        queued += len(junk)
                        with self._cv:
                            self.garbage_bytes[d] += len(junk)
                queued -= self._deliver(d, queue, d_fd, d_slave, now)
                blocked = bool(queue) and queue[0][0] <= now
                if self.rate is not None:
                    tokens = min(float(self.piece), tokens + (now - t_tok) * self.rate)
                    t_tok = now
                allow = int(tokens) if self.rate is not None else self.piece
                allow = min(allow, self.in_flight - queued)
                want_read = s_fd >= 0 and allow >= grain
                waits = [TICK, next_garbage - now]
                if queue and not blocked:
                    waits.append(queue[0][0] - now)
                if s_fd >= 0 and not want_read and self.rate is not None \
                        and queued < self.in_flight:
                    waits.append((grain - tokens) / self.rate)
                timeout = max(0.0, min(waits))
                rlist = [wake_r] + ([s_fd] if want_read else [])
                wlist = [d_fd] if blocked and d_fd >= 0 else []
                r, _, _ = select.select(rlist, wlist, [], timeout)
                if wake_r in r:
                    os.read(wake_r, 64)
                if s_fd in r:
                    try:
                        data = os.read(s_fd, allow)
                    except (BlockingIOError, InterruptedError):
                        data = b""
                    except OSError as e:
                        if e.errno != errno.EIO:
                            raise
                        data = b""  # no slave open at all: nothing was sent
                    if data:
                        now = time.monotonic()
                        tokens -= len(data)
                        with self._cv:
                            if d == "up":
                                self.up += len(data)
                            else:
                                self.down += len(data)
                            if self._down(now - self._t0):
                                self.outage_bytes[d] += len(data)
                                data = b""
                            self._cv.notify_all()
                        if data:
                            data = self._flip(data, d, state, rng)
                            queue.append([now + self.latency, data])
                            queued += len(data)
            finally:
                with self._cv:
                    if s_fd >= 0:
                        src.busy -= 1
                    if d_fd >= 0:
                        dst.busy -= 1
                    self._cv.notify_all()

    def _deliver(self, d, queue, d_fd, d_slave, now):
        """Writes what is due to the far end; returns the bytes taken off the queue."""
        taken = 0
        delivered = overrun = lost = 0
        while queue and queue[0][0] <= now:
            due, data = queue[0]
            if d_fd < 0:
                queue.popleft()
                taken += len(data)
                lost += len(data)
                continue
            unread = 0
            if self.rxbuf is not None:
                unread = _unread(d_slave)
                room = max(0, self.rxbuf - unread)
                if room < len(data):
                    overrun += len(data) - room
                    taken += len(data) - room
                    data = data[:room]
                    queue[0][1] = data
            k = 0
            if data:
                try:
                    k = os.write(d_fd, data)
                except BlockingIOError:
                    k = 0
            if k and self.rxbuf is not None:
                # The next room is computed from the count, and a test reads it once the
                # link says delivered: both need these bytes to show first.
                _land(d_slave, unread, k)
            delivered += k
            taken += k
            if k < len(data):
                queue[0][1] = data[k:]
                break
            queue.popleft()
        if delivered or overrun or lost:
            with self._cv:
                self.delivered[d] += delivered
                self.overrun_bytes[d] += overrun
                self.lost_bytes[d] += lost
                self._cv.notify_all()
        return taken


def _pair(text, name):
    a, sep, b = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("%s: expected A:B, got %r" % (name, text))
    return float(a), float(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, default=0)
    ap.add_argument("--to", help="HOST:PORT of the anchor (TCP relay)")
    ap.add_argument("--pty", action="store_true",
                    help="serial link instead: print two pty paths and join them")
    ap.add_argument("--rate", type=int, default=None, help="bytes/s each way (default: unlimited)")
    ap.add_argument("--latency-ms", type=float, default=0, help="one-way delay (default 0)")
    ap.add_argument("--cut-every", type=lambda t: _pair(t, "--cut-every"), default=None,
                    metavar="MIN:MAX", help="TCP: close all connections every MIN..MAX s")
    ap.add_argument("--ber", type=float, default=0.0, help="pty: bit error rate per bit")
    ap.add_argument("--garbage", type=lambda t: _pair(t, "--garbage"), default=None,
                    metavar="EVERY:N", help="pty: N random bytes every EVERY s each way")
    ap.add_argument("--outage", type=lambda t: _pair(t, "--outage"), action="append",
                    metavar="START:DURATION", help="pty: link down for DURATION s at START s")
    ap.add_argument("--rxbuf", type=int, default=None, help="pty: receiver UART buffer, bytes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.pty:
        garbage = (a.garbage[0], int(a.garbage[1])) if a.garbage else None
        link = PtyLink(rate=a.rate, latency_ms=a.latency_ms, bit_error_rate=a.ber,
                       garbage=garbage, outages=a.outage, rxbuf=a.rxbuf, seed=a.seed)
        print("rover: %s (%s)\nanchor: %s (%s)\nCtrl-C prints the counts"
              % (link.rover_link, link.rover_path, link.anchor_link, link.anchor_path),
              flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("up %d, down %d, delivered %s, corrupted bits %s, overrun %s"
                  % (link.up, link.down, link.delivered, link.corrupted_bits,
                     link.overrun_bytes))
            link.close()
        return
    if not a.to:
        ap.error("--to HOST:PORT is required (or --pty)")
    host, _, port = a.to.rpartition(":")
    r = CountingRelay(host, int(port), listen_port=a.listen, rate=a.rate, latency_ms=a.latency_ms,
                      cut_every=a.cut_every, seed=a.seed)
    print("relaying 127.0.0.1:%d -> %s; Ctrl-C prints the byte counts" % (r.port, a.to), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("up %d bytes, down %d bytes, cuts %d" % (r.up, r.down, r.cuts))


if __name__ == "__main__":
    main()
