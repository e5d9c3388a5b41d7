# `rover ... restore [SNAPSHOT] --to DIR [--path P] [--seed DIR]... [--delete] [--dry-run]`:
# the command around rover/restore.py. A lost link is reopened and the restore resumed (what
# arrived is on disk, and seeds the next session); a file whose copied bytes did not check
# out is written again in another round, then without any seeds.
import sys
import time

from anchor_core.compat import const

_ROUNDS = const(3)


def restore_command(opts, rest, log, prog):
    from rover.conversation import RoverError
    from rover.cli import _fail
    from anchor_core import restoremsg as rm
    # what could not be restored shows even with -q
    warn = prog.warn if prog else (lambda s: print("rover: " + s))
    fail = lambda s: _fail(prog, s)
    snap = None
    if len(rest) > 2 or (len(rest) == 2 and not rest[1].isdigit()):
        fail("restore [SNAPSHOT] --to DIR [--path P] [--seed DIR]... [--delete] [--dry-run]: SNAPSHOT is a number")
        return 2
    if len(rest) == 2:
        snap = int(rest[1])
    retries = opts.get("retries", "3")
    if not retries.isdigit():
        fail("--retries takes a whole number")
        return 2
    flags = (rm.F_DELETE if opts.get("delete") else 0) | (rm.F_DRY_RUN if opts.get("dry-run") else 0)
    # One rover per state folder: a backup of the tree while it is being restored would
    # commit a half-restored tree. The lock's code is dropped once it is taken (as a backup
    # does): a paired radio rover's heap needs the room for the secure channel.
    from anchor_core.compat import unload
    from rover import fsys, state
    fsys.makedirs(opts["state"])
    try:
        state.StateLock(opts["state"], log).take()
    except RoverError as e:
        fail("restore failed: %s" % e)
        return 5 if getattr(e, "locked", False) else 1      # 5: README, "Exit status"
    unload(state)
    state = None
    try:
        return _restore(opts, flags, snap, int(retries), log, warn, fail, prog)
    finally:
        fsys.drop_lock(opts["state"])


def _restore(opts, flags, snap, retries, log, warn, fail, prog):
    from rover.cli import connect
    from rover.link import LinkError, BadAddress, NotPaired
    from rover.conversation import RoverError
    from anchor_core.messages import ProtocolError
    from anchor_core import restoremsg as rm
    t0 = time.time()
    tx = rx = 0
    attempt = 0
    rounds = 0
    total = None
    while True:
        link = None
        try:
            link = connect(opts["link"], opts)
            # The link (and its secure channel) first, then the restore's code: in this order
            # the heap has its large blocks when the channel takes them.
            from rover.restore import Restore
            r = Restore(link, opts["device"], opts["to"], opts["seeds"], opts.get("path", ""), flags, snap,
                        log, warn, prog)
            s = r.run()
            snap = s["snapshot"]             # a resumed or repeated round restores the same one
            if total is None:
                total = s
            else:
                for k in ("files", "written", "copied", "chunks", "data_bytes", "deleted", "kept", "listed",
                          "verify_failed"):
                    total[k] += s[k]
                total["failed"] = s["failed"]
            if not s["verify_failed"]:
                break
            rounds += 1
            if rounds >= _ROUNDS:
                fail("restore failed: files kept failing their check against the snapshot")
                return 1
            if rounds == _ROUNDS - 1:
                flags |= rm.F_NO_SEEDS        # the last round copies nothing from local files
            log("%d files did not check out; another round" % s["verify_failed"])
        except LinkError as e:
            if isinstance(e, BadAddress):
                fail("restore failed: %s" % e)
                return 2
            if attempt >= retries:
                fail("restore failed: %s (after %d attempts)" % (e, attempt + 1))
                return 1
            attempt += 1
            log("link lost (%s); resuming, attempt %d of %d" % (e, attempt, retries))
            time.sleep(min(5, attempt))
        except (RoverError, ProtocolError, OSError, ValueError, NotPaired) as e:
            fail("restore failed: %s" % e)
            return 1
        finally:
            if link is not None:
                tx += link.tx
                rx += link.rx
                try:
                    link.close()
                except Exception:
                    pass
    s = total
    dt = time.time() - t0
    if prog:
        summary = dict(s)
        summary["dry_run"] = bool(flags & rm.F_DRY_RUN)
        if prog.report(summary, tx, rx, dt):
            return 3 if s["failed"] else 0
    if flags & rm.F_DRY_RUN:
        print("rover: dry run of snapshot %d: %d files (%d bytes) to write, about %d bytes of them over the "
              "link before compression; %d to delete; link %d bytes out, %d in; %.2f s"
              % (s["snapshot"], s["files"], s["written"], s["would_send"], s["deleted"], tx, rx, dt))
        return 0
    print("rover: snapshot %d restored: %d files (%d bytes) written, %d bytes copied from local files, "
          "%d chunks (%d bytes) over the link; %d deleted; link %d bytes out, %d in; %.2f s"
          % (s["snapshot"], s["files"], s["written"], s["copied"], s["chunks"], s["data_bytes"], s["deleted"],
             tx, rx, dt))
    if s["failed"]:
        print("rover: %d items could not be restored (listed above \"not restored:\")" % s["failed"],
              file=sys.stderr)
        return 3
    return 0
