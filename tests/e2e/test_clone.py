"""`anchorctl clone`: a rover's snapshot written as the filesystem of a replacement board.

The littlefs2 image is mounted by the real MicroPython interpreter (256 KB heap) through a
block device over the image file, with `vfs.VfsLfs2` as a board mounts its data partition,
and every file's bytes (a SHA-256 per file) and mtime (os.stat, as the board shows it) are
compared with the tree that was backed up. `--fs dir` is compared with the tree too. A
clone that cannot be made leaves nothing behind; bad arguments change nothing."""
import hashlib
import os
import random
import subprocess

import pytest

from tests.support.harness import BIN, AnchorProc, anchorctl, assert_same_tree, damage, run_rover, snapshot_of

MPY = os.path.join(BIN, "micropython")

# Runs under MicroPython: mounts the image read-only with MicroPython's own littlefs and
# prints one line per entry: "D path mtime" or "F path size mtime sha256".
MOUNT_AND_WALK = r"""
import os, sys, vfs, hashlib, binascii

class ImageFile:
    # the extended block device protocol VfsLfs2 uses on a board's flash partition
    def __init__(self, path, block_size, block_count):
        self.f = open(path, "rb")
        self.bs = block_size
        self.n = block_count

    def readblocks(self, block, buf, off=0):
        self.f.seek(block * self.bs + off)
        if self.f.readinto(buf) != len(buf):
            raise OSError(5)

    def writeblocks(self, block, buf, off=0):
        if not WRITE:
            raise OSError(30)       # read-only: the test must not change what it checks
        self.f.seek(block * self.bs + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:                 # erase a block: flash reads 0xFF after it
            if not WRITE:
                raise OSError(30)
            self.f.seek(arg * self.bs)
            self.f.write(b"\xff" * self.bs)
        return 0

WRITE = len(sys.argv) > 4
bdev = ImageFile(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
if WRITE:
    # the rover on the new board writes its own files beside the clone's
    bdev.f.close()
    bdev.f = open(sys.argv[1], "r+b")
    vfs.mount(bdev, "/img")
    os.mkdir("/img/state")
    with open("/img/state/written-on-board", "wb") as f:
        for i in range(40):
            f.write(bytes([i]) * 1000)
    vfs.umount("/img")
# As a board boots (_boot.py: vfs.mount(bdev, "/")): the filesystem is found by its
# superblock, and the names, os.stat and open are the board's own.
vfs.mount(bdev, "/img", readonly=True)
buf = bytearray(4096)

def walk(d):
    for e in os.ilistdir("/img/" + d if d else "/img"):
        name, kind = e[0], e[1]
        p = d + "/" + name if d else name
        st = os.stat("/img/" + p)
        if kind == 0x4000:
            print("D", p, st[8])
            walk(p)
        else:
            h = hashlib.sha256()
            with open("/img/" + p, "rb") as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    h.update(memoryview(buf)[:n])
            print("F", p, st[6], st[8], binascii.hexlify(h.digest()).decode())

walk("")
print("END")
"""


def mount_and_walk(tmp_path, image, block_size, block_count, write=False):
    """{path: ("d", mtime_s) or ("f", size, mtime_s, sha256)} as MicroPython sees the image;
    with write, after writing state/written-on-board into it as a rover on the board would."""
    script = tmp_path / "walk_lfs.py"
    script.write_text(MOUNT_AND_WALK)
    p = subprocess.run([MPY, "-X", "heapsize=256K", str(script), str(image), str(block_size), str(block_count)]
                       + (["write"] if write else []), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.endswith("END\n"), (p.stdout[-2000:], p.stderr)
    out = {}
    for line in p.stdout.splitlines()[:-1]:
        kind, rest = line.split(" ", 1)
        if kind == "D":
            path, mtime = rest.rsplit(" ", 1)
            out[path] = ("d", int(mtime))
        else:
            path, size, mtime, sha = rest.rsplit(" ", 3)
            out[path] = ("f", int(size), int(mtime), sha)
    return out


def expected_on_board(src):
    """The tree as littlefs holds it: folders and files, mtimes in whole seconds."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, src)
            st = os.lstat(full)
            if os.path.islink(full):
                continue
            if os.path.isdir(full):
                out[rel] = ("d", st.st_mtime_ns // 10**9)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("f", st.st_size, st.st_mtime_ns // 10**9, hashlib.sha256(f.read()).hexdigest())
    return out


def make_rover_tree(src):
    """Folders to a few levels, an empty file and folder, text, a file of exactly one block,
    files of many chunks and many blocks, names MicroPython must read as text, odd mtimes."""
    rnd = random.Random(12)
    files = {
        "main.py": b"import rover\nrover.run()\n",
        "config/links.json": b'{"link": "tcp://anchor:7000"}\n',
        "config/empty.txt": b"",
        "data/log/2026-12-01.log": b"".join(b"reading %d ok\n" % i for i in range(3000)),
        "data/photos/one-block.bin": rnd.randbytes(4096),
        "data/photos/big.jpg": rnd.randbytes(300_000),
        "data/caf\u00e9 \u6f22\u5b57.txt": "unicode name\n".encode(),
        "deep/a/b/c/d/leaf": b"leaf\n",
    }
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (src / "data" / "empty-folder").mkdir()
    # mtimes the board must show: old, recent, with nanoseconds that littlefs keeps
    for i, rel in enumerate(sorted(files)):
        t = 1_500_000_000_123_456_789 + i * 86_400_000_000_007
        os.utime(src / rel, ns=(t, t))
    for d in ("deep/a/b", "config"):
        os.utime(src / d, ns=(1_234_567_890_000_000_000, 1_234_567_890_000_000_000))
    return src


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor")).start()
    yield a
    a.stop()


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp" in n)


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_littlefs_image_mounts_under_micropython_with_every_file_and_mtime(tmp_path, anchor, runtime):
    src = make_rover_tree(tmp_path / "src")
    run_rover(runtime, anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))
    want = expected_on_board(src)

    out = tmp_path / "out"
    out.mkdir()
    image = out / "rover.lfs"
    p = anchorctl(anchor.address, "clone", "phone", "--image", str(image), "--fs", "littlefs2",
                  "--block-size", "4096", "--block-count", "256")
    assert "cloned 8 files" in p.stdout, p.stdout
    assert os.path.getsize(image) == 4096 * 256           # the whole partition, ready to flash
    assert leftovers(out) == []

    got = mount_and_walk(tmp_path, image, 4096, 256)
    assert sorted(got) == sorted(want), (sorted(set(want) - set(got)), sorted(set(got) - set(want)))
    for path, w in want.items():
        assert got[path] == w, (path, got[path], w)

    # the board can write beside the clone, and the clone stays as it was
    board = tmp_path / "board.lfs"
    board.write_bytes(image.read_bytes())
    after = mount_and_walk(tmp_path, board, 4096, 256, write=True)
    written = after.pop("state/written-on-board")
    assert written[1] == 40_000 and written[3] == hashlib.sha256(b"".join(bytes([i]) * 1000 for i in range(40))).hexdigest()
    del after["state"]
    assert after == got

    # MicroPython's attribute keeps nanoseconds: the snapshot's exact value is in the image
    import json
    import littlefs
    rec = json.loads(anchorctl(anchor.address, "ls", "phone", "latest", "data/photos/big.jpg", "--json").stdout)
    with open(image, "rb") as f:
        fs = littlefs.LittleFS(context=littlefs.UserContext(buffer=bytearray(f.read())), block_size=4096,
                               block_count=256, read_size=32, prog_size=32, lookahead_size=32, cache_size=128)
    raw = int.from_bytes(fs.getattr("data/photos/big.jpg", 1), "little")
    assert raw == rec[0]["mtime_ns"] and raw // 10**9 == os.stat(src / "data/photos/big.jpg").st_mtime_ns // 10**9


def test_too_small_image_is_refused_naming_what_it_takes(tmp_path, anchor):
    src = make_rover_tree(tmp_path / "src")
    run_rover("cpython", anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))
    image = tmp_path / "small.lfs"
    p = anchorctl(anchor.address, "clone", "phone", "--image", str(image), "--fs", "littlefs2",
                  "--block-size", "4096", "--block-count", "32", check=False)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "does not fit in 32 blocks of 4096 bytes (128 KiB)" in p.stderr, p.stderr
    need = int(p.stderr.split("it takes ")[1].split(" blocks")[0])
    assert 32 < need < 256, p.stderr
    assert not image.exists() and leftovers(tmp_path) == []
    # what it named is enough
    anchorctl(anchor.address, "clone", "phone", "--image", str(image), "--fs", "littlefs2",
              "--block-size", "4096", "--block-count", str(need))
    got = mount_and_walk(tmp_path, image, 4096, need)
    assert got == expected_on_board(src)


def test_dir_clone_is_the_tree(tmp_path, anchor):
    src = make_rover_tree(tmp_path / "src")
    os.symlink("main.py", src / "start.py")
    os.chmod(src / "main.py", 0o755)
    want = snapshot_of(str(src))
    run_rover("cpython", anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))

    out = tmp_path / "rover-root"
    p = anchorctl(anchor.address, "clone", "phone", "--image", str(out), "--fs", "dir")
    assert "cloned 8 files" in p.stdout and "1 symlinks" in p.stdout, p.stdout
    assert_same_tree(want, str(out))
    assert leftovers(tmp_path) == []
    # an empty folder that is there already is filled the same way
    (tmp_path / "empty").mkdir()
    anchorctl(anchor.address, "clone", "phone", "1", "--image", str(tmp_path / "empty"), "--fs", "dir")
    assert_same_tree(want, str(tmp_path / "empty"))


def test_what_littlefs_cannot_hold_is_named_with_its_own_status(tmp_path, anchor):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "bin" / "tool", 0o755)
    os.symlink("bin/tool", src / "tool-link")
    bad = os.fsencode(str(src)) + b"/caf\xe9"           # Latin-1, not UTF-8
    os.mkdir(bad)
    with open(bad + b"/inside.txt", "wb") as f:
        f.write(b"x")
    (src / "ok.txt").write_bytes(b"fine\n")
    (src / "bin" / "old.txt").write_bytes(b"older than 1970\n")
    os.utime(src / "bin" / "old.txt", ns=(-10**18, -10**18))     # 1938: the board's field is unsigned
    os.utime(src / "bin", ns=(10**18, 10**18))
    run_rover("cpython", anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))

    image = tmp_path / "img.lfs"
    p = anchorctl(anchor.address, "clone", "phone", "--image", str(image), "--fs", "littlefs2",
                  "--block-size", "4096", "--block-count", "64", check=False)
    assert p.returncode == 4, (p.stdout, p.stderr)
    assert "not cloned: tool-link: a symlink" in p.stderr
    assert "not cloned: caf\\xe9: its name is not UTF-8" in p.stderr
    assert "not cloned: caf\\xe9/inside.txt: its name is not UTF-8" in p.stderr
    assert "1 files lose an executable" in p.stderr
    assert "3 entries cannot be held by littlefs2" in p.stderr
    # the rest is in the image, whole
    got = mount_and_walk(tmp_path, image, 4096, 64)
    assert sorted(got) == ["bin", "bin/old.txt", "bin/tool", "ok.txt"], got
    assert got["bin/old.txt"][2] == 0 and got["bin"][1] == 10**9, got
    assert got["ok.txt"][3] == hashlib.sha256(b"fine\n").hexdigest()


def test_a_file_the_anchor_cannot_read_back_is_named_and_left_out(tmp_path, anchor):
    src = tmp_path / "src"
    src.mkdir()
    big = random.Random(3).randbytes(200_000)
    (src / "big.bin").write_bytes(big)
    (src / "note.txt").write_bytes(b"kept\n")
    run_rover("cpython", anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))
    damage(anchor.data_dir, big[100_000:])

    image = tmp_path / "img.lfs"
    p = anchorctl(anchor.address, "clone", "phone", "--image", str(image), "--fs", "littlefs2",
                  "--block-size", "4096", "--block-count", "128", check=False)
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "not cloned: big.bin: the anchor cannot read it back" in p.stderr, p.stderr
    got = mount_and_walk(tmp_path, image, 4096, 128)
    assert sorted(got) == ["note.txt"], got             # never a prefix of big.bin

    out = tmp_path / "tree"
    p = anchorctl(anchor.address, "clone", "phone", "--image", str(out), "--fs", "dir", check=False)
    assert p.returncode == 3 and "not cloned: big.bin" in p.stderr, p.stderr
    assert sorted(os.listdir(out)) == ["note.txt"]


def test_bad_arguments_are_refused_and_change_nothing(tmp_path, anchor):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a\n")
    run_rover("cpython", anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))
    work = tmp_path / "work"
    work.mkdir()
    (work / "taken.lfs").write_bytes(b"the operator's other image")
    (work / "full").mkdir()
    (work / "full" / "keep.txt").write_bytes(b"keep")
    (work / "busy.lfs.tmp").write_bytes(b"someone's")
    before = snapshot_of(str(work))

    lfs = ["--fs", "littlefs2", "--block-size", "4096", "--block-count", "64"]
    cases = [
        (["phone", "--image", str(work / "taken.lfs")] + lfs, "exists"),
        (["phone", "--image", str(work / "full")] + lfs, "exists"),
        (["phone", "--image", str(work / "full"), "--fs", "dir"], "is not empty"),
        (["phone", "--image", str(work / "taken.lfs"), "--fs", "dir"], "not a folder"),
        (["phone", "--image", str(work / "busy.lfs")] + lfs, "busy.lfs.tmp exists"),
        (["phone", "--image", str(work / "new.lfs"), "--fs", "littlefs2"], "needs --block-size and --block-count"),
        (["phone", "--image", str(work / "new.lfs"), "--fs", "littlefs2", "--block-size", "100",
          "--block-count", "64"], "multiple of 128"),
        (["phone", "--image", str(work / "new.lfs"), "--fs", "littlefs2", "--block-size", "4096",
          "--block-count", "1"], "at least 2 blocks"),
        (["phone", "--image", str(work / "new.lfs"), "--fs", "littlefs2", "--block-size", "4096",
          "--block-count", "1048576"], "at most"),
        (["phone", "--image", str(work / "new"), "--fs", "dir", "--block-count", "64"], "littlefs2 only"),
        (["phone", "--image", str(work / "new.lfs"), "--fs", "littlefs2", "--block-size", "-4096",
          "--block-count", "64"], "must be above 0"),
        (["phone", "--image", str(work / "new.lfs"), "--fs", "fat"] + lfs[2:], "invalid choice"),
        (["nobody", "--image", str(work / "new.lfs")] + lfs, "no"),
        (["phone", "7", "--image", str(work / "new.lfs")] + lfs, "no snapshot 7"),
        (["phone", "--image", str(work / "no-such-folder" / "x.lfs")] + lfs, "no folder"),
    ]
    for args, words in cases:
        p = anchorctl(anchor.address, "clone", *args, check=False)
        assert p.returncode != 0, (args, p.stdout)
        assert words in p.stderr, (args, p.stderr)
        assert snapshot_of(str(work)) == before, args


class CutClient:
    """A real client whose restore stream breaks after `frames` chunks, as when the anchor
    stops or the socket breaks mid-clone."""

    def __init__(self, address, frames):
        from anchorctl.client import Client
        self.client = Client(address)
        self.frames = frames

    def __getattr__(self, name):
        return getattr(self.client, name)

    def restore_stream(self, device, snapshot="latest", path=""):
        import contextlib
        from anchorctl.errors import AnchorError
        outer = self

        @contextlib.contextmanager
        def cm():
            with outer.client.restore_stream(device, snapshot, path) as reader:
                real = reader.frame

                def frame():
                    if outer.frames == 0:
                        raise AnchorError("restore stream ended early: the anchor stopped or the connection broke")
                    outer.frames -= 1
                    return real()
                reader.frame = frame
                yield reader
        return cm()


@pytest.mark.parametrize("fs", ["littlefs2", "dir"])
def test_a_clone_cut_midway_leaves_nothing(tmp_path, anchor, fs):
    from anchorctl.clone import clone_dir, clone_littlefs
    from anchorctl.errors import AnchorError
    src = make_rover_tree(tmp_path / "src")
    run_rover("cpython", anchor.link, "phone", str(tmp_path / "state"), "backup", str(src))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "clone"
    with pytest.raises(AnchorError, match="ended early"):
        if fs == "dir":
            clone_dir(CutClient(anchor.address, 5), "phone", "latest", str(out))
        else:
            clone_littlefs(CutClient(anchor.address, 5), "phone", "latest", str(out), 4096, 256)
    assert os.listdir(work) == []
    # the same clone, not cut, is whole: the cut is what made it fail
    if fs == "dir":
        clone_dir(CutClient(anchor.address, -1), "phone", "latest", str(out))
        assert snapshot_of(str(out)) == snapshot_of(str(src))
    else:
        clone_littlefs(CutClient(anchor.address, -1), "phone", "latest", str(out), 4096, 256)
        assert mount_and_walk(tmp_path, out, 4096, 256) == expected_on_board(src)
