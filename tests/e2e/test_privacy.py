"""A rover gets HAVE answers only for its own data: knowing another rover's object or chunk
ids (hashes) unlocks nothing. Content another rover brought in is matched only after a
proof of possession (docs/security.md)."""
import os
import random

import pytest

from tests.support.harness import AnchorProc, anchorctl, run_rover
from anchor_core import messages as m
from anchor_core.chunker import chunks_of, object_of
from rover.conversation import Conversation, RoverError
from rover.tcp_link import TcpLink


def ids_of(path):
    buf = bytearray(65536)
    with open(path, "rb") as f:
        size, oid, _ = object_of(f, buf)
    with open(path, "rb") as f:
        cids = [c for _o, _l, c in chunks_of(f, buf)]
    return size, oid, cids


def rover_a_backs_up_a_secret(anchor, tmp_path, seed, size):
    """Rover A backs up one file; returns its (size, object id, chunk ids)."""
    src = str(tmp_path / "a")
    os.makedirs(src)
    secret = os.path.join(src, "diary.bin")
    with open(secret, "wb") as f:
        f.write(random.Random(seed).randbytes(size))
    run_rover("cpython", anchor.link, "rover-a", str(tmp_path / "sa"), "backup", src)
    return ids_of(secret)


def test_hashes_of_another_rovers_data_unlock_nothing(tmp_path):
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        size, oid, cids = rover_a_backs_up_a_secret(anchor, tmp_path, 1, 50_000)

        conv = Conversation(TcpLink("127.0.0.1", anchor.port), "rover-b")
        conv.hello(None, 0)
        conv.send(m.entries(0, [m.put_entry("stolen.bin", m.T_FILE, size, 0, 0o644, oid)]))
        v = conv.recv(m.VERDICT)
        assert v[2] == [0], "the anchor said it has rover A's object for rover B"
        # B describes the object by A's chunk ids: every chunk is NEEDed, none is HAVE
        conv.send(m.chunklist([m.list_part(0, 0, cids, True)]))
        need = conv.recv(m.NEED)
        wanted = need[1][0][2]
        assert len(wanted) == len(cids), need
        # B cannot supply the bytes; committing without them is refused, nothing is stored
        conv.send(m.commit(oid, 1, size))
        with pytest.raises(RoverError) as e:
            conv.recv(m.COMMITTED)
        assert "never arrived" in str(e.value) or "lacks" in str(e.value) or "missing" in str(e.value).lower()
        conv.link.close()
        r = anchorctl(anchor.address, "snapshots", "rover-b", "--json", check=False)
        assert r.returncode != 0 or r.stdout.strip() in ("[]", ""), r.stdout
    finally:
        anchor.stop()


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_the_same_file_is_matched_only_on_proof(tmp_path, runtime):
    """B holds the same file as A: the anchor challenges B, B proves it holds the bytes and
    uploads nothing; B's snapshot restores."""
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        data = random.Random(2).randbytes(40_000)
        sent = {}
        for dev in ("rover-a", "rover-b"):
            src = str(tmp_path / dev)
            os.makedirs(src)
            with open(os.path.join(src, "same.bin"), "wb") as f:
                f.write(data)
            p = run_rover("cpython" if dev == "rover-a" else runtime, anchor.link, dev,
                          str(tmp_path / ("s" + dev)), "backup", src)
            sent[dev] = (int(p.stdout.split(" chunks (")[0].rsplit(" ", 1)[1]), p.stdout)
        n = len(ids_of(os.path.join(str(tmp_path / "rover-a"), "same.bin"))[2])
        assert sent["rover-a"][0] == n
        assert sent["rover-b"][0] == 0 and "%d chunks another rover" % n in sent["rover-b"][1], sent
        out = str(tmp_path / "out")
        anchorctl(anchor.address, "restore", "rover-b", "--to", out)
        with open(os.path.join(out, "same.bin"), "rb") as f:
            assert f.read() == data
    finally:
        anchor.stop()


def test_a_proof_without_the_bytes_is_refused(tmp_path):
    """B knows A's chunk ids (hashes) and says it can prove: it is challenged, and a proof
    made without the bytes fails; nothing of A's becomes B's."""
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        size, oid, cids = rover_a_backs_up_a_secret(anchor, tmp_path, 3, 30_000)
        conv = Conversation(TcpLink("127.0.0.1", anchor.port), "rover-b")
        conv.hello(None, m.CAP_PROVE)
        conv.send(m.entries(0, [m.put_entry("stolen.bin", m.T_FILE, size, 0, 0o644, oid)]))
        assert conv.recv(m.VERDICT)[2] == [0]
        conv.send(m.chunklist([m.list_part(0, 0, cids, True)]))
        need = conv.recv(m.NEED)
        assert need[1][0][2] == [] and sorted(need[2][1][0]) == list(range(len(cids))), need
        # the best B can do without the bytes: a keyed hash of the chunk id
        from anchor_core.hmac256 import hmac_sha256
        conv.send(m.proof(cids[0], hmac_sha256(need[2][0], cids[0])[:16]))
        conv.send(m.commit(oid, 1, size))
        with pytest.raises(RoverError) as e:
            conv.recv(m.COMMITTED)
        assert "proof of possession failed" in str(e.value)
        conv.link.close()
        r = anchorctl(anchor.address, "snapshots", "rover-b", "--json", check=False)
        assert r.returncode != 0 or r.stdout.strip() in ("[]", ""), r.stdout
    finally:
        anchor.stop()
