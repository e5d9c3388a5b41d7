"""End to end, both rover runtimes against a real anchor: odd trees (raw names, deep and long
paths, times before 1970 and far ahead, symlinks and loops), edits within the timestamp
granularity, and a rover's state on bad days (a second rover, damaged state files)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, make_tree, run_rover, snapshot_of

RUNTIMES = ["cpython", "micropython"]
EXIT_INCOMPLETE = 3


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor")).start()
    yield a
    a.stop()


def _mkchain(top, names):
    """Folders top/names[0]/names[1]/... made relative to each other, so the chain may be
    longer than PATH_MAX (only a path through it is limited, not the tree)."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for n in names:
            os.mkdir(n, dir_fd=fd)
            nfd = os.open(n, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, b"at the bottom\n")
        os.close(f)
    finally:
        os.close(fd)


def _ls(anchor, device, snap="latest"):
    return json.loads(anchorctl(anchor.address, "ls", device, snap, "-r", "--json").stdout)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_odd_names_paths_and_times_are_stored_exactly(anchor, tmp_path, runtime):
    src = make_tree(str(tmp_path / "src"), n_files=20, total_bytes=40_000, seed=31)
    raw = os.fsencode(src)
    os.mkdir(raw + b"/dossier-\xe9t\xe9")                          # Latin-1, not UTF-8
    with open(raw + b"/dossier-\xe9t\xe9/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1 name\n")
    with open(raw + b"/\xff\xfe-binary-name", "wb") as f:
        f.write(b"x" * 5000)
    deep = os.path.join(src, *["level-%02d-abcdefghij" % i for i in range(70)])   # 71 deep, 1.4 KB
    os.makedirs(deep)
    with open(os.path.join(deep, "leaf.txt"), "wb") as f:
        f.write(b"deep\n")
    for name, t in (("1938.txt", -1_000_000_000), ("2400.txt", 13_569_465_600)):
        p = os.path.join(src, name)
        with open(p, "wb") as f:
            f.write(name.encode())
        os.utime(p, (t, t))
    want = snapshot_of(src)
    # A chain longer than PATH_MAX: what lies beyond it cannot be opened by any path; the
    # paths that reach into it are up to 4 KiB long (on MicroPython, in a 256 KB heap).
    _mkchain(src, ["chain-%02d-" % i + "n" * 240 for i in range(20)])
    p = run_rover(runtime, anchor.link, "odd", str(tmp_path / "state"), "backup", src, check=False)
    assert p.returncode == EXIT_INCOMPLETE, (p.returncode, p.stdout, p.stderr)
    assert "snapshot 1 committed" in p.stdout, p.stdout
    skipped = [l for l in p.stdout.splitlines() if l.startswith("rover: not stored:")]
    assert skipped and all("chain-" in l for l in skipped), p.stdout
    out = str(tmp_path / "restore")
    anchorctl(anchor.address, "restore", "odd", "--to", out)
    chain = [k for k in snapshot_of(out) if k.startswith("chain-")]
    assert len(chain) > 5               # the part of the chain a path reaches is kept
    _without(out, [min(chain, key=len)])
    assert_same_tree(want, out, 10 ** 9 if runtime == "micropython" else 1)
    # The times came back signed and whole, not as 2**64 - t or an error.
    assert os.stat(os.path.join(out, "1938.txt")).st_mtime == -1_000_000_000
    assert os.stat(os.path.join(out, "2400.txt")).st_mtime == 13_569_465_600
    # Nothing changed: the next run sends nothing and lists only the same chain.
    p = run_rover(runtime, anchor.link, "odd", str(tmp_path / "state"), "backup", src, check=False)
    assert p.returncode == EXIT_INCOMPLETE and " 0 chunks (0 bytes) uploaded" in p.stdout, p.stdout


def _without(root, rels):
    """root with the given relative paths removed (deepest first), for comparison."""
    import shutil
    for r in sorted(rels, key=len, reverse=True):
        p = os.path.join(root, r)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.lexists(p):
            os.unlink(p)
    return root


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_symlinks_are_never_followed(anchor, tmp_path, runtime):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not part of the rover's tree\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "real.txt").write_bytes(b"real\n")
    (src / "sub").mkdir()
    (src / "sub" / "inner.txt").write_bytes(b"inner\n")
    os.symlink(str(outside), str(src / "to-outside"))
    os.symlink(".", str(src / "self-a"))          # two self-links: 2^depth paths if followed
    os.symlink(".", str(src / "self-b"))
    os.symlink("..", str(src / "sub" / "up"))
    os.symlink("real.txt", str(src / "link-to-file"))
    os.symlink("nowhere", str(src / "dangling"))
    os.symlink(b"caf\xe9", os.fsencode(str(src / "raw-target")))
    links = ["to-outside", "self-a", "self-b", "sub/up", "link-to-file", "dangling", "raw-target"]
    p = run_rover(runtime, anchor.link, "links", str(tmp_path / "state"), "backup", str(src),
                  check=False, timeout=120)
    listed = _ls(anchor, "links")
    paths = set(e["path"] for e in listed)
    assert not [x for x in paths if "secret" in x or "inner.txt" in x and x != "sub/inner.txt"], paths
    assert {"real.txt", "sub", "sub/inner.txt"} <= paths
    if runtime == "cpython":
        assert p.returncode == 0, (p.stdout, p.stderr)
        kinds = dict((e["path"], (e["type"], e.get("target"))) for e in listed)
        assert kinds["to-outside"] == ("symlink", str(outside))
        assert kinds["self-a"] == ("symlink", ".") and kinds["sub/up"] == ("symlink", "..")
        out = str(tmp_path / "restore")
        anchorctl(anchor.address, "restore", "links", "--to", out)
        assert os.readlink(os.fsencode(os.path.join(out, "raw-target"))) == b"caf\xe9"
        assert os.readlink(os.path.join(out, "to-outside")) == str(outside)
    else:
        # MicroPython cannot read a link's target: each link is listed, none followed.
        assert p.returncode == EXIT_INCOMPLETE, (p.returncode, p.stdout, p.stderr)
        for name in links:
            assert "not stored: %s: a symbolic link" % name in p.stdout, (name, p.stdout)
        assert paths == {"real.txt", "sub", "sub/inner.txt"}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_same_size_edit_within_the_timestamp_granularity_is_backed_up(anchor, tmp_path, runtime):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "config.txt"
    f.write_bytes(b"speed=1\n")
    st = os.stat(str(f))
    state = str(tmp_path / "state")
    run_rover(runtime, anchor.link, "racy", state, "backup", str(src))
    # Rewritten at once with as many bytes: an mtime in the same granule (whole seconds on
    # MicroPython) is exactly the one the first backup saw.
    f.write_bytes(b"speed=9\n")
    os.utime(str(f), ns=(st.st_atime_ns, st.st_mtime_ns))
    p = run_rover(runtime, anchor.link, "racy", state, "backup", str(src))
    assert "snapshot 2 committed" in p.stdout, p.stdout
    out = str(tmp_path / "restore")
    anchorctl(anchor.address, "restore", "racy", "--to", out)
    with open(os.path.join(out, "config.txt"), "rb") as g:
        assert g.read() == b"speed=9\n"
    # Once the backup started after the edit, the file is no longer racy: nothing re-read.
    p = run_rover(runtime, anchor.link, "racy", state, "backup", str(src))
    assert " 0 changed" in p.stdout, p.stdout


class _SilentAnchor:
    """A TCP listener that takes one connection and never answers: a rover on it holds its
    state lock, waiting for WELCOME."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.conn = None

    def wait_for_hello(self, timeout=60):
        self.srv.settimeout(timeout)
        self.conn, _ = self.srv.accept()
        self.conn.settimeout(timeout)
        assert self.conn.recv(64)            # HELLO: sent after the lock was taken

    def close(self):
        if self.conn:
            self.conn.close()
        self.srv.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_second_rover_on_one_state_refuses_and_a_dead_ones_lock_is_taken_over(anchor, tmp_path, runtime):
    from tests.support.harness import rover_cmd
    src = make_tree(str(tmp_path / "src"), n_files=10, total_bytes=10_000, seed=5)
    state = str(tmp_path / "state")
    silent = _SilentAnchor()
    first = subprocess.Popen(rover_cmd(runtime, "tcp://127.0.0.1:%d" % silent.port, "twice", state,
                                       "backup", src), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        silent.wait_for_hello()
        p = run_rover(runtime, anchor.link, "twice", state, "backup", src, check=False)
        assert p.returncode == 5, (p.stdout, p.stderr)     # README, "Exit status"
        assert "another rover (pid %d)" % first.pid in p.stderr, p.stderr
    finally:
        first.kill()
        first.wait(30)
        silent.close()
    # The holder died without releasing: its lock is stale, the next run takes it over.
    p = run_rover(runtime, anchor.link, "twice", state, "backup", src)
    assert "snapshot 1 committed" in p.stdout and "stale lock of pid %d" % first.pid in p.stdout, p.stdout


def _damage_truncate(state):
    with open(os.path.join(state, "state.cbor"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(state, "state.cbor")) // 2)


def _damage_empty(state):
    open(os.path.join(state, "state.cbor"), "wb").close()


def _damage_flip_state(state):
    p = os.path.join(state, "state.cbor")
    with open(p, "r+b") as f:
        data = bytearray(f.read())
        data[-12] ^= 0x01            # inside the parent number or digest: still decodes
        f.seek(0)
        f.write(data)


def _damage_garbage(state):
    with open(os.path.join(state, "state.cbor"), "wb") as f:
        f.write(bytes(range(256)) * 64)        # no CBOR, and more than a state can be


def _damage_tree(state):
    p = os.path.join(state, "tree")
    with open(p, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x20
        f.seek(0)
        f.write(data)


def _damage_tree_truncated(state):
    p = os.path.join(state, "tree")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 7)


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_empty, _damage_flip_state, _damage_garbage,
                                    _damage_tree, _damage_tree_truncated],
                         ids=["truncated", "empty", "flipped", "garbage", "tree-flipped", "tree-truncated"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_damaged_state_falls_back_to_the_whole_tree_and_uploads_nothing_held(anchor, tmp_path, runtime, damage):
    src = make_tree(str(tmp_path / "src"), n_files=40, total_bytes=200_000, seed=8)
    state = str(tmp_path / "state")
    run_rover(runtime, anchor.link, "dmg", state, "backup", src)
    run_rover("cpython", anchor.link, "dmg", state, "backup", src)   # a second snapshot: a real parent
    damage(state)
    p = run_rover(runtime, anchor.link, "dmg", state, "backup", src, check=False)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "describing the whole tree" in p.stdout, p.stdout
    assert " 0 chunks (0 bytes) uploaded" in p.stdout, p.stdout
    out = str(tmp_path / "restore")
    anchorctl(anchor.address, "restore", "dmg", "--to", out)
    assert_same_tree(snapshot_of(src), out, 10 ** 9 if runtime == "micropython" else 1)
    # ...and the state it wrote is whole again: the next run is a delta with nothing to send.
    p = run_rover(runtime, anchor.link, "dmg", state, "backup", src)
    assert "describing the whole tree" not in p.stdout and " 0 changed" in p.stdout, p.stdout


class _EditOnNeed:
    """A loopback proxy to the anchor that runs edit() when the anchor's first NEED of a
    connection reaches it, before passing it on: the file changes after the rover hashed
    it and before it reads the chunks the anchor asked for. edits: how many connections
    get the edit (later ones pass untouched)."""

    def __init__(self, port, edit, edits):
        import threading
        self.target = ("127.0.0.1", port)
        self.edit = edit
        self.edits = edits
        self.connections = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import select
        from anchor_core import cbor, framing
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            edit = self.connections <= self.edits
            u = socket.create_connection(self.target)
            de = framing.Deframer()
            with c, u:
                for _ in range(100000):           # bounded: a backup is a few hundred reads
                    r, _, _ = select.select([c, u], [], [], 60)
                    if not r:
                        break
                    src = r[0]
                    data = src.recv(65536)
                    if not data:
                        break
                    if src is u and edit:
                        de.receive_data(data)
                        while True:
                            payload = de.next_frame()
                            if payload is None:
                                break
                            if cbor.decode(bytes(payload))[0] == 6 and edit:    # NEED
                                self.edit()
                                edit = False
                    (c if src is u else u).sendall(data)

    def close(self):
        self.srv.close()


def _photo(path, fill):
    with open(path, "wb") as f:
        f.write(bytes([fill]) * 50_000 + os.urandom(50_000))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_file_changed_after_hashing_is_read_again_in_a_new_session(anchor, tmp_path, runtime):
    src = tmp_path / "src"
    src.mkdir()
    (src / "steady.txt").write_bytes(b"steady\n" * 100)
    photo = str(src / "photo.jpg")
    _photo(photo, 1)
    final = []

    def edit():
        _photo(photo, 2)                      # same size, new bytes
        with open(photo, "rb") as f:
            final.append(f.read())

    proxy = _EditOnNeed(anchor.port, edit, edits=1)
    try:
        p = run_rover(runtime, "tcp://127.0.0.1:%d" % proxy.port, "chg", str(tmp_path / "state"),
                      "backup", str(src), check=False)
    finally:
        proxy.close()
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "photo.jpg changed during the backup; starting the session again" in p.stdout, p.stdout
    assert "snapshot 1 committed" in p.stdout and proxy.connections == 2, p.stdout
    out = str(tmp_path / "restore")
    anchorctl(anchor.address, "restore", "chg", "--to", out)
    with open(os.path.join(out, "photo.jpg"), "rb") as f:
        assert f.read() == final[0]           # the copy taken after the change, whole


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_file_that_keeps_changing_is_skipped_and_the_rest_committed(anchor, tmp_path, runtime):
    src = tmp_path / "src"
    src.mkdir()
    (src / "steady.txt").write_bytes(b"steady\n" * 100)
    photo = str(src / "photo.jpg")
    _photo(photo, 1)
    fills = iter(range(2, 50))
    proxy = _EditOnNeed(anchor.port, lambda: _photo(photo, next(fills)), edits=10)
    try:
        p = run_rover(runtime, "tcp://127.0.0.1:%d" % proxy.port, "chg", str(tmp_path / "state"),
                      "backup", str(src), check=False)
    finally:
        proxy.close()
    assert p.returncode == EXIT_INCOMPLETE, (p.returncode, p.stdout, p.stderr)
    assert "not stored: photo.jpg: it changed while it was being uploaded" in p.stdout, p.stdout
    paths = set(e["path"] for e in _ls(anchor, "chg"))
    assert paths == {"steady.txt"}


def test_file_that_changes_while_hashed_is_read_again(anchor, tmp_path, monkeypatch):
    """In-process (CPython): the file grows under the first read; the second read is whole."""
    from anchor_core import chunker
    from rover import backup
    from rover.link import open_link
    src = tmp_path / "src"
    src.mkdir()
    path = src / "log.txt"
    path.write_bytes(b"line\n" * 20_000)
    real = chunker.chunks_of
    grown = []

    def chunks_of(f, buf):
        for c in real(f, buf):
            if not grown:
                with open(str(path), "ab") as g:
                    g.write(b"appended\n")
                grown.append(1)
            yield c

    monkeypatch.setattr(chunker, "chunks_of", chunks_of)
    link = open_link(anchor.link)
    logs = []
    try:
        stats = backup.Backup(link, "grow", str(tmp_path / "state"), str(src), logs.append).run()
    finally:
        link.close()
    assert stats["skipped"] == 0 and grown, logs
    out = str(tmp_path / "restore")
    anchorctl(anchor.address, "restore", "grow", "--to", out)
    with open(os.path.join(out, "log.txt"), "rb") as f:
        assert f.read() == path.read_bytes()


def test_rover_facing_an_anchor_without_raw_names_lists_what_it_cannot_send(anchor, tmp_path, monkeypatch):
    """In-process (CPython), the rover reading WELCOME as an older anchor sends it: no
    CAP_NAMES. What that anchor would refuse is listed; everything else commits."""
    from rover import backup
    from rover.link import open_link
    monkeypatch.setattr(backup, "_CAP_NAMES", 1 << 12)   # a bit this anchor does not set
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain.txt").write_bytes(b"plain\n")
    with open(os.fsencode(str(src)) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1\n")
    deep = os.path.join(str(src), *["d%02d" % i for i in range(70)])
    os.makedirs(deep)
    future = src / "2400.txt"
    future.write_bytes(b"future\n")
    os.utime(str(future), (13_569_465_600, 13_569_465_600))
    logs = []
    link = open_link(anchor.link)
    try:
        stats = backup.Backup(link, "old", str(tmp_path / "state"), str(src), logs.append).run()
    finally:
        link.close()
    text = "\n".join(logs)
    assert "not stored: caf\\xe9.txt: its name is not UTF-8, and the anchor is too old" in text, text
    assert "deeper than the anchor stores (64)" in text, text
    assert "not stored: 2400.txt: its modification time" in text, text
    paths = set(e["path"] for e in _ls(anchor, "old"))
    assert "plain.txt" in paths and "2400.txt" in paths and os.path.relpath(deep, str(src)) not in paths
    listed = dict((e["path"], e) for e in _ls(anchor, "old"))
    assert listed["2400.txt"]["mtime_ns"] == (1 << 63) - 1      # clamped to what it takes
    assert stats["skipped"] >= 3


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_parent_that_differs_on_the_anchor_falls_back_to_the_whole_tree(tmp_path, runtime):
    """The rover's snapshot 1 came from another anchor (a data folder replaced, a rover
    moved): this anchor's snapshot 1 of the same device holds another tree. The delta would
    build a tree that is not the rover's (error 6); the rover describes its whole tree."""
    src = make_tree(str(tmp_path / "src"), n_files=20, total_bytes=30_000, seed=4)
    other = make_tree(str(tmp_path / "other"), n_files=10, total_bytes=10_000, seed=9)
    first = AnchorProc(str(tmp_path / "first")).start()
    try:
        run_rover(runtime, first.link, "moved", str(tmp_path / "state"), "backup", src)
    finally:
        first.stop()
    second = AnchorProc(str(tmp_path / "second")).start()
    try:
        run_rover("cpython", second.link, "moved", str(tmp_path / "state-other"), "backup", other)
        p = run_rover(runtime, second.link, "moved", str(tmp_path / "state"), "backup", src, check=False)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert "error 6" in p.stdout and "snapshot 2 committed" in p.stdout, p.stdout
        out = str(tmp_path / "restore")
        anchorctl(second.address, "restore", "moved", "--to", out)
        assert_same_tree(snapshot_of(src), out, 10 ** 9 if runtime == "micropython" else 1)
    finally:
        second.stop()
