"""`anchorctl stats` shows a session while it runs: a backup over a slow link is one request,
and the per-device counters are written only when a request ends, so without the live list
an operator would see nothing of it until it is over."""
import json
import os
import subprocess
import time

from tests.support.harness import AnchorProc, anchorctl, rover_cmd
from tests.support.linkemu import CountingRelay
from anchorctl.client import Client

RATE = 256 * 1024           # bytes/s each way: ~6 s for the file below
SIZE = 1536 * 1024


def test_stats_shows_a_running_backup_growing_then_gone(tmp_path):
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    relay = CountingRelay("127.0.0.1", anchor.port, rate=RATE)
    rover = None
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "big.bin").write_bytes(os.urandom(SIZE))     # incompressible: every byte crosses
        c = Client(anchor.address)
        assert c.stats()["sessions"] == []
        rover = subprocess.Popen(rover_cmd("cpython", "tcp://127.0.0.1:%d" % relay.port, "phone",
                                           str(tmp_path / "state"), "backup", str(src)),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []                   # link_rx of the rover's live session, while the rover runs
        deadline = time.monotonic() + 120
        while rover.poll() is None and time.monotonic() < deadline:
            # wait for the next 64 KiB to cross the link (bounded), then look
            mark = relay.up
            relay.wait_for(lambda r: r.up >= mark + 65536 or rover.poll() is not None, 5)
            mine = [x for x in c.stats()["sessions"] if x["device"] == "phone"]
            if mine and rover.poll() is None:
                assert len(mine) == 1, mine
                assert mine[0]["link_rx"] <= relay.up and mine[0]["seconds"] >= 0
                seen.append(mine[0]["link_rx"])
                if len(seen) == 3:
                    # the text form names it too
                    out = anchorctl(anchor.address, "stats").stdout
                    assert "live sessions: 1" in out and "phone:" in out, out
        out, err = rover.communicate(timeout=120)
        assert rover.returncode == 0, err
        # bytes grew while it ran, and were seen several times before the end
        assert len(seen) >= 3, seen
        assert seen == sorted(seen) and seen[-1] > seen[0] + 4 * 65536, seen
        assert seen[0] < SIZE // 2, seen    # seen early, not only at the end
        # once the rover has hung up, its session leaves the list (bounded wait for the
        # anchor to see the close) and its bytes are in the device's counters
        end = time.monotonic() + 30
        for _ in range(100000):
            if not c.stats()["sessions"] or time.monotonic() > end:
                break
        s = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)
        assert s["sessions"] == [], s["sessions"]
        assert s["devices"]["phone"]["link_rx"] >= SIZE
    finally:
        if rover is not None and rover.poll() is None:
            rover.kill()
            rover.wait()
        relay.close()
        anchor.stop()
