#!/usr/bin/env python3
"""Power loss, 100 times: the anchor is SIGKILLed at random points during backups (CPython
rover, and every few backups the MicroPython rover) and relay captures (fetches from a loopback
HTTP origin), restarted on the same data directory each time, with torn segment tails injected
at about a third of the points and damage of the medium at about one in seven (a flipped
payload byte, a flipped tree byte, a deleted segment, a cut catalog WAL, in turn: verify must
report it, restores lose only the files they name, repair and the next backups heal, what no
rover still holds is forgotten). After each restart: the store opens, `anchorctl verify` is
clean, the newest and a random older snapshot restore bit-exact, and the interrupted backup or
fetch is rerun to completion; at the end every committed snapshot is restored. The loop itself
is tests/support/powerloss.py (its docstring says what one point does).

Prints one JSON line:
  {"bench": "powerloss", "points", "kills_during_backup", "kills_during_capture", "kills_idle",
   "kill_phases" (where the kills landed, by the bytes that had crossed the link), "torn_tails",
   "verify_failures", "restore_failures", "snapshots_committed",
   "interrupted_backups_completed", "damage_injected" / "damage_detected" (by kind),
   "silent_losses" (must be 0), "files_named_damaged", "undamaged_restored",
   "snapshots_unhealable", "wal_snapshots_rolled_back", "seconds", ...}
and exits 1 if any check failed (each failure is described on stderr).

Usage: python -m tools.bench_powerloss [--points N] [--seed S] [--damage-share F] [--keep DIR] [-v]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

from tests.support.powerloss import PowerLoss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--damage-share", type=float, default=0.15,
                    help="share of the points that inject one damage of the medium (default 0.15)")
    ap.add_argument("--keep", help="work in DIR and leave it there (default: a temp dir, removed)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per point on stderr")
    a = ap.parse_args(argv)
    work = a.keep or tempfile.mkdtemp(prefix="bench-powerloss-")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.verbose else None
    pl = PowerLoss(os.path.join(work, "pl"), points=a.points, seed=a.seed, damage_share=a.damage_share,
                   log=log)
    try:
        stats = pl.run()
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    for f in pl.failures:
        print("# " + f.replace("\n", "\n# "), file=sys.stderr)
    out = {"bench": "powerloss", "points": stats["points"],
           "kills_during_backup": stats["kills_during_backup"],
           "kills_during_capture": stats["kills_during_capture"],
           "kills_idle": stats["kills_idle"],
           "kills_mpy_backup": stats["kills_mpy_backup"],
           "kill_phases": stats["kill_phases"],
           "torn_tails": stats["torn_tails"],
           "torn_kinds": stats["torn_kinds"],
           "verify_failures": stats["verify_failures"],
           "restore_failures": stats["restore_failures"],
           "resume_failures": stats["resume_failures"],
           "damage_failures": stats["damage_failures"],
           "other_failures": len(pl.failures) - stats["verify_failures"] - stats["restore_failures"]
                             - stats["resume_failures"] - stats["damage_failures"],
           "damage_injected": stats["damage_injected"],
           "damage_detected": stats["damage_detected"],
           "silent_losses": stats["silent_losses"],
           "files_named_damaged": stats["files_named_damaged"],
           "undamaged_restored": stats["undamaged_restored"],
           "damaged_restores": stats["damaged_restores"],
           "snapshots_unhealable": stats["snapshots_unhealable"],
           "wal_snapshots_rolled_back": stats["wal_snapshots_rolled_back"],
           "snapshots_committed": stats["snapshots_committed"],
           "committed_unheard": stats["committed_unheard"],
           "interrupted_backups_completed": stats["interrupted_backups_completed"],
           "interrupted_captures_completed": stats["interrupted_captures_completed"],
           "restores": stats["restores"],
           "seed": a.seed,
           "seconds": stats["seconds"]}
    print(json.dumps(out))
    return 1 if pl.failures else 0


if __name__ == "__main__":
    sys.exit(main())
