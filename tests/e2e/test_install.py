"""`pip install` of a built wheel (not editable) into a fresh environment gives working `anchor`,
`rover` and `anchorctl` from any folder: the wheel is built from a copy of the tree as a clean
clone has it (no generated gear.py in it: the build makes it), and a backup runs through the
installed commands alone."""
import json
import os
import subprocess
import sys
import zipfile

from tools import build_deb


def run(*cmd, **kw):
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=600, **kw)
    assert p.returncode == 0, "%s failed (%d):\n%s\n%s" % (cmd, p.returncode, p.stdout, p.stderr)
    return p


def test_wheel_installs_and_runs_from_anywhere(tmp_path):
    wheel = build_deb.build_wheel(str(tmp_path / "build"))
    # The copy the wheel was built from had no gear.py; the wheel has it, generated.
    assert not os.path.exists(tmp_path / "build" / "src" / "firmware" / "anchor_core" / "gear.py")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        gear = z.read("anchor_core/gear.py").decode()
    assert "GEAR_LO" in gear and "anchor/api/cli.py" in names and "rover/cli.py" in names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    run(str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", wheel)
    bin_ = venv / "bin"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Nothing of the checkout on the path: the installed package alone.
    env = {"PATH": "%s:/usr/bin:/bin" % bin_, "HOME": str(tmp_path)}
    for cmd in ("anchor", "rover", "anchorctl"):
        assert "usage" in run(str(bin_ / cmd), "--help", cwd=str(elsewhere), env=env).stdout
    p = run(str(bin_ / "python"), "-c", "import anchor_core.gear, anchor.app; print(anchor.app.__file__)",
            cwd=str(elsewhere), env=env)
    assert str(venv) in p.stdout

    ready = elsewhere / "port"
    proc = subprocess.Popen([str(bin_ / "anchor"), "serve", "--data", "store", "--listen", "tcp://127.0.0.1:0",
                             "--ready-file", str(ready), "--open"], cwd=str(elsewhere), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "data in %s" % (elsewhere / "store") in proc.stdout.readline()
        link = "tcp://127.0.0.1:%d" % int(ready.read_text())
        src = elsewhere / "files"
        src.mkdir()
        (src / "a.txt").write_bytes(b"installed anchor " * 5000)
        run(str(bin_ / "rover"), "--link", link, "--device", "installed", "--state", "state", "backup", "-q",
            str(src), cwd=str(elsewhere), env=env)
        out = run(str(bin_ / "anchorctl"), "--anchor", "unix:%s" % (elsewhere / "store" / "mgmt.sock"),
                  "snapshots", "installed", "--json", cwd=str(elsewhere), env=env).stdout
        snaps = json.loads(out)
        assert len(snaps) == 1 and snaps[0]["entries"] == 1 and snaps[0]["bytes"] == 17 * 5000
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()
        proc.stderr.close()
