"""Capture while a body streams (services/capture.py), in-process on a real store and catalog:
the chunks and object are those of cutting the whole body at once, whatever pieces it came in;
nothing is registered before the body is whole; what a body holds goes back when it ends."""
import os
import random

import pytest

from anchor.app import App
from anchor.services import capture as capture_mod
from anchor.services.capture import _cutter
from anchor_core import chunker
from anchor.services.spool import SpoolRoom

PROV = {"direction": "down", "protocol": "http", "method": "GET", "target": "http://origin/x", "status": 200}


def whole_cut(body):
    """Chunk ids and object id of the body cut in one piece (what capture did before it streamed)."""
    import hashlib
    ids = [hashlib.sha256(c.data).digest() for c in _cutter().cut_buf(body)] if body else []
    oid = chunker.ObjectId()
    for cid in ids:
        oid.add(cid)
    return ids, oid.finish(len(body))


def body_of(rnd, size):
    # Half text-like (cut points where the data says), half random (some cuts at MAX_SIZE).
    half = size // 2
    words = [b"anchor", b"rover", b"chunk", b"relay", b"\n", b"  ", b"2026-12-03", b"ok"]
    text = b" ".join(rnd.choice(words) for _ in range(half // 5))[:half]
    return text + rnd.randbytes(size - len(text))


def pieces_of(rnd, body):
    i = 0
    while i < len(body):
        n = rnd.choice((1, 7, 4096, 16384, 65536, (1 << 20) - 3, 3 << 20))
        yield body[i:i + n]
        i += n


@pytest.mark.parametrize("size", [0, 1, 2047, 40_000, (1 << 20) + 1, 5 * (1 << 20) + 12_345])
def test_a_streamed_body_is_cut_as_the_whole_body_would_be(app, size):
    rnd = random.Random(size)
    body = body_of(rnd, size)
    dev = app.catalog.device_id("cs")
    keep = app.capture.stream(dev)
    for piece in pieces_of(rnd, body):
        keep.write(piece if rnd.random() < 0.5 else bytearray(piece))
    oid, n = keep.finish(PROV)
    ids, want = whole_cut(body)
    assert (oid, n) == (want, size)
    got_size, got_ids = app.catalog.object_chunks(oid)
    assert got_size == size and got_ids == ids
    assert b"".join(app.store.get(c) for c in got_ids) == body
    assert app.catalog.captures(dev)[-1]["object"] == oid.hex()
    assert app.spool_room.in_use == 0 and app.retention.in_use == []


def test_nothing_is_registered_before_the_body_is_whole_and_a_broken_one_leaves_nothing_held(app):
    rnd = random.Random(2)
    body = rnd.randbytes(3 << 20)
    dev = app.catalog.device_id("cs")
    keep = app.capture.stream(dev)
    keep.write(body[:2 << 20])
    stored = [c for c in whole_cut(body)[0] if app.store.has(c)]
    assert stored, "chunks are stored while the body streams"
    assert app.catalog.captures(dev) == []
    assert app.spool_room.in_use == 2 << 20 and len(app.retention.in_use) == 1
    keep.discard()                           # the link broke
    assert app.catalog.captures(dev) == []
    assert app.spool_room.in_use == 0 and app.retention.in_use == []
    keep.discard()                           # twice is harmless
    assert app.spool_room.in_use == 0


def test_chunks_of_a_body_on_its_way_are_not_evicted(tmp_path):
    a = App(str(tmp_path / "data"), capacity=600_000)
    try:
        rnd = random.Random(3)
        a.store.ingest([rnd.randbytes(20_000) for _ in range(20)])    # older pass-through data
        a.store.flush()
        dev = a.catalog.device_id("cs")
        body = rnd.randbytes(2 << 20)
        keep = a.capture.stream(dev)
        keep.write(body[:(1 << 20) + 5])
        held = set(c for c in whole_cut(body)[0] if a.store.has(c))
        assert held
        # Another session stores: eviction runs meanwhile, and the older data is not enough.
        a.store.flush()
        done = a.retention.enforce()
        assert done and done["evicted_chunks"] >= 20
        assert all(a.store.has(c) for c in held)
        keep.write(body[(1 << 20) + 5:])
        oid, n = keep.finish(PROV)
        assert a.catalog.object_chunks(oid)[0] == n == len(body)
    finally:
        a.close()


def test_a_body_past_the_room_passes_without_being_kept(app, monkeypatch):
    app.capture.room = SpoolRoom(app.spool_dir, budget=100_000, free_floor=0)
    dev = app.catalog.device_id("cs")
    other = app.capture.stream(dev)
    other.write(b"o" * 60_000)
    keep = app.capture.stream(dev)
    keep.write(os.urandom(30_000))
    keep.write(os.urandom(30_000))           # 120 kB on their way at once: past the budget
    assert other.kept and not keep.kept
    keep.write(b"more")                      # takes nothing more
    assert keep.finish(PROV) is None
    assert app.catalog.captures(dev) == []
    assert app.capture.room.in_use == 60_000
    assert other.finish(PROV) is not None
    assert app.capture.room.in_use == 0


def test_an_uncounted_stream_leaves_the_room_to_its_spool(app):
    dev = app.catalog.device_id("cs")
    keep = app.capture.stream(dev, counted=False)
    keep.write(os.urandom(50_000))
    assert app.spool_room.in_use == 0 and keep.size == 50_000
    oid, n = keep.finish(PROV)
    assert n == 50_000


def test_cuts_happen_as_the_body_streams_not_at_the_end(app, monkeypatch):
    cuts = []
    real = capture_mod.CaptureStream._cut

    def spy(self, last):
        cuts.append((self.size, last))
        return real(self, last)
    monkeypatch.setattr(capture_mod.CaptureStream, "_cut", spy)
    dev = app.catalog.device_id("cs")
    keep = app.capture.stream(dev)
    for _ in range(40):
        keep.write(os.urandom(100_000))
    keep.finish(PROV)
    assert [c for c in cuts if not c[1]] == [(k * 1_100_000, False) for k in range(1, 4)]
    assert cuts[-1] == (4_000_000, True)
