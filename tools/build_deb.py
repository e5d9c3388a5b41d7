#!/usr/bin/env python3
"""Build the anchor's Debian package (`make deb`): build/deb/anchor_VERSION_all.deb.

Architecture `all`: the package carries the project's own wheel (pure Python, built here from a
clean copy of the tree) and, at install, makes a virtual environment in /opt/anchor/venv and
installs the wheel there with its dependencies from the package index pip is configured with
(piwheels on Raspberry Pi OS, PyPI elsewhere; every dependency has arm64 and armhf wheels). So
one .deb serves amd64, arm64 and armhf; the trade-off (network at install time, or
ANCHOR_PIP_OPTIONS pointing at a local wheel folder) is in docs/decisions.md. What the package
creates (user, directories, modes) is in docs/install.md; tests/e2e/test_deb.py installs it.

Usage: tools/build_deb.py [--out DIR]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "anchor"
REVISION = "1"

CONTROL = """Package: anchor
Version: {version}
Architecture: all
Maintainer: Anchor developers <anchor@localhost>
Depends: python3 (>= 3.11), python3-venv, adduser
Recommends: bluez
Suggests: mosquitto
Section: admin
Priority: optional
Installed-Size: {size}
Description: pass-through backup gateway for roving devices
 The anchor relays the traffic of roving wireless devices (BLE, serial radio,
 MQTT) and keeps in flash what passes through it, so that a rover's backup
 uploads only what the anchor has never seen. Runs as the systemd service
 anchor.service; operators use anchorctl.
"""

POSTINST = r"""#!/bin/sh
# anchor postinst: the anchor user, its data directory, the configuration's owner, and the
# virtual environment the anchor runs from (docs/install.md).
set -e
VENV=/opt/anchor/venv
WHEEL=$(ls /usr/share/anchor/wheels/anchor_backup-*.whl)

if [ "$1" = configure ]; then
    # The home exists before the account (adduser checks it), root's until the account does.
    install -d -m 0700 /var/lib/anchor
    if ! getent passwd anchor >/dev/null; then
        adduser --system --group --home /var/lib/anchor --no-create-home \
            --gecos "Anchor backup gateway" anchor >/dev/null
    fi
    # Serial radios belong to dialout, BlueZ's D-Bus API to bluetooth (where those exist).
    for g in dialout bluetooth; do
        if getent group "$g" >/dev/null; then adduser anchor "$g" >/dev/null; fi
    done
    # The store is the rovers' data: nobody else may read it, whatever was there before.
    chown anchor:anchor /var/lib/anchor
    chmod 0700 /var/lib/anchor
    # May hold a broker password: root writes it, the anchor reads it, nobody else.
    chown root:anchor /etc/anchor/anchor.toml
    chmod 0640 /etc/anchor/anchor.toml

    # A fresh environment each time: an upgrade or a new Python gets no leftovers.
    rm -rf "$VENV.new"
    # Debian's Python, which the package depends on (not whatever python3 is first on PATH).
    /usr/bin/python3 -m venv "$VENV.new"
    # ANCHOR_PIP_OPTIONS: e.g. "--no-index --find-links /media/usb/wheels" for an offline box.
    if ! "$VENV.new/bin/pip" install --quiet --disable-pip-version-check $ANCHOR_PIP_OPTIONS "$WHEEL"; then
        rm -rf "$VENV.new"
        echo "anchor: could not install its Python dependencies (see pip's message above)." >&2
        echo "anchor: with no network, set ANCHOR_PIP_OPTIONS='--no-index --find-links DIR' and run" >&2
        echo "anchor: dpkg --configure anchor" >&2
        exit 1
    fi
    rm -rf "$VENV"
    mv "$VENV.new" "$VENV"
    # The venv's scripts name $VENV.new in their first line: rewrite them for $VENV.
    for f in "$VENV"/bin/*; do
        [ -f "$f" ] && [ ! -L "$f" ] || continue
        if head -c 64 "$f" | grep -q "^#!$VENV.new/bin/python"; then
            sed -i "1s|^#!$VENV.new/|#!$VENV/|" "$f"
        fi
    done
    sed -i "s|$VENV.new|$VENV|g" "$VENV/pyvenv.cfg" "$VENV/bin/activate" 2>/dev/null || true
fi

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = configure ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper enable anchor.service >/dev/null || true
fi
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl restart anchor.service || echo "anchor: the service did not start: journalctl -u anchor" >&2
fi
exit 0
"""

PRERM = r"""#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop anchor.service || true
fi
exit 0
"""

POSTRM = r"""#!/bin/sh
# The store in /var/lib/anchor is kept on remove and on purge: it is the rovers' backups.
set -e
case "$1" in
remove|purge)
    rm -rf /opt/anchor/venv /opt/anchor/venv.new
    rmdir /opt/anchor 2>/dev/null || true
    ;;
esac
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge anchor.service >/dev/null || true
    fi
    rmdir /etc/anchor 2>/dev/null || true
    if [ -d /var/lib/anchor ]; then
        echo "anchor: the store in /var/lib/anchor is kept (it holds the rovers' backups); remove it yourself if you mean to" >&2
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
"""


def tree_files():
    """The tree as a clean clone has it (tracked files and new ones not ignored): a wheel built
    from the working directory would also take whatever an old build left in build/lib."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit("build_deb: needs a git checkout of the project")
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def build_wheel(work):
    src = os.path.join(work, "src")
    for rel in tree_files():
        dst = os.path.join(src, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), dst)
    wheels = os.path.join(work, "wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, src],
                   check=True)
    names = os.listdir(wheels)
    if len(names) != 1 or not names[0].endswith("-py3-none-any.whl"):
        sys.exit("build_deb: expected one pure-Python wheel, got %r" % names)
    return os.path.join(wheels, names[0])


def put(path, text, mode):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "deb"))
    args = ap.parse_args()
    # The package's modes are its own, not the caller's: a umask of 077 (the anchor sets one)
    # would make every directory 0700 and dpkg-deb refuses such a control directory.
    os.umask(0o022)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    work = tempfile.mkdtemp(prefix="anchor-deb-")
    try:
        wheel = build_wheel(work)
        stage = os.path.join(work, "stage")
        wdir = os.path.join(stage, "usr", "share", PACKAGE, "wheels")
        os.makedirs(wdir)
        shutil.copy(wheel, wdir)
        with open(os.path.join(ROOT, "hw", "anchor.toml")) as f:
            put(os.path.join(stage, "etc", "anchor", "anchor.toml"), f.read(), 0o640)
        with open(os.path.join(ROOT, "hw", "anchor.service")) as f:
            put(os.path.join(stage, "lib", "systemd", "system", "anchor.service"), f.read(), 0o644)
        for doc in ("README.md", "docs/install.md", "docs/configuration.md", "docs/management.md"):
            with open(os.path.join(ROOT, doc)) as f:
                put(os.path.join(stage, "usr", "share", "doc", PACKAGE, os.path.basename(doc)), f.read(), 0o644)
        bindir = os.path.join(stage, "usr", "bin")
        os.makedirs(bindir)
        for cmd in ("anchor", "anchorctl", "rover"):
            # Dangling until postinst has made the environment.
            os.symlink("/opt/anchor/venv/bin/" + cmd, os.path.join(bindir, cmd))
        size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(stage) for n in ns
                   if not os.path.islink(os.path.join(d, n))) // 1024 + 1
        deb_dir = os.path.join(stage, "DEBIAN")
        put(os.path.join(deb_dir, "control"), CONTROL.format(version="%s-%s" % (version, REVISION), size=size), 0o644)
        put(os.path.join(deb_dir, "conffiles"), "/etc/anchor/anchor.toml\n", 0o644)
        put(os.path.join(deb_dir, "postinst"), POSTINST, 0o755)
        put(os.path.join(deb_dir, "prerm"), PRERM, 0o755)
        put(os.path.join(deb_dir, "postrm"), POSTRM, 0o755)
        os.makedirs(args.out, exist_ok=True)
        out = os.path.join(args.out, "%s_%s-%s_all.deb" % (PACKAGE, version, REVISION))
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, out], check=True,
                       stdout=subprocess.DEVNULL)
        print(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
