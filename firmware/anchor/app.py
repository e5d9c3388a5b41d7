"""The anchor's wiring, CPython only: opens one data directory and builds the storage, the
services and the link sessions, handing each only what it uses.

Nothing else creates these: there is one store, one catalog, one retention policy and one
watch list per anchor, and every service that needs one is given it here.
"""
import logging
import os
import stat

from anchor.admission import Admission
from anchor.datalock import DataLock
from anchor.storage.catalog import Catalog
from anchor.daemon import SessionServer
from anchor.storage.retention import Retention
from anchor.services.backup import BackupService
from anchor.services.capture import Capture
from anchor.services.http_proxy import HttpProxy
from anchor.services.regenerate import Regenerator
from anchor.services.relay import DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, RelayService
from anchor.services.restore import RestoreService
from anchor.services.spool import SpoolRoom
from anchor.services.watchlist import WatchList
from anchor.storage.chunks import ChunkStore
from anchor.storage.trees import TreeStore

DATA_VERSION = 1

log = logging.getLogger("anchor")


def make_private(top):
    """Directories 0700 and files 0600 under `top` (itself included); symbolic links are
    not followed. Returns how many modes it changed."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name, mode in [(dirpath, 0o700)] + [(os.path.join(dirpath, f), 0o600) for f in filenames]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077 == 0:
                continue
            os.chmod(name, stat.S_IMODE(st.st_mode) & mode)
            changed += 1
    return changed


class App:
    """Everything the anchor holds and does, opened from one data directory.

    broker: (host, port) of the MQTT broker relays publish to (and MQTT links ride on);
    capacity: store budget in bytes, None: never evict; open: also serve rovers that are
    not paired, without the secure channel (a lab or test bench: `anchor serve --open`);
    capture=False only to measure what capture costs (`anchor serve --no-capture`):
    relayed bodies then pass without being kept, and later backups must upload them."""

    def __init__(self, data_dir, broker=None, relay_timeout=DEFAULT_TIMEOUT, relay_max=DEFAULT_MAX_BODY,
                 capture=True, capacity=None, open=False, spool_max=None, fleet=None):
        self.data_dir = os.path.abspath(data_dir)
        self.fleet_config = fleet         # anchor.fleet.service.FleetConfig, or None: one box alone
        self.fleet = None
        self.open = open
        self.capturing = capture
        self.spool_max = spool_max
        # The store holds every rover's files and pairing secret: nothing the anchor creates
        # may be readable by another account (the catalog, segments, trees, spool, SQLite's
        # WAL and SHM, which copy the catalog's mode, and anything added later).
        os.umask(0o077)
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        # Before anything in the directory is opened: recovery on a store another anchor
        # is writing would truncate its segments under it.
        self.lock = DataLock(self.data_dir)
        try:
            make_private(self.data_dir)     # a store from before this rule, or copied in
            self._open(broker, relay_timeout, relay_max, capacity)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, broker, relay_timeout, relay_max, capacity):
        capture = self.capturing
        open = self.open
        self._check_version()
        # Sessions flush every 1 MiB themselves (services.backup.FLUSH_BYTES); the store's
        # own threshold is a backstop above that.
        self.store = ChunkStore(os.path.join(self.data_dir, "chunks"), flush_bytes=4 << 20)
        self.catalog = Catalog(os.path.join(self.data_dir, "catalog.sqlite"))
        for d in self.catalog.damage:
            log.warning("%s", d)
        self.trees = TreeStore(os.path.join(self.data_dir, "trees"))
        self.local_store = self.store     # flash alone: what retention evicts from
        if self.fleet_config is not None:
            from anchor.fleet.service import Fleet
            self.fleet = Fleet(self.data_dir, self.fleet_config, self.catalog, self.store, self.trees)
            # The services read through the fleet: a chunk in the store counts as held, and is
            # read from there when flash no longer has it (or never had it).
            self.store = self.fleet.store
        # Uploads the relay sends on wait here until whole; anything left is from a crash.
        self.spool_dir = os.path.join(self.data_dir, "spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        for name in os.listdir(self.spool_dir):
            os.unlink(os.path.join(self.spool_dir, name))

        self.retention = Retention(self.local_store, self.catalog, capacity,
                                   self.fleet.remote.present if self.fleet is not None else None)
        self.watchlist = WatchList()
        # Every body on its way draws on one budget (--spool-max, 1 GiB by default; never the
        # last 256 MiB of the filesystem), whether it is captured as it streams or held in a
        # spool file; what is kept afterwards falls under --capacity.
        self.spool_room = SpoolRoom(self.spool_dir, self.spool_max)
        self.capture = Capture(self.store, self.catalog, self.watchlist, self.retention, self.spool_room)
        self.regenerator = Regenerator(self.capture, self.watchlist, relay_timeout)
        self.backup = BackupService(self.catalog, self.store, self.trees, self.retention, self.watchlist,
                                    self.regenerator)
        self.restore = RestoreService(self.catalog, self.trees, self.store)
        self.relay = RelayService(self.capture if capture else None, self.spool_room, relay_timeout,
                                  relay_max, broker)
        self.admission = Admission()      # the links and proxy clients it holds at once
        self.http_proxy = HttpProxy(self.catalog, self.capture, relay_timeout, relay_max,
                                    keep_bodies=capture, open=open, admission=self.admission)
        self.fleet_pairings = self.fleet.pairings if self.fleet is not None else None
        self.sessions = SessionServer(self.backup, self.relay, self.catalog, open=open, broker=broker,
                                      admission=self.admission, restore=self.restore, fleet=self.fleet,
                                      fleet_pairings=self.fleet_pairings)

    def _check_version(self):
        p = os.path.join(self.data_dir, "ANCHOR-DATA")
        if os.path.exists(p):
            with open(p) as f:
                v = f.read().strip()
            if v != "anchor-data %d" % DATA_VERSION:
                raise SystemExit("%s: data format %r, this anchor reads 'anchor-data %d'" % (p, v, DATA_VERSION))
        else:
            with os.fdopen(os.open(p + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write("anchor-data %d\n" % DATA_VERSION)
                f.flush()
                os.fsync(f.fileno())
            os.rename(p + ".tmp", p)

    def close(self):
        try:
            self.local_store.close()
            self.catalog.close()
            if self.fleet is not None:
                self.fleet.close()
        finally:
            self.lock.release()
