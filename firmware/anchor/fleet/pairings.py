"""One pairing, every anchor of the fleet (docs/fleet.md, section 3). CPython only.

A pairing made on one anchor is published to the store, sealed; another anchor of the fleet
that meets the rover opens it during the handshake and pairs the rover itself. An unpair on
any anchor writes revocations that every anchor sees at the rover's next handshake, and for
links already open at its next poll.

  dev/<device id>/pair/<generation>      the pairing secret, ChaCha20-Poly1305 under the
                                         fleet's pairing key; associated data: the kind, the
                                         device name and the generation
  dev/<device id>/revoked/<generation>   a revocation of that generation, sealed the same way
Generations are milliseconds since 1970 (16 digits) and 8 random hex digits: they sort by
time, and two anchors pairing one rover at once make two. The store's operator can neither
read a secret, nor forge or replay a record under another device or generation, nor forge a
revocation (it can delete objects: an anchor that holds a pairing keeps it). An anchor
without the fleet key finds keyed names and sealed bytes and learns nothing.

Bounds: the store is asked at most once in 10 s about a device name that has no pairing
(and at most 10 times in 10 s in all names together; a rover paired again after a revocation
may so wait up to 10 s at an anchor that refused it just before), so a neighbour trying names cannot make the anchor
hammer the store; a revocation reaches a new handshake at once (the store is asked again
after at most REVOKED_CACHE seconds) and an open link within the poll interval (300 s,
docs/security.md); an anchor that cannot reach the store keeps serving the pairings it holds."""
import asyncio
import logging
import os
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from anchor.fleet.objects import ObjectStoreError

log = logging.getLogger("anchor")

NONCE = 12
SECRET_BYTES = 32
NEGATIVE_SECONDS = 10.0       # a name the store had no pairing for is not asked about again sooner
GLOBAL_LOOKUPS = 10           # store lookups for names without a pairing, per GLOBAL_WINDOW
GLOBAL_WINDOW = 10.0
REVOKED_CACHE = 30.0          # a handshake asks the store about revocation at most this often per device
POLL_SECONDS = 300.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_pairings (
    device TEXT PRIMARY KEY,
    generation TEXT NOT NULL,       -- the generation this anchor holds
    learned REAL NOT NULL
);
"""


def _aad(kind, name, gen):
    return b"%s\x00%s\x00%s" % (kind, name.encode("utf-8"), gen.encode())


class FleetPairings:
    def __init__(self, objects, keys, db, now=time.time):
        self.objects = objects
        self.keys = keys
        self.aead = ChaCha20Poly1305(keys.pairing)
        self.db = db
        self.now = now
        self.negative = {}            # name -> when the store last had nothing for it
        self.recent = []              # times of lookups for names without a pairing
        self.checked = {}             # name -> when its revocations were last looked at
        self.lookups = 0              # store lookups made (tests, status)
        db.executescript(_SCHEMA)

    # --- records ---------------------------------------------------------------------

    def _prefix(self, name, what):
        return "dev/%s/%s/" % (self.keys.device_id(name), what)

    def _seal(self, kind, name, gen, plain):
        nonce = os.urandom(NONCE)
        return nonce + self.aead.encrypt(nonce, plain, _aad(kind, name, gen))

    def _open(self, kind, name, gen, raw):
        if raw is None or len(raw) < NONCE + 16:
            return None
        try:
            return self.aead.decrypt(raw[:NONCE], raw[NONCE:], _aad(kind, name, gen))
        except InvalidTag:
            return None

    def _gens(self, name, what):
        return [k.rsplit("/", 1)[1] for k, _ in self.objects.list(self._prefix(name, what))]

    def _revoked(self, name):
        out = set()
        for gen in self._gens(name, "revoked"):
            if self._open(b"revoked", name, gen, self.objects.get(self._prefix(name, "revoked") + gen)) == b"":
                out.add(gen)
            else:
                log.warning("fleet: revocation %s of %s does not unseal: ignored", gen, name)
        return out

    def _newest(self, name, revoked=None):
        """(generation, secret) of the newest pairing of `name` in the store that is not
        revoked and unseals, or None. revoked: its revoked generations, if already listed."""
        self.lookups += 1
        if revoked is None:
            revoked = self._revoked(name)
        for gen in sorted(self._gens(name, "pair"), reverse=True):
            if gen in revoked:
                continue
            secret = self._open(b"pair", name, gen, self.objects.get(self._prefix(name, "pair") + gen))
            if secret is None or len(secret) != SECRET_BYTES:
                log.warning("fleet: pairing record %s of %s does not unseal: damaged, forged or another "
                            "fleet's; skipped", gen, name)
                continue
            return gen, secret
        return None

    def hold(self, name, gen):
        """This anchor holds generation `gen` of `name`'s pairing (the loop's thread)."""
        self.db.execute("INSERT OR REPLACE INTO fleet_pairings VALUES (?, ?, ?)", (name, gen, self.now()))

    def held(self, name):
        row = self.db.execute("SELECT generation FROM fleet_pairings WHERE device=?", (name,)).fetchone()
        return row[0] if row else None

    # --- what the anchor does ------------------------------------------------------------
    # The store is asked from threads (obstore blocks); the local table is written only by
    # the caller's thread, the event loop's (SQLite connections stay in their thread).

    def put_pairing(self, name, secret):
        """Publish a pairing made on this anchor (store only): its generation. hold() it."""
        gen = "%016d-%s" % (int(self.now() * 1000), os.urandom(4).hex())
        self.objects.put_once(self._prefix(name, "pair") + gen, self._seal(b"pair", name, gen, bytes(secret)))
        self.negative.pop(name, None)
        return gen

    def lookup(self, name):
        """(generation, secret) if the fleet has a live pairing for `name` (store only; hold()
        it), else None; None without asking when the name was asked about lately or too many
        names were."""
        t = self.now()
        if t - self.negative.get(name, -1e18) < NEGATIVE_SECONDS:
            return None
        self.recent = [x for x in self.recent if t - x < GLOBAL_WINDOW]
        if len(self.recent) >= GLOBAL_LOOKUPS:
            return None
        self.recent.append(t)
        got = self._newest(name)
        if got is None:
            self.negative[name] = t
            return None
        self.checked[name] = t
        return got

    def drop(self, name):
        self.db.execute("DELETE FROM fleet_pairings WHERE device=?", (name,))
        self.checked.pop(name, None)

    def revoke(self, name):
        """Revoke every generation of `name` in the store (store only; drop() it); how many
        were revoked now."""
        n = 0
        for gen in self._gens(name, "pair"):
            if self.objects.put_once(self._prefix(name, "revoked") + gen, self._seal(b"revoked", name, gen, b"")):
                n += 1
        return n

    def revoked_since(self, name, gen):
        """At a handshake of a rover whose pairing this anchor shares with the fleet: True if
        generation `gen` was revoked (the store asked at most every REVOKED_CACHE seconds;
        False when not asked)."""
        t = self.now()
        if t - self.checked.get(name, -1e18) < REVOKED_CACHE:
            return False
        self.checked[name] = t
        return gen in self._revoked(name)

    def check(self, held):
        """held: {name: generation} of the pairings this anchor shares with the fleet. {name:
        "revoked"} for those revoked, {name: (generation, secret)} for a newer generation."""
        out = {}
        for name, gen in held.items():
            revoked = self._revoked(name)
            if gen in revoked:
                out[name] = "revoked"
                continue
            got = self._newest(name, revoked)
            if got is not None and got[0] > gen:
                out[name] = got
        return out

    def held_all(self, names):
        return dict((n, g) for n in names for g in (self.held(n),) if g is not None)


async def watch(pairings, catalog, revoke, interval=POLL_SECONDS, rounds=None):
    """Every `interval` s: apply revocations and newer generations to the pairings held here.
    A revoked one leaves the catalog here and `revoke(name)` cuts the rover's links
    (SessionServer.revoke; it may unpair again, harmlessly); a newer one replaces the secret
    (catalog.pair). A round the store does not answer is logged once and changes nothing: the
    pairings held here are served until the store answers again. One rover whose change
    fails to apply does not hold back the others, nor later rounds. Runs until cancelled (or
    `rounds` rounds, for tests)."""
    n = 0
    while rounds is None or n < rounds:
        n += 1
        await asyncio.sleep(interval)
        held = pairings.held_all(catalog.paired())
        try:
            got = await asyncio.to_thread(pairings.check, held)
        except (ObjectStoreError, OSError) as e:
            log.warning("fleet: cannot check pairings in the store (%s); serving the pairings held here", e)
            continue
        except Exception:
            log.exception("fleet: checking pairings in the store failed; tried again in %g s", interval)
            continue
        for name, what in got.items():
            if pairings.held(name) != held[name]:
                continue          # paired again here while the store was asked: the next round
            try:
                if what == "revoked":
                    log.warning("fleet: pairing of %s revoked on an anchor of the fleet; its links are cut", name)
                    catalog.unpair(name)
                    pairings.drop(name)
                    revoke(name)
                else:
                    log.info("fleet: %s was paired again on an anchor of the fleet; the new pairing is held here",
                             name)
                    catalog.pair(name, what[1])
                    pairings.hold(name, what[0])
            except Exception:
                log.exception("fleet: cannot apply the fleet's change to the pairing of %s", name)
