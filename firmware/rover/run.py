# Unattended backups (docs/rover.md, "Unattended backups (`run`)"): `rover ... run ROOT
# --every 6h` and a board's main.py (rover/boot.py) share this loop, on CPython and
# MicroPython alike. Loaded only for `run`, and only between backups: rover/run_loop.py
# calls step() for the next link, drops this module and asyncio, and runs the backup.
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


# A run's state, a list (rover/run_loop.py keeps it while this module is dropped for a
# backup; a list holds nothing of this module and costs no attribute names in the heap).
_LOG = const(0)        # the log function (rover/run_loop.py log_line or quiet)
_LINKS = const(1)      # [(cost, url)], cheapest first
_EVERY = const(2)      # seconds: period, jitter, probe interval, backoff start and cap
_JITTER = const(3)
_PROBE = const(4)
_BACKOFF = const(5)
_CAP = const(6)
_COUNT = const(7)      # backups to make, None: until stopped
_DEVICE = const(8)
_DONE = const(9)       # backups made
_WAIT = const(10)      # the backoff now (0: the last backup succeeded)
_LAST = const(11)      # cost of the link of the last backup
_SIG = const(12)       # the signal that stops it (CPython tells SIGTERM from SIGINT)
_STATE = const(13)     # the state folder, whose lock the run holds
_STOPPED = const(-1)   # `code` of a run a signal stopped (rover/run_loop.py)


def schedule(links, every, jit, probe, cap, count=None, device=None, log=None, state=None):
    """A run's state list (above): links by cost, period, jitter, probe interval, backoff
    cap in seconds, how many backups to make (None: until stopped)."""
    from rover.link import cost
    costs = [cost(u) for u in links]          # BadAddress for a malformed one
    order = list(range(len(links)))
    order.sort(key=lambda i: (costs[i], i))  # stable: the first given of equal cost
    if log is None:
        from rover.run_loop import quiet as log
    return [log, [(costs[i], links[i]) for i in order], every, jit, probe,
            _BACKOFF_START if _BACKOFF_START < cap else cap, cap, count, device, 0, 0, None,
            ["SIGINT"], state]


def _end(st, status):
    if st[_STATE] is not None:
        from rover import fsys
        fsys.drop_lock(st[_STATE])
    return status


def step(st, code):
    """The loop between two backups. code: the exit status of the last backup (rover/cli.py
    _backup), None before the first, _STOPPED after a signal: 0 or 3 done, 2 or 5 a
    setting to fix (the run stops), anything else failed (the anchor away, the link lost
    past its retries), then the wait backs off. Returns the link to back up over next, or
    the run's exit status with the lock given back."""
    log = st[_LOG]
    try:
        while True:
            if code == _STOPPED:
                log("stopped (%s); the state is consistent and the next run resumes" % st[_SIG][0])
                return _end(st, 0)
            if code is not None:
                if code == 2 or code == _EXIT_LOCKED:
                    return _end(st, code)
                if code == 0 or code == 3:
                    st[_DONE] += 1
                    st[_WAIT] = 0
                    if st[_COUNT] is not None and st[_DONE] >= st[_COUNT]:
                        return _end(st, 0)
                    wait = st[_EVERY] + st[_JITTER] * _random()
                    log("next backup in %s" % _show_s(wait))
                else:
                    w = st[_WAIT] * 2 if st[_WAIT] else st[_BACKOFF]
                    st[_WAIT] = w if w < st[_CAP] else st[_CAP]
                    wait = st[_WAIT]
                    log("backup failed; trying again in %s (backoff, at most %s)"
                        % (_show_s(wait), _show_s(st[_CAP])))
                cheaper = [u for c, u in st[_LINKS] if st[_LAST] is not None and c < st[_LAST]]
                import asyncio
                url = asyncio.run(_wait(int(wait * 1000), cheaper, st[_DEVICE], int(st[_PROBE] * 1000)))
                if url is not None:
                    log("a cheaper link answers (%s): backing up now" % url)
                    st[_LAST] = [c for c, u in st[_LINKS] if u == url][0]
                    return url
            for c, u in st[_LINKS]:
                if answers(u, st[_DEVICE]):
                    st[_LAST] = c
                    return u
            log("no link answers (%s)" % ", ".join([u for c, u in st[_LINKS]]))
            code = 1
    except KeyboardInterrupt:
        code = _STOPPED
    return step(st, code)


def _stop_on_signals(sig):
    if MICROPYTHON:
        return        # SIGINT raises KeyboardInterrupt already; there is no signal module
    import signal

    def stop(signum, frame):
        sig[0] = signal.Signals(signum).name
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def begin(opts, root, st):
    """Take the state folder's lock for the whole run (step gives it back at the end) and
    the signals that stop it: st, or an exit status."""
    from anchor_core.compat import unload
    from rover import fsys, state
    try:
        fsys.makedirs(opts["state"])
        state.StateLock(opts["state"], st[_LOG]).take()
    except state.StateLocked as e:
        print("rover: run refused: %s" % e, file=sys.stderr)
        return _EXIT_LOCKED
    except OSError as e:
        print("rover: run failed: state folder %s: %s" % (opts["state"], e), file=sys.stderr)
        return 1
    finally:
        unload(state)      # the lock is a folder: nothing of the module is needed to hold it
    st[_STATE] = opts["state"]
    _stop_on_signals(st[_SIG])
    st[_LOG]("running: a backup of %s every %s (jitter up to %s)"
             % (root, _show_s(st[_EVERY]), _show_s(st[_JITTER])))
    return st


_OPTIONS = ("--every", "--jitter", "--probe", "--max-backoff", "--count")


def main(opts, rest):
    """`rover ... run ROOT --every D [--jitter J] [--probe D] [--max-backoff D] [--count N]`
    (rest: the command line from `run` on): the run's state with the lock taken, or an exit
    status."""
    from rover.link import LinkError
    from rover.run_loop import log_line, quiet
    log = quiet if opts["quiet"] else log_line
    try:
        o = {}
        i = 2
        while i < len(rest):
            a = rest[i]
            k, eq, v = a.partition("=")
            if k not in _OPTIONS:
                raise ValueError("run takes ROOT and %s, not %s" % (", ".join(_OPTIONS), a))
            if not eq:
                if i + 1 >= len(rest):
                    raise ValueError("%s needs a value" % a)
                v = rest[i + 1]
                i += 1
            o[k] = v
            i += 1
        if "--every" not in o:
            raise ValueError("run needs --every (e.g. --every 6h)")
        every = duration(o["--every"], "--every")
        jit = jitter(o.get("--jitter", "10%"), every, "--jitter")
        probe = duration(o["--probe"], "--probe") if "--probe" in o else default_probe(every)
        cap = duration(o["--max-backoff"], "--max-backoff") if "--max-backoff" in o else every
        count = o.get("--count")
        if count is not None:
            if not count.isdigit() or int(count) < 1:
                raise ValueError("--count must be a whole number from 1, got %s" % show(count))
            count = int(count)
        st = schedule(opts["links"], every, jit, probe, cap, count, opts["device"], log)
    except (ValueError, LinkError) as e:
        print("rover: %s" % e, file=sys.stderr)
        return 2
    return begin(opts, rest[1], st)
