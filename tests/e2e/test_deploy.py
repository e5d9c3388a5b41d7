"""tools/deploy-rover onto a "board" that is the real MicroPython unix port's REPL on a pty:
the deploy goes through mpremote's raw REPL as it would over a USB serial port, the board's
reset ends the interpreter (the unix port's machine.soft_reset exits it), and the test boots
the board by running its main.py in its folder; it must then back up to a real anchor.

A board's serial port is one end of a line and the REPL the other, so the test uses two ptys
joined by a byte pump (the USB-serial cable): the interpreter on the slave of one, mpremote
on the slave of the other (a single pty's slave cannot be both ends)."""
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty

import pytest

from tests.e2e.test_run import Rover      # the bounded line reader
from tests.support.harness import (AnchorProc, ROOT, anchorctl, assert_same_tree, make_tree,
    snapshot_of)

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
DEPLOY = os.path.join(ROOT, "tools", "deploy-rover")


class PtyBoard:
    """The unix port's REPL as a board: its folder is the board's filesystem and, like a
    board's /lib, its lib/ is on the interpreter's path. `cut_after` bytes from the host
    end the board mid-transfer (a cable pulled during the flash)."""

    def __init__(self, folder, cut_after=None, extra_path=()):
        self.folder = folder
        self.extra_path = list(extra_path)   # modules the board's firmware has built in
        os.makedirs(folder, exist_ok=True)
        self.cut_after = cut_after
        self.down = 0
        self.board_m, board_s = os.openpty()
        self.host_m, host_s = os.openpty()
        tty.setraw(board_s)        # a UART: no newline translation, no echo
        tty.setraw(host_s)
        self.port = os.ttyname(host_s)
        self.host_s = host_s       # held open so the line stays up between mpremote's opens
        self.proc = subprocess.Popen([MICROPYTHON, "-X", "heapsize=256K"], stdin=board_s, stdout=board_s,
                                     stderr=board_s, cwd=folder, env=self.env(), start_new_session=True)
        os.close(board_s)
        self.stop = False
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def env(self):
        return dict(os.environ, MICROPYPATH=":".join([os.path.join(self.folder, "lib")] + self.extra_path + [".frozen"]))

    def _pump(self):
        while not self.stop:
            r, _, _ = select.select([self.board_m, self.host_m], [], [], 0.2)
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return          # the board's side closed: it reset or died
                if fd == self.host_m:
                    self.down += len(data)
                    if self.cut_after is not None and self.down > self.cut_after:
                        self.proc.kill()
                        return
                    os.write(self.board_m, data)
                else:
                    os.write(self.host_m, data)

    def reset_seen(self, timeout=30):
        """True once the REPL ended (the deploy's reset), bounded in time."""
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def boot(self):
        """main.py started as the board starts it after its reset; a line reader over its console."""
        proc = subprocess.Popen([MICROPYTHON, "-X", "heapsize=256K", "main.py"], cwd=self.folder, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
        r = Rover.__new__(Rover)
        r.proc, r.lines, r._buf = proc, [], b""
        return r

    def close(self):
        self.stop = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.pump.join(timeout=5)
        for fd in (self.board_m, self.host_m, self.host_s):
            os.close(fd)


def deploy(*args, timeout=120):
    return subprocess.run([DEPLOY] + list(args), capture_output=True, text=True, timeout=timeout)


def files_under(folder):
    out = {}
    for d, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor"), secure=True).start()
    yield a
    a.stop()


def board_config(tmp_path, board_dir, **extra):
    # On a real board state and root are /state and /data; the unix port's "/" is the
    # host's, so they are given inside the board's folder.
    cfg = {"state": os.path.join(board_dir, "state"), "root": os.path.join(board_dir, "data")}
    cfg.update(extra)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_deploy_boot_and_back_up(anchor, tmp_path):
    board_dir = str(tmp_path / "board")
    board = PtyBoard(board_dir)
    try:
        src = make_tree(os.path.join(board_dir, "data"), 30, 120_000, seed=12)
        want = snapshot_of(src)
        # an earlier firmware's MQTT client, which this one does not use
        os.makedirs(os.path.join(board_dir, "lib", "umqtt"))
        with open(os.path.join(board_dir, "lib", "umqtt", "simple.mpy"), "wb") as f:
            f.write(b"M\x06old")
        code = json.loads(anchorctl(anchor.address, "pair", "hand-1", "--json").stdout)["code"]
        t0 = time.monotonic()
        p = deploy("--port", board.port, "--link", anchor.link, "--device", "hand-1", "--pair", code,
                   "--config", board_config(tmp_path, board_dir))
        took = time.monotonic() - t0
        assert p.returncode == 0, p.stdout + p.stderr
        assert "deployed x64 for hand-1" in p.stdout, p.stdout
        assert board.reset_seen(), "the deploy did not reset the board"
        on_board = files_under(board_dir)
        # precompiled for the board's architecture, nothing left over from staging
        assert on_board["lib/rover/backup.mpy"][:2] == b"M\x06"
        assert on_board["lib/anchor_core/chunker.mpy"][2] >> 2 == 2      # x64 native code (viper)
        assert not [n for n in on_board if n.startswith("lib/umqtt")]      # removed
        assert not [n for n in on_board if n.startswith("lib/") and n.endswith(".py")]
        assert not [n for n in on_board if n.startswith(".deploy")]
        assert "lib/rover/mqtt_paho.mpy" not in on_board          # CPython only, not shipped
        with open(os.path.join(ROOT, "firmware", "board", "main.py"), "rb") as f:
            assert on_board["main.py"] == f.read()
        cfg = json.loads(on_board["rover.json"])
        assert cfg["device"] == "hand-1" and cfg["links"] == [anchor.link]
        assert cfg["every"] == "6h" and cfg["jitter"] == "10%"
        assert len(on_board["state/pairing.key"]) == 32
        print("deploy took %.2f s" % took)

        boot = board.boot()
        try:
            boot.wait_line(r"snapshot 1 committed", 120)
            boot.wait_line(r"next backup in")
            boot.proc.send_signal(signal.SIGINT)
            assert boot.finish(timeout=30) == 0, "\n".join(boot.lines)
        finally:
            if boot.proc.poll() is None:
                boot.proc.kill()
                boot.proc.wait()
        assert "Traceback" not in "\n".join(boot.lines), "\n".join(boot.lines)
        snaps = json.loads(anchorctl(anchor.address, "snapshots", "hand-1", "--json").stdout)
        assert len(snaps) == 1, snaps
        out = str(tmp_path / "out")
        anchorctl(anchor.address, "restore", "hand-1", "--to", out)
        assert_same_tree(want, out, mtime_resolution_ns=10**9)
        if os.path.exists(os.path.join(ROOT, "firmware", "rover", "restore_cmd.py")):
            restore_on_the_board(board, anchor, want)
    finally:
        board.close()


def restore_on_the_board(board, anchor, want):
    """The board lost files: the deployed firmware gets them back over its own link (a board
    has no command line; mpremote exec, or this, runs the rover's CLI in its interpreter)."""
    data = os.path.join(board.folder, "data")
    names = sorted(p for p, v in want.items() if v[0] == "f")
    os.remove(os.path.join(data, names[0]))
    with open(os.path.join(data, names[1]), "r+b") as f:
        f.write(b"changed on the board")
    with open(os.path.join(data, "stray.txt"), "wb") as f:
        f.write(b"not in the snapshot")
    argv = ["--link", anchor.link, "--device", "hand-1", "--state", os.path.join(board.folder, "state"),
            "restore", "--to", data, "--delete"]
    code = ("import sys\nfrom rover import buffers\nbuffers.allocate(True)\nfrom rover.cli import main\n"
            "sys.exit(main(%r))" % argv)
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=256K", "-c", code], cwd=board.folder, env=board.env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    # MicroPython sets no mode or mtime (no chmod, no utime): names, folders and bytes are the snapshot's
    got = snapshot_of(data)
    assert sorted(got) == sorted(want)
    assert {k: (v[0], v[-1]) for k, v in got.items()} == {k: (v[0], v[-1]) for k, v in want.items()}


def test_redeploy_replaces_old_firmware_and_leftovers(tmp_path):
    board_dir = str(tmp_path / "board")
    os.makedirs(os.path.join(board_dir, "lib", "rover"))
    os.makedirs(os.path.join(board_dir, ".deploy-new", "lib"))
    for name, body in (("lib/rover/gone.mpy", b"old module"), (".deploy-new/lib/junk", b"cut deploy"),
                       ("main.py", b"print('old')\n"), ("boot.py", b"# the user's\n")):
        with open(os.path.join(board_dir, name), "wb") as f:
            f.write(body)
    board = PtyBoard(board_dir)
    try:
        p = deploy("--port", board.port, "--link", "tcp://127.0.0.1:7440", "--device", "hand-2",
                   "--config", board_config(tmp_path, board_dir), "--reset", "none")
        assert p.returncode == 0, p.stdout + p.stderr
        on_board = files_under(board_dir)
        assert "lib/rover/gone.mpy" not in on_board and not [n for n in on_board if n.startswith(".deploy")]
        assert on_board["boot.py"] == b"# the user's\n"
        assert on_board["main.py"] != b"print('old')\n"
        assert "state/pairing.key" not in on_board      # not paired: no secret invented
        # the folders rover.json names exist for the first backup
        assert os.path.isdir(os.path.join(board_dir, "data")) and os.path.isdir(os.path.join(board_dir, "state"))
        assert not board.reset_seen(timeout=1)          # --reset none: the REPL is still up
    finally:
        board.close()


def test_nothing_answers_on_the_port(tmp_path):
    # a line with no board on it: the pty is there, nobody reads or writes its other end
    m, s = os.openpty()
    try:
        tty.setraw(s)
        t0 = time.monotonic()
        p = deploy("--port", os.ttyname(s), "--link", "tcp://127.0.0.1:7440", "--device", "hand-3",
                   "--timeout", "2")
        assert p.returncode == 1, p.stdout + p.stderr
        assert "no MicroPython REPL answered" in p.stderr, p.stderr
        assert time.monotonic() - t0 < 30
    finally:
        os.close(m)
        os.close(s)
    p = deploy("--port", str(tmp_path / "ttyUSB9"), "--link", "tcp://127.0.0.1:7440", "--device", "hand-3")
    assert p.returncode == 1 and "no such device" in p.stderr, p.stdout + p.stderr


def test_something_else_on_the_port(tmp_path):
    """A port where something answers, but not MicroPython (a shell, another firmware)."""
    m, s = os.openpty()
    tty.setraw(s)
    stop = []

    def shell():
        while not stop:
            r, _, _ = select.select([m], [], [], 0.2)
            if r:
                try:
                    os.read(m, 1024)
                    os.write(m, b"\r\nlogin: ")
                except OSError:
                    return
    t = threading.Thread(target=shell, daemon=True)
    t.start()
    try:
        p = deploy("--port", os.ttyname(s), "--link", "tcp://127.0.0.1:7440", "--device", "hand-3",
                   "--timeout", "2")
        assert p.returncode == 1, p.stdout + p.stderr
        assert "no MicroPython REPL answered" in p.stderr and "login:" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    finally:
        stop.append(1)
        t.join(timeout=5)
        os.close(m)
        os.close(s)


@pytest.mark.parametrize("bad, says", [
    (["--link", "tcpx://127.0.0.1:1"], "expected tcp://HOST:PORT"),
    (["--link", "tcp://127.0.0.1:99999"], "port 99999"),
    (["--link", "serial:/dev/ttyS0?speed=9"], "unknown option"),
    (["--link", "tcp://127.0.0.1:7440", "--device", "a b"], "device"),
    (["--link", "tcp://127.0.0.1:7440", "--pair", "SHORT"], "pairing code has 5 letters"),
    (["--config-json", '{"every": "soon"}'], "every"),
    (["--config-json", '{"jitter": "200%"}'], "jitter"),
    (["--config-json", '{"wlan": {}}'], "unknown key"),
    (["--config-json", '{"wifi": {"ssid": ""}}'], "wifi"),
    (["--config-json", '{"uart": {"id": 1, "tx": 17}}'], "uart"),
    (["--link", "serial:uart1"], '"uart" is required'),
    (["--link", "ble:"], '"ble" is required'),
    (["--pair", "GRUHF-UPDRE-FPC3W-FVBB7"], "no link"),
    (["--link", "tcp://127.0.0.1:7440", "--pair", "GRUHF-UPDRE-FPC3W-FVBB8"], "mistyped"),
    (["--config-json", "[1, 2]"], "JSON object"),
])
def test_bad_input_is_refused_before_the_board_is_touched(tmp_path, bad, says):
    board_dir = str(tmp_path / "board")
    board = PtyBoard(board_dir)
    try:
        args = ["--port", board.port] + ([] if "--device" in bad else ["--device", "hand-4"])
        if bad[0] == "--config-json":
            path = tmp_path / "bad.json"
            path.write_text(bad[1])
            args += ["--link", "tcp://127.0.0.1:7440", "--config", str(path)]
        else:
            args += bad
        p = deploy(*args)
        assert p.returncode == 1, p.stdout + p.stderr
        assert says in p.stderr, p.stderr
        assert files_under(board_dir) == {}
        assert board.down == 0, "the port was written to"
    finally:
        board.close()


def test_a_flash_cut_midway_leaves_the_old_firmware(tmp_path):
    """The cable is pulled while the files go up: deploy fails clearly, and the board's
    main.py and firmware are still the old ones (the new ones were only staged)."""
    board_dir = str(tmp_path / "board")
    first = PtyBoard(board_dir)
    try:
        p = deploy("--port", first.port, "--link", "tcp://127.0.0.1:7440", "--device", "old-1",
                   "--config", board_config(tmp_path, board_dir), "--reset", "none")
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        first.close()
    before = {n: b for n, b in files_under(board_dir).items() if not n.startswith(".deploy")}
    board = PtyBoard(board_dir, cut_after=60_000)
    try:
        p = deploy("--port", board.port, "--link", "tcp://127.0.0.1:7441", "--device", "new-1",
                   "--config", board_config(tmp_path, board_dir), "--timeout", "3")
        assert p.returncode == 1, p.stdout + p.stderr
        assert "deploy-rover: error:" in p.stderr and "Traceback" not in p.stderr, p.stderr
        after = {n: b for n, b in files_under(board_dir).items() if not n.startswith(".deploy")}
        assert after == before
        assert json.loads(after["rover.json"])["device"] == "old-1"
        # some of the new firmware had reached the staging folder: the cut was mid-flash
        assert [n for n in files_under(board_dir) if n.startswith(".deploy-new/")]
    finally:
        board.close()


def test_frozen_firmware_gets_settings_only_and_boots(anchor, tmp_path):
    """--frozen: the firmware is built into the board (here: on the interpreter's path outside
    the board's folder, as a frozen module is outside its filesystem); only rover.json, the
    secret and main.py go up, and the copies an earlier deploy left in lib/ are removed."""
    board_dir = str(tmp_path / "board")
    built_in = [os.path.join(ROOT, "build", "mpy"), os.path.join(ROOT, "build", "mpy-lib")]
    # a board without it is refused before anything is written
    plain = PtyBoard(board_dir)
    try:
        p = deploy("--port", plain.port, "--link", anchor.link, "--device", "hand-5", "--frozen",
                   "--config", board_config(tmp_path, board_dir))
        assert p.returncode == 1 and "cannot import rover" in p.stderr, p.stdout + p.stderr
        assert files_under(board_dir) == {}
        # an earlier, ordinary deploy: lib/ holds the firmware
        p = deploy("--port", plain.port, "--link", anchor.link, "--device", "hand-5", "--reset", "none",
                   "--config", board_config(tmp_path, board_dir))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "lib/rover/backup.mpy" in files_under(board_dir)
    finally:
        plain.close()
    src = make_tree(os.path.join(board_dir, "data"), 10, 30_000, seed=15)
    want = snapshot_of(src)
    board = PtyBoard(board_dir, extra_path=built_in)
    try:
        code = json.loads(anchorctl(anchor.address, "pair", "hand-5", "--json").stdout)["code"]
        p = deploy("--port", board.port, "--link", anchor.link, "--device", "hand-5", "--pair", code, "--frozen",
                   "--config", board_config(tmp_path, board_dir))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "deployed frozen for hand-5" in p.stdout, p.stdout
        assert board.reset_seen()
        on_board = files_under(board_dir)
        assert not [n for n in on_board if n.startswith("lib/") or n.startswith(".deploy")], sorted(on_board)
        assert {"main.py", "rover.json", "state/pairing.key"} <= set(on_board)
        boot = board.boot()
        try:
            boot.wait_line(r"snapshot 1 committed", 120)
            boot.proc.send_signal(signal.SIGINT)
            boot.finish(timeout=30)
        finally:
            if boot.proc.poll() is None:
                boot.proc.kill()
                boot.proc.wait()
        out = str(tmp_path / "out")
        anchorctl(anchor.address, "restore", "hand-5", "--to", out)
        assert_same_tree(want, out, mtime_resolution_ns=10**9)
    finally:
        board.close()


def test_a_board_with_wifi_needs_it_for_a_tcp_link(tmp_path):
    """On a board with network.WLAN, main.py joins Wi-Fi before a TCP or MQTT link: a config
    without "wifi" would stop at every boot, so it is refused before anything is written."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "network.py").write_text("STA_IF = 0\n\nclass WLAN:\n    def __init__(self, i):\n        pass\n")
    board_dir = str(tmp_path / "board")
    board = PtyBoard(board_dir, extra_path=[str(fakes)])
    try:
        p = deploy("--port", board.port, "--link", "tcp://127.0.0.1:7440", "--device", "hand-6",
                   "--config", board_config(tmp_path, board_dir))
        assert p.returncode == 1 and "needs Wi-Fi" in p.stderr, p.stdout + p.stderr
        assert files_under(board_dir) == {}
        p = deploy("--port", board.port, "--link", "tcp://127.0.0.1:7440", "--device", "hand-6", "--reset", "none",
                   "--config", board_config(tmp_path, board_dir, wifi={"ssid": "home", "password": "secret"}))
        assert p.returncode == 0, p.stdout + p.stderr
        assert json.loads(files_under(board_dir)["rover.json"])["wifi"] == {"ssid": "home", "password": "secret"}
    finally:
        board.close()
