"""Relay end to end: the rover under MicroPython fetches, sends and publishes through the
anchor (real HTTP origin, real mosquitto), then backs up; the backup takes the relayed
content from the anchor's capture instead of the link."""
import os
import random
import subprocess

import pytest

from tests.support.harness import (AnchorProc, anchorctl, RawRover, assert_same_tree, counters, rover_cmd, run_rover,
    snapshot_of, wait_counter)
from tests.support.linkemu import CountingRelay
from tests.support.services import Broker, Origin, Subscriber, free_port


@pytest.fixture
def world(tmp_path):
    origin = Origin()
    broker = Broker(str(tmp_path))
    anchor = AnchorProc(str(tmp_path / "anchor"), "--broker", broker.url, "--relay-timeout", "1.5").start()
    yield origin, broker, anchor
    anchor.stop()
    broker.close()
    origin.close()



def test_relay_then_backup_sends_only_novel_bytes(world, tmp_path):
    origin, broker, anchor = world
    rnd = random.Random(3)
    root = tmp_path / "rover"
    (root / "Download").mkdir(parents=True)
    (root / "outbox").mkdir()
    (root / "notes").mkdir()
    photo = rnd.randbytes(1_200_000)
    origin.files["/media/photo.jpg"] = photo
    doc = rnd.randbytes(400_000)
    (root / "outbox" / "report.bin").write_bytes(doc)
    log = b"".join(b"t=%d temp=%d\n" % (i, rnd.randrange(400)) for i in range(20000))
    (root / "notes" / "log.txt").write_bytes(log)
    sub = Subscriber(broker.port, "rover/#")
    state = str(tmp_path / "state")
    try:
        p = run_rover("micropython", anchor.link, "rv", state, "fetch", origin.url("/media/photo.jpg"),
                      "--out", str(root / "Download" / "photo.jpg"))
        assert "fetched 1200000 bytes" in p.stdout, p.stdout
        assert (root / "Download" / "photo.jpg").read_bytes() == photo
        run_rover("micropython", anchor.link, "rv", state, "send", str(root / "outbox" / "report.bin"),
                  "--to", origin.url("/upload/report.bin"))
        assert origin.received["/upload/report.bin"] == doc
        run_rover("micropython", anchor.link, "rv", state, "send", str(root / "outbox" / "report.bin"),
                  "--to", origin.url("/upload/posted"), "--post")
        assert origin.received["/upload/posted"] == doc and origin.requests[-1][0] == "POST"
        run_rover("micropython", anchor.link, "rv", state, "publish", "rover/log",
                  "--file", str(root / "notes" / "log.txt"))
        assert sub.wait(1), "broker never delivered the message"
        assert sub.messages[0] == ("rover/log", log)
    finally:
        sub.close()
    novel = rnd.randbytes(150_000)
    (root / "notes" / "new.bin").write_bytes(novel)
    relayed = len(photo) + len(doc) + len(log)

    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        p = run_rover("micropython", "tcp://127.0.0.1:%d" % relay.port, "rv", state, "backup", str(root))
    finally:
        relay.close()
    assert "snapshot 1 committed" in p.stdout
    assert relay.total <= len(novel) + 0.05 * relayed, (relay.total, len(novel), relayed)
    assert relay.total >= len(novel)
    c = counters(anchor, "rv")
    assert c["captured_objects"] == 4 and c["captured_bytes"] == relayed + len(doc)
    # accounting by source and by purpose
    assert c["supplied_passthrough"] == relayed, c
    assert c["supplied_uploaded"] == len(novel), c
    assert c["link_relay"] > relayed and c["link_backup"] < len(novel) + 0.05 * relayed, c
    assert c["link_control"] > 0 and c["link_control"] < 2000, c
    out = str(tmp_path / "restored")
    anchorctl(anchor.address, "restore", "rv", "--to", out)
    assert_same_tree(snapshot_of(str(root)), out, 10 ** 9)


def test_edited_download_costs_only_its_new_chunks(world, tmp_path):
    origin, _, anchor = world
    rnd = random.Random(4)
    big = rnd.randbytes(800_000)
    origin.files["/big.bin"] = big
    root = tmp_path / "rover"
    root.mkdir()
    state = str(tmp_path / "state")
    run_rover("cpython", anchor.link, "rv2", state, "fetch", origin.url("/big.bin"), "--out", str(root / "big.bin"))
    with open(str(root / "big.bin"), "ab") as f:
        f.write(b"appended line\n" * 200)
    p = run_rover("cpython", anchor.link, "rv2", state, "backup", str(root))
    sent = int(p.stdout.split(" chunks (")[1].split(" bytes")[0])
    assert sent < 60_000, p.stdout        # the tail chunk or two, not 800 KB


def fails(anchor, *args):
    p = subprocess.run(rover_cmd("micropython", anchor.link, "rv3", "/tmp/unused-state", *args),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    return p.stderr


def test_relay_errors_are_clear_and_nothing_half_captured(world, tmp_path):
    origin, _, anchor = world
    out = str(tmp_path / "out.bin")
    assert "HTTP 404" in fails(anchor, "fetch", origin.url("/missing"), "--out", out)
    assert not os.path.exists(out) and not os.path.exists(out + ".part")
    dead = free_port()
    assert "relay failed" in fails(anchor, "fetch", "http://127.0.0.1:%d/x" % dead, "--out", out)
    origin.files["/slow/page"] = b"late"
    assert "timed out" in fails(anchor, "fetch", origin.url("/slow/page"), "--out", out)
    broken = origin.files["/broken/file"] = os.urandom(300_000)
    msg = fails(anchor, "fetch", origin.url("/broken/file"), "--out", out)
    assert "broke off" in msg or "stopped" in msg, msg
    # No file that looks whole; what came is kept as .part, for a resume of that version.
    assert not os.path.exists(out)
    assert broken.startswith(open(out + ".part", "rb").read())
    assert counters(anchor, "rv3").get("captured_objects", 0) == 0
    # and the anchor still relays after all that
    origin.files["/ok"] = b"fine"
    run_rover("micropython", anchor.link, "rv3", str(tmp_path / "st"), "fetch", origin.url("/ok"), "--out", out)
    assert open(out, "rb").read() == b"fine"
    assert counters(anchor, "rv3")["captured_objects"] == 1


def test_broker_down_is_a_clear_error(tmp_path):
    port = free_port()
    anchor = AnchorProc(str(tmp_path / "anchor"), "--broker", "mqtt://127.0.0.1:%d" % port).start()
    try:
        f = tmp_path / "m.txt"
        f.write_bytes(b"hello")
        msg = fails(anchor, "publish", "rover/x", "--file", str(f))
        assert "broker" in msg and "unavailable" in msg, msg
    finally:
        anchor.stop()


def test_rover_disconnect_mid_body_the_anchor_keeps_the_whole_body(world, tmp_path):
    """The link goes in the middle of a download; the origin is still sending: the anchor
    reads on and keeps the body whole (the rover's resume is served from it, test_relay_resume),
    and the origin is asked once."""
    origin, _, anchor = world
    origin.files["/huge"] = os.urandom(30_000_000)
    relay = CountingRelay("127.0.0.1", anchor.port)
    rover = subprocess.Popen(rover_cmd("micropython", "tcp://127.0.0.1:%d" % relay.port, "rv4",
                                       str(tmp_path / "st"), "fetch", origin.url("/huge"), "--out",
                                       str(tmp_path / "huge")), stdout=subprocess.PIPE, text=True)
    try:
        assert relay.wait_for(lambda r: r.down > 2_000_000, timeout=60)
        rover.kill()
        rover.wait(timeout=30)
    finally:
        relay.close()
    origin.files["/after"] = b"x"
    run_rover("micropython", anchor.link, "rv4", str(tmp_path / "st"), "fetch", origin.url("/after"),
              "--out", str(tmp_path / "after"))
    c = wait_counter(anchor, "rv4", "captured_objects", 2)
    assert (c["captured_objects"], c["captured_bytes"]) == (2, 30_000_001)      # /huge whole, and /after
    assert len([r for r in origin.requests if r[1] == "/huge"]) == 1


@pytest.mark.parametrize("caps", [0, "CAP_BODY"])
def test_body_messages_are_as_large_as_the_rover_takes(world, caps):
    """A rover that sets CAP_BODY gets whole (16 KiB) BODYs; one that does not (a MicroPython
    rover's receive buffer holds 4.6 KB) never gets more than 4 KiB in one."""
    from anchor_core import messages as m
    origin, broker, anchor = world
    body = random.Random(8).randbytes(300_000)
    origin.files["/big.bin"] = body
    c = RawRover(anchor.port, max_payload=m.MAX_BODY + 512)
    got, sizes = [], []
    try:
        c.send(m.hello("bodies", None, m.CAP_BODY if caps else 0))
        assert c.reply()[m.MSG_TYPE] == m.WELCOME
        c.send(m.fetch(origin.url("/big.bin"), None))
        assert c.reply()[m.MSG_TYPE] == m.RESULT
        for _ in range(1000):
            msg = c.reply()
            if msg[m.MSG_TYPE] != m.BODY:
                break
            sizes.append(len(msg[m.BODY_DATA]))
            got.append(bytes(msg[m.BODY_DATA]))
        assert msg[m.MSG_TYPE] == m.END
    finally:
        c.close()
    assert b"".join(got) == body
    assert max(sizes) == (m.MAX_BODY if caps else 4096)
