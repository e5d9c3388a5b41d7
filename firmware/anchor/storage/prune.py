"""Snapshot retention rules (`anchorctl prune`): which snapshots of a device to keep
(CPython only).

Like restic's `forget --keep-*`: snapshots are taken newest first; keep-last N keeps the N
newest; keep-daily N keeps the newest snapshot of each of the last N days that have
snapshots, keep-weekly N the same for ISO weeks (days and weeks in UTC). A snapshot kept by
any rule is kept; the device's latest snapshot (the highest number: the parent its rover
backs up against) is always kept. The rest are forgotten through the catalog, as
`anchorctl forget` does: what only they kept becomes pass-through data, and the retention
pass that follows evicts it when the store is over its budget (else later, first of all
when a backup or relay traffic needs room).
"""
import datetime
import logging


log = logging.getLogger("anchor.prune")

RULES = ("last", "daily", "weekly")


def _day(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).date()


def _week(t):
    return tuple(_day(t).isocalendar()[:2])      # (ISO year, ISO week)


_BUCKET = {"last": None, "daily": _day, "weekly": _week}


def check_rules(keep_last=0, keep_daily=0, keep_weekly=0):
    """The rules as {rule: n}; ValueError unless each is a whole number >= 0 and one is > 0."""
    rules = {}
    for name, n in zip(RULES, (keep_last, keep_daily, keep_weekly)):
        if n is None:
            n = 0
        if type(n) is not int or n < 0:
            raise ValueError("keep-%s must be a whole number, not %r" % (name, n))
        rules[name] = n
    if not any(rules.values()):
        raise ValueError("give at least one of keep-last, keep-daily, keep-weekly (above 0): "
                         "without a rule, prune would forget every snapshot but the latest")
    return rules


def plan(snapshots, keep_last=0, keep_daily=0, keep_weekly=0):
    """Decide. snapshots: dicts with "id" and "time" (unix seconds). Returns (keep, forget):
    keep is [(snapshot, [reasons])] and forget [snapshot], both newest first; reasons are
    "last", "daily", "weekly" and "latest"."""
    rules = check_rules(keep_last, keep_daily, keep_weekly)
    left = dict(rules)
    last_bucket = {}
    latest = max((s["id"] for s in snapshots), default=None)
    keep, forget = [], []
    for s in sorted(snapshots, key=lambda s: (s["time"], s["id"]), reverse=True):
        reasons = []
        for name in RULES:
            if not left[name]:
                continue
            fn = _BUCKET[name]
            b = ("id", s["id"]) if fn is None else fn(s["time"])
            if name in last_bucket and last_bucket[name] == b:
                continue                   # a newer snapshot already stands for this day/week
            last_bucket[name] = b
            left[name] -= 1
            reasons.append(name)
        if s["id"] == latest:
            reasons.append("latest")
        if reasons:
            keep.append((s, reasons))
        else:
            forget.append(s)
    return keep, forget


def parse_query(q):
    """Rules and dry_run from the management API's query string (keep_last=3&dry_run=1)."""
    unknown = set(q) - {"keep_last", "keep_daily", "keep_weekly", "dry_run"}
    if unknown:
        raise ValueError("unknown parameter %s (keep_last, keep_daily, keep_weekly, dry_run)"
                         % ", ".join(sorted(unknown)))
    out = {}
    for name in RULES:
        v = q.get("keep_" + name)
        if v is not None:
            if not v.isdigit():
                raise ValueError("keep_%s must be a whole number, not %r" % (name, v))
            out["keep_" + name] = int(v)
    check_rules(**out)
    out["dry_run"] = q.get("dry_run", "0") not in ("0", "", "false")
    return out


def _snap(s, reasons=None):
    out = {"id": s["id"], "time": s["time"], "entries": s["entries"], "bytes": s["bytes"]}
    if reasons is not None:
        out["reasons"] = reasons
    return out


def forget(catalog, trees, dev, seq):
    """Forget snapshot `seq` of device `dev`: the catalog drops it (what only it kept becomes
    pass-through data) and its tree file goes once no snapshot uses it. Returns (the chunks
    released to pass-through, whether the tree file went)."""
    root, freed, released = catalog.forget_snapshot(dev, seq)
    if freed:
        trees.delete(root)
    return released, freed


def prune(catalog, store, trees, retention, dev, keep_last=0, keep_daily=0, keep_weekly=0,
          dry_run=False):
    """Apply the rules to device `dev` (catalog id). Returns {"keep": [...], "forget": [...],
    "chunks_released", "bytes_released", "evicted_chunks", "evicted_bytes", "dry_run"}:
    bytes_released counts what forgetting turned (or would turn) into pass-through data, as
    the store holds it; evicted_* what the retention pass then evicted."""
    keep, forget_ = plan(catalog.snapshots(dev), keep_last, keep_daily, keep_weekly)
    out = {"dry_run": bool(dry_run), "keep": [_snap(s, r) for s, r in keep],
           "forget": [_snap(s) for s in forget_], "evicted_chunks": 0, "evicted_bytes": 0}
    if dry_run:
        released = catalog.would_release(dev, [s["id"] for s in forget_])
    else:
        released = []
        for s in sorted(forget_, key=lambda s: s["id"]):
            released += forget(catalog, trees, dev, s["id"])[0]
    out["chunks_released"] = len(released)
    out["bytes_released"] = store.record_bytes(released)
    if not dry_run:
        log.info("pruned %d snapshots (kept %d); %d chunks (%d bytes) back to pass-through",
                 len(forget_), len(keep), len(released), out["bytes_released"])
        done = retention.enforce()
        if done:
            out["evicted_chunks"] = done["evicted_chunks"]
            out["evicted_bytes"] = done["evicted_bytes"]
    return out
