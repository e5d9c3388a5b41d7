"""Two anchors, one bucket: a rover paired on anchor A backs up to A, A offloads, and the same
rover, never paired with B, backs up to B: B knows it from the store, answers HAVE for what A
offloaded, and restores it (to anchorctl and over the rover's link) from the store, bit-exact,
without its flash ever holding those chunks. Radio bytes are counted at a relay socket."""
import json
import os
import shutil

from tests.fleet.anchors import anchors, offload, rover_backed_up, status, uploaded, wait
from tests.support.harness import anchorctl, assert_same_tree, run_rover, snapshot_of
from tests.support.linkemu import CountingRelay


def refused(p):
    # what an unpaired rover is told: the anchor cannot prove it holds the pairing secret
    return p.returncode != 0 and "could not prove it holds this rover's pairing secret" in p.stderr


def counted_backup(anchor, state, src):
    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        p = run_rover("cpython", "tcp://127.0.0.1:%d" % relay.port, "r", state, "backup", src)
        return p.stdout, relay.up + relay.down
    finally:
        relay.close()


def test_a_rover_paired_on_a_backs_up_to_b_with_metadata_only(fleet, tmp_path):
    with anchors(fleet, tmp_path, "ab") as (a, b):
        state, src, out = rover_backed_up(a, tmp_path, 40, 3_000_000, 7)
        first = uploaded(out)
        st = offload(a)
        assert st["offloaded"]["chunks"] == st["local"]["chunks"] == first[0], (st, first)

        # The rover's day: a folder renamed, a file copied, a file grown at its end.
        names = sorted(os.listdir(src))
        dirs = [n for n in names if os.path.isdir(os.path.join(src, n))]
        files = [n for n in names if os.path.isfile(os.path.join(src, n))]
        os.rename(os.path.join(src, dirs[0]), os.path.join(src, dirs[0] + "-renamed"))
        shutil.copyfile(os.path.join(src, files[0]), os.path.join(src, "copy-of-" + files[0]))
        with open(os.path.join(src, files[1]), "ab") as f:
            f.write(b"one more line\n")

        # What that backup costs at an anchor that holds everything (A, from a copy of the
        # rover's state), then the same backup at B, which holds nothing on flash.
        ref_state = str(tmp_path / "ref-state")
        shutil.copytree(state, ref_state)
        out_a, radio_a = counted_backup(a, ref_state, src)
        out_b, radio_b = counted_backup(b, state, src)
        print(json.dumps({"radio_bytes_at_a": radio_a, "radio_bytes_at_b": radio_b,
                          "first_backup_chunks": first[0], "first_backup_bytes": first[1]}))
        assert uploaded(out_b) == uploaded(out_a), (out_a, out_b)
        assert uploaded(out_b)[0] <= 2, out_b                       # the grown file's last chunk(s)
        assert radio_b <= radio_a * 1.05, (radio_a, radio_b)

        sb = status(b)
        assert sb["imported_snapshots"] == 1, sb
        assert sb["local"]["chunks"] == uploaded(out_b)[0], sb      # B's flash: only what was new

        out = str(tmp_path / "restored")
        anchorctl(b.address, "restore", "r", "--to", out)
        assert_same_tree(snapshot_of(src), out)
        over_link = str(tmp_path / "over-link")
        run_rover("cpython", b.link, "r", state, "restore", "--to", over_link)
        assert_same_tree(snapshot_of(src), over_link)
        assert status(b)["read_from_store"] >= first[0]
        assert status(b)["local"]["chunks"] == uploaded(out_b)[0]   # restores did not fill flash

        # An anchor the rover never reached restores it too, once its operator takes it over.
        offload(b)
        with anchors(fleet, tmp_path, "c") as (c,):
            p = anchorctl(c.address, "fleet", "take-over", "nobody", check=False)
            assert p.returncode == 1 and "no live pairing" in p.stderr, p.stderr
            r = json.loads(anchorctl(c.address, "fleet", "take-over", "r", "--json").stdout)
            assert r["snapshots"] == [1, 2], r
            out_c = str(tmp_path / "restored-at-c")
            anchorctl(c.address, "restore", "r", "--to", out_c)
            assert_same_tree(snapshot_of(src), out_c)
            assert status(c)["local"]["chunks"] == 0


def test_two_anchors_offload_the_same_chunks_at_once_and_a_third_restores(fleet, tmp_path):
    with anchors(fleet, tmp_path, "abc") as (a, b, c):
        state, src, _ = rover_backed_up(a, tmp_path, 30, 2_000_000, 8)
        # Before A offloads, the rover reaches B: B knows it from the store but holds none of
        # its data, so the rover uploads it all again and B commits the same tree.
        p = run_rover("cpython", b.link, "r", state, "backup", src)
        assert uploaded(p.stdout)[0] > 100, p.stdout
        # Both offload the same chunks at once.
        anchorctl(a.address, "fleet", "offload")
        sa, sb = offload(b), offload(a)
        assert sa["last_error"] is None and sb["last_error"] is None, (sa, sb)
        assert sa["totals"]["packs"] >= 1 and sb["totals"]["packs"] >= 1      # two copies, both fine
        out_c, _ = counted_backup(c, state, src)
        assert uploaded(out_c) == (0, 0), out_c
        assert status(c)["local"]["chunks"] == 0
        out = str(tmp_path / "restored")
        anchorctl(c.address, "restore", "r", "--to", out)
        assert_same_tree(snapshot_of(src), out)


def test_a_damaged_pack_is_offloaded_again_by_the_anchor_that_still_holds_it(fleet, tmp_path):
    import obstore
    with anchors(fleet, tmp_path, "ab") as (a, b):
        state, src, _ = rover_backed_up(a, tmp_path, 30, 1_500_000, 9)
        offload(a)
        run_rover("cpython", b.link, "r", state, "backup", src)     # B takes the snapshots over
        # The store changes a pack behind the anchors' backs (same length, other bytes).
        objects = fleet.objects()
        (key, size), = [o for o in objects.list("packs/")]
        data = bytearray(objects.get(key))
        for k in range(1000, size - 1000, 50_000):
            data[k] ^= 0xFF
        obstore.put(objects.store, objects.prefix + key, bytes(data))
        out = str(tmp_path / "restored")
        p = anchorctl(b.address, "restore", "r", "--to", out, check=False)
        assert p.returncode == 3 and "damaged" in p.stderr, (p.returncode, p.stderr)
        assert status(b)["damaged_reads"] > 0
        assert objects.list("bad/"), "B did not report the damaged pack"
        # A still holds those chunks on flash: its next pass offloads them again.
        offload(a)
        out2 = str(tmp_path / "restored2")
        anchorctl(b.address, "restore", "r", "--to", out2)
        assert_same_tree(snapshot_of(src), out2)


def test_unpair_on_any_anchor_revokes_the_rover_on_every_anchor(fleet, tmp_path):
    with anchors(fleet, tmp_path, "ab", "--fleet-pairing-poll", "0.5") as (a, b):
        state, src, _ = rover_backed_up(a, tmp_path, 5, 50_000, 2)

        def backup(anchor):
            return run_rover("cpython", anchor.link, "r", state, "backup", src, check=False)
        run_rover("cpython", b.link, "r", state, "backup", src)        # B learns the pairing
        r = json.loads(anchorctl(b.address, "unpair", "r", "--json").stdout)
        assert r["unpaired"] and r["fleet"].startswith("revoked"), r
        p = backup(b)
        assert refused(p), p.stdout + p.stderr
        # A paired the rover itself; the revocation reaches it by its poll (0.5 s here).
        wait(lambda: refused(backup(a)), 30, "A refusing the revoked rover")
        # Paired again on A: every anchor serves it again, B without being told (once the
        # 10 s that B does not ask the store again about a name it just found nothing for).
        from tests.fleet.anchors import pair
        pair(a, "r", state)
        wait(lambda: backup(b).returncode == 0, 30, "B serving the rover paired again")


def test_another_rover_at_b_gets_a_s_data_only_on_proof(fleet, tmp_path):
    # Scope at B is the scope at A: a rover that never uploaded r's file is challenged for it
    # (proved from the bytes, which B reads from the store), never told "have" on the hash.
    with anchors(fleet, tmp_path, "ab") as (a, b):
        state, src, out = rover_backed_up(a, tmp_path, 10, 400_000, 11)
        offload(a)
        run_rover("cpython", b.link, "r", state, "backup", src)     # B takes r over
        from tests.fleet.anchors import pair
        other_state = str(tmp_path / "state-s")
        pair(b, "s", other_state)
        other = tmp_path / "src-s"
        other.mkdir()
        big = max((os.path.join(src, n) for n in os.listdir(src) if os.path.isfile(os.path.join(src, n))),
                  key=os.path.getsize)
        shutil.copyfile(big, str(other / "same.bin"))
        p = run_rover("cpython", b.link, "s", other_state, "backup", str(other))
        assert uploaded(p.stdout)[0] == 0 and "chunks another rover" in p.stdout, p.stdout
        restored = str(tmp_path / "restored-s")
        anchorctl(b.address, "restore", "s", "--to", restored)
        with open(big, "rb") as f, open(os.path.join(restored, "same.bin"), "rb") as g:
            assert f.read() == g.read()
        assert status(b)["local"]["chunks"] == 0
