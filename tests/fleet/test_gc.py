"""Garbage collection of packs (docs/fleet.md, section 2) against a real S3 store: an orphan is
swept only once it is a day old by the store's clock, a named pack never is, one anchor sweeps
a day, and an index that cannot be read whole stops the sweep before anything is deleted.
Time is a clock the test sets, never a wait."""
import hashlib
import os
import time

import pytest

from anchor.fleet import gc, index as fi, packs
from anchor.fleet.remote import pack_key

SEAL = bytes(range(32))
CONTENT = bytes(range(32, 64))
KEY = bytes(range(64, 96))
DAY = 24 * 3600


class Clock:
    """The index's own clock (epochs, compaction), moved by the test."""
    t = 1_800_000_000.0

    def __call__(self):
        return self.t


def put_pack(objects, n=5):
    """A pack of n chunks in the store (what step 1 of an offload leaves): its name, its
    entries [(keyed id, offset, length, chunk)]."""
    w = packs.PackWriter(SEAL, CONTENT)
    out = []
    for _ in range(n):
        raw = os.urandom(3000)
        out.append(w.add(raw) + (raw,))
    assert objects.put_once(pack_key(w.name), w.data())
    return w.name, out


def name_pack(ix, name, chunks):
    """Step 2: an index object naming the pack's chunks."""
    return ix.write([(b"dev-1", kid, name, off, ln, len(raw)) for kid, off, ln, raw in chunks])


def reads_back(objects, name, chunks):
    return all(packs.read_chunk(objects, pack_key(name), name, off, ln, SEAL, CONTENT,
                                hashlib.sha256(raw).digest()) == raw for _, off, ln, raw in chunks)


def there(objects, name):
    return objects.size(pack_key(name)) is not None


def test_the_store_lists_when_each_object_was_written(objects):
    before = time.time()
    name, _ = put_pack(objects)
    [(key, size, modified)] = objects.list_meta("packs/")
    assert key == pack_key(name) and size == objects.size(key)
    assert before - 2 <= modified <= time.time() + 1
    assert objects.list("packs/") == [(key, size)]           # list() keeps its shape


def test_an_orphan_pack_is_swept_only_once_a_day_old(objects):
    ix = fi.FleetIndex(objects, KEY, "anchor-a")
    named, named_chunks = put_pack(objects)
    name_pack(ix, named, named_chunks)
    # An anchor killed between its pack PUT and its index PUT: a pack no index names.
    orphan, _ = put_pack(objects)
    t0 = time.time()

    got = gc.sweep(objects, ix, now=lambda: t0)
    assert got["ran"] and (got["packs"], got["named"], got["young"], got["deleted"]) == (2, 1, 1, 0), got
    assert there(objects, orphan)                 # its writer may still be about to name it

    later = t0 + gc.MIN_AGE + 60
    got = gc.sweep(objects, fi.FleetIndex(objects, KEY, "anchor-b"), now=lambda: later)
    assert got["ran"] and got["day"] == gc.day_key(later)[3:] and got["deleted"] == 1, got
    assert not there(objects, orphan)
    assert there(objects, named) and reads_back(objects, named, named_chunks)


def test_a_named_pack_is_never_removed_even_once_its_entries_are_compacted(objects):
    clock = Clock()
    ix = fi.FleetIndex(objects, KEY, "anchor-a", clock)
    name, chunks = put_pack(objects)
    name_pack(ix, name, chunks)
    # Epochs move on and compaction merges, then deletes, the index object that named it.
    for _ in range(3):
        clock.t += fi.MAX_AGE
        ix.maybe_advance()
    clock.t += fi.WRITE_WINDOW
    assert ix.compact() == 1
    clock.t += 2 * fi.WRITE_WINDOW
    ix.compact()
    assert [k for k, _ in objects.list("idx/0/")] == [], "the source was not collected"

    for days in (2, 30, 400):
        got = gc.sweep(objects, ix, now=lambda: time.time() + days * DAY)
        assert got["ran"] and (got["named"], got["deleted"]) == (1, 0), got
    assert reads_back(objects, name, chunks)


def test_a_second_anchor_the_same_day_does_nothing(objects):
    orphan, _ = put_pack(objects)
    t0 = time.time()
    assert gc.sweep(objects, fi.FleetIndex(objects, KEY, "anchor-a"), now=lambda: t0)["ran"]
    # Anchor b would sweep anything unnamed (min_age 0), but anchor a has the day.
    got = gc.sweep(objects, fi.FleetIndex(objects, KEY, "anchor-b"), now=lambda: t0, min_age=0)
    assert not got["ran"] and got["deleted"] == 0, got
    assert there(objects, orphan)
    assert b'"anchor-a"' in objects.get(gc.day_key(t0))
    # the next day, b may
    got = gc.sweep(objects, fi.FleetIndex(objects, KEY, "anchor-b"), now=lambda: t0 + DAY, min_age=0)
    assert got["ran"] and got["deleted"] == 1 and not there(objects, orphan), got


def test_a_damaged_index_stops_the_sweep_and_nothing_is_deleted(objects):
    ix = fi.FleetIndex(objects, KEY, "anchor-a")
    named, named_chunks = put_pack(objects)
    name_pack(ix, named, named_chunks)
    orphan, _ = put_pack(objects)
    # An index object the store damaged: perhaps the one that names the orphan.
    other, other_chunks = put_pack(objects)
    key = name_pack(ix, other, other_chunks)
    raw = bytearray(objects.get(key))
    raw[-5] ^= 1
    objects.delete(key)
    assert objects.put_once(key, bytes(raw))

    later = time.time() + gc.MIN_AGE + 60
    with pytest.raises(packs.DamagedObject, match="%s does not unseal" % key):
        gc.sweep(objects, ix, now=lambda: later)
    assert all(there(objects, n) for n in (named, orphan, other))
    assert reads_back(objects, named, named_chunks)

    # Once the damaged object is dealt with (here: gone), the next day's sweep finds the
    # orphan, and the packs the index still names stay.
    objects.delete(key)
    got = gc.sweep(objects, ix, now=lambda: later + DAY)
    assert got["ran"] and (got["named"], got["deleted"]) == (1, 2), got
    assert there(objects, named) and not there(objects, orphan) and not there(objects, other)


def test_objects_under_packs_that_are_not_packs_are_left_alone(objects):
    assert objects.put_once("packs/zz/readme.txt", b"not a pack")
    assert objects.put_once("packs/ab/" + "cd" * 16, b"a pack name under the wrong prefix")
    got = gc.sweep(objects, fi.FleetIndex(objects, KEY, "anchor-a"), now=lambda: time.time() + 30 * DAY)
    assert got["ran"] and (got["packs"], got["foreign"], got["deleted"]) == (2, 2, 0), got
    assert len(objects.list("packs/")) == 2
