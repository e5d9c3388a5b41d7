"""The fleet tier on one anchor: its configuration, the background offload, taking a rover's
snapshots over from the store when it arrives, and the status `anchorctl fleet status` shows.
CPython only."""
import asyncio
import logging
import os
import time
import tomllib
from urllib.parse import urlparse

from anchor.fleet import gc
from anchor.fleet import keys as fkeys
from anchor.fleet.index import FleetIndex
from anchor.fleet.objects import ObjectStoreError, S3Objects
from anchor.fleet.offload import Offloader
from anchor.fleet.packs import DamagedObject, keyed_id
from anchor.fleet.pairings import POLL_SECONDS, FleetPairings
from anchor.fleet.remote import RemoteChunks, TieredStore
from anchor.fleet.state import anchor_id, open_state
from anchor.fleet.sync import DeviceSync
from anchor.storage.chunks import StoreError

log = logging.getLogger("anchor")

DEFAULT_INTERVAL = 300.0       # seconds between offload passes when nothing asks for one
SYNC_SECONDS = 20.0            # a rover's first contact waits at most this for the store
VISIT_SECONDS = 60.0           # a rover's snapshots are looked for at most this often
MAX_BACKOFF = 600.0


class FleetConfigError(Exception):
    pass


class TakeOverError(Exception):
    def __init__(self, status, text):
        Exception.__init__(self, text)
        self.status = status
        self.text = text


class FleetConfig:
    """What `anchor serve --fleet s3://BUCKET --fleet-endpoint URL --fleet-key-file FILE`
    says, with the store's credentials from --fleet-credentials-file (TOML: access_key,
    secret_key, optional region) or the environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY): never from the command line, where `ps` shows them."""

    def __init__(self, url, endpoint, key_file, credentials_file=None, rate=None, window=None,
                 interval=DEFAULT_INTERVAL, env=None, captures="all", pack_bytes=None,
                 pairing_poll=POLL_SECONDS):
        env = os.environ if env is None else env
        u = urlparse(url or "")
        if u.scheme != "s3" or not u.netloc or u.path not in ("", "/"):
            raise FleetConfigError("--fleet wants s3://BUCKET, got %r" % url)
        self.bucket = u.netloc
        if not endpoint or urlparse(endpoint).scheme not in ("http", "https"):
            raise FleetConfigError("--fleet-endpoint wants the store's http:// or https:// address, got %r" % endpoint)
        self.endpoint = endpoint
        if not key_file:
            raise FleetConfigError("--fleet needs --fleet-key-file (anchorctl fleet new-key FILE makes one)")
        try:
            self.key = fkeys.read_key_file(key_file)
        except fkeys.FleetKeyError as e:
            raise FleetConfigError(str(e))
        self.region = "us-east-1"
        if credentials_file:
            try:
                with open(credentials_file, "rb") as f:
                    cred = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise FleetConfigError("%s: cannot read the store's credentials: %s" % (credentials_file, e))
            self.access_key, self.secret_key = cred.get("access_key"), cred.get("secret_key")
            self.region = cred.get("region", self.region)
            if not isinstance(self.access_key, str) or not isinstance(self.secret_key, str):
                raise FleetConfigError("%s: wants access_key = \"...\" and secret_key = \"...\"" % credentials_file)
        else:
            self.access_key = env.get("AWS_ACCESS_KEY_ID")
            self.secret_key = env.get("AWS_SECRET_ACCESS_KEY")
            if not self.access_key or not self.secret_key:
                raise FleetConfigError("the fleet store's credentials: --fleet-credentials-file FILE, or "
                                       "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
        self.rate = rate
        self.window = parse_window(window) if window else None
        self.interval = interval
        if captures not in ("all", "no-recipe", "none"):
            raise FleetConfigError("--fleet-captures is all, no-recipe or none, not %r" % captures)
        self.captures = captures
        self.pack_bytes = pack_bytes
        self.pairing_poll = pairing_poll


def parse_window(text):
    """'HH:MM-HH:MM' (local time; may wrap past midnight) -> (start minute, end minute)."""
    try:
        a, b = text.split("-")
        mins = []
        for t in (a, b):
            h, m = t.strip().split(":")
            h, m = int(h), int(m)
            if not (0 <= h < 24 and 0 <= m < 60):
                raise ValueError
            mins.append(h * 60 + m)
    except ValueError:
        raise FleetConfigError("--fleet-window wants HH:MM-HH:MM, e.g. 01:00-05:30, got %r" % text)
    if mins[0] == mins[1]:
        raise FleetConfigError("--fleet-window %r is empty" % text)
    return tuple(mins)


def in_window(window, when):
    if window is None:
        return True
    t = time.localtime(when)
    m = t.tm_hour * 60 + t.tm_min
    a, b = window
    return a <= m < b if a < b else (m >= a or m < b)


class Fleet:
    def __init__(self, data_dir, config, catalog, store, trees, objects=None, now=time.time):
        self.config = config
        self.catalog = catalog
        self.now = now
        self.db, self.fresh = open_state(data_dir)
        self.anchor_id = anchor_id(self.db)
        self.keys = fkeys.FleetKeys(config.key)
        self.objects = objects or S3Objects(config.bucket, config.endpoint, config.access_key, config.secret_key,
                                            region=config.region, prefix=self.keys.prefix())
        self.index = FleetIndex(self.objects, self.keys.index, self.anchor_id, now)
        self.remote = RemoteChunks(self.db, self.objects, self.keys)
        self.pairings = FleetPairings(self.objects, self.keys, self.db, now)
        self.remote.on_damage = self.report_damage
        self.remote.relearn = self.relearn
        self.local = store
        self.store = TieredStore(store, self.remote)
        self.offloader = Offloader(self.db, self.objects, self.keys, self.index, self.remote, catalog, store,
                                   trees, rate=config.rate, now=now, captures=config.captures,
                                   pack_bytes=config.pack_bytes)
        self.sync = DeviceSync(self.objects, self.keys, self.index, self.remote, self.offloader, catalog, trees)
        self.wake = asyncio.Event()     # "the link is cheap now": anchorctl fleet offload
        self.forced = False
        self.state = "idle"
        self.last_pass = None
        self.last_error = None
        self.passes = 0
        self.visited = {}               # device -> when its snapshots were last looked for
        self.last_upkeep = None
        self.swept = None               # what the last sweep of unnamed packs did

    # --- offload in the background ----------------------------------------------------

    def offload_now(self):
        """Run a pass now, whatever the window says (the operator knows the link is cheap)."""
        self.forced = True
        self.wake.set()

    async def run(self):
        backoff = 5.0
        delay = self.config.interval
        while True:
            # Woken by the interval, by a commit's or the operator's request, or, after a
            # failed pass, by the backoff: an operator's request never waits for the backoff.
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            forced, self.forced = self.forced, False
            if not forced and not in_window(self.config.window, self.now()):
                self.state = "waiting for the offload window"
                delay = self.config.interval
                continue
            if await self.run_pass():
                backoff = 5.0
                delay = self.config.interval
            else:
                # The store is away: try again sooner than the interval, backing off.
                delay = backoff
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def run_pass(self):
        """One offload pass; True if it got everything pending into the store."""
        self.state = "offloading"
        try:
            if self.fresh:
                await self.rebuild()
            n = await self.offloader.run_once()
        except (ObjectStoreError, StoreError, DamagedObject, OSError) as e:
            self.last_error = "%s: %s" % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.now())), e)
            self.state = "store unreachable; retrying" if isinstance(e, ObjectStoreError) else "offload failed"
            log.warning("fleet: offload stopped: %s", e)
            return False
        self.passes += 1
        self.last_error = None
        await self.maintain()
        self.last_pass = self.now()
        self.state = "idle"
        if n:
            log.info("fleet: offload pass: %d snapshot%s into the store", n, "" if n == 1 else "s")
        return True

    async def maintain(self):
        """The index's upkeep, after a pass: the epoch advanced when full or old; once a day
        (per anchor; per fleet, the gc/<day> object) compaction and the sweep of packs nobody
        names. Trouble is logged, never fatal: any anchor may do it next time."""
        self.state = "index upkeep"
        try:
            await asyncio.to_thread(self.index.maybe_advance)
            day = time.strftime("%Y-%m-%d", time.gmtime(self.now()))
            if self.last_upkeep != day:
                self.last_upkeep = day
                await asyncio.to_thread(self.index.compact)
                self.swept = await asyncio.to_thread(gc.sweep, self.objects, self.index, self.now)
        except (ObjectStoreError, DamagedObject) as e:
            log.warning("fleet: index upkeep stopped: %s", e)

    async def rebuild(self):
        """fleet.sqlite made new (first start in a fleet, or the file was lost or damaged)
        while the catalog holds snapshots: the chunks of those that flash no longer holds were
        evicted after an offload; where they are in the store is read from the index again.
        Done once, before the first pass (the store away: tried again at the next)."""
        snaps = self.catalog.all_snapshots()
        for name in set(n for n, _ in snaps):
            self.offloader.device_key(name)          # learnt from its pairing, if any
        roots = set(s["root"] for _, s in snaps)
        want = set()
        for root in roots:                           # a tree several snapshots share: once
            ids = [bytes(c[i:i + 32]) for _, _, c in self.catalog.tree_chunk_lists(root)
                   for i in range(0, len(c), 32)]
            want.update(ids[i] for i in self.local.missing(ids))
        if want:
            self.state = "reading the index again"
            kids, mine = self._wanted(want)
            found = self._learned(await asyncio.to_thread(self._find, kids, mine, True))
            log.warning("fleet: this anchor's record of its fleet was new; %d of %d chunks missing from "
                        "flash found in the store again", len(found), len(want))
        self.fresh = False

    # --- damage --------------------------------------------------------------------------

    def report_damage(self, pack):
        """A pack that did not unseal or hash right: `bad/<pack>` tells every anchor; those
        whose flash still holds its chunks offload them again (Offloader.repair)."""
        try:
            self.objects.put_once("bad/" + pack, b"")
        except ObjectStoreError as e:
            log.warning("fleet: cannot report damaged pack %s: %s", pack, e)

    def relearn(self, chunks):
        """Copies of `chunks` the index names that this anchor did not know (another anchor
        offloaded them again after a damage, or this anchor's record was lost), for devices
        whose key it holds: added to the local rows; the set of chunks found. One read of the
        index for all of them."""
        want, mine = self._wanted(chunks)
        return self._learned(self._find(want, mine))

    def _wanted(self, chunks):
        want = dict((keyed_id(self.keys.content, bytes(c)), bytes(c)) for c in chunks)
        mine = dict((self.keys.device_id(n), n) for n, in self.db.execute("SELECT device FROM device_keys"))
        return want, mine

    def _find(self, want, mine, strict=False):
        """The rows for `want` (keyed id -> chunk) in the index: store only (any thread).
        The store away or the index damaged: [] (strict: the error)."""
        try:
            bad = set(k.rsplit("/", 1)[1] for k, _ in self.objects.list("bad/"))
            entries = self.index.load()
        except (ObjectStoreError, DamagedObject) as e:
            if strict:
                raise
            log.warning("fleet: cannot read the index again: %s", e)
            return []
        return [(want[k], mine[d], v[0], v[1], v[2], v[3]) for (d, k), v in entries.items()
                if k in want and d in mine and v[0] not in bad and len(v) >= 4]

    def _learned(self, rows):
        self.remote.add(rows)
        found = set(r[0] for r in rows)
        self.remote.forgotten -= found
        return found

    # --- a rover arrives ---------------------------------------------------------------

    async def visit(self, device, again=False):
        """A paired rover is here: take over what other anchors offloaded for it since. Store
        trouble is logged, never fatal: the backup then answers from flash alone. A rover that
        opens link after link (relay commands) costs the store one look per VISIT_SECONDS:
        it cannot have backed up elsewhere while it talks to this anchor."""
        secret = self.catalog.pairing_key(device)
        if secret is None:
            return []
        t = time.monotonic()
        if not again and t - self.visited.get(device, -1e18) < VISIT_SECONDS:
            return []
        self.visited[device] = t
        try:
            plan = await asyncio.wait_for(asyncio.to_thread(self.sync.fetch, device, secret,
                                                            self.sync.known(device)), SYNC_SECONDS)
        except Exception as e:          # unreachable, slow (timeout), damaged: flash alone
            log.warning("fleet: cannot look for %s's snapshots in the store: %s", device, str(e) or "timed out")
            return []
        return self.sync.apply(plan)

    async def take_over(self, device):
        """For an operator at an anchor the rover has not reached: its pairing and snapshots
        from the store, so restores and `ls` work here (`anchorctl fleet take-over DEVICE`)."""
        from anchor_core.messages import ProtocolError, check_device
        try:
            check_device(device)
        except ProtocolError as e:
            raise TakeOverError(400, e.text)
        if self.catalog.pairing_key(device) is None:
            self.pairings.negative.pop(device, None)     # an operator's question is always asked
            try:
                got = await asyncio.to_thread(self.pairings.lookup, device)
            except Exception as e:
                raise TakeOverError(503, "the fleet store cannot be asked about %s: %s" % (device, e))
            if got is None:
                raise TakeOverError(404, "the fleet holds no live pairing for %r" % device)
            self.catalog.pair(device, got[1])
            self.pairings.hold(device, got[0])
        taken = await self.visit(device, again=True)
        dev = self.catalog.device_id(device, create=False)
        return {"device": device, "taken_over": taken,
                "snapshots": [s["id"] for s in self.catalog.snapshots(dev)] if dev is not None else []}

    # --- status ------------------------------------------------------------------------

    def status(self):
        pending, unpaired = self.offloader.pending()
        offloaded_n, offloaded_bytes = self.remote.count()
        st = self.local.stats()
        return {"store": "%s/%s" % (self.config.endpoint, self.config.bucket), "fleet": self.keys.fleet_id,
                "anchor": self.anchor_id, "state": self.state, "last_pass": self.last_pass,
                "last_error": self.last_error, "window": self.config.window,
                "local": {"chunks": st["chunks"], "bytes": st["raw_bytes"], "stored_bytes": st["stored_bytes"]},
                "offloaded": {"chunks": offloaded_n, "bytes": offloaded_bytes},
                "pending": {"snapshots": len(pending),
                            "devices": sorted(set(n for n, _ in pending))},
                "not_offloaded": {"devices": unpaired,
                                  "why": "no pairing here: no device key to seal their data under"} if unpaired else None,
                "imported_snapshots": self.sync.imported, "read_from_store": self.remote.reads,
                "damaged_reads": self.remote.damaged, "totals": dict(self.offloader.totals),
                "gc": self.swept, "skipped": dict(self.offloader.skipped)}

    def close(self):
        self.db.close()
