"""The fleet index on a real S3 store: anchors write, advance epochs and compact at once with
no lock, and no entry is ever lost; time is a clock the test moves, never a wait."""
import os
import threading

import pytest

from anchor.fleet import index as fi
from anchor.fleet.packs import DamagedObject

KEY = bytes(range(64, 96))


class Clock:
    def __init__(self):
        self.t = 1_800_000_000.0

    def __call__(self):
        return self.t


def entries(device, n, tag):
    return [(device, os.urandom(32), tag, i * 100, 100) for i in range(n)]


def test_anchors_writing_advancing_and_compacting_lose_nothing(objects):
    clock = Clock()
    a = fi.FleetIndex(objects, KEY, "anchor-a", clock)
    b = fi.FleetIndex(objects, KEY, "anchor-b", clock)
    written = {}
    compactions = []
    for rnd in range(9):
        for ix, dev in ((a, b"dev-1"), (b, b"dev-2")):
            e = entries(dev, 5, "p%d" % rnd)
            ix.write(e)
            written.update(((d, k), (p, o, ln)) for d, k, p, o, ln in e)
        # a slow writer: B read the epoch, A advanced it, B writes into the old one, in time
        read_by_b = b.current()
        clock.t += fi.MAX_AGE
        a.maybe_advance()
        clock.t += fi.WRITE_WINDOW / 2
        late = entries(b"dev-2", 3, "late%d" % rnd)
        b.write(late, epoch=read_by_b)
        written.update(((d, k), (p, o, ln)) for d, k, p, o, ln in late)
        clock.t += fi.WRITE_WINDOW
        compactions.append(max(a.compact(), b.compact()))
        for reader in (a, b):
            assert reader.load() == written, rnd
    assert max(compactions) >= 5 and a.current() == 9
    assert a.load(b"dev-1") == dict((k, v) for k, v in written.items() if k[0] == b"dev-1")
    # what compaction merged is gone from the store; the entries are not
    left = [k for k, _ in objects.list("idx/")]
    assert left and all(int(k.split("/")[1]) > compactions[-3] for k in left), (compactions, left)
    assert len(objects.list("compacted/")) <= 2


def test_two_compactions_at_once_make_one_object(objects):
    clock = Clock()
    a = fi.FleetIndex(objects, KEY, "a", clock)
    b = fi.FleetIndex(objects, KEY, "b", clock)
    for _ in range(3):
        a.write(entries(b"d", 4, "p"))
        clock.t += fi.MAX_AGE
        a.maybe_advance()
    clock.t += fi.WRITE_WINDOW
    got = []
    threads = [threading.Thread(target=lambda ix=ix: got.append(ix.compact())) for ix in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # whichever got there first, or both if they raced: one object, all entries
    assert 1 in got and set(got) <= {1, -1}, got
    assert [k for k, _ in objects.list("compacted/")] == ["compacted/1"]
    assert len(a.load()) == 12 and a.load() == b.load()


def test_a_compaction_waits_until_no_writer_can_add_to_what_it_merges(objects):
    clock = Clock()
    a = fi.FleetIndex(objects, KEY, "a", clock)
    for _ in range(3):
        a.write(entries(b"d", 2, "p"))
        clock.t += fi.MAX_AGE
        a.maybe_advance()
    assert a.compact() == -1                     # epoch 2 began just now: not settled
    clock.t += fi.WRITE_WINDOW
    assert a.compact() == 1


def test_a_damaged_or_foreign_index_object_is_named(objects):
    a = fi.FleetIndex(objects, KEY, "a", Clock())
    key = a.write(entries(b"d", 3, "p"))
    other = fi.FleetIndex(objects, bytes(32), "x", Clock())
    with pytest.raises(DamagedObject, match="%s does not unseal: damaged, or another fleet's" % key):
        other.load()
    raw = bytearray(objects.get(key))
    raw[-5] ^= 1
    objects.put_once(key.replace("idx/0/", "idx/0/z"), bytes(raw))
    with pytest.raises(DamagedObject, match="does not unseal"):
        a.load()


def test_a_reader_of_one_device_opens_only_its_objects(objects):
    clock = Clock()
    ix = fi.FleetIndex(objects, KEY, "anchor-a", clock)
    ix.write([("d1", os.urandom(32), "p1", 0, 100, 90)])
    ix.write([("d2", os.urandom(32), "p2", 0, 100, 90)])
    ix.write([("d1", os.urandom(32), "p3", 0, 100, 90), ("d2", os.urandom(32), "p3", 100, 100, 90)])
    everything = ix.load()
    opened = []
    real = ix._open

    def counting(key):
        opened.append(key)
        return real(key)
    ix._open = counting
    got = ix.load(device="d1")
    assert got == dict((k, v) for k, v in everything.items() if k[0] == "d1") and len(got) == 2
    # d1's own object and the one of both devices; d2's own object was never read
    assert len(opened) == 2 and not any("/dd2." in k for k in opened), opened
