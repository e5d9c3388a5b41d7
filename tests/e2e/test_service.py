"""The anchor as a systemd service, for real: a test owns the NOTIFY_SOCKET datagram socket and
hears READY, STATUS, WATCHDOG at the interval WATCHDOG_USEC asks for, and STOPPING; SIGTERM and
SIGINT stop it cleanly (links cut, store flushed, a log line, exit 0); logs suit journald; a
port in use is one line. The unit file itself is checked in tests/e2e/test_deb.py."""
import os
import select
import json
import signal
import socket
import subprocess
import time

import pytest

from tests.support.harness import BIN, make_tree, run_rover

WATCHDOG_USEC = 1000000


class Service:
    """`anchor serve` started the way systemd starts it: NOTIFY_SOCKET, WATCHDOG_USEC, and
    stderr as a stream whose device:inode JOURNAL_STREAM names."""

    def __init__(self, tmp, *extra, watchdog_usec=WATCHDOG_USEC, env=None, data=None):
        self.tmp = str(tmp)
        self.sock_path = os.path.join(self.tmp, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.data = data or os.path.join(self.tmp, "data")
        self.ready_file = os.path.join(self.tmp, "ready")
        self.err_path = os.path.join(self.tmp, "stderr")
        self.err = open(self.err_path, "wb")
        st = os.fstat(self.err.fileno())
        e = dict(os.environ, NOTIFY_SOCKET=self.sock_path, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        if watchdog_usec:
            e["WATCHDOG_USEC"] = str(watchdog_usec)
        e.update(env or {})
        self.messages = []          # (monotonic time, {key: value})
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "anchor"), "serve", "--data", self.data, "--listen", "tcp://127.0.0.1:0",
             "--ready-file", self.ready_file, "--open"] + list(extra),
            stdout=subprocess.PIPE, stderr=self.err, env=e)

    def next(self, timeout=20):
        """The next notification, or None after `timeout` seconds."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return None
        data = self.sock.recv(4096).decode()
        msg = dict(line.split("=", 1) for line in data.split("\n") if line)
        self.messages.append((time.monotonic(), msg))
        return msg

    def wait_for(self, key, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.next(deadline - time.monotonic())
            if msg is None:
                break
            if key in msg:
                return msg
        raise AssertionError("no %s within %g s; heard %r" % (key, timeout, [m for _, m in self.messages]))

    def port(self):
        with open(self.ready_file) as f:
            return int(f.read())

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.err.close()
        self.sock.close()


@pytest.fixture
def service(tmp_path):
    made = []

    def start(*extra, **kw):
        d = tmp_path / ("s%d" % len(made))
        d.mkdir()
        s = Service(d, *extra, **kw)
        made.append(s)
        return s
    yield start
    for s in made:
        s.close()


def test_ready_watchdog_status_and_a_clean_stop(service, tmp_path):
    s = service()
    ready = s.wait_for("READY")
    assert ready["READY"] == "1"
    # READY means listening: the ready file is there and the port takes a connection.
    port = s.port()
    assert "tcp://127.0.0.1:%d" % port in ready.get("STATUS", "")
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    statuses = [m["STATUS"] for _, m in s.messages if "STATUS" in m]
    assert any(t.startswith("starting") for t in statuses), statuses

    # Pings at half the interval, from the running daemon.
    pings = []
    deadline = time.monotonic() + 10
    while len(pings) < 4 and time.monotonic() < deadline:
        msg = s.next(deadline - time.monotonic())
        if msg and msg.get("WATCHDOG") == "1":
            pings.append(s.messages[-1][0])
    assert len(pings) == 4, s.messages
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    interval = WATCHDOG_USEC / 1e6
    # Every gap well inside the interval systemd would kill at (half of it is the aim; a
    # loaded test machine may stretch one a little, never to the whole interval).
    assert max(gaps) < interval * 0.9, gaps
    assert sum(gaps) / len(gaps) > interval * 0.3, gaps

    # A rover mid-session when the stop comes: its link is cut and counted.
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    # The STATUS line follows the links open: the anchor has this one.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = s.next(deadline - time.monotonic())
        if msg and "1 link open" in msg.get("STATUS", ""):
            break
    else:
        raise AssertionError("no STATUS with the link: %r" % s.messages)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    stopping = s.wait_for("STOPPING", timeout=10)
    assert stopping["STOPPING"] == "1"
    assert s.proc.wait(timeout=20) == 0
    took = time.monotonic() - t0
    conn.close()
    err = s.stderr()
    assert "stopped on SIGTERM: 1 link closed, store flushed and closed" in err, err
    assert "Traceback" not in err
    assert not os.path.exists(os.path.join(s.data, "mgmt.sock"))
    assert took < 10, took
    # Journald format: the level as <N>, no timestamp of our own, nothing on stdout.
    lines = [line for line in err.splitlines() if line]
    assert lines and all(line.startswith("<") and line[2] == ">" for line in lines), lines
    assert not any(line[3:7].isdigit() for line in lines), lines
    assert s.proc.stdout.read() == b""


def test_sigint_stops_without_a_traceback_and_data_reopens(service, tmp_path):
    s = service(watchdog_usec=None)
    s.wait_for("READY")
    src = tmp_path / "src"
    make_tree(str(src), 20, 200000, seed=3)
    run_rover("cpython", "tcp://127.0.0.1:%d" % s.port(), "svc-rover", str(tmp_path / "state"), "backup", str(src))
    s.proc.send_signal(signal.SIGINT)
    s.wait_for("STOPPING", timeout=10)
    assert s.proc.wait(timeout=20) == 0
    err = s.stderr()
    assert "stopped on SIGINT" in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    # No WATCHDOG_USEC: no pings were sent.
    assert not any("WATCHDOG" in m for _, m in s.messages)
    # What the session stored was flushed: an anchor on the same data has every chunk (the
    # same tree backed up again uploads nothing) and had nothing to recover.
    s2 = service(watchdog_usec=None, data=s.data)
    s2.wait_for("READY")
    p = run_rover("cpython", "tcp://127.0.0.1:%d" % s2.port(), "svc-rover", str(tmp_path / "state2"),
                  "backup", "--json", str(src))
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["chunks_sent"] == 0 and summary["changed"] > 0, summary
    s2.proc.send_signal(signal.SIGTERM)
    assert s2.proc.wait(timeout=20) == 0


def test_watchdog_owned_by_another_pid_is_left_alone(service):
    s = service(env={"WATCHDOG_PID": "1"})
    s.wait_for("READY")
    # Two STATUS-or-other messages' worth of time at the ping rate: no WATCHDOG among them.
    end = time.monotonic() + 4 * WATCHDOG_USEC / 1e6
    while time.monotonic() < end:
        s.next(max(0.01, end - time.monotonic()))
    assert not any("WATCHDOG" in m for _, m in s.messages), s.messages
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=20) == 0


def test_port_in_use_is_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for flag in ("--listen", "--proxy"):
            args = [os.path.join(BIN, "anchor"), "serve", "--data", str(tmp_path / "d"), "--open",
                    "--listen", "tcp://127.0.0.1:%d" % (port if flag == "--listen" else 0)]
            if flag == "--proxy":
                args += ["--proxy", "tcp://127.0.0.1:%d" % port]
            p = subprocess.run(args, capture_output=True, text=True, timeout=60)
            assert p.returncode == 2, (flag, p)
            lines = p.stderr.strip().splitlines()
            assert len(lines) == 1, p.stderr
            assert "cannot listen on tcp://127.0.0.1:%d (%s)" % (port, flag[2:]) in lines[0]
            assert "in use" in lines[0]
    finally:
        taken.close()
