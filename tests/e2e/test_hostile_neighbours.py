"""A hostile neighbour against a real anchor process: silent connections by the thousand,
probes for which device names are paired, a manifest that never ends, an unauthenticated
proxy client. Each must cost the anchor a bounded amount and tell the stranger nothing,
while paired rovers keep being served. Loopback only; 127.0.0.0/8 gives the attacker
addresses of its own."""
import base64
import http.client
import json
import os
import resource
import socket
import subprocess
import time

import pytest

from tests.support.harness import AnchorProc, RawRover, anchorctl, make_tree, rover_cmd, run_rover
from anchor_core import handshake
from anchor_core import messages as m

NOFILE = 256          # the anchor's descriptor limit in the flood tests
SILENT = 1100         # silent connections: more than the limit allows


def low_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def pair(anchor, device, state):
    r = json.loads(anchorctl(anchor.address, "pair", device, "--json").stdout)
    p = subprocess.run(rover_cmd("cpython", "tcp://unused:1", device, state, "pair", r["code"]),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def rss(pid):
    """(VmRSS, VmHWM) of a process in bytes, from /proc."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out["VmRSS"], out["VmHWM"]


def open_silent(port, n, addresses):
    """n connections that never send a byte, from `addresses` in turn; the ones the kernel
    or the anchor would not take are left out (a stuck connect gives up after 0.5 s)."""
    socks = []
    failed = 0
    deadline = time.monotonic() + 30
    for i in range(n):
        if failed >= 20 or time.monotonic() > deadline:
            break                    # an anchor that stopped accepting: enough of them
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.bind((addresses[i % len(addresses)], 0))
            s.connect(("127.0.0.1", port))
            socks.append(s)
            failed = 0
        except OSError:
            s.close()
            failed += 1
    return socks


def closed_by_peer(s):
    """Whether the anchor has closed this connection (EOF or reset now readable)."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture
def raised_nofile():
    # The test process itself holds the silent connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * SILENT)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_silent_connections_cannot_hold_the_anchor(tmp_path, raised_nofile):
    """More silent connections than the anchor has descriptors: a paired rover still backs
    up, every silent one is closed within the handshake time, and the log stays small (no
    traceback per accept attempt)."""
    a = AnchorProc(str(tmp_path / "anchor"), secure=True, preexec_fn=low_nofile).start()
    socks = []
    try:
        state = str(tmp_path / "state")
        pair(a, "rover-f", state)
        src = make_tree(str(tmp_path / "src"), 30, 100_000, seed=7)
        attackers = ["127.0.0.%d" % i for i in range(2, 40)]
        t0 = time.monotonic()
        socks = open_silent(a.port, SILENT, attackers)
        opened = len(socks)
        assert opened > NOFILE, opened
        p = run_rover("cpython", a.link, "rover-f", state, "backup", src, "--retries", "2",
                      timeout=60, check=False)
        assert p.returncode == 0 and "snapshot 1 committed" in p.stdout, p.stdout + p.stderr
        # every silent connection is closed once its handshake time is up
        deadline = t0 + 40
        while time.monotonic() < deadline:
            open_ones = [s for s in socks if not closed_by_peer(s)]
            if not open_ones:
                break
            socks = open_ones
            time.sleep(0.5)          # polling the kernel's view of the sockets, bounded
        assert not open_ones, "%d silent connections still open after %.0f s" % (len(open_ones), time.monotonic() - t0)
    finally:
        for s in socks:
            s.close()
        a.stop()
    size = os.path.getsize(os.path.join(a.data_dir, "anchor.log"))
    with open(os.path.join(a.data_dir, "anchor.log")) as f:
        log = f.read()
    print("%d silent connections; log %d bytes, %d tracebacks" % (opened, size, log.count("Traceback")))
    assert "Traceback" not in log, log[-3000:]
    assert size < 100_000, size


def test_an_unfinished_handshake_is_closed(tmp_path):
    """One connection that sends half a hello and then nothing: closed by the anchor."""
    a = AnchorProc(str(tmp_path / "anchor"), secure=True).start()
    try:
        s = socket.create_connection(("127.0.0.1", a.port), timeout=30)
        s.sendall(b"ANC1\x05rov")
        t0 = time.monotonic()
        try:
            got = s.recv(100)
        except socket.timeout:
            got = None
        assert got is not None and time.monotonic() - t0 < 20, "still open after %.0f s" % (time.monotonic() - t0)
        s.close()
    finally:
        a.stop()


def handshake_answers(port, device):
    """(the anchor's hello answer, what it sends after a wrong proof) for `device`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        s.sendall(handshake.hello1(device, b"\x01" * 16))
        got = b""
        while len(got) < handshake.HELLO2:
            d = s.recv(handshake.HELLO2 - len(got))
            assert d, "closed after %r" % got
            got += d
        s.sendall(b"\x00" * 16)             # a proof made without the secret
        rest = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            rest += d
        return got, rest
    finally:
        s.close()


def test_a_refusal_does_not_tell_which_names_are_paired(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor"), secure=True).start()
    try:
        pair(a, "rover-known", str(tmp_path / "state"))
        known, known_rest = handshake_answers(a.port, "rover-known")
        unknown, unknown_rest = handshake_answers(a.port, "rover-stranger")
    finally:
        a.stop()
    # same length, same status byte; nonce and proof are random either way
    assert len(known) == len(unknown) == handshake.HELLO2
    assert known[:5] == unknown[:5] == b"ANC1\x00", (known[:5], unknown[:5])
    assert known[5:] != unknown[5:]
    assert known_rest == unknown_rest and known_rest, (known_rest, unknown_rest)


def test_a_manifest_cannot_grow_the_anchor_without_bound(tmp_path):
    """ENTRIES batches with long paths, one after another, never committed: the anchor ends
    the session with E_TOO_LARGE, its peak RSS bounded, and serves the next rover."""
    a = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        before, _ = rss(a.proc.pid)
        c = RawRover(a.port)
        c.send(m.hello("hoarder", None, 0))
        assert c.reply()[0] == m.WELCOME
        tail = "/" + "p" * 50           # a frame holds 36 KiB: 256 entries of ~120 bytes
        answer = None
        sent = 0
        for batch in range(4000):          # a million entries at most
            items = [m.put_entry("%09d%s" % (batch * 256 + i, tail), m.T_FILE, 1000, 0, 0o644,
                                 os.urandom(32)) for i in range(m.MAX_ENTRIES)]
            try:
                c.send(m.entries(batch, items))
                answer = c.reply()
            except (ConnectionError, m.ProtocolError) as e:
                answer = ("closed", e)
                break
            sent += len(items)
            if answer is None or answer[0] != m.VERDICT:
                break
            if batch % 50 == 0 and rss(a.proc.pid)[0] - before > 400 << 20:
                break                       # old behaviour: no limit in sight
        after, peak = rss(a.proc.pid)
        print("RSS before %d MB, after %d MB, peak %d MB; %d entries sent"
              % (before >> 20, after >> 20, peak >> 20, sent))
        assert answer is not None and answer[0] == m.ERROR and answer[1] == m.E_TOO_LARGE, answer
        assert "MiB" in answer[2], answer
        assert peak - before < 220 << 20, (before >> 20, peak >> 20)
        c.s.close()
        # the anchor still serves, and its memory comes back to be used again
        src = make_tree(str(tmp_path / "src"), 20, 50_000, seed=8)
        p = run_rover("cpython", a.link, "next", str(tmp_path / "state"), "backup", src, timeout=120)
        assert "committed" in p.stdout
    finally:
        a.stop()


def proxy_get(port, url, auth=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {}
    if auth is not None:
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    c.request("GET", url, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


@pytest.mark.parametrize("open_anchor", [False, True])
def test_the_proxy_serves_paired_devices_by_their_secret(tmp_path, open_anchor):
    from tests.support.services import Origin
    origin = Origin()
    a = AnchorProc(str(tmp_path / "anchor"), "--proxy", "tcp://127.0.0.1:0", secure=not open_anchor).start()
    try:
        port = a.proxy_port()
        origin.files["/x"] = b"hello"
        state = str(tmp_path / "state")
        pair(a, "rover-px", state)
        with open(os.path.join(state, "pairing.key"), "rb") as f:
            secret = f.read().hex()
        assert proxy_get(port, origin.url("/x"), "rover-px:" + secret) == (200, b"hello")
        refusals = [proxy_get(port, origin.url("/x"), auth) for auth in
                    (None, "rover-px:", "rover-px:" + "00" * 32, "rover-px:" + secret[:-2])]
        if not open_anchor:
            refusals += [proxy_get(port, origin.url("/x"), auth) for auth in ("stranger:", "stranger:" + secret)]
        assert [r[0] for r in refusals] == [407] * len(refusals), refusals
        # one answer for every refusal: nothing tells a paired name from an unknown one
        assert len(set(r[1] for r in refusals)) == 1, refusals
        if open_anchor:
            # an --open anchor still serves a device that is not paired, on its word
            assert proxy_get(port, origin.url("/x"), "stranger:") == (200, b"hello")
    finally:
        a.stop()
        origin.close()




@pytest.mark.parametrize("secure", [True, False])
def test_a_flood_of_bad_links_does_not_fill_the_log(tmp_path, secure):
    """Links that send garbage and go, one after another: each is refused (or, on an --open
    anchor, ends its session), and the log gets a line per interval, not one per link."""
    a = AnchorProc(str(tmp_path / "anchor"), secure=secure).start()
    try:
        for i in range(1500):
            s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\n\r\n" * 3)
            s.close()
        # the anchor still serves another address (the flooding one may hold its share of
        # sessions until the anchor has read their garbage)
        c = RawRover(a.port, "127.0.0.2")
        if secure:
            c.s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        else:
            c.send(m.hello("after-flood", None, 0))
        r = c.reply()
        assert r is not None and r[0] == (m.ERROR if secure else m.WELCOME), r
        c.s.close()
    finally:
        a.stop()
    size = os.path.getsize(os.path.join(a.data_dir, "anchor.log"))
    assert size < 50_000, size
