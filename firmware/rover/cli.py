# The rover's command line, shared by CPython (`rover`) and MicroPython (`tools/rover-mpy`).
# MicroPython has no argparse, so the parser is a small one of our own.
import sys
import time

from anchor_core.compat import MICROPYTHON, const, unload

def usage():
    # Its text lives in its own module: the rover's heap holds it only when it is printed.
    from rover.usage import USAGE
    return USAGE

_EXIT_INCOMPLETE = const(3)  # snapshot committed, some items not stored (README, "Exit status")
_AGAIN = const(4)      # sessions started over in one run (files changing while uploaded)
_EXIT_LOCKED = const(5)  # another rover holds the state folder (README, "Exit status")

OPTIONS = ("--link", "--device", "--state", "--out", "--to", "--file", "--outbox", "--watch-wait",
           "--retries", "--path", "--seed", "--tag", "--mqtt-user", "--mqtt-password-file", "--mqtt-ca")


def parse(argv):
    opts = {"quiet": False, "links": [], "seeds": []}
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        k = v = None
        if a in OPTIONS:
            if i + 1 >= len(argv):
                raise ValueError("%s needs a value" % a)
            k, v = a[2:], argv[i + 1]
            i += 2
        elif a.startswith("--") and "=" in a and a.split("=", 1)[0] in OPTIONS:
            k, v = a.split("=", 1)
            k = k[2:]
            i += 1
        if k == "link":
            opts["links"].append(v)
            opts["link"] = opts["links"][0]
        elif k == "seed":
            opts["seeds"].append(v)
        elif k is not None:
            opts[k] = v
        elif a in ("-q", "--quiet"):
            opts["quiet"] = True
            i += 1
        elif a in ("--post", "--delete", "--dry-run"):
            opts[a[2:]] = True
            i += 1
        elif a == "--json":
            opts["json"] = True
            i += 1
        elif a in ("-h", "--help"):
            raise ValueError("")
        elif a.startswith("-") and not rest:
            raise ValueError("unknown option %s" % a)
        else:
            rest.append(a)
            i += 1
    if not rest:
        raise ValueError("a command is required")
    for k in ("link", "device", "state"):
        if k not in opts and not (k == "link" and rest[0] == "pair"):
            raise ValueError("--%s is required" % k)
    return opts, rest


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    try:
        opts, rest = parse(argv)
    except ValueError as e:
        if str(e):
            print("rover: %s" % e, file=sys.stderr)
        print(usage(), file=sys.stderr if str(e) else sys.stdout)
        return 2 if str(e) else 0       # --help asked for it: not an error
    from rover.link import LinkError
    from rover.conversation import RoverError
    from anchor_core.messages import ProtocolError

    if not MICROPYTHON:
        # The state holds the pairing secret and the rover's view of its tree: its owner's
        # only (a board's filesystem has no modes; the MicroPython unix port has no chmod).
        from rover.private import make_private
        make_private(opts["state"], umask=rest[0] in ("backup", "pair", "run"))
    cmd = rest[0]
    if "mqtt-user" in opts or "mqtt-password-file" in opts or "mqtt-ca" in opts:
        from rover import link
        link.MQTT_LOGIN = (opts.get("mqtt-user"), opts.get("mqtt-password-file"), opts.get("mqtt-ca"), None)
    if cmd == "pair":
        from rover.securelink import pair_command
        return pair_command(opts, rest)
    if cmd == "run" and len(rest) >= 2:
        # Unattended backups (rover/run_loop.py, rover/run.py): their options are read
        # there, so their names are not in this module, which every backup holds in its heap.
        from rover.run_loop import command
        return command(opts, rest)
    need = {"backup": (2, ()), "fetch": (2, ("out",)), "send": (2, ("to",)), "publish": (2, ("file",)),
            "restore": (0, ("to",))}
    if cmd not in need or (need[cmd][0] and len(rest) != need[cmd][0]) or [k for k in need[cmd][1] if k not in opts]:
        print("rover: unknown command or wrong arguments: %s" % " ".join(rest), file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    prog = opts.get("json")
    if prog or (cmd in ("backup", "restore") and not opts["quiet"] and _tty()):
        # Its code only then: a rover showing no progress has ~2 KB of heap to spare.
        from rover.progress import Progress
        prog = Progress(prog, cmd)
    log = (lambda s: None) if opts["quiet"] else (prog.say if prog else (lambda s: print("rover: " + s)))
    t0 = time.time()
    if cmd == "backup":
        return _backup(opts, rest[1], log, t0, prog=prog)
    if cmd == "restore":
        from rover.restore_cmd import restore_command
        return restore_command(opts, rest, log, prog)
    from rover.link import NotPaired
    try:
        link = connect(opts["link"], opts, True)
        try:
            from rover.relay import Relay
            r = Relay(link, opts["device"], log)
            r.state = opts["state"]
            r.open()
            if cmd == "fetch":
                status, size = r.fetch(rest[1], opts["out"])
                what = "fetched %d bytes (HTTP %d) into %s" % (size, status, opts["out"])
            elif cmd == "send":
                status = r.send_file(rest[1], opts["to"], "POST" if opts.get("post") else "PUT")
                what = "sent %s to %s (HTTP %d)" % (rest[1], opts["to"], status)
            else:
                size = r.publish(rest[1], opts["file"])
                what = "published %d bytes to %s" % (size, rest[1])
        finally:
            link.close()
    except (RoverError, LinkError, ProtocolError, OSError, ValueError, NotPaired) as e:
        _fail(prog, "%s failed: %s" % (cmd, e))
        return 1
    dt = time.time() - t0
    if prog and prog.report(what, link.tx, link.rx, dt):
        return 0
    print("rover: %s; link %d bytes out, %d in; %.2f s" % (what, link.tx, link.rx, dt))
    return 0


def _tty():
    """Whether stderr is a terminal (MicroPython: rover/buffers.py tty())."""
    if not MICROPYTHON:
        return sys.stderr.isatty()
    from rover import buffers
    return buffers.tty()


def _fail(prog, text):
    if prog:
        prog.fail(text)       # --json: also an error object on stdout
    else:
        print("rover: " + text, file=sys.stderr)


# anchor_core.secure.KEY_BYTES, repeated so that checking the key's size does not load the
# secure channel's code before the link's (see connect); load_key checks it again.
_KEY_BYTES = 32


def connect(url, opts, urgent=False):
    """A link to the anchor; secured when this rover is paired (its state holds the key)."""
    import os
    from rover.link import open_link
    try:
        size = os.stat(opts["state"] + "/pairing.key")[6]
    except OSError:
        size = None
    if size is None:
        return open_link(url, opts["device"], urgent)   # an --open anchor: the secure channel's code stays unloaded
    if size != _KEY_BYTES:
        # Before the link: a damaged key is a setting to fix, not a lost link to retry.
        from rover.link import BadAddress
        raise BadAddress("%s/pairing.key is damaged: pair again (rover pair CODE)" % opts["state"])
    # The link first, then the secure channel's code: loaded in this order the paired MQTT
    # rover needs 260,096 B of heap; key and channel code first, 268,544 B (over 256 KiB).
    link = open_link(url, opts["device"], urgent)
    try:
        from rover.securelink import load_key, SecureLink
        return SecureLink(link, opts["device"], load_key(opts["state"]))
    except BaseException:
        link.close()
        raise


def _backup(opts, root, log, t0, url=None, locked=False, prog=None):
    # url, locked: a `run` chose the link and holds the state folder's lock (rover/run.py)
    from rover.link import cost, LinkError, BadAddress
    from rover.conversation import RoverError
    from rover.link import NotPaired
    from rover.backup import Backup, CHANGED
    from anchor_core.messages import ProtocolError, E_TREE
    wait = opts.get("watch-wait", "600")
    retries = opts.get("retries", "3")
    if not wait.isdigit() or not retries.isdigit():
        _fail(prog, "--watch-wait and --retries take whole numbers")
        return 2
    try:
        if url is None:
            url = opts["links"][0]
            for u in opts["links"][1:]:
                if cost(u) < cost(url):
                    url = u
    except LinkError as e:
        _fail(prog, "backup failed: %s" % e)
        return 2
    # What this snapshot is of, for `anchorctl snapshots`; and a note when the folder is not
    # the one this state last backed up (the snapshot then replaces that whole tree).
    from rover import about as ab
    about = ab.before(opts["state"], root, opts.get("tag"), prog.warn if prog else (lambda s: print("rover:", s)))
    unload(ab)
    ab = None           # the frame's reference would keep its bytecode for the whole backup
    tx = rx = 0
    attempt = 0
    volatile = {}        # files that changed while uploaded, over this run's sessions
    again = 0            # sessions started over for such a file or a tree mismatch
    full = False
    warn = prog.warn if prog else (lambda s: print("rover:", s))   # even with --quiet
    while True:
        link = None
        try:
            link = connect(url, opts)
            s = (prog.backup() if prog else Backup)(link, opts["device"], opts["state"], root, log,
                                                     opts.get("outbox"), int(wait), warn, volatile, full,
                                                     about).run(locked)
            from rover import about as ab
            ab.after(opts["state"], root)
            unload(ab)
            break
        except LinkError as e:
            if isinstance(e, BadAddress):       # a setting to fix, not a link to wait for
                _fail(prog, "backup failed: %s" % e)
                return 2
            # A radio comes and goes: reopen and resume; what the anchor has is not sent again.
            if attempt >= int(retries):
                _fail(prog, "backup failed: %s (after %d attempts)" % (e, attempt + 1))
                return 1
            attempt += 1
            log("link lost (%s); resuming, attempt %d of %d" % (e, attempt, int(retries)))
            time.sleep(min(5, attempt))
        except (RoverError, ProtocolError, OSError, ValueError, NotPaired) as e:
            if getattr(e, "code", 0) == CHANGED:
                # Another session, which reads the file again; a file that changes under two
                # uploads is skipped and listed. Bounded: each restart names one more file.
                again += 1
                volatile[e.rel] = volatile.get(e.rel, 0) + 1
                if again > _AGAIN:
                    _fail(prog, "backup failed: files keep changing during the backup (%d sessions)" % again)
                    return 1
                log("%s; starting the session again" % e)
                continue
            if getattr(e, "code", 0) == E_TREE and not full:
                # The anchor built another tree from our delta than we did: our copy of the
                # parent is not its. Once more, describing the whole tree (uploads nothing
                # the anchor holds).
                log("%s; describing the whole tree" % e)
                full = True
                continue
            _fail(prog, "backup failed: %s" % e)
            return _EXIT_LOCKED if getattr(e, "locked", False) else 1
        finally:
            if link is not None:
                tx += link.tx
                rx += link.rx
                ch = None
                inner = link
                for _ in range(3):       # SecureLink -> StreamLink -> ChannelLink
                    ch = getattr(inner, "ch", None)
                    inner = getattr(inner, "link", None)
                    if ch is not None or inner is None:
                        break
                if ch is not None and (ch.retransmits or ch.dropped):
                    log("radio link: %d packets resent (%d timeouts), %d received dropped"
                        % (ch.retransmits, ch.timeouts, ch.dropped))
                # These names would keep this link's channel and its buffers alive through
                # the next attempt: two links' worth did not fit 256 KB once an MQTT link
                # was lost mid-backup.
                ch = inner = None
                try:
                    link.close()
                except Exception:
                    pass
                link = None
    dt = time.time() - t0
    if prog and prog.report(s, tx, rx, dt):
        return _EXIT_INCOMPLETE if s["skipped"] else 0
    print("rover: snapshot %d committed: %d entries, %d bytes; %d changed, %d deleted; "
          "%d chunks (%d bytes) uploaded; link %d bytes out, %d in; %.2f s"
          % (s["snapshot"], s["entries"], s["bytes"], s["changed"], s["deleted"], s["chunks_sent"],
             s["data_bytes_sent"], tx, rx, dt))
    if s.get("chunks_proven"):
        print("rover: %d chunks another rover brought in were matched on proof that we hold "
              "them, not uploaded" % s["chunks_proven"])
    if s["skipped"]:
        # restic's convention: the snapshot holds everything else, but not all of the tree
        print("rover: %d items were not stored exactly (listed above \"not stored:\")" % s["skipped"])
        return _EXIT_INCOMPLETE
    return 0


if __name__ == "__main__" and not MICROPYTHON:
    sys.exit(main())
