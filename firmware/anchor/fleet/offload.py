"""Offload: committed snapshots and the chunks they hold go to the fleet store, in the
background (docs/fleet.md, sections 2 and 4). CPython only.

Order, per snapshot, so that nothing in the store ever names what is not there:
  1. the chunks the store does not hold yet, sealed into packs; each pack PUT whole
  2. an index object naming the pack's chunks (after its pack); then the local `remote` rows,
     which make the chunks evictable from flash
  3. the snapshot's tree and its object list; then the snapshot record, created once
An anchor killed between 1 and 2 leaves a pack nobody names (swept by fleet/gc.py a day
later); its chunks are packed again on the next pass. A snapshot is marked offloaded here
only after 3.

The event loop builds packs (reading flash, compressing, sealing: ~16 MiB at a time) and a
thread does the PUTs, paced to `rate` bytes per second on average. Devices whose pairing this
anchor does not hold (an --open anchor's plain rovers) are not offloaded: their data would
have no device key to be sealed under.

Pass-through data (captured relay bodies) is offloaded too, by policy: "all" (the default: an
origin may change or vanish, and a backup that needs the body is then served from the store
rather than the origin), "no-recipe" (only bodies that cannot be fetched again: uploads and
publishes), or "none". A pack is counted as safely in the store only after it is read back: its
length, and its own index unsealed from its tail (docs/fleet.md, section 2); only then may the
chunks in it leave flash."""
import asyncio
import logging
import time

from anchor.fleet import devdata, packs
from anchor.fleet.objects import ObjectStoreError
from anchor.fleet.remote import pack_key
from anchor.storage.chunks import StoreError

log = logging.getLogger("anchor")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bad_packs (pack TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS offloaded_captures (device TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS offloaded (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    how TEXT NOT NULL,                -- 'offloaded', 'imported' (from the store), 'conflict'
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
"""
YIELD_EVERY = 64            # chunks packed between two turns of the event loop
# From a pack's PUT to the index object naming it, at most this long (half the index's write
# window, well inside the day fleet/gc.py waits before sweeping a pack nobody names); a pass
# that took longer (a frozen anchor, a store that crawled) names nothing and packs again.
PACK_DEADLINE = 1800.0


class Offloader:
    def __init__(self, db, objects, keys, index, remote, catalog, store, trees, rate=None, now=time.time,
                 captures="all", pack_bytes=None):
        self.db = db
        self.objects = objects
        self.keys = keys
        self.index = index
        self.remote = remote
        self.catalog = catalog
        self.store = store            # flash only: what is offloaded must be read from here
        self.trees = trees
        self.rate = rate              # bytes per second to the store, None: as fast as it goes
        self.captures = captures      # "all", "no-recipe" or "none"
        self.pack_bytes = pack_bytes or packs.TARGET_BYTES
        self.now = now
        self.totals = {"packs": 0, "chunks": 0, "bytes": 0, "snapshots": 0, "requests": 0,
                       "seconds": 0.0}
        self.skipped = {}             # "device/seq" -> why it could not be offloaded this pass
        db.executescript(_SCHEMA)

    def mark(self, device, seq, how):
        self.db.execute("INSERT OR REPLACE INTO offloaded VALUES (?, ?, ?, ?)", (device, seq, self.now(), how))

    def done(self, device):
        return set(r[0] for r in self.db.execute("SELECT seq FROM offloaded WHERE device=?", (device,)))

    def pending(self):
        """[(device name, snapshot)] of committed snapshots not yet in the store, oldest first
        per device; and the names of devices that cannot be offloaded (no pairing here)."""
        out = []
        unpaired = []
        for d in self.catalog.devices():
            name = d["device"]
            if not d["snapshots"]:
                continue
            done = self.done(name)
            snaps = [s for s in self.catalog.snapshots(self.catalog.device_id(name, create=False))
                     if s["id"] not in done]
            if not snaps:
                continue
            if self.device_key(name) is None:
                unpaired.append(name)
                continue
            out += [(name, s) for s in snaps]
        return out, unpaired

    def device_key(self, name):
        """The key that seals `name`'s data, derived from its pairing once and kept; None for
        a device never paired here."""
        key = self.remote.device_key(name)
        if key is None:
            secret = self.catalog.pairing_key(name)
            if secret is not None:
                key = self.remote.learn_device(name, secret)
        return key

    async def run_once(self):
        """Offload every pending snapshot, then the captures by policy; the number of
        snapshots offloaded. ObjectStoreError when the store cannot be reached (what was done
        stays done)."""
        await self.repair()
        todo, _ = self.pending()
        n = 0
        self.skipped = {}
        for name, snap in todo:
            try:
                await self.offload_snapshot(name, snap)
            except (StoreError, OSError) as e:
                # Something of this snapshot is damaged on flash (a chunk, its tree): the others
                # go on, and `anchorctl verify` / the next backup heal it; tried again next pass.
                self.skipped["%s/%d" % (name, snap["id"])] = str(e)
                log.error("fleet: snapshot %d of %s not offloaded: %s", snap["id"], name, e)
                continue
            n += 1
        if self.captures != "none":
            for name in self.catalog.paired():
                await self.offload_captures(name)
        return n

    async def repair(self):
        """Packs some anchor found damaged (`bad/<pack>`): the chunks of them this anchor
        knows are forgotten, and those its flash still holds are offloaded again; the
        number offloaded again."""
        bad = [k.rsplit("/", 1)[1] for k, _ in await asyncio.to_thread(self.objects.list, "bad/")]
        seen = set(r[0] for r in self.db.execute("SELECT pack FROM bad_packs"))
        total = 0
        for pack in bad:
            if pack in seen:
                continue
            byd = {}
            for c, d in self.remote.in_pack(pack):
                self.remote.forget(c, d)
                byd.setdefault(d, []).append(c)
            n = 0
            for d, ids in byd.items():
                n += await self._pack(d, ids, skip_missing=True)
            self.db.execute("INSERT OR IGNORE INTO bad_packs VALUES (?, ?)", (pack, self.now()))
            if byd:
                log.warning("fleet: pack %s is damaged; %d of its chunks offloaded again from flash", pack, n)
            total += n
        return total

    async def offload_captures(self, name):
        dev = self.catalog.device_id(name, create=False)
        if dev is None or self.device_key(name) is None:
            return
        row = self.db.execute("SELECT last FROM offloaded_captures WHERE device=?", (name,)).fetchone()
        last = row[0] if row else 0
        while True:
            rows = self.catalog.captures_after(dev, last)
            if not rows:
                return
            ids = []
            for cap, oid, chunks in rows:
                if self.captures == "no-recipe" and self.catalog.recipe(dev, oid) is not None:
                    continue
                ids += [bytes(chunks[i:i + 32]) for i in range(0, len(chunks), 32)]
            # A chunk evicted before it was offloaded (pass-through data goes first) is skipped:
            # a later backup that needs it regenerates it from its origin, as before.
            await self._pack(name, ids, skip_missing=True)
            last = rows[-1][0]
            self.db.execute("INSERT OR REPLACE INTO offloaded_captures VALUES (?, ?)", (name, last))

    async def _pack(self, name, ids, skip_missing=False):
        """Put the chunks among `ids` that the store does not hold for `name` into packs.
        A chunk flash does not hold: StoreError, or skipped with skip_missing."""
        did = self.keys.device_id(name)
        dkey = self.remote.device_key(name)
        seen = set()
        todo = []
        for c in ids:
            if c not in seen:
                seen.add(c)
                todo.append(c)
        there = self.remote.present(todo, device=name)
        todo = [c for c in todo if c not in there]
        writer = None
        packed = []                   # (sha, keyed id, offset, sealed length, raw length)
        for k, c in enumerate(todo):
            try:
                raw = self.store.get(c)
            except StoreError:
                if not skip_missing:
                    raise
                continue
            if writer is None:
                writer = packs.PackWriter(dkey, self.keys.content, self.pack_bytes)
            kid, off, length = writer.add(raw)
            packed.append((c, kid, off, length, len(raw)))
            if writer.full():
                await self._finish_pack(name, did, dkey, writer, packed)
                writer, packed = None, []
            if k % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        if writer is not None:
            await self._finish_pack(name, did, dkey, writer, packed)
        return len(todo)

    async def _put(self, key, data):
        t0 = time.monotonic()
        made = await asyncio.to_thread(self.objects.put_once, key, data)
        self.totals["requests"] += 1
        took = time.monotonic() - t0
        self.totals["seconds"] += took
        if self.rate:
            # Paced on average: a pack is one PUT, so the link sees bursts of one pack.
            rest = len(data) / self.rate - took
            if rest > 0:
                await asyncio.sleep(rest)
        return made

    async def offload_snapshot(self, name, snap):
        did = self.keys.device_id(name)
        dkey = self.remote.device_key(name)
        rows = self.catalog.tree_chunk_lists(snap["root"])
        try:
            new = await self._pack(name, [bytes(ids[i:i + 32]) for _, _, ids in rows for i in range(0, len(ids), 32)])
        except StoreError as e:
            raise StoreError("snapshot %d of %s cannot be offloaded: %s" % (snap["id"], name, e))
        root = snap["root"]
        with open(self.trees.path(root), "rb") as f:
            tree = f.read()
        tkey = devdata.tree_key(did, root)
        await self._put(tkey, devdata.seal(dkey, devdata.KIND_TREE, tkey, tree))
        okey = devdata.objs_key(did, root)
        await self._put(okey, devdata.seal(dkey, devdata.KIND_OBJS, okey, devdata.objs_list(rows)))
        skey = devdata.snap_key(did, snap["id"])
        made = await self._put(skey, devdata.seal(dkey, devdata.KIND_SNAP, skey, devdata.snap_record(snap)))
        how = "offloaded"
        if not made:
            # Ours from a pass cut short after this PUT, or another anchor's snapshot of the
            # same number (the rover backed up to two anchors that had not shared yet).
            got = await asyncio.to_thread(self.objects.get, skey)
            other = devdata.read_snap_record(skey, devdata.unseal(dkey, devdata.KIND_SNAP, skey, got))
            if other["root"] != root:
                how = "conflict"
                log.error("fleet: snapshot %d of %s is another anchor's in the store (tree %s, here %s); "
                          "this one stays on this anchor only", snap["id"], name,
                          other["root"].hex()[:16], root.hex()[:16])
        self.mark(name, snap["id"], how)
        self.totals["snapshots"] += 1
        log.info("fleet: snapshot %d of %s %s (%d chunks were new to the store)", snap["id"], name, how, new)

    async def _finish_pack(self, name, did, dkey, writer, packed):
        data = writer.data()
        key = pack_key(writer.name)
        started = time.monotonic()
        await self._put(key, data)
        # Read back before anything names it or flash lets go of its chunks: the store has it
        # whole (length) and its own index unseals from its tail with what was written.
        back = await asyncio.to_thread(packs.read_index, self.objects, key, writer.name, dkey, len(data))
        self.totals["requests"] += 4
        if back != [(kid, off, ln) for _, kid, off, ln, _ in packed]:
            raise packs.DamagedObject("pack %s did not read back as written" % writer.name)
        if time.monotonic() - started > PACK_DEADLINE:
            raise ObjectStoreError("pack %s took %.0f s from its PUT to its index (deadline %.0f s): not named; "
                                   "packed again on the next pass" % (writer.name, time.monotonic() - started,
                                                                       PACK_DEADLINE))
        await asyncio.to_thread(self.index.write, [(did, kid, writer.name, off, ln, raw)
                                                   for _, kid, off, ln, raw in packed])
        self.totals["requests"] += 2           # the epoch listing and the index object
        self.remote.add([(c, name, writer.name, off, ln, raw) for c, _, off, ln, raw in packed])
        self.totals["packs"] += 1
        self.totals["chunks"] += len(packed)
        self.totals["bytes"] += len(data)
