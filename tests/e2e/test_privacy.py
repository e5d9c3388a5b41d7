"""A rover gets HAVE answers only for its own data: knowing another rover's object or chunk
ids (hashes) unlocks nothing. Rover B forges a manifest naming rover A's file by its ids."""
import os
import random

import pytest

from harness import AnchorProc, anchorctl, run_rover
from core import messages as m
from core.chunker import chunks_of, object_of
from rover.conversation import Conversation, RoverError
from rover.link import TcpLink


def ids_of(path):
    buf = bytearray(65536)
    with open(path, "rb") as f:
        size, oid, _ = object_of(f, buf)
    with open(path, "rb") as f:
        cids = [c for _o, _l, c in chunks_of(f, buf)]
    return size, oid, cids


def test_hashes_of_another_rovers_data_unlock_nothing(tmp_path):
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        src = str(tmp_path / "a")
        os.makedirs(src)
        secret = os.path.join(src, "diary.bin")
        with open(secret, "wb") as f:
            f.write(random.Random(1).randbytes(50_000))
        run_rover("cpython", anchor.link, "rover-a", str(tmp_path / "sa"), "backup", src)
        size, oid, cids = ids_of(secret)

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


def test_the_same_file_is_uploaded_by_each_rover(tmp_path):
    """Without a proof of possession there is no cross-rover match: B uploads its copy."""
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        data = random.Random(2).randbytes(40_000)
        for dev in ("rover-a", "rover-b"):
            src = str(tmp_path / dev)
            os.makedirs(src)
            with open(os.path.join(src, "same.bin"), "wb") as f:
                f.write(data)
            p = run_rover("cpython", anchor.link, dev, str(tmp_path / ("s" + dev)), "backup", src)
            sent = int(p.stdout.split(" chunks (")[0].rsplit(" ", 1)[1])
            assert sent == len(ids_of(os.path.join(src, "same.bin"))[2]), p.stdout
    finally:
        anchor.stop()
