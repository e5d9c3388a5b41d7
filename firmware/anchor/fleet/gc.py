"""Garbage collection of the packs no index entry names (docs/fleet.md, section 2). CPython only.

A pack nobody names is deleted once it is too old for any writer to be about to name it.
An anchor offloads in this order: PUT the pack, read it back, PUT an index object naming its
chunks (fleet/offload.py). An anchor killed between the two PUTs leaves a pack nobody names:
an orphan, which only this sweep ever removes.

Why a pack a writer is still finishing is never swept: the offload deadline. A writer has at
most index.WRITE_WINDOW (1 hour) from its pack PUT to its index PUT, so a pack that no index
names and that is older than MIN_AGE (24 hours) has no index object on its way: its writer
named it long ago or never will. Age is the store's own last-modified time of the pack against
this anchor's clock; the 23 hours between the two bounds absorb an anchor clock that is wrong
by less than that. (offload.py PUTs the index object right after the pack's read-back and does
not yet check the deadline itself: an anchor frozen for a day between the two PUTs is the
one case this rests on not happening.) The index is read whole (every epoch, compacted or
not) before anything is deleted, and an index object that cannot be read stops the sweep with
its error: a pack is never deleted on partial knowledge.

One anchor sweeps per day (UTC): the one that creates `gc/<YYYY-MM-DD>` (If-None-Match);
another anchor finding it skips the day. Every index entry counts as live, those naming
damaged packs too. Compaction keeps one entry per chunk, so a pack all of whose entries lost to
another anchor's copy is named by nothing once the merged sources are gone, and is swept; the
anchor that wrote it may still read it through its own `remote` rows, and fleet/remote.py does
not yet look in the index again when a pack is missing (docs/fleet.md, section 5)."""
import json
import logging
import re
import time

log = logging.getLogger("anchor")

MIN_AGE = 24 * 3600          # seconds a pack nobody names is kept (>> index.WRITE_WINDOW)
_PACK_KEY = re.compile(r"^packs/([0-9a-f]{2})/([0-9a-f]{32})$")


def day_key(t):
    return "gc/" + time.strftime("%Y-%m-%d", time.gmtime(t))


def sweep(objects, index, now=time.time, min_age=MIN_AGE):
    """Delete the packs under packs/ that no entry of `index` (a FleetIndex: its anchor id
    claims the day) names and that are older than min_age, unless another anchor swept today.
    Counts: {"day", "ran", "packs", "named", "young", "foreign", "deleted"}.
    DamagedObject or ObjectStoreError (nothing deleted) when the index cannot be read whole."""
    t = now()
    day = day_key(t)
    out = {"day": day[3:], "ran": False, "packs": 0, "named": 0, "young": 0, "foreign": 0, "deleted": 0}
    if not objects.put_once(day, json.dumps({"by": index.anchor, "at": t}).encode()):
        return out
    out["ran"] = True
    named = set(v[0] for v in index.load().values())        # raises before anything is deleted
    for key, _, modified in objects.list_meta("packs/"):
        m = _PACK_KEY.match(key)
        out["packs"] += 1
        if not m or not m.group(2).startswith(m.group(1)):
            out["foreign"] += 1                             # not a name this code writes: kept
        elif m.group(2) in named:
            out["named"] += 1
        elif t - modified < min_age:
            out["young"] += 1                               # its writer may still name it
        else:
            objects.delete(key)
            out["deleted"] += 1
    log.info("fleet gc %s: %d packs, %d named, %d young, %d deleted", out["day"], out["packs"],
             out["named"], out["young"], out["deleted"])
    return out
