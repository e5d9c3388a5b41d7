"""The fleet store away, an anchor killed mid-offload: backups and restores from flash go on,
offload waits and resumes, and nothing in the store ever names what is not there."""
import json
import os
import signal

from anchor.fleet import index as fi, packs
from anchor.fleet.remote import pack_key
from tests.fleet.anchors import Gate, offload, pair, status, wait
from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, make_tree, run_rover, snapshot_of


def test_store_away_backups_and_restores_go_on_and_offload_resumes(fleet, s3, tmp_path):
    gate = Gate(s3.s3_port)
    a = AnchorProc(str(tmp_path / "a"), *fleet.args(gate.endpoint), secure=True).start()
    try:
        state = str(tmp_path / "state")
        pair(a, "r", state)
        src = str(tmp_path / "src")
        make_tree(src, 20, 600_000, seed=3)
        run_rover("cpython", a.link, "r", state, "backup", src)
        anchorctl(a.address, "fleet", "offload")
        st = wait(lambda: (lambda s: s if s["last_error"] and "unreachable" in s["state"] else None)(status(a)),
                  60, "an offload error")
        assert st["pending"]["snapshots"] == 1, st
        assert gate.refused > 0
        out = str(tmp_path / "out")
        anchorctl(a.address, "restore", "r", "--to", out)          # from flash, store or not
        assert_same_tree(snapshot_of(src), out)
        # An operator pairing and unpairing meanwhile is told what did not reach the fleet.
        p = anchorctl(a.address, "pair", "r2")
        assert "fleet: not published" in p.stderr, p.stderr
        p = anchorctl(a.address, "unpair", "r2", check=False)
        assert p.returncode == 1 and "not revoked" in p.stdout and "still serve r2" in p.stderr, (p.stdout, p.stderr)
        gate.open = True
        st = offload(a)
        assert st["last_error"] is None and st["offloaded"]["chunks"] >= st["local"]["chunks"] > 20, st
    finally:
        a.stop()
        gate.close()


def entries_and_packs(fleet):
    objects = fleet.objects()
    ix = fi.FleetIndex(objects, fleet.keys.index, "reader")
    entries = ix.load()
    names = set(k.rsplit("/", 1)[1] for k, _ in objects.list("packs/"))
    return objects, entries, names


def test_killed_mid_offload_names_no_incomplete_pack_and_completes_after(fleet, tmp_path):
    # Small packs, paced: the offload of this tree takes seconds, and the kill lands inside it.
    data = str(tmp_path / "a")
    args = fleet.args() + ["--fleet-pack-bytes", "65536", "--fleet-rate", "400K"]
    a = AnchorProc(data, *args, secure=True).start()
    state = str(tmp_path / "state")
    pair(a, "r", state)
    src = str(tmp_path / "src")
    make_tree(src, 40, 2_000_000, seed=4)
    run_rover("cpython", a.link, "r", state, "backup", src)
    objects = fleet.objects()
    anchorctl(a.address, "fleet", "offload")
    # Killed once the first index object is in: packs after it are in flight (one PUT, then
    # its pacing, its read-back and its index object).
    wait(lambda: objects.list("idx/"), 60, "a first index object")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=30)
    a.log.close()

    objects, entries, names = entries_and_packs(fleet)
    assert not [k for k, _ in objects.list("dev/") if "/snap/" in k or "/tree/" in k], \
        "a snapshot record before its chunks were all in"
    assert entries and len(names) < 20, "the test did not cut the offload (%d packs)" % len(names)
    assert set(e[0] for e in entries.values()) <= names          # every entry names a pack there

    a = AnchorProc(data, *fleet.args(), secure=True).start()
    try:
        st = offload(a)
        assert st["pending"]["snapshots"] == 0, st
        objects, entries, names = entries_and_packs(fleet)
        assert set(e[0] for e in entries.values()) <= names
        # Every chunk of the snapshot reads back from the store, unsealed and checked.
        with open(os.path.join(state, "pairing.key"), "rb") as f:
            dkey = fleet.keys.device_key("r", f.read())
        did = fleet.keys.device_id("r")
        snap = json.loads(anchorctl(a.address, "snapshots", "r", "--json").stdout)[-1]
        assert snap["id"] == 1
        by_kid = dict((k, v) for (d, k), v in entries.items() if d == did)
        import sqlite3
        db = sqlite3.connect(os.path.join(data, "catalog.sqlite"))
        ids = b"".join(r[0] for r in db.execute("SELECT chunks FROM objects"))
        db.close()
        assert len(ids) // 32 > 100
        for i in range(0, len(ids), 32):
            c = ids[i:i + 32]
            p, off, ln = by_kid[packs.keyed_id(fleet.keys.content, c)][:3]
            assert packs.read_chunk(objects, pack_key(p), p, off, ln, dkey, fleet.keys.content, c)
    finally:
        a.stop()


def test_a_snapshot_damaged_on_flash_does_not_hold_back_the_others(fleet, tmp_path):
    data = str(tmp_path / "a")
    a = AnchorProc(data, *fleet.args(), secure=True).start()
    try:
        for name in ("x", "y"):
            state = str(tmp_path / ("state-" + name))
            pair(a, name, state)
            src = str(tmp_path / ("src-" + name))
            make_tree(src, 5, 100_000, seed=ord(name))
            run_rover("cpython", a.link, name, state, "backup", src)
        root = json.loads(anchorctl(a.address, "snapshots", "x", "--json").stdout)[0]["root"]
        os.unlink(os.path.join(data, "trees", root + ".tree"))       # the SD card lost a file
        anchorctl(a.address, "fleet", "offload")
        st = wait(lambda: (lambda s: s if s["last_pass"] and s["state"] == "idle" else None)(status(a)),
                  60, "an offload pass")
        assert list(st["skipped"]) == ["x/1"] and root in st["skipped"]["x/1"], st["skipped"]
        assert st["pending"]["devices"] == ["x"], st["pending"]
        objects = fleet.objects()
        assert [k for k, _ in objects.list("dev/%s/snap/" % fleet.keys.device_id("y"))]
        assert not [k for k, _ in objects.list("dev/%s/snap/" % fleet.keys.device_id("x"))]
    finally:
        a.stop()
