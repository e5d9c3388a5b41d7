"""Full flash: under a capacity budget, pass-through data is evicted first to make room for a
backup; a backup whose pinned data would not fit is refused with an error naming the
shortfall, nothing committed is lost and the rover keeps its state; after `anchorctl prune`
(or with a bigger --capacity) the same backup goes through."""
import hashlib
import io
import json
import os
import random
import re

import pytest

from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, run_rover, snapshot_of
from tests.support.services import Origin
from anchor_core import cbor, chunker
from anchor.storage.catalog import Catalog
from anchor.storage.index_sqlite import SqliteIndex
from anchor_core import messages as m

KIB = 1024
UNITS = {"B": 1, "KiB": KIB, "MiB": KIB * KIB}


def classes(data_dir):
    """{id: 1 if a snapshot keeps it (pinned), else 0 (pass-through)} over the stored chunks."""
    index = SqliteIndex(os.path.join(data_dir, "chunks", "index.sqlite"), readonly=True)
    catalog = Catalog(os.path.join(data_dir, "catalog.sqlite"), readonly=True)
    try:
        ids = list(index.ids())
        pinned = catalog.live_among(ids)
        return {c: int(c in pinned) for c in ids}
    finally:
        index.close()
        catalog.close()


def chunks_of(data):
    return [(off, ln, c) for off, ln, c in chunker.chunks_of(io.BytesIO(data), bytearray(65536))]


def record_bytes(*blobs):
    """What the blobs take in the store (incompressible data: stored raw, 49 bytes a record)."""
    return sum(len(b) + 49 * len(chunks_of(b)) for b in blobs)


def shortfall(text):
    mo = re.search(r"store full: this backup needs (about|at least) ([\d.]+) (B|KiB|MiB) more than "
                   r"the ([\d.]+ (?:KiB|MiB)) budget holds after evicting all pass-through data; "
                   r"prune snapshots \(anchorctl prune\) or raise --capacity", text)
    assert mo, text
    return float(mo.group(2)) * UNITS[mo.group(3)], mo.group(4)


def rover_state(state):
    out = {}
    for name in ("state.cbor", "tree"):
        with open(os.path.join(state, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def restore(anchor, tmp_path, snap, name):
    out = str(tmp_path / name)
    anchorctl(anchor.address, "restore", "r", str(snap), "--to", out)
    return out


def test_pass_through_goes_first_pinned_data_is_refused_and_prune_frees_room(tmp_path):
    capacity = 1 << 20                                          # --capacity 1M
    rnd = random.Random(11)
    origin = Origin()
    origin.files["/cache.bin"] = rnd.randbytes(700_000)
    anchor = AnchorProc(str(tmp_path / "anchor"), "--capacity", "1M").start()
    try:
        # 700 KB of pass-through data: a download through the relay of another rover
        run_rover("cpython", anchor.link, "g", str(tmp_path / "g"), "fetch", origin.url("/cache.bin"),
                  "--out", str(tmp_path / "cache.bin"))
        cache = set(c for _, _, c in chunks_of(origin.files["/cache.bin"]))
        assert all(classes(anchor.data_dir).get(c) == 0 for c in cache)

        root = tmp_path / "rover"
        root.mkdir()
        a, b, c = rnd.randbytes(400_000), rnd.randbytes(400_000), rnd.randbytes(400_000)
        (root / "a.bin").write_bytes(a)
        state = str(tmp_path / "state")
        run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        first = snapshot_of(str(root))
        # 700 + 400 KB do not fit 1 MiB: pass-through data made room, the backup is whole
        st = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)
        assert st["retention"]["evicted_chunks"] > 0, st["retention"]
        assert st["store"]["live_bytes"] <= capacity, st["store"]
        cls = classes(anchor.data_dir)
        assert all(cls.get(x) == 1 for _, _, x in chunks_of(a)), "the snapshot's content is pinned"
        assert len(cache - set(cls)) > 0, "pass-through data was evicted"

        os.unlink(str(root / "a.bin"))
        (root / "b.bin").write_bytes(b)
        run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        second = snapshot_of(str(root))
        st = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)
        assert st["store"]["live_bytes"] <= capacity, st["store"]

        # snapshots 1 and 2 pin a and b (800 KB); c does not fit beside them
        (root / "c.bin").write_bytes(c)
        before = rover_state(state)
        p = run_rover("cpython", anchor.link, "r", state, "backup", str(root), check=False)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "backup failed: anchor refused: store full" in p.stderr and "(error %d)" % m.E_FULL in p.stderr
        need, budget = shortfall(p.stderr)
        want = record_bytes(a, b, c) - capacity
        assert budget == "1 MiB"
        assert abs(need - want) <= 0.05 * want, (need, want, p.stderr)
        assert rover_state(state) == before, "the rover's state must stay as it was"
        snaps = json.loads(anchorctl(anchor.address, "snapshots", "r", "--json").stdout)
        assert [s["id"] for s in snaps] == [1, 2]
        assert_same_tree(first, restore(anchor, tmp_path, 1, "r1"))
        assert_same_tree(second, restore(anchor, tmp_path, 2, "r2"))
        st = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)
        assert st["store"]["live_bytes"] <= capacity, st["store"]

        # prune: a dry run changes nothing and says what a real one does
        dry = json.loads(anchorctl(anchor.address, "prune", "r", "--keep-last", "1", "--dry-run",
                                   "--json").stdout)
        assert dry["dry_run"] and [s["id"] for s in dry["forget"]] == [1]
        assert [(s["id"], s["reasons"]) for s in dry["keep"]] == [(2, ["last", "latest"])]
        assert dry["bytes_released"] == record_bytes(a)
        snaps = json.loads(anchorctl(anchor.address, "snapshots", "r", "--json").stdout)
        assert [s["id"] for s in snaps] == [1, 2]
        text = anchorctl(anchor.address, "prune", "r", "--keep-last", "1", "--dry-run").stdout
        assert re.search(r"^forget +1 ", text, re.M) and re.search(r"^keep +2 .*last, latest", text, re.M)
        assert "dry run: 1 snapshots would be forgotten, 1 kept" in text

        r = json.loads(anchorctl(anchor.address, "prune", "r", "--keep-last", "1", "--json").stdout)
        assert not r["dry_run"] and [s["id"] for s in r["forget"]] == [1]
        assert r["chunks_released"] == dry["chunks_released"] == len(set(chunks_of(a)))
        assert r["bytes_released"] == record_bytes(a)
        cls = classes(anchor.data_dir)
        assert all(cls.get(x) == 0 for _, _, x in chunks_of(a)), "a.bin is pass-through data now"

        # the same backup goes through now: a.bin's chunks are evicted to make room
        p = run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        assert "snapshot 3 committed" in p.stdout, p.stdout
        third = snapshot_of(str(root))
        assert_same_tree(third, restore(anchor, tmp_path, 3, "r3"))
        assert_same_tree(second, restore(anchor, tmp_path, 2, "r2b"))
        st = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)
        assert st["store"]["live_bytes"] <= capacity, st["store"]
        assert json.loads(anchorctl(anchor.address, "verify", "--json").stdout)["ok"]

        p = anchorctl(anchor.address, "prune", "r", check=False)
        assert p.returncode == 1 and "at least one of keep-last" in p.stderr
    finally:
        anchor.stop()
        origin.close()


def test_a_bigger_capacity_lets_the_refused_backup_through(tmp_path):
    rnd = random.Random(12)
    data = str(tmp_path / "anchor")
    root = tmp_path / "rover"
    root.mkdir()
    (root / "a.bin").write_bytes(rnd.randbytes(400_000))
    state = str(tmp_path / "state")
    anchor = AnchorProc(data, "--capacity", "600K").start()
    try:
        run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        first = snapshot_of(str(root))
        (root / "b.bin").write_bytes(rnd.randbytes(400_000))
        before = rover_state(state)
        p = run_rover("cpython", anchor.link, "r", state, "backup", str(root), check=False)
        assert p.returncode == 1 and "store full" in p.stderr, p.stderr
        assert shortfall(p.stderr)[1] == "600 KiB"
        assert rover_state(state) == before
    finally:
        anchor.stop()
    anchor = AnchorProc(data, "--capacity", "2M").start()
    try:
        p = run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        assert "snapshot 2 committed" in p.stdout, p.stdout
        assert_same_tree(first, restore(anchor, tmp_path, 1, "r1"))
        assert_same_tree(snapshot_of(str(root)), restore(anchor, tmp_path, 2, "r2"))
    finally:
        anchor.stop()


# --- the refusal in the middle of an upload, in-process ----------------------------------------

class Rover:
    """Just enough of a rover to drive a BackupHandler: one file, one batch."""

    def __init__(self, anchor, device, data):
        self.h = anchor.backup.session()
        self.device = device
        self.data = data
        self.chunks = chunks_of(data)
        oid = chunker.ObjectId()
        for _, _, c in self.chunks:
            oid.add(c)
        self.oid = oid.finish(len(data))
        self.rec = m.tree_record("f.bin", m.T_FILE, len(data), 10 ** 18, 0o644, self.oid)

    def ask(self, msg):
        out = self.h.handle(msg)
        return out[0] if out else None

    def upload_list(self):
        assert self.ask(m.hello(self.device, None, 0))[0] == m.WELCOME
        e = m.put_entry(*self.rec[:6])
        assert self.ask(m.entries(0, [e]))[2] == [0]
        ids = [c for _, _, c in self.chunks]
        need = self.ask(m.chunklist([m.list_part(0, 0, ids, True)]))
        assert need[0] == m.NEED and need[1][0][2] == list(range(len(ids)))

    def send_data(self):
        for off, ln, c in self.chunks:
            self.ask(m.data(c, m.ENC_RAW, self.data[off:off + ln]))

    def commit(self):
        root = hashlib.sha256(cbor.encode(self.rec)).digest()
        return self.ask(m.commit(root, 1, len(self.data)))


def test_a_chunk_that_does_not_fit_is_refused_at_the_next_request(tmp_path):
    """Two backups both pass the check before their upload; the second one's chunks run out of
    room: its remaining chunks are read and dropped, and the refusal answers its COMMIT. What
    it stored stays as pass-through data; the first backup commits; nothing goes over budget."""
    from anchor.app import App
    from anchor.storage import retention
    rnd = random.Random(13)
    capacity = 500_000
    a = App(str(tmp_path / "data"), capacity=capacity)
    try:
        one = Rover(a, "one", rnd.randbytes(300_000))
        two = Rover(a, "two", rnd.randbytes(300_000))
        one.upload_list()
        two.upload_list()
        one.send_data()
        two.send_data()
        assert two.h.refused is not None
        with pytest.raises(m.ProtocolError) as e:
            two.commit()
        assert e.value.code == m.E_FULL
        need, _ = shortfall(e.value.text)
        assert "needs at least" in e.value.text
        want = record_bytes(one.data, two.data) - capacity
        assert abs(need - want) <= 0.05 * want, (need, want)
        assert a.catalog.device_id("two", create=False) is not None
        assert a.catalog.latest(a.catalog.device_id("two")) is None, "nothing was committed for two"
        two.h.end()
        two.h.flush()
        kept = [c for _, _, c in two.chunks if a.store.has(c)]
        assert 0 < len(kept) < len(two.chunks)
        assert not a.catalog.live_among(kept), "what two stored is pass-through"
        assert a.store.stats()["live_bytes"] <= capacity

        assert one.commit() == m.committed(1)
        one.h.end()
        assert a.catalog.live_among([c for _, _, c in one.chunks]) == set(c for _, _, c in one.chunks)
        assert all(a.store.has(c) for _, _, c in one.chunks)
        assert a.store.stats()["live_bytes"] <= capacity
        # what is left of two is evicted first when a later backup needs room
        r = a.retention
        live, evictable = r.usage()
        assert evictable >= sum(49 + a.store.info(c)["stored_len"] for c in kept)
        r.make_room(capacity - live + 1000)          # room for a little more: some of it goes
        assert any(not a.store.has(c) for c in kept)
        live, evictable = r.usage()
        r.make_room(capacity - (live - evictable))   # room for all the budget allows: all of it
        assert not any(a.store.has(c) for c in kept)
        assert r.usage() == (record_bytes(one.data), 0)
        with pytest.raises(retention.StoreFull) as e:
            r.make_room(capacity)
        assert e.value.shortfall == record_bytes(one.data)
    finally:
        a.close()
