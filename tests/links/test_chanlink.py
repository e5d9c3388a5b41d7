"""The channel drivers end to end: a real backup from the rover's code to an in-process
anchor over an in-memory packet link, clean and lossy."""
import threading
import time

import pytest

from tests.support.harness import make_tree, snapshot_of
from tests.support.inproc import InprocAnchor
from tests.support.memory_link import MemoryLink
from rover.backup import Backup
from rover.chanlink import ChannelLink, channel_lock


@pytest.mark.parametrize("loss", [0.0, 0.03])
def test_backup_over_memory_channel(tmp_path, loss):
    a = InprocAnchor(str(tmp_path / "anchor"))
    try:
        root = make_tree(str(tmp_path / "tree"), 60, 300_000, seed=4)
        ml = MemoryLink(a.lt.loop, mtu=512, loss=loss, seed=9)
        a.serve(ml.anchor_end)
        link = ChannelLink(ml.rover_end)
        s = Backup(link.stream(), "rover-1", str(tmp_path / "state"), root).run()
        assert s["entries"] == len(snapshot_of(root))
        assert s["chunks_sent"] > 0
        if loss:
            assert link.ch.retransmits > 0
        # nothing changed: the second backup sends no chunk
        s2 = Backup(link.stream(), "rover-1", str(tmp_path / "state"), root).run()
        assert s2["chunks_sent"] == 0 and s2["snapshot"] == s["snapshot"] + 1
        link.close()
    finally:
        a.close()


def _handover(lock, waiting):
    """Holds `lock` while another thread waits for it, lets it go and at once asks for it
    again, as a pumping thread does; returns who had it first after the release."""
    order = []

    def waiter():
        lock.acquire()
        order.append("waiter")
        lock.release()

    lock.acquire()
    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not waiting():
        assert time.monotonic() < deadline, "the waiter never waited"
    lock.release()
    lock.acquire()
    order.append("releaser")
    lock.release()
    t.join(10)
    return order


def test_a_thread_that_lets_the_channel_go_cannot_take_it_back_before_a_waiter():
    # A reader pumping for an echo lets the lock go every 10 ms; with a plain lock it takes
    # it back before the writer, woken but not yet running, can, for as many rounds as the
    # scheduler decides, while the writer holds the rest of the frame the echo waits for
    # (the 60 s stall of the BLE MTU 23 conformance test on a loaded machine).
    for _ in range(200):
        lock = channel_lock()
        assert _handover(lock, lock._entry.locked) == ["waiter", "releaser"]
