"""anchorctl's restore writes nothing outside --to, whatever the stream says."""
import hashlib
import json
import os
import struct

import pytest

from anchorctl.client import AnchorError, _Reader
from anchorctl.restore import Restorer


class FakeResp:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def read(self, n):
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def frames(body):
    """A file's content as the anchor sends it: chunks with their ids, then a zero length."""
    out = b""
    for i in range(0, len(body), 65536):
        c = body[i:i + 65536]
        out += struct.pack(">I", len(c)) + hashlib.sha256(c).digest() + c
    return out + struct.pack(">I", 0)


def stream(*entries, end=True):
    out = b""
    for e, body in entries:
        h = json.dumps(e).encode()
        out += struct.pack(">I", len(h)) + h
        if e["type"] == "file":
            out += body if isinstance(body, Raw) else frames(body)
    if end:
        out += struct.pack(">I", 0)
    return _Reader(FakeResp(out))


class Raw(bytes):
    """Content bytes put in the stream as they are (hand-made frames)."""


def f(path, body=b"x", mode=0o644):
    return ({"path": path, "type": "file", "size": len(body), "mtime_ns": 1_600_000_000_123_456_789, "mode": mode}, body)


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd-anchor", "a/../../escape", "a//b", "./x", ""])
def test_unsafe_paths_refused(tmp_path, path):
    to = tmp_path / "to"
    with pytest.raises(AnchorError):
        Restorer(str(to)).run(stream(f(path)))
    assert sorted(os.listdir(tmp_path)) == ["to"]
    assert not os.path.exists("/etc/passwd-anchor")


def test_symlink_cannot_carry_a_write_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = ({"path": "l", "type": "symlink", "size": 0, "mtime_ns": 0, "mode": 0o777, "target": str(outside)}, b"")
    with pytest.raises(AnchorError):
        Restorer(str(tmp_path / "to")).run(stream(link, f("l/evil")))
    assert os.listdir(outside) == []


def test_existing_symlink_in_target_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "victim"
    outside.write_bytes(b"keep")
    to = tmp_path / "to"
    to.mkdir()
    os.symlink(str(outside), str(to / "file"))
    Restorer(str(to), overwrite="always").run(stream(f("file", b"new")))
    assert outside.read_bytes() == b"keep"
    assert (to / "file").read_bytes() == b"new" and not os.path.islink(str(to / "file"))


def test_mode_and_mtime_exact(tmp_path):
    to = tmp_path / "to"
    counts = Restorer(str(to)).run(stream(
        ({"path": "d", "type": "dir", "size": 0, "mtime_ns": 1_500_000_000_000_000_001, "mode": 0o750}, b""),
        f("d/a", b"hello", 0o600)))
    st = os.stat(str(to / "d" / "a"))
    assert st.st_mtime_ns == 1_600_000_000_123_456_789 and st.st_mode & 0o7777 == 0o600
    assert (to / "d" / "a").read_bytes() == b"hello"
    dst = os.stat(str(to / "d"))
    assert dst.st_mtime_ns == 1_500_000_000_000_000_001 and dst.st_mode & 0o7777 == 0o750
    assert counts == {"files": 1, "dirs": 1, "symlinks": 0, "bytes": 5, "failed": [], "incomplete": None,
                      "skipped": [], "unchanged": 0}


def _three(to):
    """A target holding a.txt as the snapshot has it (same bytes, mtime, mode), b.txt changed,
    and a symlink; the snapshot has a.txt, b.txt, c.txt (new) and the link to another target."""
    to.mkdir()
    (to / "a.txt").write_bytes(b"same")
    os.chmod(str(to / "a.txt"), 0o644)
    os.utime(str(to / "a.txt"), ns=(1_600_000_000_123_456_789,) * 2)
    (to / "b.txt").write_bytes(b"mine, newer")
    os.symlink("elsewhere", str(to / "ln"))
    return stream(f("a.txt", b"same", 0o644), f("b.txt", b"theirs", 0o644), f("c.txt", b"new", 0o644),
                  ({"path": "ln", "type": "symlink", "size": 0, "mtime_ns": 1, "mode": 0o777,
                    "target": "snapshot-target"}, b""))


def test_overwrite_never_is_the_default(tmp_path):
    to = tmp_path / "to"
    snapshot = _three(to)
    counts = Restorer(str(to)).run(snapshot)
    assert (to / "b.txt").read_bytes() == b"mine, newer" and os.readlink(str(to / "ln")) == "elsewhere"
    assert (to / "c.txt").read_bytes() == b"new"
    assert counts["skipped"] == ["a.txt", "b.txt", "ln"] and counts["files"] == 1


def test_overwrite_if_changed_and_always(tmp_path):
    to = tmp_path / "to"
    snapshot = _three(to)
    counts = Restorer(str(to), overwrite="if-changed").run(snapshot)
    assert (to / "b.txt").read_bytes() == b"theirs" and os.readlink(str(to / "ln")) == "snapshot-target"
    assert counts["unchanged"] == 1 and counts["skipped"] == [] and counts["files"] == 2
    to2 = tmp_path / "to2"
    snapshot = _three(to2)
    counts = Restorer(str(to2), overwrite="always").run(snapshot)
    assert counts["files"] == 3 and counts["unchanged"] == 0
    assert (to2 / "b.txt").read_bytes() == b"theirs"
    with pytest.raises(AnchorError, match="overwrite"):
        Restorer(str(tmp_path / "x"), overwrite="sometimes")


def test_dry_run_writes_nothing(tmp_path):
    to = tmp_path / "to"
    before = _three(to)
    snap = {p.name: (p.is_symlink(), p.lstat().st_mtime_ns) for p in to.iterdir()}
    r = Restorer(str(to), overwrite="if-changed", dry_run=True)
    counts = r.run(before)
    assert {p.name: (p.is_symlink(), p.lstat().st_mtime_ns) for p in to.iterdir()} == snap
    assert r.plan == [("unchanged", "a.txt"), ("overwrite", "b.txt"), ("write", "c.txt"), ("overwrite", "ln")]
    assert counts["files"] == 2 and counts["symlinks"] == 1
    r = Restorer(str(tmp_path / "none"), dry_run=True)
    r.run(stream(f("a", b"x")))
    assert not (tmp_path / "none").exists() and r.plan == [("write", "a")]


def test_cut_stream_is_an_error(tmp_path):
    with pytest.raises(AnchorError, match="ended"):
        Restorer(str(tmp_path / "to")).run(stream(f("a", b"hello"), end=False))
    e, body = f("b", b"hello")
    h = json.dumps(e).encode()
    r = _Reader(FakeResp(struct.pack(">I", len(h)) + h + body[:2]))
    with pytest.raises(AnchorError, match="ended"):
        Restorer(str(tmp_path / "to2")).run(r)
