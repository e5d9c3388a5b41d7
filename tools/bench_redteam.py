#!/usr/bin/env python3
"""Red team: what a careless operator, a failing card and a hostile neighbour would try, against
real `anchor serve` processes (loopback only), as counts. CPython only.

Each case is one function case_NAME(work) -> counts (see `counts` below) on its own scratch
directory; CASES lists them in the order they run. A case checks, after its attack, that the
data backed up before it still restores exactly (`lost` counts what does not), that the anchor
process is still alive (`crashes`), and bounds every wait (a wait that runs out is a `hang`).
Adding a case is a function and a line in CASES, e.g. a rover case:

    def case_two_rovers_one_state(work):
        a, src, state, want = backed_up(work)    # an anchor holding one backup of a tree
        ... run two rovers on `state`, check the refusal ...
        return finish(a, counts(), "r", want, work)   # restores the newest snapshot, stops

The pieces come from the end-to-end tests (tests/e2e/test_hostile_neighbours.py,
tests/e2e/test_one_anchor.py, tests/support/*), imported, not copied; the damage and power-loss
cases run tests/support/powerloss.py, the fuzz case runs tools/bench_fuzz.py at a small scale.

Prints one JSON line:
  {"bench": "redteam", "cases_tried", "attempts" (the cases' attacks summed: connections,
   power-loss points, fuzz cases, ...), "cases_failed", "data_lost" (must be 0),
   "crashes", "hangs", "peak_rss_mib" (the anchor's VmHWM under the flood cases),
   "per_case": {name: counts + detail}, "seconds"}
and exits 1 if any case failed (each failure is on stderr).

Usage: python -m tools.bench_redteam [--only a,b] [--keep DIR] [-v]
"""
import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from tests.e2e import test_hostile_neighbours as hn
from tests.e2e import test_one_anchor as oa
from tests.support.harness import (ROOT, AnchorProc, anchorctl, make_tree,
    run_rover, snapshot_of)
from tests.support.powerloss import PowerLoss
from anchor_core import messages as m

LOG = [None]


def say(text):
    if LOG[0]:
        LOG[0](text)


def counts(**kw):
    """A case's answer: tried (attacks made), lost (files of earlier backups that no longer
    restore exactly), crashes (the anchor died or could not start again), hangs (a bounded
    wait ran out), failures (checks that did not hold, each described), peak_rss_mib (flood
    cases), and anything else worth reading (detail)."""
    out = {"tried": 1, "lost": 0, "crashes": 0, "hangs": 0, "failures": []}
    out.update(kw)
    return out


def check(c, cond, text):
    if not cond:
        c["failures"].append(text)
    return cond


def backed_up(work, secure=False, extra=(), preexec_fn=None, files=40, size=400_000, device="r"):
    """An anchor on work/anchor holding one backup of a fresh tree by `device` (paired first
    when secure). Returns (anchor, tree, rover state dir, snapshot_of(tree))."""
    os.makedirs(work, exist_ok=True)
    a = AnchorProc(os.path.join(work, "anchor"), *extra, secure=secure, preexec_fn=preexec_fn).start()
    state = os.path.join(work, "state")
    if secure:
        hn.pair(a, device, state)
    src = make_tree(os.path.join(work, "src"), files, size, seed=len(work))
    run_rover("cpython", a.link, device, state, "backup", src, timeout=120)
    return a, src, state, snapshot_of(src)


def lost_files(a, device, want, work):
    """How many files of `want` (snapshot_of the tree `device`'s newest snapshot holds) do not
    restore exactly (content and mode); and the restore's exit status."""
    out = os.path.join(work, "restored")
    shutil.rmtree(out, ignore_errors=True)
    p = anchorctl(a.address, "restore", device, "--to", out, check=False, timeout=120)
    got = snapshot_of(out) if os.path.isdir(out) else {}
    shutil.rmtree(out, ignore_errors=True)
    return sum(1 for k, v in want.items() if v[0] == "f" and (k not in got or got[k][1] != v[1]
                                                            or got[k][3] != v[3])), p.returncode


def finish(a, c, device, want, work):
    """The common end of a case: the anchor must still be alive, the newest backup (want:
    snapshot_of its tree) must restore exactly; then stop the anchor."""
    try:
        if a.proc.poll() is not None:
            c["crashes"] += 1
            c["failures"].append("the anchor exited (%s)" % a.proc.returncode)
            a.start()
        lost, rc = lost_files(a, device, want, work)
        c["lost"] += lost
        check(c, rc == 0, "the restore after the attack exited %d" % rc)
    finally:
        a.stop()
    with open(os.path.join(a.data_dir, "anchor.log"), "rb") as f:
        c["tracebacks"] = f.read().count(b"Traceback")
    check(c, c["tracebacks"] == 0, "tracebacks in the anchor's log")
    return c


@contextlib.contextmanager
def nofile(n):
    """This process holds the flood's sockets: raise its own descriptor limit for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def wait_closed(socks, seconds):
    """Wait (bounded) until the anchor has closed every one of socks; those still open."""
    deadline = time.monotonic() + seconds
    while socks and time.monotonic() < deadline:
        socks = [s for s in socks if not hn.closed_by_peer(s)]
        if socks:
            time.sleep(0.5)          # polling the kernel's view of the sockets, bounded
    return socks


# --- the cases -----------------------------------------------------------------------------

def case_second_anchor(work):
    """A second `anchor serve` on a live data directory: refused quickly, naming the lock and
    its holder; nothing in the directory changes; the first goes on serving."""
    a, src, _, want = backed_up(work)
    c = counts()
    before = oa.fingerprint(a.data_dir)
    t = time.monotonic()
    p = oa.serve(a.data_dir, "--mgmt", "unix:" + os.path.join(work, "other.sock"), "--open")
    took = time.monotonic() - t
    check(c, p.returncode != 0, "the second anchor started")
    check(c, "lock" in p.stderr and str(a.proc.pid) in p.stderr, "refusal does not name lock and holder: %s" % p.stderr[-300:])
    check(c, oa.fingerprint(a.data_dir) == before, "the data directory changed")
    c["refused_in_s"] = round(took, 2)
    return finish(a, c, "r", want, work)


def case_mgmt_on_catalog(work):
    """`--mgmt unix:DATA/catalog.sqlite` (a typo): refused, the catalog is not replaced."""
    a, src, _, want = backed_up(work)
    a.stop()
    c = counts()
    cat = os.path.join(a.data_dir, "catalog.sqlite")
    before = oa.fingerprint(a.data_dir)
    p = oa.serve(a.data_dir, "--mgmt", "unix:" + cat, "--open")
    check(c, p.returncode != 0, "the anchor started on a management path that is the catalog")
    check(c, "not a socket" in p.stderr, "refusal does not say why: %s" % p.stderr[-300:])
    check(c, oa.fingerprint(a.data_dir) == before, "the data directory changed")
    a.start()
    return finish(a, c, "r", want, work)


def case_silent_flood(work):
    """More silent connections than the anchor has descriptors (RLIMIT_NOFILE lowered to
    hn.NOFILE), from 38 addresses: a paired rover still backs up, each silent connection is
    closed after the handshake time; the anchor's peak RSS."""
    c = counts()
    with nofile(4 * hn.SILENT):
        a, src, state, want = backed_up(work, secure=True, preexec_fn=hn.low_nofile)
        socks = []
        try:
            base = hn.rss(a.proc.pid)[0]
            socks = hn.open_silent(a.port, hn.SILENT, ["127.0.0.%d" % i for i in range(2, 40)])
            c["silent_opened"] = len(socks)
            with open(os.path.join(src, "new.txt"), "wb") as f:
                f.write(b"written during the flood\n")
            t = time.monotonic()
            p = run_rover("cpython", a.link, "r", state, "backup", src, "--retries", "2", timeout=90, check=False)
            c["rover_backup_s"] = round(time.monotonic() - t, 1)
            if check(c, p.returncode == 0, "the paired rover could not back up: %s" % (p.stdout + p.stderr)[-500:]):
                want = snapshot_of(src)
            left = wait_closed(socks, 40)
            c["silent_still_open"] = len(left)
            check(c, not left, "%d silent connections still open after 40 s" % len(left))
            c["rss_before_mib"] = round(base / 2**20, 1)
            c["peak_rss_mib"] = round(hn.rss(a.proc.pid)[1] / 2**20, 1)
        finally:
            for s in socks:
                s.close()
        return finish(a, c, "r", want, work)


def case_endless_manifest(work):
    """ENTRIES batches that never end, never committed: E_TOO_LARGE, peak RSS bounded, the
    next rover is served."""
    a, src, _, want = backed_up(work)
    c = counts()
    before = hn.rss(a.proc.pid)[0]
    r = hn.Raw(a.port)
    r.send(m.hello("hoarder", None, 0))
    check(c, r.reply()[0] == m.WELCOME, "no WELCOME")
    tail = "/" + "p" * 50
    answer = None
    sent = 0
    t = time.monotonic()
    for batch in range(4000):                  # a million entries at most
        items = [m.put_entry("%09d%s" % (batch * 256 + i, tail), m.T_FILE, 1000, 0, 0o644, os.urandom(32))
                 for i in range(m.MAX_ENTRIES)]
        try:
            r.send(m.entries(batch, items))
            answer = r.reply()
        except (ConnectionError, m.ProtocolError) as e:
            answer = ("closed", str(e))
            break
        sent += len(items)
        if answer is None or answer[0] != m.VERDICT:
            break
        if time.monotonic() - t > 120 or hn.rss(a.proc.pid)[0] - before > 400 << 20:
            c["hangs"] += time.monotonic() - t > 120
            break                               # no limit in sight
    r.s.close()
    c["entries_sent"] = sent
    c["answer"] = str(answer[:2]) if answer else None
    check(c, answer is not None and answer[0] == m.ERROR and answer[1] == m.E_TOO_LARGE,
          "not ended with E_TOO_LARGE: %r" % (answer,))
    c["rss_before_mib"] = round(before / 2**20, 1)
    c["peak_rss_mib"] = round(hn.rss(a.proc.pid)[1] / 2**20, 1)
    p = run_rover("cpython", a.link, "next", os.path.join(work, "state-next"), "backup", src, timeout=120, check=False)
    check(c, p.returncode == 0, "the next rover was not served: %s" % p.stderr[-300:])
    return finish(a, c, "r", want, work)


def case_unfinished_handshakes(work, n=200):
    """n connections that send half a HELLO and stop: each closed by the anchor within the
    handshake time, while a paired rover backs up."""
    c = counts(tried=n)
    with nofile(4 * n):
        a, src, state, want = backed_up(work, secure=True)
        socks = []
        try:
            for i in range(n):
                s = socket.create_connection(("127.0.0.1", a.port), timeout=5,
                                             source_address=("127.0.0.%d" % (2 + i % 30), 0))
                s.sendall(b"ANC1\x05rov")
                socks.append(s)
            p = run_rover("cpython", a.link, "r", state, "backup", src, "--retries", "2", timeout=90, check=False)
            check(c, p.returncode == 0, "the paired rover could not back up: %s" % (p.stdout + p.stderr)[-500:])
            t = time.monotonic()
            left = wait_closed(socks, 30)
            c["closed_within_s"] = round(time.monotonic() - t, 1)
            check(c, not left, "%d half handshakes still open after 30 s" % len(left))
            c["peak_rss_mib"] = round(hn.rss(a.proc.pid)[1] / 2**20, 1)
        finally:
            for s in socks:
                s.close()
        return finish(a, c, "r", want, work)


def case_proxy_unauthenticated(work):
    """The HTTP proxy: 407 to a client without the pairing secret (none, empty, wrong, a
    stranger's name), one answer for all; 200 to the paired device."""
    from tests.support.services import Origin
    origin = Origin()
    try:
        a, src, state, want = backed_up(work, secure=True, extra=("--proxy", "tcp://127.0.0.1:0"))
        c = counts(tried=5)
        port = a.proxy_port()
        origin.files["/x"] = b"hello"
        with open(os.path.join(state, "pairing.key"), "rb") as f:
            secret = f.read().hex()
        refusals = [hn.proxy_get(port, origin.url("/x"), auth)
                    for auth in (None, "r:", "r:" + "00" * 32, "stranger:", "stranger:" + secret)]
        c["statuses"] = [s for s, _ in refusals]
        check(c, c["statuses"] == [407] * 5, "not all refused with 407: %s" % c["statuses"])
        check(c, len(set(b for _, b in refusals)) == 1, "the refusals differ")
        check(c, hn.proxy_get(port, origin.url("/x"), "r:" + secret) == (200, b"hello"), "the paired device is not served")
        return finish(a, c, "r", want, work)
    finally:
        origin.close()


def _powerloss_counts(pl, stats):
    c = counts(tried=stats["points"], lost=stats["silent_losses"] + stats["restore_failures"],
               crashes=stats["open_failures"])
    c["failures"] = [f[:500] for f in pl.failures]
    for k in ("damage_injected", "damage_detected", "silent_losses", "files_named_damaged",
              "undamaged_restored", "snapshots_unhealable", "wal_snapshots_rolled_back", "torn_tails",
              "kills_during_backup", "kills_during_capture", "restores", "snapshots_committed", "seconds"):
        c[k] = stats[k]
    return c


SMALL = dict(mpy_every=3, tree_files=80, tree_bytes=1 << 20, tree_cap=3 << 20, mpy_files=40,
             mpy_bytes=300 << 10, body_max=800 << 10)


def case_damage(work):
    """One damage of each kind (flipped payload byte, flipped tree byte, deleted segment, cut
    catalog WAL) on a real store, one per restart: verify detects it, restores lose only what
    they name, repair and backups heal (tests/support/powerloss.py with damage at every point)."""
    # a first tree of 12 MiB: more than one segment from the start, so a segment can go
    pl = PowerLoss(work, points=4, seed=11, torn_share=0.0, damage_share=1.0, capture_share=0.2,
                   log=LOG[0] and (lambda s: say("  " + s)), **dict(SMALL, tree_bytes=12 << 20, tree_cap=16 << 20))
    c = _powerloss_counts(pl, pl.run())
    for kind, n in c["damage_injected"].items():
        if kind != "wal":
            check(c, c["damage_detected"].get(kind, 0) == n, "verify missed %s damage" % kind)
    return c


def case_powerloss(work):
    """A short power-loss loop: SIGKILL at random points, torn tails, some damage."""
    pl = PowerLoss(work, points=6, seed=5, torn_share=0.5, damage_share=0.3,
                   log=LOG[0] and (lambda s: say("  " + s)), **SMALL)
    return _powerloss_counts(pl, pl.run())


def case_fuzz(work, scale=0.05):
    """tools/bench_fuzz.py at a small scale (every wire decoder, the session and the channel)."""
    p = subprocess.run([sys.executable, "-m", "tools.bench_fuzz", "--scale", str(scale), "--seed", "3"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    c = counts(tried=sum(t["cases"] for t in r["targets"].values()), crashes=r["crashes"])
    c["inputs"] = r["inputs_total"]
    c["unexpected_exceptions"] = r["unexpected_exceptions"]
    c["seconds"] = r["seconds"]
    check(c, p.returncode == 0 and not r["crashes"], "fuzz crashes: %s" % p.stderr[-500:])
    return c


# --- the rover's bad days (issue 11 items 3-6), both runtimes ------------------------------

RUNTIMES = ("cpython", "micropython")


def _odd_tree(root, rnd):
    """A tree a careless user has: names that are not UTF-8, control characters, long names,
    a chain of folders past 1 KiB of path, times before 1970 and past 2038, and symlinks that
    loop or point out of the tree. Returns {relative path (bytes): (content, mtime_ns)} of its
    regular files."""
    files = {}
    os.makedirs(root)
    pieces = [b"caf\xe9", b"\xff\xfe", b"bell\x07", b"esc\x1b[31m", b"new\nline", b"tab\t",
              "\u00e9t\u00e9 \U0001F600".encode(), b"-rf", b" lead", b"x" * 200, b"\xc3\x28"]
    for i in range(24):
        name = rnd.choice(pieces) + b"-%d" % i
        data = rnd.randbytes(rnd.randrange(0, 20_000))
        mtime = rnd.randrange(-2_000_000_000, 4_000_000_000) * 10 ** 9
        files[name] = (data, mtime)
    chain = b"/".join(b"d%02d-" % k + b"y" * 20 for k in range(60))      # ~1.5 KiB of path
    files[chain + b"/bottom.bin"] = (rnd.randbytes(3000), rnd.randrange(0, 2_000_000_000) * 10 ** 9)
    broot = os.fsencode(root)
    for rel, (data, mtime) in files.items():
        p = os.path.join(broot, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        try:
            os.utime(p, ns=(mtime, mtime))
        except OSError:          # a filesystem without that range: keep what it took
            files[rel] = (data, os.lstat(p).st_mtime_ns)
    os.symlink(b"loop", os.path.join(broot, b"loop"))
    os.symlink(b"..", os.path.join(broot, b"d00-" + b"y" * 20, b"up"))
    os.symlink(b"/etc", os.path.join(broot, b"outside"))
    return files


def _restored(out, files, mpy):
    """(exact, wrong, extra): files restored bit-exact with their time, files restored
    different, and regular files in `out` that the tree never had (a followed link)."""
    exact = wrong = 0
    bout = os.fsencode(out)
    for rel, (data, mtime) in files.items():
        p = os.path.join(bout, rel)
        try:
            with open(p, "rb") as f:
                got = f.read()
            st = os.lstat(p)
        except OSError:
            continue
        same_time = (st.st_mtime_ns // 10 ** 9 == mtime // 10 ** 9) if mpy else st.st_mtime_ns == mtime
        if got == data and same_time:
            exact += 1
        else:
            wrong += 1
    extra = 0
    for dirpath, _, names in os.walk(bout):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p) and os.path.relpath(p, bout) not in files:
                extra += 1
    return exact, wrong, extra


def case_odd_trees(work, seed=11):
    """Odd trees on both runtimes: the backup commits (exit 0, or 3 with each item it could
    not store listed), every file it did not list restores bit-exact, nothing outside the
    tree is taken, no loop hangs the walk."""
    import random
    c = counts(tried=0)
    a = AnchorProc(os.path.join(work, "anchor")).start()
    try:
        for k, runtime in enumerate(RUNTIMES):
            rnd = random.Random(seed + k)
            src = os.path.join(work, "src-" + runtime)
            files = _odd_tree(src, rnd)
            c["tried"] += len(files) + 3
            try:
                p = run_rover(runtime, a.link, "odd-" + runtime, os.path.join(work, "state-" + runtime),
                              "backup", src, check=False, timeout=300)
            except subprocess.TimeoutExpired:
                c["hangs"] += 1
                check(c, False, "%s: the backup of an odd tree did not end in 300 s" % runtime)
                continue
            listed = [ln for ln in p.stdout.splitlines() if ln.startswith("rover: not stored:")]
            if not check(c, p.returncode in (0, 3), "%s: backup exit %d: %s" % (runtime, p.returncode, p.stdout[-800:])):
                continue
            out = os.path.join(work, "out-" + runtime)
            r = anchorctl(a.address, "restore", "odd-" + runtime, "--to", out, check=False)
            exact, wrong, extra = _restored(out, files, runtime == "micropython")
            symlinks_listed = sum(1 for ln in listed if "not followed" in ln or "symlink" in ln)
            c["lost"] += max(0, len(files) - exact - (len(listed) - symlinks_listed))
            check(c, wrong == 0, "%s: %d files restored different from the tree" % (runtime, wrong))
            check(c, extra == 0, "%s: %d files restored that the tree never had (a link followed)" % (runtime, extra))
            check(c, r.returncode == 0, "%s: restore exit %d: %s" % (runtime, r.returncode, r.stderr[-500:]))
            c.setdefault("detail", {})[runtime] = {"files": len(files), "exact": exact, "listed": len(listed),
                                                   "exit": p.returncode}
        if a.proc.poll() is not None:
            c["crashes"] += 1
    finally:
        a.stop()
    return c


def case_two_rovers_one_state(work):
    """A scheduled run overlapping a running one (both runtimes): the second refuses, naming
    the first; once the first is gone, its lock is taken over and the backup commits."""
    from tests.e2e import test_odd_trees as ot
    from tests.support.harness import rover_cmd
    c = counts(tried=0)
    a = AnchorProc(os.path.join(work, "anchor")).start()
    try:
        for runtime in RUNTIMES:
            c["tried"] += 1
            src = make_tree(os.path.join(work, "src-" + runtime), 10, 20_000, seed=7)
            state = os.path.join(work, "state-" + runtime)
            silent = ot._SilentAnchor()
            first = subprocess.Popen(rover_cmd(runtime, "tcp://127.0.0.1:%d" % silent.port, "two", state,
                                               "backup", src), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                silent.wait_for_hello(60)
                p = run_rover(runtime, a.link, "two-" + runtime, state, "backup", src, check=False, timeout=120)
                check(c, p.returncode == 1 and str(first.pid) in p.stderr,
                      "%s: a second rover on a held state: exit %d %s" % (runtime, p.returncode, p.stderr[-300:]))
            except (socket.timeout, subprocess.TimeoutExpired):
                c["hangs"] += 1
            finally:
                first.kill()
                first.wait(30)
                silent.close()
            p = run_rover(runtime, a.link, "two-" + runtime, state, "backup", src, check=False, timeout=120)
            if check(c, p.returncode == 0, "%s: after the holder died: exit %d %s" % (runtime, p.returncode, p.stdout[-300:])):
                lost, rc = lost_files(a, "two-" + runtime, snapshot_of(src), os.path.join(work, "r-" + runtime))
                c["lost"] += lost
                check(c, rc == 0, "%s: restore exited %d" % (runtime, rc))
    finally:
        a.stop()
    return c


def case_damaged_rover_state(work):
    """Every way the rover's state can be damaged (truncated, empty, flipped, garbage, tree copy
    flipped or truncated), both runtimes: the next backup describes the whole tree, uploads
    nothing the anchor holds, and restores exactly."""
    from tests.e2e import test_odd_trees as ot
    damages = [ot._damage_truncate, ot._damage_empty, ot._damage_flip_state, ot._damage_garbage,
               ot._damage_tree, ot._damage_tree_truncated]
    c = counts(tried=0)
    a = AnchorProc(os.path.join(work, "anchor")).start()
    try:
        for runtime in RUNTIMES:
            for d in damages:
                c["tried"] += 1
                dev = "ds-%s-%s" % (runtime, d.__name__.strip("_"))
                src = make_tree(os.path.join(work, "src-" + dev), 20, 100_000, seed=c["tried"])
                state = os.path.join(work, "state-" + dev)
                run_rover(runtime, a.link, dev, state, "backup", src)
                run_rover("cpython", a.link, dev, state, "backup", src)
                d(state)
                p = run_rover(runtime, a.link, dev, state, "backup", src, check=False, timeout=120)
                if check(c, p.returncode == 0 and " 0 chunks (0 bytes) uploaded" in p.stdout,
                         "%s %s: %s" % (runtime, d.__name__, p.stdout[-300:])):
                    lost, rc = lost_files(a, dev, snapshot_of(src), os.path.join(work, "r-" + dev))
                    c["lost"] += lost
                    check(c, rc == 0, "%s: restore exited %d" % (dev, rc))
    finally:
        a.stop()
    return c


CASES = [
    ("second_anchor", case_second_anchor),
    ("mgmt_on_catalog", case_mgmt_on_catalog),
    ("silent_flood", case_silent_flood),
    ("endless_manifest", case_endless_manifest),
    ("unfinished_handshakes", case_unfinished_handshakes),
    ("proxy_unauthenticated", case_proxy_unauthenticated),
    ("damage", case_damage),
    ("powerloss", case_powerloss),
    ("fuzz", case_fuzz),
    ("odd_trees", case_odd_trees),
    ("two_rovers_one_state", case_two_rovers_one_state),
    ("damaged_rover_state", case_damaged_rover_state),
]
FLOODS = ("silent_flood", "endless_manifest", "unfinished_handshakes")


def run_case(name, fn, work):
    t = time.monotonic()
    try:
        c = fn(work)
    except subprocess.TimeoutExpired as e:
        c = counts(hangs=1, failures=["a wait ran out: %s" % e])
    except Exception as e:              # the case could not finish: a failure, described
        c = counts(failures=["%s: %s" % (type(e).__name__, str(e)[:1000])])
    c["seconds"] = round(time.monotonic() - t, 1)
    return c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated cases: " + ",".join(n for n, _ in CASES))
    ap.add_argument("--keep", help="work in DIR and leave it there (default: a temp dir, removed)")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    a = ap.parse_args(argv)
    if a.verbose:
        LOG[0] = lambda s: print(s, file=sys.stderr, flush=True)
    work = a.keep or tempfile.mkdtemp(prefix="bench-redteam-")
    t0 = time.monotonic()
    per = {}
    try:
        for name, fn in CASES:
            if a.only and name not in a.only.split(","):
                continue
            say("# %s" % name)
            per[name] = run_case(name, fn, os.path.join(work, name))
            say("# %s: %s" % (name, json.dumps(per[name])[:400]))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, c in per.items() if c["failures"] or c["lost"] or c["crashes"] or c["hangs"]]
    for n in failed:
        for f in per[n]["failures"]:
            print("# %s: %s" % (n, f.replace("\n", "\n#   ")), file=sys.stderr)
    peaks = [per[n]["peak_rss_mib"] for n in FLOODS if n in per and "peak_rss_mib" in per[n]]
    out = {"bench": "redteam", "cases_tried": len(per), "attempts": sum(c["tried"] for c in per.values()),
           "cases_failed": len(failed), "failed": failed,
           "data_lost": sum(c["lost"] for c in per.values()),
           "crashes": sum(c["crashes"] for c in per.values()),
           "hangs": sum(c["hangs"] for c in per.values()),
           "peak_rss_mib": max(peaks) if peaks else None,
           "per_case": per, "seconds": round(time.monotonic() - t0, 1)}
    print(json.dumps(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
