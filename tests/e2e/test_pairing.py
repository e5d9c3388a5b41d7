"""Pairing, the secure channel, revocation, and a rover that cannot see another's data,
with the anchor as shipped (paired rovers only) and the rover under MicroPython too."""
import json
import os
import random
import socket
import struct
import subprocess

import pytest

from tests.support.harness import (AnchorProc, anchorctl, assert_same_tree, make_tree, rover_cmd,
    run_rover, snapshot_of)
from tests.support.linkemu import CountingRelay


def pair(anchor, runtime, device, state):
    r = json.loads(anchorctl(anchor.address, "pair", device, "--json").stdout)
    p = subprocess.run(rover_cmd(runtime, "tcp://unused:1", device, state, "pair", r["code"]),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "paired" in p.stdout, p.stdout + p.stderr
    return r["code"]


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor"), secure=True).start()
    yield a
    a.stop()


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_paired_rover_backs_up_encrypted(anchor, tmp_path, runtime):
    src = make_tree(str(tmp_path / "src"), 40, 200_000, seed=3)
    state = str(tmp_path / "state")
    pair(anchor, runtime, "rover-p", state)
    # through a relay that keeps every byte: the file contents must not appear on the wire
    relay = CountingRelay("127.0.0.1", anchor.port)
    p = run_rover(runtime, "tcp://127.0.0.1:%d" % relay.port, "rover-p", state, "backup", src)
    assert "snapshot 1 committed" in p.stdout, p.stdout
    out = str(tmp_path / "out")
    anchorctl(anchor.address, "restore", "rover-p", "--to", out)
    assert_same_tree(snapshot_of(src), out, mtime_resolution_ns=10**9 if runtime == "micropython" else 1)
    relay.close()
    assert relay.up > 0


def test_unpaired_and_revoked_rovers_get_a_refusal(anchor, tmp_path):
    src = make_tree(str(tmp_path / "src"), 10, 20_000, seed=4)
    # never paired, plain: refused with a clear message
    p = run_rover("cpython", anchor.link, "stranger", str(tmp_path / "s1"), "backup", src, "--retries", "0", check=False)
    assert p.returncode != 0 and "paired rovers only" in p.stderr, p.stderr
    # a key the anchor never issued, a revoked pairing, a renewed one: the same answer each
    # time (whether a name is paired is not the anchor's to tell)
    run_rover("cpython", "tcp://x:1", "forger", str(tmp_path / "s2"), "pair", "GRUHF-UPDRE-FPC3W-FVBB7")
    p = run_rover("cpython", anchor.link, "forger", str(tmp_path / "s2"), "backup", src, "--retries", "0", check=False)
    assert p.returncode != 0 and "could not prove" in p.stderr and "pair again" in p.stderr, p.stderr
    forged = p.stderr
    # paired, then unpaired: refused at once
    state = str(tmp_path / "s3")
    pair(anchor, "cpython", "rover-r", state)
    run_rover("cpython", anchor.link, "rover-r", state, "backup", src)
    anchorctl(anchor.address, "unpair", "rover-r")
    p = run_rover("cpython", anchor.link, "rover-r", state, "backup", src, "--retries", "0", check=False)
    assert p.returncode != 0 and p.stderr == forged, p.stderr
    # re-pairing issues a new secret: the old code no longer works
    pair(anchor, "cpython", "rover-r", str(tmp_path / "s4"))
    p = run_rover("cpython", anchor.link, "rover-r", state, "backup", src, "--retries", "0", check=False)
    assert p.returncode != 0 and p.stderr == forged, p.stderr


def test_tampered_and_replayed_records_end_the_session(anchor, tmp_path):
    """A man in the middle flips one bit of a record, or replays one: the anchor cuts the
    session, stores nothing from it, and the rover's next run (clean link) completes."""
    src = str(tmp_path / "src")
    os.makedirs(src)
    with open(os.path.join(src, "a.bin"), "wb") as f:
        f.write(random.Random(5).randbytes(60_000))
    state = str(tmp_path / "state")
    pair(anchor, "cpython", "rover-t", state)
    for attack in ("flip", "replay"):
        mitm = Mitm(anchor.port, attack)
        try:
            p = run_rover("cpython", "tcp://127.0.0.1:%d" % mitm.port, "rover-t", state, "backup", src,
                          "--retries", "0", check=False)
        finally:
            mitm.close()
        assert p.returncode != 0, p.stdout
        assert mitm.done, "the attack never happened"
        r = anchorctl(anchor.address, "snapshots", "rover-t", "--json", check=False)
        assert (json.loads(r.stdout) if r.returncode == 0 else []) == [], r.stdout
    with open(os.path.join(anchor.data_dir, "anchor.log")) as f:
        log = f.read()
    assert log.count("failed authentication") == 2, log[-3000:]
    p = run_rover("cpython", anchor.link, "rover-t", state, "backup", src)
    assert "committed" in p.stdout
    v = json.loads(anchorctl(anchor.address, "verify", "--json").stdout)
    assert v["ok"], v


class Mitm:
    """A TCP relay that, after the handshake, alters the rover's third record: flips a bit
    in it ("flip") or sends the second record again in its place ("replay")."""

    def __init__(self, port, attack):
        import threading
        self.target = port
        self.attack = attack
        self.done = False
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        import threading
        try:
            c, _ = self.srv.accept()
        except OSError:
            return
        u = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=self._pipe, args=(u, c), daemon=True).start()
        buf = b""
        records = []
        hs = None          # None: hello1 not yet complete; then bytes of the proof still to pass
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                buf += data
                if hs is None:
                    # hello1 (4 + 1 + n + 16 + 2), passed on at once; then the 16-byte proof
                    if len(buf) < 5 or len(buf) < 5 + buf[4] + 18:
                        continue
                    need = 5 + buf[4] + 18
                    u.sendall(buf[:need])
                    buf = buf[need:]
                    hs = 16
                if hs:
                    k = min(hs, len(buf))
                    u.sendall(buf[:k])
                    buf = buf[k:]
                    hs -= k
                    if hs:
                        continue
                while len(buf) >= 2:
                    n = struct.unpack(">H", buf[:2])[0]
                    if len(buf) < 2 + n + 16:
                        break
                    rec, buf = buf[:2 + n + 16], buf[2 + n + 16:]
                    records.append(rec)
                    if len(records) == 3 and not self.done:
                        self.done = True
                        if self.attack == "flip":
                            rec = rec[:2] + bytes([rec[2] ^ 1]) + rec[3:]
                        else:
                            rec = records[1]
                    u.sendall(rec)
        except OSError:
            pass
        finally:
            for s in (c, u):
                try:
                    s.close()
                except OSError:
                    pass

    def _pipe(self, src, dst):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                dst.sendall(d)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        self.srv.close()


def test_a_rover_cannot_name_another_device(anchor, tmp_path):
    """Paired as A, a rover saying HELLO as B is refused: the link is bound to A."""
    from rover.securelink import SecureLink, load_key
    from rover.tcp_link import TcpLink
    from rover.conversation import Conversation, RoverError
    state = str(tmp_path / "a")
    pair(anchor, "cpython", "rover-a", state)
    link = SecureLink(TcpLink("127.0.0.1", anchor.port), "rover-a", load_key(state))
    conv = Conversation(link, "rover-b")
    with pytest.raises(RoverError) as e:
        conv.hello(None, 0)
    assert "paired as 'rover-a'" in str(e.value)
    link.close()


def test_management_socket_is_the_operators_alone(anchor):
    st = os.stat(anchor.mgmt)
    assert st.st_mode & 0o077 == 0, oct(st.st_mode)


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_a_mistyped_code_is_refused_when_typed(anchor, tmp_path, runtime):
    """One wrong symbol, two neighbours swapped, a letter that is not in codes: refused by
    `rover pair` itself, nothing stored; the code as printed pairs."""
    code = json.loads(anchorctl(anchor.address, "pair", "typist", "--json").stdout)["code"]
    i = 7 if code[7] != code[8] else 9
    swapped = code[:i] + code[i + 1] + code[i] + code[i + 2:]
    wrong = code[:3] + ("B" if code[3] != "B" else "C") + code[4:]
    state = tmp_path / "state"
    for bad, says in ((wrong, "mistyped (check symbol)"), (swapped, "mistyped (check symbol)"),
                      (code[:-1] + "O", "not in it")):
        p = run_rover(runtime, "tcp://127.0.0.1:1", "typist", str(state), "pair", bad, check=False)
        assert p.returncode == 1 and says in p.stderr, (bad, p.stderr)
        assert not (state / "pairing.key").exists()
    run_rover(runtime, "tcp://127.0.0.1:1", "typist", str(state), "pair", code.lower())
    assert (state / "pairing.key").exists()
