"""The Debian package, built by `make deb`'s script and installed on this machine with dpkg
(amd64 here stands in for a Pi's arm64: the package is architecture `all`): the user, the
directories and their modes, the configuration, the unit (checked by systemd-analyze), a
daemon started as the anchor user from the installed configuration, then removal and purge.
Root only; skipped, saying so, elsewhere."""
import grp
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib

import pytest

from tests.support.harness import ROOT

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a .deb: needs root"),
    pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg (a Debian system)"),
]

ANALYZE = shutil.which("systemd-analyze")


def sh(*cmd, check=True, **kw):
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=300, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (cmd, p.returncode, p.stdout, p.stderr))
    return p


def mode_owner(path):
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


@pytest.fixture
def clean_machine():
    """No anchor package, account or store before and after (this machine is the test's)."""
    def wipe():
        sh("dpkg", "--purge", "anchor", check=False)
        if shutil.which("deluser"):
            sh("deluser", "--system", "anchor", check=False)
        shutil.rmtree("/var/lib/anchor", ignore_errors=True)
        shutil.rmtree("/run/anchor", ignore_errors=True)
    if sh("dpkg-query", "-W", "anchor", check=False).returncode == 0:
        pytest.skip("an anchor package is installed on this machine already; not touching it")
    wipe()
    yield
    wipe()


def test_deb_installs_a_service_that_runs_and_removes_cleanly(tmp_path, clean_machine):
    out = sh(sys.executable, os.path.join(ROOT, "tools", "build_deb.py"), "--out", str(tmp_path)).stdout.strip()
    assert out.endswith("_all.deb") and os.path.exists(out)
    info = sh("dpkg-deb", "-f", out, "Architecture", "Depends").stdout
    assert "Architecture: all" in info and "python3-venv" in info

    sh("dpkg", "-i", out)
    # The account: a system user with its group, no login.
    pw = pwd.getpwnam("anchor")
    assert pw.pw_uid < 1000 and grp.getgrgid(pw.pw_gid).gr_name == "anchor"
    assert pw.pw_shell in ("/usr/sbin/nologin", "/bin/false")
    assert mode_owner("/var/lib/anchor") == (0o700, "anchor", "anchor")
    assert mode_owner("/etc/anchor/anchor.toml") == (0o640, "root", "anchor")
    with open("/etc/anchor/anchor.toml", "rb") as f:
        conf = tomllib.load(f)
    assert conf["data"] == "/var/lib/anchor" and conf["mgmt"] == "unix:/run/anchor/mgmt.sock"
    assert os.path.exists("/lib/systemd/system/anchor.service")
    for cmd in ("anchor", "anchorctl", "rover"):
        assert os.access("/usr/bin/" + cmd, os.X_OK), cmd
    assert "/etc/anchor/anchor.toml" in sh("dpkg-query", "-W", "-f=${Conffiles}", "anchor").stdout

    if ANALYZE:
        p = sh(ANALYZE, "verify", "/lib/systemd/system/anchor.service", check=False)
        # verify exits 0 on some warnings: nothing it says about our unit is acceptable.
        assert p.returncode == 0 and "anchor.service" not in p.stdout + p.stderr, p

    # The daemon as the service runs it: the anchor user, the installed configuration, the
    # runtime directory systemd would make; rovers on a free loopback port for the test.
    os.makedirs("/run/anchor", mode=0o750, exist_ok=True)
    os.chown("/run/anchor", pw.pw_uid, pw.pw_gid)
    # pytest's tmp folders are root's alone; the service manager's socket must be reachable.
    ndir = tempfile.mkdtemp(prefix="anchor-notify-", dir="/tmp")
    os.chmod(ndir, 0o755)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    npath = os.path.join(ndir, "notify")
    notify.bind(npath)
    os.chmod(npath, 0o777)
    env = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": npath, "HOME": "/var/lib/anchor"}
    proc = subprocess.Popen(["/usr/bin/anchor", "serve", "--config",
                             "/etc/anchor/anchor.toml", "--listen", "tcp://127.0.0.1:0",
                             "--ready-file", "/run/anchor/port"], env=env, cwd="/",
                            user="anchor", group="anchor", extra_groups=[],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        heard = ""
        deadline = time.monotonic() + 60
        while "READY=1" not in heard and proc.poll() is None and time.monotonic() < deadline:
            if select.select([notify], [], [], 1.0)[0]:
                heard += notify.recv(4096).decode() + "\n"
        assert "READY=1" in heard, (proc.poll(), heard)
        with open("/run/anchor/port") as f:
            port = int(f.read())
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert mode_owner("/run/anchor/mgmt.sock")[1:] == ("anchor", "anchor")
        assert stat.S_IMODE(os.stat("/run/anchor/mgmt.sock").st_mode) == 0o600
        p = sh("/usr/bin/anchorctl", "--anchor", "unix:/run/anchor/mgmt.sock", "devices", env=env,
               user="anchor", group="anchor", extra_groups=[])
        assert p.returncode == 0
        # The store the service made is the anchor's alone.
        assert os.path.exists("/var/lib/anchor/ANCHOR-DATA")
        assert mode_owner("/var/lib/anchor/catalog.sqlite")[:2] == (0o600, "anchor")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        notify.close()
        shutil.rmtree(ndir, ignore_errors=True)
    assert rc == 0, err
    assert "stopped on SIGTERM" in err

    # Remove: commands and environment go, configuration and store stay.
    sh("dpkg", "--remove", "anchor")
    assert not os.path.lexists("/usr/bin/anchor") and not os.path.exists("/opt/anchor")
    assert os.path.exists("/etc/anchor/anchor.toml")
    assert os.path.exists("/var/lib/anchor/ANCHOR-DATA")
    # Purge: the configuration goes; the rovers' backups are never deleted by the package.
    p = sh("dpkg", "--purge", "anchor")
    assert not os.path.exists("/etc/anchor")
    assert os.path.exists("/var/lib/anchor/ANCHOR-DATA")
    assert "kept" in p.stderr


def test_unit_file_verifies(tmp_path):
    """hw/anchor.service as systemd reads it (ExecStart pointed at this checkout's anchor)."""
    if not ANALYZE:
        pytest.skip("systemd-analyze not installed")
    with open(os.path.join(ROOT, "hw", "anchor.service")) as f:
        unit = f.read()
    for want in ("Type=notify", "WatchdogSec=", "User=anchor", "ProtectSystem=strict", "PrivateTmp=yes",
                 "NoNewPrivileges=yes", "StateDirectory=anchor", "ExecStart=/usr/bin/anchor serve --config /etc/anchor/anchor.toml"):
        assert want in unit, want
    unit = unit.replace("/usr/bin/anchor", os.path.join(os.path.dirname(sys.executable), "anchor"))
    path = tmp_path / "anchor.service"
    path.write_text(unit)
    p = sh(ANALYZE, "verify", str(path), check=False)
    assert p.returncode == 0 and "anchor.service" not in p.stdout + p.stderr, p
