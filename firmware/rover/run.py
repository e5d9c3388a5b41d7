# Unattended backups (docs/rover.md, "Unattended backups (`run`)"): `rover ... run ROOT
# --every 6h` and a board's main.py (rover/boot.py) share this loop, on CPython and
# MicroPython alike. Loaded only for `run`: a one-off backup does not carry its code.
#
# A backup, then a wait for the next slot; between slots the links cheaper than the one last
# used are probed, and one that answers starts a backup at once. The waits are asyncio
# tasks (a board's other tasks run meanwhile); each backup runs between two waits, outside
# the event loop, because the BLE port runs asyncio's loop itself while it blocks
# (rover/ble_port.py) and neither runtime runs a loop inside a running one.
#
# A stop is a KeyboardInterrupt on both runtimes: SIGINT raises it already, and on CPython
# SIGTERM does too (a handler below). It may land anywhere in a backup: the state is written
# to a temporary name and renamed, scratch files are removed on the way out, and the anchor
# keeps what arrived, so the next run resumes. MicroPython's unix port has no signal module:
# SIGTERM ends it at once, with the same guarantees for the state; its lock is then stale
# and the next run takes it over.
import os
import sys
import time

from anchor_core.compat import MICROPYTHON, const

if MICROPYTHON:
    # asyncio is frozen into the firmware (".frozen" on sys.path); a MICROPYPATH set by
    # tools/rover-mpy leaves that entry out.
    if ".frozen" not in sys.path:
        sys.path.append(".frozen")
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
else:
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

_BACKOFF_START = const(30)      # seconds: the first wait after a failed backup, doubled after each
_PROBE_MAX = const(60)          # seconds between probes of cheaper links, unless --probe says
# A wait is slept in pieces of at most this many ms: MicroPython's ticks_ms wraps after
# 2**30 ms (12 days), and ticks_diff is exact only within half of that.
_PIECE_MS = const(3600000)
_MAX_SECONDS = const(31536000)  # a year: longer is a typo, and would not fit the pieces' sums
_EXIT_LOCKED = const(5)         # rover/cli.py's, for a state folder another rover holds
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def show(v):
    """A setting's value as JSON writes it: strings in double quotes."""
    return '"%s"' % v if type(v) is str else str(v)


def _number(text):
    # digits with at most one '.', nothing else (float() would take "inf", "1e9", " 5")
    if not text or text == "." or text.count(".") > 1:
        return None
    for c in text:
        if c != "." and not ("0" <= c <= "9"):
            return None
    return float(text)


def duration(v, what, zero=False):
    """Seconds (a float) in v: 90, "90", "90s", "30m", "6h", "2d", "1.5h". A ValueError
    naming `what` for anything else, or for 0 unless `zero`."""
    n = None
    if type(v) is int or type(v) is float:
        n = float(v)
    elif type(v) is str and v:
        mult = _UNITS.get(v[-1])
        n = _number(v[:-1] if mult else v)
        if n is not None:
            n *= mult or 1
    if n is None or n != n or n < 0 or (n == 0 and not zero) or n > _MAX_SECONDS:
        raise ValueError("%s must be a duration like 6h, got %s" % (what, show(v)))
    return n


def jitter(v, period, what):
    """Seconds of jitter: a share of the period ("10%", 0 to 100) or a duration up to the period."""
    if type(v) is str and v.endswith("%"):
        p = _number(v[:-1])
        if p is None or p > 100:
            raise ValueError("%s must be a share of the period like 10%% or a duration like 5m, "
                             "got %s" % (what, show(v)))
        return period * p / 100
    try:
        j = duration(v, what, True)
    except ValueError:
        raise ValueError("%s must be a share of the period like 10%% or a duration like 5m, "
                         "got %s" % (what, show(v)))
    if j > period:
        raise ValueError("%s must not be longer than the period, got %s" % (what, show(v)))
    return j


def _random():
    """A fraction in [0, 1) from os.urandom: every rover of a fleet draws its own."""
    b = os.urandom(2)
    return ((b[0] << 8) | b[1]) / 65536


def _show_s(s):
    if s < 10:
        return "%.1f s" % s
    s = int(s + 0.5)
    if s < 120:
        return "%d s" % s
    if s < 7200:
        return "%d min" % (s // 60)
    return "%d h %d min" % (s // 3600, s % 3600 // 60)


def answers(url, device):
    """True if the link `url` opens now. TCP: a connect with a short timeout (what a backup
    begins with too); other links: opening the link and closing it again."""
    from rover import link as ln
    try:
        if url.startswith("tcp://"):
            import socket
            host, port, _ = ln._url("host_port", url)
            s = socket.socket()
            try:
                s.settimeout(5)
                s.connect(socket.getaddrinfo(host, port)[0][-1])
            finally:
                s.close()
            return True
        lk = ln.open_link(url, device)
    except (ln.LinkError, OSError, ValueError):
        return False
    try:
        lk.close()
    except Exception:
        pass
    return True


async def _wait(ms, cheaper, device, probe_ms):
    """Sleep ms on the monotonic clock; every probe_ms probe the links in `cheaper` (cheapest
    first) and return the first that answers, else None when the time is up."""
    import asyncio
    left = ms
    while left > 0:
        piece = left if left < _PIECE_MS else _PIECE_MS
        if cheaper and probe_ms < piece:
            piece = probe_ms
        t = ticks_ms()
        await asyncio.sleep(piece / 1000)
        left -= ticks_diff(ticks_ms(), t)
        for u in cheaper:
            if answers(u, device):
                return u
    return None


def default_probe(every):
    return every if every < _PROBE_MAX else _PROBE_MAX


class Schedule:
    """What `run` needs besides the backup: links by cost, period, jitter, probe interval,
    backoff cap (all seconds) and how many backups to make (None: until stopped)."""

    def __init__(self, links, every, jit, probe, cap, count=None):
        from rover.link import cost
        costs = [cost(u) for u in links]          # BadAddress for a malformed one
        order = list(range(len(links)))
        order.sort(key=lambda i: (costs[i], i))  # stable: the first given of equal cost
        self.links = [(costs[i], links[i]) for i in order]
        self.every = every
        self.jitter = jit
        self.probe = probe
        self.cap = cap
        self.count = count


def serve(sch, device, backup, log):
    """The loop. backup(url) -> exit status of one backup (rover/cli.py backup_over): 0 or 3
    done, 2 a setting to fix (the run stops), anything else failed (the anchor away, the
    link lost past its retries): wait with exponential backoff and try again."""
    import asyncio
    done = 0
    backoff = 0
    last = None            # cost of the link of the last backup
    url = None
    while True:
        if url is None:
            for c, u in sch.links:
                if answers(u, device):
                    url = u
                    break
        if url is None:
            log("no link answers (%s)" % ", ".join([u for c, u in sch.links]))
            code = 1
        else:
            last = [c for c, u in sch.links if u == url][0]
            code = backup(url)
        if code == 2 or code == _EXIT_LOCKED:
            return code
        if code == 0 or code == 3:
            done += 1
            backoff = 0
            if sch.count is not None and done >= sch.count:
                return 0
            wait = sch.every + sch.jitter * _random()
            log("next backup in %s" % _show_s(wait))
        else:
            backoff = backoff * 2 if backoff else (_BACKOFF_START if _BACKOFF_START < sch.cap else sch.cap)
            if backoff > sch.cap:
                backoff = sch.cap
            wait = backoff
            log("backup failed; trying again in %s (backoff, at most %s)" % (_show_s(wait), _show_s(sch.cap)))
        cheaper = [u for c, u in sch.links if last is not None and c < last]
        url = asyncio.run(_wait(int(wait * 1000), cheaper, device, int(sch.probe * 1000)))
        if url is not None:
            log("a cheaper link answers (%s): backing up now" % url)


def _stop_on_signals(stopped):
    if MICROPYTHON:
        return        # SIGINT raises KeyboardInterrupt already; there is no signal module
    import signal

    def stop(signum, frame):
        stopped[0] = signal.Signals(signum).name
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def start(opts, root, sch, log):
    """Hold the state folder's lock for the whole run and serve; the exit status."""
    from rover import fsys
    from rover.state import StateLock, StateLocked
    from rover.cli import backup_over
    try:
        fsys.makedirs(opts["state"])
        lock = StateLock(opts["state"], log)
        lock.take()
    except StateLocked as e:
        print("rover: run refused: %s" % e)
        return _EXIT_LOCKED
    except OSError as e:
        print("rover: run failed: state folder %s: %s" % (opts["state"], e))
        return 1
    stopped = ["SIGINT"]
    try:
        _stop_on_signals(stopped)
        log("running: a backup of %s every %s (jitter up to %s)"
            % (root, _show_s(sch.every), _show_s(sch.jitter)))
        return serve(sch, opts["device"],
                     lambda url: backup_over(url, opts, root, log, time.time(), True), log)
    except KeyboardInterrupt:
        log("stopped (%s); the state is consistent and the next run resumes" % stopped[0])
        return 0
    finally:
        lock.release()


def command(opts, root):
    """`rover ... run ROOT --every D [--jitter J] [--probe D] [--max-backoff D] [--count N]`"""
    from rover.link import LinkError
    log = (lambda s: None) if opts["quiet"] else (lambda s: print("rover: " + s))
    try:
        if "every" not in opts:
            raise ValueError("run needs --every (e.g. --every 6h)")
        every = duration(opts["every"], "--every")
        jit = jitter(opts.get("jitter", "10%"), every, "--jitter")
        probe = duration(opts["probe"], "--probe") if "probe" in opts else default_probe(every)
        cap = duration(opts["max-backoff"], "--max-backoff") if "max-backoff" in opts else every
        count = opts.get("count")
        if count is not None:
            if not count.isdigit() or int(count) < 1:
                raise ValueError("--count must be a whole number from 1, got %s" % show(count))
            count = int(count)
        sch = Schedule(opts["links"], every, jit, probe, cap, count)
    except (ValueError, LinkError) as e:
        print("rover: %s" % e)
        return 2
    return start(opts, root, sch, log)
