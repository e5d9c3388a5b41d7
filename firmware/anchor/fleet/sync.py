"""Another anchor's work, taken over: when a rover of the fleet reaches this anchor, the
snapshots other anchors offloaded for it come into this anchor's catalog, with their trees,
object lists and where their chunks are in the store (docs/fleet.md, section 4). CPython only.

So the rover's next backup builds on its last snapshot wherever it was made, and HAVE is
answered from what the fleet holds, with the same scope rules as for chunks on flash (the
object lists give the device its scope). The chunks themselves stay in the store until a
restore or a regeneration reads them.

fetch() talks to the store and runs in a thread; apply() writes the catalog, the trees and
the local index and runs on the event loop (SQLite connections stay in their thread)."""
import logging

from anchor.fleet import devdata
from anchor.fleet.packs import DamagedObject, keyed_id
from anchor.storage.catalog import CatalogError
from anchor.storage.trees import TreeError

log = logging.getLogger("anchor")


class DeviceSync:
    def __init__(self, objects, keys, index, remote, offloader, catalog, trees):
        self.objects = objects
        self.keys = keys
        self.index = index
        self.remote = remote
        self.offloader = offloader
        self.catalog = catalog
        self.trees = trees
        self.imported = 0

    def known(self, name):
        """What fetch() needs to know from this anchor (read on the loop)."""
        dev = self.catalog.device_id(name, create=False)
        have = set(s["id"] for s in self.catalog.snapshots(dev)) if dev is not None else set()
        return have | self.offloader.done(name)

    def fetch(self, name, secret, known):
        """The device's snapshots in the store that this anchor lacks, each with its tree and
        object list, and the device's index entries when there are any; a plan for apply()."""
        did = self.keys.device_id(name)
        dkey = self.keys.device_key(name, secret)
        snaps = []
        for key, _ in self.objects.list("dev/%s/snap/" % did):
            tail = key.rsplit("/", 1)[1]
            if not tail.isdigit() or int(tail) in known:
                continue
            try:
                rec = devdata.read_snap_record(key, devdata.unseal(dkey, devdata.KIND_SNAP, key,
                                                                   self.objects.get(key)))
                if rec["seq"] != int(tail):
                    raise DamagedObject("%s holds snapshot %d" % (key, rec["seq"]))
                tkey = devdata.tree_key(did, rec["root"])
                tree = devdata.unseal(dkey, devdata.KIND_TREE, tkey, self.objects.get(tkey))
                okey = devdata.objs_key(did, rec["root"])
                objs = devdata.read_objs_list(okey, devdata.unseal(dkey, devdata.KIND_OBJS, okey,
                                                                   self.objects.get(okey)))
            except DamagedObject as e:
                log.error("fleet: snapshot %s of %s not taken over: %s", tail, name, e)
                continue
            snaps.append((rec, tree, objs))
        entries = self.index.load(device=did) if snaps else {}
        return {"device": name, "secret": secret, "snaps": snaps, "entries": entries}

    def apply(self, plan):
        """Take the fetched snapshots over, oldest first; the numbers taken."""
        name = plan["device"]
        if not plan["snaps"]:
            return []
        self.remote.learn_device(name, plan["secret"])
        by_kid = plan["entries"]
        did = self.keys.device_id(name)
        content = self.keys.content
        dev = self.catalog.device_id(name)
        taken = []
        for rec, tree, objs in sorted(plan["snaps"], key=lambda s: s[0]["seq"]):
            rows = []
            for _, _, ids in objs:
                for i in range(0, len(ids), 32):
                    c = ids[i:i + 32]
                    got = by_kid.get((did, keyed_id(content, c)))
                    if got is not None and len(got) >= 4:
                        rows.append((c, name, got[0], got[1], got[2], got[3]))
            try:
                if not self.trees.exists(rec["root"]):
                    self.trees.install(rec["root"], tree)
                self.remote.add(rows)
                self.catalog.commit_snapshot(dev, rec["parent"], rec["root"], rec["entries"], rec["bytes"],
                                             objs, [o for o, _, _ in objs], rec["about"],
                                             seq=rec["seq"], created=rec["time"])
            except (TreeError, CatalogError) as e:
                log.error("fleet: snapshot %d of %s not taken over: %s", rec["seq"], name, e)
                continue
            self.offloader.mark(name, rec["seq"], "imported")
            taken.append(rec["seq"])
            self.imported += 1
            log.info("fleet: snapshot %d of %s taken over from the store (%d files, %d chunks there)",
                     rec["seq"], name, len(objs), len(rows))
        return taken
