"""anchorctl's restore of stream version 2: a file the anchor marks FAILED, or whose chunk
arrives damaged, is left out and named; the entries after it are restored; nothing already in
the target is replaced by it and no temporary file is left."""
import hashlib
import json
import os
import struct

from tests.host.test_restore_safety import FakeResp, frames
from anchorctl.client import _Reader
from anchorctl.restore import Restorer

U32 = struct.Struct(">I")
FAILED = 0xFFFFFFFF


def hdr(path, size, kind="file", mode=0o644):
    h = json.dumps({"path": path, "type": kind, "size": size, "mtime_ns": 1_600_000_000_000_000_000,
                    "mode": mode}).encode()
    return U32.pack(len(h)) + h


def failed(why):
    b = json.dumps({"error": why}).encode()
    return U32.pack(FAILED) + U32.pack(len(b)) + b


def chunk(data, cid=None):
    return U32.pack(len(data)) + (cid or hashlib.sha256(data).digest()) + data


def run(to, data):
    return Restorer(str(to), overwrite="always").run(_Reader(FakeResp(data)))


def test_a_failed_file_is_named_and_the_rest_restored(tmp_path):
    to = tmp_path / "to"
    to.mkdir()
    (to / "b").write_bytes(b"good old copy")
    good = b"x" * 70000
    stream = (hdr("a", 5) + frames(b"hello")
              + hdr("b", 100000) + chunk(b"y" * 1000) + failed("chunk 12ab cannot be read: damaged")
              + hdr("c", len(good)) + frames(good)
              + U32.pack(0))
    counts = run(to, stream)
    assert counts["failed"] == [{"path": "b", "error": "the anchor cannot read it back: chunk 12ab cannot be "
                                                       "read: damaged"}]
    assert (to / "a").read_bytes() == b"hello" and (to / "c").read_bytes() == good
    assert (to / "b").read_bytes() == b"good old copy"
    assert sorted(os.listdir(to)) == ["a", "b", "c"]


def test_a_chunk_that_does_not_match_its_id_is_never_written(tmp_path):
    to = tmp_path / "to"
    stream = (hdr("a", 8) + chunk(b"abcd") + chunk(b"efgh", cid=hashlib.sha256(b"EFGH").digest()) + U32.pack(0)
              + hdr("z", 2) + frames(b"ok") + U32.pack(0))
    counts = run(to, stream)
    assert [f["path"] for f in counts["failed"]] == ["a"] and "arrived damaged" in counts["failed"][0]["error"]
    assert sorted(os.listdir(to)) == ["z"]


def test_short_content_is_not_a_file(tmp_path):
    to = tmp_path / "to"
    counts = run(to, hdr("a", 10) + chunk(b"abc") + U32.pack(0) + U32.pack(0))
    assert counts["failed"] == [{"path": "a", "error": "3 of its 10 bytes arrived"}]
    assert os.listdir(to) == []


def test_the_rest_unreadable_keeps_what_came(tmp_path):
    to = tmp_path / "to"
    counts = run(to, hdr("a", 2) + frames(b"hi") + failed("tree is damaged"))
    assert counts["incomplete"] == "tree is damaged" and (to / "a").read_bytes() == b"hi"


def test_a_folder_the_filesystem_refuses_is_named_and_the_rest_restored(tmp_path):
    to = tmp_path / "to"
    long = "d" * 300                                # over the 255-byte name limit
    counts = run(to, hdr(long, 0, kind="dir", mode=0o755) + hdr(long + "/f", 2) + frames(b"no")
                 + hdr("ok", 2) + frames(b"ok") + U32.pack(0))
    assert [f["path"] for f in counts["failed"]] == [long, long + "/f"], counts["failed"]
    assert (to / "ok").read_bytes() == b"ok"
