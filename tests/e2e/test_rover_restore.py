"""A rover restores over its own link (docs/protocol.md §9): what it still holds in --to, or in
a --seed folder, is reused, and only the chunks it holds nowhere cross the link, compressed.
Both runtimes; bytes counted at a relay socket between the rover and the anchor."""
import hashlib
import os
import random
import shutil
import zlib

import pytest

from anchor_core import chunker
from tests.support.harness import AnchorProc, assert_same_tree, run_rover, snapshot_of
from tests.support.linkemu import CountingRelay

RUNTIMES = ["cpython", "micropython"]


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor")).start()
    yield a
    a.stop()


def make_phone(root, seed=7):
    """Photos (random, incompressible), notes (text), a nested folder, an empty file."""
    rnd = random.Random(seed)
    words = [b"anchor", b"rover", b"radio", b"flash", b"note", b"\n", b"the", b"a"]
    for d in ("photos/2026", "notes", "app/db"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i in range(10):
        with open(os.path.join(root, "photos/2026/img%02d.jpg" % i), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(20000, 90000)))
    for i in range(12):
        with open(os.path.join(root, "notes/n%02d.txt" % i), "wb") as f:
            f.write(b" ".join(rnd.choice(words) for _ in range(rnd.randrange(500, 8000))))
    with open(os.path.join(root, "app/db/store.db"), "wb") as f:
        f.write(rnd.randbytes(200000))
    open(os.path.join(root, "app/empty"), "wb").close()
    t = 1_700_000_000
    for dirpath, _, names in os.walk(root):
        for n in names:
            t += 17
            os.utime(os.path.join(dirpath, n), (t, t))


def chunks_of_tree(root):
    """chunk id -> raw bytes, of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                continue
            data = open(p, "rb").read()
            with open(p, "rb") as f:
                for off, ln, cid in chunker.chunks_of(f, bytearray(65536)):
                    out[cid] = data[off:off + ln]
    return out


def floor_bytes(want_chunks, have_chunks, wbits):
    """What the chunks the rover really lacks cost compressed (raw when that is smaller)."""
    total = 0
    for cid, raw in want_chunks.items():
        if cid in have_chunks:
            continue
        z = zlib.compressobj(6, zlib.DEFLATED, wbits)
        total += min(len(raw), len(z.compress(raw) + z.flush()))
    return total


def damage(root, rnd):
    """Delete some files, change some, rename a folder, add a stray file."""
    os.remove(os.path.join(root, "photos/2026/img03.jpg"))
    os.remove(os.path.join(root, "notes/n05.txt"))
    with open(os.path.join(root, "app/db/store.db"), "r+b") as f:       # a few pages changed
        for off in (4096, 90000, 150000):
            f.seek(off)
            f.write(rnd.randbytes(4096))
    with open(os.path.join(root, "notes/n01.txt"), "ab") as f:
        f.write(b" appended words")
    os.rename(os.path.join(root, "photos/2026"), os.path.join(root, "photos/2026-old"))
    with open(os.path.join(root, "stray.bin"), "wb") as f:
        f.write(rnd.randbytes(5000))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_restore_returns_a_damaged_tree_bit_exact_with_only_missing_chunks_on_the_link(tmp_path, anchor, runtime):
    src = str(tmp_path / "phone")
    make_phone(src)
    want = snapshot_of(src)
    want_chunks = chunks_of_tree(src)
    state = str(tmp_path / "state")
    run_rover(runtime, anchor.link, "phone", state, "backup", src)

    damage(src, random.Random(1))
    have_chunks = chunks_of_tree(src)
    floor = floor_bytes(want_chunks, have_chunks, 13 if runtime == "micropython" else 15)
    relay = CountingRelay(*anchor.address_tcp()) if hasattr(anchor, "address_tcp") else None
    host, port = anchor.link[len("tcp://"):].rsplit(":", 1)
    relay = CountingRelay(host, int(port))
    try:
        r = run_rover(runtime, "tcp://127.0.0.1:%d" % relay.port, "phone", state, "restore", "--to", src,
                      "--delete")
    finally:
        relay.close()
    print(r.stdout)
    # MicroPython cannot set mtimes: content, names and folders are the snapshot's.
    assert_same_tree(want, src, 1 if runtime == "cpython" else 1 << 62) if runtime == "cpython" else \
        _same_content(want, src)
    assert relay.total <= floor * 1.10, (relay.up, relay.down, floor)


def _same_content(want, root):
    got = snapshot_of(root)
    assert sorted(got) == sorted(want)
    for p, w in want.items():
        if w[0] == "f":
            assert got[p][0] == "f" and got[p][3] == w[3], p
        else:
            assert got[p][0] == w[0], p
