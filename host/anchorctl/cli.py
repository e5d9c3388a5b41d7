"""anchorctl: the operator's command line. Each command is a thin shell over anchorctl.client."""
import argparse
import json
import sys
import time

from anchorctl.client import AnchorError, Client, ENV, DEFAULT

# `anchorctl restore` exit status when it restored everything it could and some files it could
# not (named on stderr); 1 is for a restore that did not finish (restic uses 3 alike).
RESTORE_PARTIAL = 3
# `anchorctl clone` exit status when the image holds everything else but some entries the
# target filesystem cannot hold (symlinks, names that are not UTF-8 or too long on littlefs),
# named on stderr; a file the anchor cannot read back is RESTORE_PARTIAL, as for restore.
CLONE_NOT_REPRESENTABLE = 4
# Fewer free blocks than this in a clone image earns a note: littlefs copies a metadata pair
# to write it, and the rover keeps its state on the board too.
FEW_BLOCKS = 8


def _when(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def cmd_devices(c, a):
    rows = c.devices()
    if a.json:
        return rows
    print("%-24s %9s %7s  %s" % ("DEVICE", "SNAPSHOTS", "LATEST", "LAST SEEN"))
    for r in rows:
        print("%-24s %9d %7s  %s" % (r["device"], r["snapshots"], r["latest"] or "-", _when(r["last_seen"])))


def cmd_snapshots(c, a):
    rows = c.snapshots(a.device)
    if a.json:
        return rows
    print("%5s %6s  %-19s %8s %10s  %-16s %-12s %-10s %s" % ("ID", "PARENT", "TIME", "ENTRIES", "SIZE", "ROOT",
                                                           "HOST", "TAG", "PATH"))
    for r in rows:
        print("%5d %6s  %-19s %8d %10s  %-16s %-12s %-10s %s"
              % (r["id"], r["parent"] or "-", _when(r["time"]), r["entries"], _size(r["bytes"]), r["root"][:16],
                 shown(r.get("host") or "-"), shown(r.get("tag") or "-"), shown(r.get("path") or "-")))


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def shown(name):
    """A name as a terminal may show it: control characters (C0, DEL, C1), which could move
    the cursor, rewrite what is on screen or hide a line, and bytes that were not UTF-8
    (surrogate escapes) come out as backslash escapes; a backslash is doubled, so what is
    shown names one path only."""
    out = []
    for ch in name:
        o = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif o < 0x20 or 0x7F <= o < 0xA0:
            out.append("\\x%02x" % o)
        elif 0xDC80 <= o <= 0xDCFF:
            out.append("\\x%02x" % (o - 0xDC00))
        elif 0xD800 <= o <= 0xDFFF or o in (0x2028, 0x2029) or 0x202A <= o <= 0x202E or 0x2066 <= o <= 0x2069:
            out.append("\\u%04x" % o)     # lone surrogates, line separators, bidi overrides
        else:
            out.append(ch)
    return "".join(out)


def cmd_ls(c, a):
    rows = c.ls(a.device, a.snapshot, a.path, a.recursive)
    if a.json:
        return rows
    for r in rows:
        t = {"file": "-", "dir": "d", "symlink": "l"}[r["type"]]
        extra = " -> " + shown(r["target"]) if "target" in r else ""
        print("%s%s %10d  %s  %s%s" % (t, _mode(r["mode"]), r["size"], _when(r["mtime_ns"] / 1e9),
                                      shown(r["path"]), extra))


def _mode(mode):
    out = ""
    for shift in (6, 3, 0):
        bits = (mode >> shift) & 7
        out += ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")
    return out


class Incomplete(AnchorError):
    """The command did its work, but not all of it: exit with `status`."""

    def __init__(self, text, status, out=None):
        AnchorError.__init__(self, text)
        self.status = status
        self.out = out


def cmd_restore(c, a):
    plan = []
    counts = c.restore(a.device, a.to, a.snapshot, a.path, a.keep_special_bits, a.overwrite, a.dry_run, plan)
    if not a.json:
        for action, path in plan:
            print("%-9s %s" % ("would " + action if action in ("write", "overwrite") else action, shown(path)))
        print("%s %d files (%s), %d folders, %d symlinks to %s"
              % ("dry run: would restore" if a.dry_run else "restored", counts["files"], _size(counts["bytes"]),
                 counts["dirs"], counts["symlinks"], a.to))
        if counts["unchanged"]:
            print("%d files already there and unchanged (--overwrite if-changed)" % counts["unchanged"])
    elif a.dry_run:
        counts = dict(counts, plan=[{"action": x, "path": p} for x, p in plan])
    if counts["skipped"]:
        n = len(counts["skipped"])
        print("anchorctl: %d file%s already in %s left as %s (--overwrite if-changed or always to replace): %s%s"
              % (n, "" if n == 1 else "s", a.to, "they are" if n > 1 else "it is",
                 ", ".join(shown(x) for x in counts["skipped"][:5]), ", ..." if n > 5 else ""), file=sys.stderr)
    for f in counts["failed"]:
        print("anchorctl: not restored: %s: %s" % (shown(f["path"]), f["error"]), file=sys.stderr)
    if counts["incomplete"]:
        raise Incomplete("restore incomplete: %s" % counts["incomplete"], 1, counts)
    if counts["failed"]:
        raise Incomplete("%d files could not be restored (named above); everything else was, and "
                         "no file already in %s was replaced by them" % (len(counts["failed"]), a.to),
                         RESTORE_PARTIAL, counts)
    return counts


def _count(text):
    try:
        n = int(text, 0)            # 4096 or 0x1000, as partition tables write sizes
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text)
    if n <= 0:
        raise argparse.ArgumentTypeError("must be above 0: %r" % text)
    return n


def cmd_clone(c, a):
    from anchorctl.clone import clone_dir, clone_littlefs
    sized = a.block_size is not None or a.block_count is not None
    if a.fs == "littlefs2":
        if a.block_size is None or a.block_count is None:
            raise AnchorError("--fs littlefs2 needs --block-size and --block-count (the board's flash "
                              "block size and its data partition's size in blocks: docs/management.md, \"Clone\")")
        counts = clone_littlefs(c, a.device, a.snapshot, a.image, a.block_size, a.block_count)
    else:
        if sized:
            raise AnchorError("--block-size and --block-count are for --fs littlefs2 only")
        counts = clone_dir(c, a.device, a.snapshot, a.image)
    if not a.json:
        print("cloned %d files (%s), %d folders, %d symlinks to %s"
              % (counts["files"], _size(counts["bytes"]), counts["dirs"], counts["symlinks"], a.image))
        if a.fs == "littlefs2":
            print("littlefs2 image: %d of %d blocks of %d bytes used" % (counts["blocks_used"], counts["block_count"],
                                                                      a.block_size))
    if a.fs == "littlefs2" and counts["block_count"] - counts["blocks_used"] < FEW_BLOCKS:
        print("anchorctl: note: %d blocks are free in the image: a rover that writes its state there "
              "may find it full" % (counts["block_count"] - counts["blocks_used"]), file=sys.stderr)
    for f in counts["not_cloned"] + counts["failed"]:
        print("anchorctl: not cloned: %s: %s" % (shown(f["path"]), f["error"]), file=sys.stderr)
    if counts.get("modes_lost"):
        print("anchorctl: note: littlefs keeps no modes: %d files lose an executable or setuid/setgid bit"
              % counts["modes_lost"], file=sys.stderr)
    if counts["failed"]:
        raise Incomplete("%d files could not be read back from the anchor (named above); the clone at %s "
                         "holds everything else" % (len(counts["failed"]), a.image), RESTORE_PARTIAL, counts)
    if counts["not_cloned"]:
        raise Incomplete("%d entries cannot be held by %s (named above); the clone at %s holds everything "
                         "else" % (len(counts["not_cloned"]), a.fs, a.image), CLONE_NOT_REPRESENTABLE, counts)
    return counts


def cmd_stats(c, a):
    s = c.stats()
    if a.json:
        return s
    st = s["store"]
    print("store: %d chunks, %s raw, %s on flash" % (st.get("chunks", 0), _size(st.get("raw_bytes", 0)),
                                                       _size(st.get("stored_bytes", 0))))
    print("links: %s received, %s sent" % (_size(s["link_bytes"]["rx"]), _size(s["link_bytes"]["tx"])))
    for dev, counters in sorted(s["devices"].items()):
        print("%s: %s" % (dev, ", ".join("%s=%d" % kv for kv in sorted(counters.items()))))
    live = s.get("sessions", [])
    print("live sessions: %d" % len(live))
    for x in live:
        print("  %s: %s received, %s sent so far, running %.0f s (since %s)"
              % (shown(x["device"]) if x["device"] is not None else "(no HELLO yet)",
                 _size(x["link_rx"]), _size(x["link_tx"]), x["seconds"], _when(x["started"])))


def cmd_forget(c, a):
    r = c.forget(a.device, a.snapshot)
    if a.json:
        return r
    print("snapshot %d of %s forgotten; %d chunks are pass-through data now"
          % (r["forgotten"], a.device, r["chunks_released"]))


def cmd_prune(c, a):
    r = c.prune(a.device, a.keep_last, a.keep_daily, a.keep_weekly, a.dry_run)
    if a.json:
        return r
    for s in r["keep"]:
        print("keep    %5d  %-19s %10s  %s" % (s["id"], _when(s["time"]), _size(s["bytes"]), ", ".join(s["reasons"])))
    for s in r["forget"]:
        print("forget  %5d  %-19s %10s" % (s["id"], _when(s["time"]), _size(s["bytes"])))
    if r["dry_run"]:
        print("dry run: %d snapshots would be forgotten, %d kept; %s would become pass-through data"
              % (len(r["forget"]), len(r["keep"]), _size(r["bytes_released"])))
    else:
        print("%d snapshots forgotten, %d kept; %s became pass-through data (evicted first when space "
              "is needed); %s evicted now" % (len(r["forget"]), len(r["keep"]), _size(r["bytes_released"]),
                                             _size(r["evicted_bytes"])))


def cmd_pair(c, a):
    r = c.pair(a.device)
    if a.json:
        return r
    print("pairing code for %s:  %s" % (r["device"], r["code"]))
    print("on the rover:  rover --device %s --state DIR pair %s" % (r["device"], r["code"]))
    print("(on a board, the same command at the rover's console; an earlier pairing of %s no longer works)" % r["device"])
    if r.get("fleet") == "published":
        print("the pairing is in the fleet store: every anchor of the fleet serves %s" % r["device"])
    elif r.get("fleet"):
        print("fleet: %s" % r["fleet"], file=sys.stderr)


def cmd_unpair(c, a):
    r = c.unpair(a.device)
    fleet = r.get("fleet")
    if not a.json:
        if fleet is None:
            print("%s unpaired: it gets nothing but a refusal now" % a.device)
        elif fleet.startswith("revoked"):
            print("%s unpaired here and %s in the fleet store: every anchor of the fleet refuses it at its "
                  "next handshake and cuts its open links within 5 minutes" % (a.device, fleet))
        else:
            print("%s unpaired here; fleet: %s" % (a.device, fleet))
    if fleet is not None and not fleet.startswith("revoked"):
        raise Incomplete("the fleet's other anchors still serve %s" % a.device, 1, r if a.json else None)
    return r


def cmd_verify(c, a):
    r = c.verify(a.repair)
    if not a.json:
        print("%d chunks re-read and re-hashed: %d bad; %d chunks kept by snapshots missing"
              % (r["chunks"], len(r["bad"]), r["missing"]))
        print("%d snapshots (%d trees) checked: %d cannot be restored whole; catalog %s, index %s"
              % (r["snapshots"], r["trees"], len(r["damaged_snapshots"]), r["catalog"], r["index"]))
        for cid in r["bad"][:20]:
            print("bad chunk %s" % cid)
        for p in r["segments"]:
            print("damaged: %s" % p)
        for p in r["damage_at_start"]:
            print("found at start: %s" % p)
        for d in r["damaged_snapshots"][:50]:
            print("snapshot %d of %s: %s" % (d["snapshot"], shown(d["device"]), d["error"]))
        rep = r.get("repair")
        if rep is not None:
            print("repair: %d chunks quarantined (a backup of a rover that still has them uploads them "
                  "again), %d segment headers rewritten, %d lost segments forgotten, index %s"
                  % (rep["quarantined"], rep["headers_rewritten"], rep["segments_lost"],
                     "rebuilt from the segments" if rep["index_rebuilt"] else "kept"))
    if not r["ok"]:
        raise Incomplete("the store is damaged" + ("" if a.repair else
                         " (anchorctl verify --repair quarantines what is bad so backups heal it)"),
                         1, r if a.json else None)
    return r


def cmd_watch(c, a):
    rows = c.watch()
    if a.json:
        return rows
    if not rows:
        print("the watch list is empty")
    for r in rows:
        print("%-16s %-40s %10s  %6.0f s left" % (r["device"], r["path"], _size(r["size"]), r["seconds_left"]))


def cmd_fleet(c, a):
    if a.what == "new-key":
        from anchor.fleet import keys
        if not a.file:
            raise AnchorError("anchorctl fleet new-key FILE: say where to write the key")
        try:
            keys.write_key_file(a.file, keys.new_key())
        except FileExistsError:
            raise AnchorError("%s exists: a fleet key is never written over (the fleet's data would "
                              "become unreadable to this anchor)" % a.file)
        except OSError as e:
            raise AnchorError("%s: %s" % (a.file, e.strerror or e))
        out = {"key_file": a.file}
        if not a.json:
            print("fleet key written to %s (mode 0600): copy it to every anchor of the fleet, "
                  "and keep a copy off the anchors: without it the store's data cannot be read" % a.file)
        return out
    if a.what == "take-over":
        if not a.file:
            raise AnchorError("anchorctl fleet take-over DEVICE: say which rover")
        r = c.fleet_take_over(a.file)
        if not a.json:
            print("%s: %d snapshot%s taken over from the fleet store; held here now: %s"
                  % (r["device"], len(r["taken_over"]), "" if len(r["taken_over"]) == 1 else "s",
                     ", ".join(map(str, r["snapshots"])) or "none"))
        return r
    if a.what == "offload":
        r = c.fleet_offload()
        if not a.json:
            print("offload pass started (state: %s); anchorctl fleet status shows its progress" % r["state"])
        return r
    r = c.fleet_status()
    if a.json:
        return r
    print("fleet %s in %s; this anchor %s: %s" % (r["fleet"], r["store"], r["anchor"], r["state"]))
    print("local (flash):  %d chunks, %s" % (r["local"]["chunks"], _size(r["local"]["bytes"])))
    print("offloaded:      %d chunks, %s" % (r["offloaded"]["chunks"], _size(r["offloaded"]["bytes"])))
    pend = r["pending"]
    print("pending:        %d snapshot%s%s" % (pend["snapshots"], "" if pend["snapshots"] == 1 else "s",
                                               (" (" + ", ".join(pend["devices"]) + ")") if pend["devices"] else ""))
    print("last pass:      %s" % _when(r["last_pass"]))
    if r.get("not_offloaded"):
        print("not offloaded:  %s: %s" % (", ".join(r["not_offloaded"]["devices"]), r["not_offloaded"]["why"]))
    if r["last_error"]:
        print("last error:     %s" % r["last_error"])
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(prog="anchorctl", description="Manage an Anchor gateway")
    ap.add_argument("--anchor", default=None,
                    help="management address, unix:PATH (default $%s or %s)" % (ENV, DEFAULT))
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, fn, help):
        p = sub.add_parser(name, help=help)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(fn=fn)
        return p

    add("devices", cmd_devices, "list rovers the anchor knows")
    p = add("snapshots", cmd_snapshots, "list a rover's snapshots")
    p.add_argument("device")
    p = add("ls", cmd_ls, "list a folder of a snapshot")
    p.add_argument("device")
    p.add_argument("snapshot", nargs="?", default="latest")
    p.add_argument("path", nargs="?", default="")
    p.add_argument("-r", "--recursive", action="store_true")
    p = add("restore", cmd_restore, "restore a snapshot to a folder")
    p.add_argument("device")
    p.add_argument("snapshot", nargs="?", default="latest")
    p.add_argument("--to", required=True, help="target folder (created if missing)")
    p.add_argument("--path", default="", help="restore only this file or folder")
    p.add_argument("--keep-special-bits", action="store_true",
                   help="restore setuid/setgid bits too (dropped by default)")
    p.add_argument("--overwrite", choices=("never", "if-changed", "always"), default="never",
                   help="a file or symlink already at a path: never replaced (default), replaced if-changed "
                        "(size, mtime or mode differ), or always")
    p.add_argument("--dry-run", action="store_true", help="write nothing; list what a restore would do")
    p = add("clone", cmd_clone, "write a snapshot as the filesystem of a replacement rover: a littlefs2 "
            "image MicroPython mounts as it is, or a folder tree; exit 3 if the anchor cannot read some "
            "files back, 4 if the filesystem cannot hold some entries (both named)")
    p.add_argument("device")
    p.add_argument("snapshot", nargs="?", default="latest")
    p.add_argument("--image", required=True, metavar="OUT",
                   help="the image file (littlefs2) or folder (dir) to write; it must not exist "
                        "(dir: or be an empty folder)")
    p.add_argument("--fs", required=True, choices=("littlefs2", "dir"))
    p.add_argument("--block-size", type=_count, default=None, metavar="N",
                   help="littlefs2: the flash's erase block in bytes (4096 on ESP32, RP2)")
    p.add_argument("--block-count", type=_count, default=None, metavar="N",
                   help="littlefs2: blocks in the image (the data partition's size / block size)")
    p = add("forget", cmd_forget, "remove a snapshot (its content becomes evictable pass-through data)")
    p.add_argument("device")
    p.add_argument("snapshot")
    p = add("prune", cmd_prune, "forget snapshots by retention rules (the latest is always kept); "
            "what only they kept becomes evictable pass-through data")
    p.add_argument("device")
    p.add_argument("--keep-last", type=int, default=None, metavar="N", help="keep the N newest snapshots")
    p.add_argument("--keep-daily", type=int, default=None, metavar="N",
                   help="keep the newest snapshot of each of the last N days that have one (UTC)")
    p.add_argument("--keep-weekly", type=int, default=None, metavar="N",
                   help="keep the newest snapshot of each of the last N weeks that have one (ISO weeks, UTC)")
    p.add_argument("--dry-run", action="store_true", help="show what would be forgotten; change nothing")
    add("stats", cmd_stats, "store and link statistics")
    p = add("pair", cmd_pair, "create a rover's pairing secret and print the code to give it")
    p.add_argument("device")
    p = add("unpair", cmd_unpair, "revoke a rover's pairing at once (its live sessions are cut)")
    p.add_argument("device")
    p = add("verify", cmd_verify, "check everything a restore depends on (chunks, segments, index, catalog, "
            "every snapshot's tree and files); exit 1 if anything is damaged")
    p.add_argument("--repair", action="store_true",
                   help="quarantine bad or lost chunks (the next backup of a rover that still has them "
                        "uploads them again), rewrite damaged segment headers, rebuild a damaged index")
    add("watch", cmd_watch, "data backups wait to see pass through the relay")
    p = add("fleet", cmd_fleet, "the fleet tier: status (local, offloaded, pending), offload (a pass now: "
            "the uplink is cheap), take-over DEVICE (a rover's pairing and snapshots from the store, to "
            "restore it here), new-key FILE (a fleet key for `anchor serve --fleet-key-file`)")
    p.add_argument("what", nargs="?", choices=("status", "offload", "take-over", "new-key"), default="status")
    p.add_argument("file", nargs="?", default=None, metavar="ARG", help="new-key: the file to write; take-over: the rover")
    a = ap.parse_args(argv)
    status = 0
    try:
        out = a.fn(Client(a.anchor), a)
    except Incomplete as e:
        print("anchorctl: %s" % e, file=sys.stderr)
        out, status = e.out, e.status
        if out is None:
            return status
    except AnchorError as e:
        print("anchorctl: %s" % e, file=sys.stderr)
        return 1
    if a.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    return status


if __name__ == "__main__":
    sys.exit(main())
