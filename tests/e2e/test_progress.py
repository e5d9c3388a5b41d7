"""Progress people and scripts can see (issue 12, item 5; docs/output.md): a backup over a
slow link shows a status line on a terminal (a real pty, so the rover's isatty check is the
real one), nothing with -q, one JSON object per line with --json (progress at least once a
second, then a summary whose numbers are the anchor's), and errors on stderr."""
import json
import os
import select
import subprocess
import time

import pytest

from tests.support.harness import AnchorProc, anchorctl, make_src, rover_cmd
from tests.support.linkemu import CountingRelay

RUNTIMES = ["cpython", "micropython"]
RATE = 250_000          # bytes/s each way: ~1 MB of photos takes ~4 s, past the 2 s threshold


@pytest.fixture(scope="module")
def anchor(tmp_path_factory):
    a = AnchorProc(str(tmp_path_factory.mktemp("anchor"))).start()
    yield a
    a.stop()


@pytest.fixture
def slow(anchor):
    relay = CountingRelay("127.0.0.1", anchor.port, rate=RATE)
    yield "tcp://127.0.0.1:%d" % relay.port
    relay.close()


def tree(tmp_path, seed):
    # Random bytes of their own per test: a tree another test's rover uploaded would be
    # matched by proofs in a fraction of a second, not uploaded over the slow link.
    src = str(tmp_path / "src")
    make_src(src, 12, 80_000, seed)
    # Old mtimes: a file written within 2 s of a backup is read again by the next one
    # (README, "racy"), which would count in that backup's totals too.
    for d, _, names in os.walk(src):
        for n in names:
            os.utime(os.path.join(d, n), (1_600_000_000, 1_600_000_000))
    return src


def on_pty(cmd, timeout=120):
    """Run cmd with stdout and stderr on one pseudo-terminal; (exit status, all it printed)."""
    master, slave = os.openpty()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 1)
            if not r:
                if p.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            out += data
        assert p.wait(timeout=max(1, deadline - time.monotonic())) is not None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    # the terminal turns "\n" into "\r\n": undo it, so a lone "\r" is the status line's
    return p.returncode, out.decode().replace("\r\n", "\n")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_terminal_sees_a_status_line_and_q_silences_it(tmp_path, anchor, slow, runtime):
    src = tree(tmp_path, 11 if runtime == "cpython" else 12)
    t0 = time.monotonic()
    rc, out = on_pty(rover_cmd(runtime, slow, "tty-" + runtime, str(tmp_path / "state"), "backup", src))
    took = time.monotonic() - t0
    assert rc == 0, out
    assert took > 3, took            # long enough that a status line is due
    status = [s for s in out.split("\r") if s.startswith("rover: ") and " files, " in s]
    assert len(status) >= 4, out     # drawn again and again, not once
    last = status[-1].split("\n")[0]
    assert "of 32 files" in last and "32 of 32 files" in out, out      # 12 photos, 20 notes
    assert "/s" in last
    # The summary starts a line of its own after the status line is finished.
    before, summary = out.rsplit("rover: snapshot 1 committed", 1)
    assert before.endswith("\n"), repr(before[-200:])
    assert "\r" not in summary, repr(summary)
    # A second backup of the same, with -q: nothing changed, and no status line either.
    (open(os.path.join(src, "new.bin"), "wb")).write(os.urandom(400_000))
    rc, out = on_pty(rover_cmd(runtime, slow, "tty-" + runtime, str(tmp_path / "state"), "-q", "backup", src))
    assert rc == 0, out
    assert "\r" not in out and "snapshot 2 committed" in out, repr(out)


def json_run(cmd):
    """Run cmd, reading its stdout as lines arrive: [(seconds since start, text)]."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []               # (seconds since start, text) as each line arrives
    buf = b""
    deadline = t0 + 120
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 1)
            if not r:
                continue
            data = os.read(p.stdout.fileno(), 65536)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append((time.monotonic() - t0, line.decode()))
        err = p.stderr.read().decode()
        assert p.wait(timeout=30) == 0, (lines, err)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    assert buf == b"" and err == "", (buf, err)
    return lines


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_json_lines_come_every_second_and_the_summary_is_the_anchors(tmp_path, anchor, slow, runtime):
    src = tree(tmp_path, 21 if runtime == "cpython" else 22)
    dev = "json-" + runtime
    lines = json_run(rover_cmd(runtime, slow, dev, str(tmp_path / "state"), "backup", src, "--json"))
    objs = [json.loads(text) for _, text in lines]       # every line is one JSON object
    kinds = [o["type"] for o in objs]
    assert kinds[-1] == "summary" and set(kinds[:-1]) == {"progress"}, kinds
    times = [t for t, _ in lines]
    assert times[-1] - times[0] > 2, times               # a run long enough to judge
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 1.0, gaps
    assert times[0] <= 2.5, times                        # the first soon after the start
    prog = objs[:-1]
    assert {o["phase"] for o in prog} >= {"upload"}, prog
    done = [o["bytes_done"] for o in prog]
    assert done == sorted(done) and done[-1] <= prog[-1]["bytes_total"], done
    assert all(set(o) >= {"phase", "bytes_done", "bytes_total", "files_done", "files_total", "rate", "eta"}
               for o in prog), prog[0]
    s = objs[-1]
    files = sum(len(f) for _, _, f in os.walk(src))
    tree_bytes = sum(os.path.getsize(os.path.join(d, n)) for d, _, fs in os.walk(src) for n in fs)
    assert [o["files_total"] for o in prog if o["phase"] == "upload"][0] == files
    assert prog[-1]["bytes_total"] == tree_bytes == s["bytes"]
    # The summary's numbers are what the anchor recorded.
    snap = json.loads(anchorctl(anchor.address, "snapshots", dev, "--json").stdout)[-1]
    assert (s["snapshot"], s["entries"], s["bytes"]) == (snap["id"], snap["entries"], snap["bytes"]), (s, snap)
    st = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)["devices"][dev]
    assert s["chunks_sent"] == st["chunks_uploaded"] and s["chunks_sent"] > 50, (s, st)
    assert s["link_bytes_out"] == st["link_rx"] and s["link_bytes_in"] == st["link_tx"], (s, st)
    assert s["skipped"] == 0 and s["changed"] == s["entries"] and s["seconds"] > 2, s
    # The next backup's totals are what changed since: one new file and one rewritten.
    with open(os.path.join(src, "new.bin"), "wb") as f:
        f.write(os.urandom(700_000))
    with open(os.path.join(src, "img03.jpg"), "r+b") as f:
        f.write(b"edited")
    os.utime(os.path.join(src, "img03.jpg"), (1, 1))
    lines = json_run(rover_cmd(runtime, slow, dev, str(tmp_path / "state"), "backup", src, "--json"))
    objs = [json.loads(text) for _, text in lines]
    ups = [o for o in objs if o["type"] == "progress" and o["phase"] != "scan"]
    assert ups and objs[-1]["type"] == "summary" and objs[-1]["changed"] == 2, objs
    assert {(o["files_total"], o["bytes_total"]) for o in ups} == {(2, 780_000)}, ups
    assert ups[-1]["files_done"] <= 2 and objs[-1]["snapshot"] == s["snapshot"] + 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_errors_go_to_stderr(tmp_path, runtime):
    # A port nothing listens on: the link cannot open.
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = "tcp://127.0.0.1:%d" % sock.getsockname()[1]
    sock.close()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    state = str(tmp_path / "state")
    p = subprocess.run(rover_cmd(runtime, dead, "err-1", state, "backup", str(src), "--retries", "0"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "rover: backup failed:" in p.stderr and "failed" not in p.stdout, (p.stdout, p.stderr)
    p = subprocess.run(rover_cmd(runtime, dead, "err-1", state, "backup", str(src), "--retries", "0", "--json"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, (p.stdout, p.stderr)
    objs = [json.loads(x) for x in p.stdout.splitlines()]
    assert [o["type"] for o in objs if o["type"] != "progress"] == ["error"], objs
    assert objs[-1]["message"].startswith("backup failed:"), objs
    assert "rover: backup failed:" in p.stderr, p.stderr
    # Wrong arguments and a relay command's failure: stderr too, status kept.
    p = subprocess.run(rover_cmd(runtime, dead, "err-1", state, "backup"), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "wrong arguments" in p.stderr and p.stdout == "", (p.stdout, p.stderr)
    p = subprocess.run(rover_cmd(runtime, dead, "err-1", state, "fetch", "http://127.0.0.1:9/", "--out",
                                 str(tmp_path / "x")), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "rover: fetch failed:" in p.stderr and p.stdout == "", (p.stdout, p.stderr)
    p = subprocess.run(rover_cmd(runtime, dead, "err-1", state, "pair", "not-a-code"), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and "rover: pair failed:" in p.stderr and p.stdout == "", (p.stdout, p.stderr)
    assert not os.path.exists(os.path.join(state, "pairing.key"))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_restore_shows_progress_against_its_plan(tmp_path, anchor, slow, runtime):
    """A restore over the slow link: --json lines at least once a second, their totals the
    plan's (what is written, not the whole snapshot), a summary with what came down; on a
    terminal, a status line."""
    import shutil
    from tests.support.harness import run_rover
    src = tree(tmp_path, 31 if runtime == "cpython" else 32)
    dev = "rest-" + runtime
    state = str(tmp_path / "state")
    run_rover(runtime, anchor.link, dev, state, "backup", src)
    gone = sorted(n for n in os.listdir(src) if n.endswith(".jpg"))[:8]
    want = sum(os.path.getsize(os.path.join(src, n)) for n in gone)
    for n in gone:
        os.remove(os.path.join(src, n))
    lines = json_run(rover_cmd(runtime, slow, dev, state, "restore", "--to", src, "--json"))
    objs = [json.loads(text) for _, text in lines]
    prog = [o for o in objs if o["type"] == "progress" and o["phase"] == "restore"]
    assert prog, objs
    assert all(o["files_total"] == 8 and o["bytes_total"] == want for o in prog), prog[-1]
    assert max(o["bytes_done"] for o in prog) <= want
    times = [t for t, _ in lines]
    assert max(b - a for a, b in zip(times, times[1:])) <= 1.0, times
    summary = objs[-1]
    assert summary["type"] == "summary" and summary["command"] == "restore", summary
    assert summary["files"] == 8 and summary["written"] == want, summary
    assert summary["link_bytes_in"] >= want * 0.9, summary     # photos: random, they came down whole
    # and on a terminal, a status line
    for n in gone:
        os.remove(os.path.join(src, n))
    status, out = on_pty(rover_cmd(runtime, slow, dev, state, "restore", "--to", src))
    assert status == 0, out
    assert "\r" in out and "of 8 files" in out, out
    assert "snapshot 1 restored" in out, out
