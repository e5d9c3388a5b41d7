"""A rover restores over its own link (docs/protocol.md §9): what it still holds in --to, or in
a --seed folder, is reused, and only the chunks it holds nowhere cross the link, compressed.
Both runtimes; bytes counted at a relay socket between the rover and the anchor."""
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


def _tcp(relay):
    return "tcp://127.0.0.1:%d" % relay.port


def _chunks_line(out):
    # "... N chunks (B bytes) over the link ..."
    import re
    m = re.search(r"(\d+) chunks \((\d+) bytes\) over the link", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_renamed_folder_costs_metadata_only(tmp_path, anchor, runtime):
    src = str(tmp_path / "phone")
    make_phone(src)
    state = str(tmp_path / "state")
    run_rover(runtime, anchor.link, "phone", state, "backup", src)
    moved = sum(os.path.getsize(os.path.join(src, "photos/2026", n)) for n in os.listdir(os.path.join(src, "photos/2026")))
    os.rename(os.path.join(src, "photos"), os.path.join(src, "pictures"))
    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        r = run_rover(runtime, _tcp(relay), "phone", state, "restore", "--to", src, "--delete")
    finally:
        relay.close()
    assert _chunks_line(r.stdout)[0] == 0, r.stdout
    assert sorted(os.listdir(src)) == ["app", "notes", "photos"]
    assert os.path.isdir(os.path.join(src, "photos/2026"))
    # names, sizes and chunk ids of what moved (about 35 bytes a chunk of ~8 KiB), not its bytes
    assert relay.total < moved * 0.02, (relay.up, relay.down, moved)


def _big_phone(root, seed=11):
    rnd = random.Random(seed)
    os.makedirs(os.path.join(root, "photos"), exist_ok=True)
    for i in range(6):
        with open(os.path.join(root, "photos/p%d.jpg" % i), "wb") as f:
            f.write(rnd.randbytes(250_000))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("how", ["link dropped", "rover killed"])
def test_a_cut_restore_resumes_and_sends_nothing_again(tmp_path, anchor, runtime, how):
    import signal
    import subprocess
    from tests.support.harness import rover_cmd
    src = str(tmp_path / "phone")
    _big_phone(src)
    want = snapshot_of(src)
    state = str(tmp_path / "state")
    run_rover(runtime, anchor.link, "phone", state, "backup", src)
    floor = floor_bytes(chunks_of_tree(src), {}, 13 if runtime == "micropython" else 15)
    board = str(tmp_path / "wiped")          # a wiped board: everything comes down the link
    relay = CountingRelay("127.0.0.1", anchor.port, rate=300_000)
    try:
        p = subprocess.Popen(rover_cmd(runtime, _tcp(relay), "phone", state, "restore", "--to", board),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert relay.wait_for(lambda r: r.down > floor // 2, 60), "the restore never got half way"
            if how == "link dropped":
                assert relay.cut()
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, out + err
                assert "resuming" in out, out
            else:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate(timeout=30)
                assert os.listdir(board), "nothing had arrived before the kill"
                r = run_rover(runtime, _tcp(relay), "phone", state, "restore", "--to", board)
                out = r.stdout
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    finally:
        relay.close()
    _same_content(want, board)
    assert not [n for n in os.listdir(os.path.join(board, "photos")) if n.startswith(".anchor-restore")]
    # what had arrived (whole files, and the part of the file being written) is not sent again:
    # the link carried the floor once, plus metadata and at most one chunk in flight
    assert relay.down <= floor * 1.05 + 40_000, (relay.down, floor, out)


def test_dry_run_changes_nothing_and_says_what_would_happen(tmp_path, anchor):
    src = str(tmp_path / "phone")
    make_phone(src)
    state = str(tmp_path / "state")
    run_rover("cpython", anchor.link, "phone", state, "backup", src)
    damage(src, random.Random(2))
    before = snapshot_of(src)
    r = run_rover("cpython", anchor.link, "phone", state, "restore", "--to", src, "--delete", "--dry-run")
    assert snapshot_of(src) == before
    assert "would write photos/2026/img03.jpg" in r.stdout, r.stdout
    assert "would delete stray.bin" in r.stdout, r.stdout
    assert "dry run of snapshot 1" in r.stdout


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_path_restores_into_a_new_folder_from_a_seed_folder(tmp_path, anchor, runtime):
    src = str(tmp_path / "phone")
    make_phone(src)
    state = str(tmp_path / "state")
    run_rover(runtime, anchor.link, "phone", state, "backup", src)
    new = str(tmp_path / "new")
    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        r = run_rover(runtime, _tcp(relay), "phone", state, "restore", "--to", new, "--path", "photos",
                      "--seed", src)
    finally:
        relay.close()
    assert sorted(os.listdir(new)) == ["photos"]
    for n in os.listdir(os.path.join(src, "photos/2026")):
        a = open(os.path.join(src, "photos/2026", n), "rb").read()
        assert open(os.path.join(new, "photos/2026", n), "rb").read() == a
    assert _chunks_line(r.stdout)[0] == 0, r.stdout        # all of it from the seed folder
    # without --seed, nothing outside --to is read: everything comes down the link
    r = run_rover(runtime, anchor.link, "phone", state, "restore", "--to", str(tmp_path / "other"), "--path",
                  "photos")
    assert _chunks_line(r.stdout)[0] > 0, r.stdout


def test_bad_requests_are_refused_and_change_nothing(tmp_path, anchor):
    src = str(tmp_path / "phone")
    make_phone(src)
    state = str(tmp_path / "state")
    run_rover("cpython", anchor.link, "phone", state, "backup", src)
    os.remove(os.path.join(src, "notes/n00.txt"))
    before = snapshot_of(src)
    r = run_rover("cpython", anchor.link, "phone", state, "restore", "9", "--to", src, check=False)
    assert r.returncode == 1 and "no snapshot 9 of device phone" in r.stdout + r.stderr, r.stdout + r.stderr
    r = run_rover("cpython", anchor.link, "phone", state, "restore", "--to", src, "--path", "nothere", check=False)
    assert r.returncode == 1 and "nothere" in r.stdout + r.stderr, r.stdout + r.stderr
    r = run_rover("cpython", anchor.link, "phone", state, "restore", "--to", src, "--path", "../etc", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    r = run_rover("cpython", anchor.link, "phone", state, "restore", "latest", "--to", src, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    r = run_rover("cpython", anchor.link, "phone", state, "restore", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    r = run_rover("cpython", anchor.link, "phone", state, "restore", "--to", src, "--seed",
                  str(tmp_path / "no-such"), check=False)
    assert r.returncode == 1 and "does not exist" in r.stdout + r.stderr, r.stdout + r.stderr
    assert snapshot_of(src) == before


def test_a_symlink_in_the_target_never_carries_a_write_outside(tmp_path, anchor):
    src = str(tmp_path / "phone")
    make_phone(src)
    state = str(tmp_path / "state")
    run_rover("cpython", anchor.link, "phone", state, "backup", src)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(os.path.join(src, "notes"))
    os.symlink(str(outside), os.path.join(src, "notes"))      # where the snapshot has a folder
    run_rover("cpython", anchor.link, "phone", state, "restore", "--to", src)
    assert os.listdir(outside) == []
    assert os.path.isdir(os.path.join(src, "notes")) and not os.path.islink(os.path.join(src, "notes"))
    assert len(os.listdir(os.path.join(src, "notes"))) == 12


def test_the_rover_refuses_a_plan_through_a_symlink(tmp_path):
    """A hostile anchor's RPUT or RCOPY naming a path through a symlink is refused."""
    from rover.conversation import RoverError
    from rover.restore import Restore
    to = tmp_path / "to"
    to.mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_bytes(b"k")
    os.symlink(str(tmp_path / "secret"), str(to / "lnk"))

    class NoLink:
        tx = rx = 0
    r = Restore(NoLink(), "phone", str(to))
    r.real[0] = os.path.realpath(str(to)).encode()
    assert r._local("a/b") == str(to).encode() + b"/a/b"
    with pytest.raises(RoverError, match="symlink"):
        r._local("lnk/key")
    with pytest.raises(RoverError, match="symlink"):
        r._local("lnk/x/y")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_only_a_paired_rover_restores_and_only_its_own_data(tmp_path, runtime):
    import json
    import subprocess
    from tests.support.harness import anchorctl, rover_cmd

    def pair(anchor, device, state):
        code = json.loads(anchorctl(anchor.address, "pair", device, "--json").stdout)["code"]
        p = subprocess.run(rover_cmd(runtime, "tcp://unused:1", device, state, "pair", code),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr

    a = AnchorProc(str(tmp_path / "anchor"), secure=True).start()
    try:
        phone, tablet = str(tmp_path / "phone"), str(tmp_path / "tablet")
        make_phone(phone, seed=1)
        os.makedirs(tablet)
        with open(os.path.join(tablet, "mine.txt"), "wb") as f:
            f.write(b"tablet's own")
        pair(a, "phone", str(tmp_path / "s-phone"))
        pair(a, "tablet", str(tmp_path / "s-tablet"))
        run_rover(runtime, a.link, "phone", str(tmp_path / "s-phone"), "backup", phone)
        run_rover(runtime, a.link, "tablet", str(tmp_path / "s-tablet"), "backup", tablet)
        # the tablet restores its own snapshot 1, never the phone's
        out = str(tmp_path / "out")
        run_rover(runtime, a.link, "tablet", str(tmp_path / "s-tablet"), "restore", "1", "--to", out)
        assert os.listdir(out) == ["mine.txt"]
        # a rover that is not paired (its state holds no key) is refused at the handshake
        r = run_rover(runtime, a.link, "phone", str(tmp_path / "s-stranger"), "restore", "--to",
                      str(tmp_path / "x"), check=False)
        assert r.returncode != 0 and not os.path.exists(str(tmp_path / "x" / "notes")), r.stdout
    finally:
        a.stop()
    # the same data folder served --open: a plain link naming a paired device gets nothing
    b = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        r = run_rover(runtime, b.link, "phone", str(tmp_path / "s-stranger"), "restore", "--to",
                      str(tmp_path / "y"), check=False)
        assert r.returncode == 1 and "paired" in r.stdout + r.stderr, r.stdout + r.stderr
        assert not os.path.exists(str(tmp_path / "y" / "notes"))
    finally:
        b.stop()


@pytest.mark.parametrize("kind", ["serial", "mqtt"])
def test_a_paired_micropython_rover_restores_over_a_radio_link(tmp_path, kind):
    """The 256 KB rover, paired (secure channel), over the channel of a serial radio and of an
    MQTT broker: a wiped folder comes back whole."""
    from tests.support.harness import paired_radio
    with paired_radio(tmp_path, kind, "hand") as (a, link, state):
        src = str(tmp_path / "data")
        make_phone(src, seed=4)
        want = snapshot_of(src)
        run_rover("micropython", link, "hand", state, "backup", src)
        shutil.rmtree(src)
        r = run_rover("micropython", link, "hand", state, "restore", "--to", src)
        assert "snapshot 1 restored" in r.stdout, r.stdout
        _same_content(want, src)


def test_the_rover_never_copies_through_a_symlink(tmp_path):
    """A hostile anchor's RCOPY naming a symlink (to a file outside) as its source is refused."""
    from anchor_core import restoremsg as rm
    from rover.conversation import RoverError
    from rover.restore import Restore
    to = tmp_path / "to"
    to.mkdir()
    (tmp_path / "secret").write_bytes(b"outside")
    os.symlink(str(tmp_path / "secret"), str(to / "lnk"))

    class NoLink:
        tx = rx = 0
    r = Restore(NoLink(), "phone", str(to))
    r.real[0] = os.path.realpath(str(to)).encode()
    r._put([rm.RPUT, "f", 0, 7, 0, 0o644, b"\x01" * 32, None, rm.H_WRITE, 0, None])
    with pytest.raises(RoverError, match="not a file"):
        r._copy([rm.RCOPY, 0, "lnk", 0, 7])
    r._abandon()
