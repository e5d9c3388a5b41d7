"""Relayed bodies wait in the spool until whole, and the spool has a budget: past it a body
still passes whole but is not kept (so a flood of large bodies cannot fill the card the store
lives on), and an upload the relay must hold whole is refused with the reason."""
import os
import random

import pytest

from anchor.services.spool import SpoolRoom
from tests.support.harness import AnchorProc, RawRover, counters, run_rover
from tests.support.services import Origin


def test_spools_draw_on_one_budget_and_give_it_back(tmp_path):
    room = SpoolRoom(str(tmp_path), budget=100_000, free_floor=0)
    a, b = room.open("t-"), room.open("t-")
    a.write(b"x" * 60_000)
    b.write(b"y" * 60_000)                 # 120 kB at once: past the budget
    assert a.kept and not b.kept
    assert os.path.getsize(b.name) == 0      # what it held is gone at once
    b.write(b"z")                            # and it writes nothing more
    assert os.path.getsize(b.name) == 0
    a.discard()
    b.discard()
    assert not os.listdir(str(tmp_path)) and room.in_use == 0
    c = room.open("t-")
    c.write(b"w" * 90_000)                   # the budget is free again
    assert c.kept
    c.discard()


def test_a_spool_never_writes_into_the_last_free_bytes(tmp_path):
    st = os.statvfs(str(tmp_path))
    room = SpoolRoom(str(tmp_path), budget=1 << 40, free_floor=st.f_bavail * st.f_frsize + (1 << 30))
    s = room.open("t-")
    s.write(b"x" * 1000)
    assert not s.kept and os.path.getsize(s.name) == 0 and room.dropped == 1
    s.discard()


@pytest.fixture
def small_spool(tmp_path):
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor"), "--spool-max", "200K").start()
    yield origin, anchor
    anchor.stop()
    origin.close()


def captured(anchor, device):
    return counters(anchor, device).get("captured_objects", 0)


def test_a_body_past_the_spool_budget_passes_whole_and_is_not_kept(small_spool, tmp_path):
    origin, anchor = small_spool
    rnd = random.Random(5)
    big, small = rnd.randbytes(600_000), rnd.randbytes(50_000)
    origin.files["/big.bin"] = big
    origin.files["/small.bin"] = small
    state = str(tmp_path / "state")
    run_rover("cpython", anchor.link, "sp", state, "fetch", origin.url("/big.bin"), "--out", str(tmp_path / "big"))
    assert (tmp_path / "big").read_bytes() == big
    assert captured(anchor, "sp") == 0
    run_rover("cpython", anchor.link, "sp", state, "fetch", origin.url("/small.bin"), "--out", str(tmp_path / "small"))
    assert (tmp_path / "small").read_bytes() == small
    assert captured(anchor, "sp") == 1       # within the budget: kept as always
    # An upload must be held whole before it goes on: refused, with the reason, and nothing sent.
    (tmp_path / "up.bin").write_bytes(big)
    p = run_rover("cpython", anchor.link, "sp", state, "send", str(tmp_path / "up.bin"),
                  "--to", origin.url("/upload/up.bin"), check=False)
    assert p.returncode != 0 and "no room" in (p.stdout + p.stderr), (p.stdout, p.stderr)
    assert "/upload/up.bin" not in origin.received
    assert not os.listdir(str(tmp_path / "anchor" / "spool"))


def test_an_upload_cut_off_mid_body_gives_its_room_back(small_spool, tmp_path):
    """A link that drops in the middle of a SEND must not keep its spool file and its share of
    the budget until the anchor restarts: the next body fits the budget again and is kept."""
    import time
    from anchor_core import messages as m
    origin, anchor = small_spool
    c = RawRover(anchor.port)
    c.send(m.hello("sp", None, 0))
    assert c.reply()[m.MSG_TYPE] == m.WELCOME
    c.send(m.send_req("PUT", origin.url("/upload/cut.bin"), 150_000, "application/octet-stream"))
    for _ in range(30):                      # 120 kB of the 150 kB, then the link is gone
        c.send(m.body(b"c" * 4000))
    spool = tmp_path / "anchor" / "spool"
    deadline = time.monotonic() + 30
    while not os.listdir(str(spool)) and time.monotonic() < deadline:
        time.sleep(0.01)                     # the anchor has read the upload's start
    assert os.listdir(str(spool))
    c.close()
    while os.listdir(str(spool)) and time.monotonic() < deadline:
        time.sleep(0.01)                     # the anchor has noticed the link is gone
    assert not os.listdir(str(spool)), "the cut upload's spool file stayed"
    body = random.Random(6).randbytes(150_000)
    origin.files["/after.bin"] = body
    run_rover("cpython", anchor.link, "sp", str(tmp_path / "state"), "fetch", origin.url("/after.bin"),
              "--out", str(tmp_path / "after"))
    assert (tmp_path / "after").read_bytes() == body
    assert captured(anchor, "sp") == 1       # 150 kB fit the 200 kB budget: none of it was still held
    assert "/upload/cut.bin" not in origin.received
