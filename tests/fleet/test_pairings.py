"""Pairings through the fleet store: what one anchor publishes another opens; nothing forged,
moved, damaged or sealed by another fleet is trusted; a revocation on any anchor reaches the
others; and a neighbour trying names cannot make an anchor hammer the store."""
import asyncio
import json
import logging
import os
import socket
import sqlite3
import threading
import types

import pytest
from aiohttp.test_utils import make_mocked_request

from anchor import secure_session
from anchor.api.mgmt import Api
from anchor.daemon import SessionServer
from anchor.fleet import pairings as fleet_pairings
from anchor.fleet.keys import FleetKeys
from anchor.fleet.objects import S3Objects
from anchor.fleet.pairings import GLOBAL_LOOKUPS, REVOKED_CACHE, FleetPairings
from anchor.storage.catalog import Catalog
from anchor_core import handshake, secure
from tests.support.seaweed import ACCESS_KEY, BUCKET, SECRET_KEY

SECRET = bytes(range(32))


class Clock:
    def __init__(self):
        self.t = 1_800_000_000.0

    def __call__(self):
        return self.t


class Counting:
    """The real store, with its requests counted."""

    def __init__(self, objects):
        self.objects = objects
        self.requests = 0

    def __getattr__(self, name):
        fn = getattr(self.objects, name)

        def counted(*a, **kw):
            self.requests += 1
            return fn(*a, **kw)
        return counted


@pytest.fixture
def two(objects, tmp_path):
    key = os.urandom(32)
    clock = Clock()
    out = []
    for n in "ab":
        db = sqlite3.connect(str(tmp_path / ("%s.sqlite" % n)), isolation_level=None)
        out.append(FleetPairings(objects, FleetKeys(key), db, clock))
    return out[0], out[1], clock


def test_a_pairing_published_on_one_anchor_opens_on_another(two):
    a, b, _ = two
    gen = a.put_pairing("rover-1", SECRET)
    a.hold("rover-1", gen)
    assert b.lookup("rover-1") == (gen, SECRET)
    assert b.lookup("rover-2") is None


def test_an_anchor_without_the_fleet_key_learns_nothing(two, objects, tmp_path):
    a, _, clock = two
    a.put_pairing("rover-1", SECRET)
    stranger = FleetPairings(objects, FleetKeys(os.urandom(32)), sqlite3.connect(":memory:"), clock)
    assert stranger.lookup("rover-1") is None
    # ...and the names in the store do not say which device it is
    assert not any("rover-1" in k for k, _ in objects.list(""))


def test_forged_moved_damaged_and_foreign_records_are_refused(two, objects):
    a, b, clock = two
    gen = a.put_pairing("rover-1", SECRET)
    p1 = a._prefix("rover-1", "pair")
    p2 = a._prefix("rover-2", "pair")
    raw = objects.get(p1 + gen)
    # the operator copies rover-1's record to rover-2's name: it does not open there
    objects.put_once(p2 + gen, raw)
    assert b.lookup("rover-2") is None
    # a record forged without the key, newer than the real one, is skipped for the real one
    clock.t += 1
    objects.put_once(p1 + "9999999999999999-00000000", os.urandom(60))
    assert b.lookup("rover-1") == (gen, SECRET)
    # damaged (a flipped bit) or truncated: refused
    bad = bytearray(raw)
    bad[20] ^= 1
    g2 = "9999999999999998-00000000"
    objects.put_once(p1 + g2, bytes(bad))
    objects.put_once(p1 + "9999999999999997-00000000", raw[:20])
    objects.put_once(p1 + "9999999999999996-00000000", raw[:-1])      # short by its tag's last byte
    # the genuine record replayed under a newer generation: bound to its own, refused
    objects.put_once(p1 + "9999999999999995-00000000", raw)
    clock.t += 120
    assert b.lookup("rover-1") == (gen, SECRET)
    # another fleet's record under this fleet's names: refused
    other = FleetPairings(objects, FleetKeys(os.urandom(32)), sqlite3.connect(":memory:"), clock)
    other.keys.device_id = a.keys.device_id             # it writes where this fleet looks
    objects.delete(p1 + gen)
    other.put_pairing("rover-1", bytes(32))
    clock.t += 120
    assert b.lookup("rover-1") is None


def test_revocation_on_any_anchor_reaches_the_others_and_a_new_pairing_follows(two):
    a, b, clock = two
    gen = a.put_pairing("rover-1", SECRET)
    a.hold("rover-1", gen)
    got = b.lookup("rover-1")
    b.hold("rover-1", got[0])
    assert b.revoke("rover-1") == 1
    b.drop("rover-1")
    assert a.check(a.held_all(["rover-1"])) == {"rover-1": "revoked"}
    clock.t += 60
    assert a.revoked_since("rover-1", gen) is True
    clock.t += 120
    assert b.lookup("rover-1") is None
    # paired again on A: a new generation, which B finds
    clock.t += 5
    new = a.put_pairing("rover-1", bytes(reversed(SECRET)))
    assert new > gen
    clock.t += 120
    assert b.lookup("rover-1") == (new, bytes(reversed(SECRET)))
    # an anchor holding the old generation learns of the new one at its poll
    b.hold("rover-1", gen)
    assert b.check({"rover-1": gen}) == {"rover-1": "revoked"}     # the old one is revoked
    b.hold("rover-1", "0000000000000001-00000000")
    c = b.check({"rover-1": "0000000000000001-00000000"})
    assert c == {"rover-1": (new, bytes(reversed(SECRET)))}


def test_names_without_a_pairing_cost_the_store_little(objects, tmp_path):
    clock = Clock()
    store = Counting(objects)
    p = FleetPairings(store, FleetKeys(os.urandom(32)), sqlite3.connect(":memory:"), clock)
    for _ in range(5):
        assert p.lookup("nobody") is None                # asked once, then not for 10 s
    assert p.lookups == 1
    for i in range(50):                                  # a neighbour trying names
        p.lookup("name-%d" % i)
    assert p.lookups == GLOBAL_LOOKUPS
    asked = store.requests
    clock.t += 11
    p.lookup("nobody")
    assert p.lookups == GLOBAL_LOOKUPS + 1 and store.requests > asked


# --- the anchor's side: watch(), the handshake, the management API --------------------------

S2 = bytes(range(100, 132))
S3 = bytes(range(200, 232))


@pytest.fixture
def closed_port():
    """A loopback port nothing answers on (bound, never listening): a store that is away."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


def away(port):
    return S3Objects(BUCKET, "http://127.0.0.1:%d" % port, ACCESS_KEY, SECRET_KEY, timeout=2, retries=0)


def test_watch_applies_revocations_and_new_pairings_and_stops_when_cancelled(two, tmp_path):
    a, b, clock = two
    cat = Catalog(str(tmp_path / "a-catalog.sqlite"))
    for name, secret in (("rover-1", SECRET), ("rover-2", S2), ("rover-3", S3)):
        a.hold(name, a.put_pairing(name, secret))
        cat.pair(name, secret)
    clock.t += 1
    b.revoke("rover-1")                                   # unpaired on B
    new = b.put_pairing("rover-2", bytes(reversed(S2)))   # paired again on B
    cut = []

    async def run():
        applied = asyncio.Event()

        def revoke(name):                                  # cuts links only: watch unpairs
            cut.append(name)
            applied.set()
        task = asyncio.create_task(fleet_pairings.watch(a, cat, revoke, interval=0.01))
        await asyncio.wait_for(applied.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(run())
    assert cut == ["rover-1"]
    assert cat.pairing_key("rover-1") is None and a.held("rover-1") is None
    assert cat.pairing_key("rover-2") == bytes(reversed(S2)) and a.held("rover-2") == new
    assert cat.pairing_key("rover-3") == S3


def test_watch_with_the_store_away_serves_what_it_holds_and_logs_once_a_round(tmp_path, closed_port):
    p = FleetPairings(away(closed_port), FleetKeys(os.urandom(32)), sqlite3.connect(":memory:"))
    cat = Catalog(str(tmp_path / "catalog.sqlite"))
    cat.pair("rover-1", SECRET)
    p.hold("rover-1", "0000000000000001-00000000")
    rounds = []
    check = p.check
    p.check = lambda held: (rounds.append(1), check(held))[1]
    cut = []
    logger = logging.getLogger("anchor")

    async def run():
        enough = asyncio.Event()
        warned = []

        class Seen(logging.Handler):
            def emit(self, record):
                if "cannot check pairings" in record.getMessage():
                    warned.append(record)
                    if len(warned) == 3:
                        enough.set()
        seen, level = Seen(), logger.level
        logger.addHandler(seen)
        logger.setLevel(logging.INFO)
        try:
            task = asyncio.create_task(fleet_pairings.watch(p, cat, cut.append, interval=0.01))
            await asyncio.wait_for(enough.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            logger.removeHandler(seen)
            logger.setLevel(level)
        return len(warned)
    assert asyncio.run(run()) == len(rounds) == 3
    assert cat.pairing_key("rover-1") == SECRET and p.held("rover-1") and cut == []


class Anchor:
    """secure_session.accept() for a real SessionServer on a loopback port; what each link
    came to (the device, or Refused) goes to .outcomes."""

    @classmethod
    async def start(cls, server):
        self = cls()
        self.outcomes = asyncio.Queue()

        async def serve(r, w):
            try:
                _, _, dev = await secure_session.accept(server, r, w)
                await self.outcomes.put(dev)
            except secure_session.Refused as e:
                await self.outcomes.put(e)
            finally:
                w.close()
        self.srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.srv.sockets[0].getsockname()[1]
        return self

    async def rover(self, device, key):
        """A rover's handshake (anchor_core.handshake, as rover/securelink.py drives it):
        (established, the anchor's answer, what the anchor made of it). Bounded by the
        handshake's own 10 s."""
        async def go():
            r, w = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                hs = handshake.Initiator(device, key, os.urandom(secure.NONCE))
                w.write(hs.data_to_send())
                answer = b""
                try:
                    while hs.next_event() == handshake.NEED_DATA:
                        got = await r.read(hs.need())
                        answer += got
                        hs.receive_data(got)
                except handshake.NotPairedError:
                    return False, answer
                w.write(hs.data_to_send())
                await w.drain()
                return True, answer
            finally:
                w.close()
        ok, answer = await asyncio.wait_for(go(), 10)
        return ok, answer, await asyncio.wait_for(self.outcomes.get(), 10)

    async def close(self):
        self.srv.close()
        await self.srv.wait_closed()


def test_a_rover_paired_on_one_anchor_is_served_by_another_until_revoked(two, tmp_path):
    a, b, clock = two
    cat_b = Catalog(str(tmp_path / "b-catalog.sqlite"))
    gen = a.put_pairing("rover-1", SECRET)               # paired on A only
    a.hold("rover-1", gen)
    server = SessionServer(None, None, cat_b, fleet_pairings=b)

    async def run():
        anchor = await Anchor.start(server)
        try:
            ok, answer, got = await anchor.rover("rover-1", SECRET)
            assert ok and got == "rover-1", got
            assert cat_b.pairing_key("rover-1") == SECRET and b.held("rover-1") == gen
            # a stranger is answered as a paired rover is, and refused at the proof
            ok, stranger, got = await anchor.rover("rover-x", os.urandom(32))
            assert not ok and isinstance(got, secure_session.Refused)
            assert len(stranger) == len(answer) == handshake.HELLO2
            assert stranger[4] == answer[4] == secure.ST_OK
            assert cat_b.pairing_key("rover-x") is None
            # the right name with the wrong secret
            ok, _, got = await anchor.rover("rover-1", bytes(32))
            assert not ok and isinstance(got, secure_session.Refused)
            # unpaired on A: B refuses the rover at its next handshake and lets go of it
            a.revoke("rover-1")
            clock.t += REVOKED_CACHE + 1
            ok, _, got = await anchor.rover("rover-1", SECRET)
            assert not ok and isinstance(got, secure_session.Refused)
            assert cat_b.pairing_key("rover-1") is None and b.held("rover-1") is None
            # paired again on A: B serves the new pairing, not the old
            clock.t += 1
            new = a.put_pairing("rover-1", S2)
            ok, _, got = await anchor.rover("rover-1", SECRET)
            assert not ok and isinstance(got, secure_session.Refused)
            clock.t += 11
            ok, _, got = await anchor.rover("rover-1", S2)
            assert ok and got == "rover-1" and b.held("rover-1") == new
        finally:
            await anchor.close()
    asyncio.run(run())


class Stalled:
    """The real store, behind a link that hangs until released."""

    def __init__(self, objects):
        self.objects = objects
        self.release = threading.Event()
        self.requests = 0

    def __getattr__(self, name):
        fn = getattr(self.objects, name)

        def stalled(*a, **kw):
            self.requests += 1
            self.release.wait(60)
            return fn(*a, **kw)
        return stalled


def test_a_store_that_hangs_costs_a_handshake_a_bounded_wait(two, objects, tmp_path, monkeypatch):
    a, _, clock = two
    a.put_pairing("rover-1", SECRET)                      # the store would say yes, if it answered
    monkeypatch.setattr(secure_session, "FLEET_SECONDS", 0.5)
    store = Stalled(objects)
    b = FleetPairings(store, a.keys, sqlite3.connect(":memory:"), clock)
    cat_b = Catalog(str(tmp_path / "b-catalog.sqlite"))
    cat_b.pair("rover-2", S2)                             # held here, shared with the fleet
    b.hold("rover-2", "0000000000000001-00000000")
    server = SessionServer(None, None, cat_b, fleet_pairings=b)

    async def run():
        anchor = await Anchor.start(server)
        try:
            # not held here, the store silent: unknown, well within the handshake's 10 s
            ok, _, got = await anchor.rover("rover-1", SECRET)
            assert not ok and isinstance(got, secure_session.Refused)
            assert store.requests >= 1 and cat_b.pairing_key("rover-1") is None
            # held here, its revocation check unanswered: served on what is held
            asked = store.requests
            ok, _, got = await anchor.rover("rover-2", S2)
            assert ok and got == "rover-2" and store.requests > asked
        finally:
            store.release.set()
            await anchor.close()
    asyncio.run(run())


def anchor_app(catalog, fleet):
    # what mgmt.Api uses of an App
    return types.SimpleNamespace(catalog=catalog, fleet_pairings=fleet,
                                 sessions=SessionServer(None, None, catalog, fleet_pairings=fleet))


async def call(api, method, path):
    resp = await api.handle(make_mocked_request(method, path))
    return resp.status, json.loads(resp.body)


def test_pair_and_unpair_through_the_management_api_reach_the_fleet(two, tmp_path):
    a, b, _ = two
    cat_a = Catalog(str(tmp_path / "a-catalog.sqlite"))
    api_a = Api(anchor_app(cat_a, a))
    api_b = Api(anchor_app(Catalog(str(tmp_path / "b-catalog.sqlite")), b))

    async def run():
        st, r = await call(api_a, "POST", "/v1/devices/rover-1/pairing")
        assert st == 200 and r["code"] and r["fleet"] == "published", r
        assert b.lookup("rover-1") == (a.held("rover-1"), cat_a.pairing_key("rover-1"))
        # unpaired on B, which never met the rover: revoked for the whole fleet all the same
        st, r = await call(api_b, "DELETE", "/v1/devices/rover-1/pairing")
        assert st == 200 and r["fleet"] == "revoked (1 pairing record)", r
        assert a.check(a.held_all(["rover-1"])) == {"rover-1": "revoked"}
        # a name neither B nor the fleet has a live pairing for
        st, r = await call(api_b, "DELETE", "/v1/devices/nobody/pairing")
        assert st == 404, r
    asyncio.run(run())


def test_a_store_away_loses_no_local_pairing_and_the_answer_says_so(tmp_path, closed_port):
    p = FleetPairings(away(closed_port), FleetKeys(os.urandom(32)), sqlite3.connect(":memory:"))
    cat = Catalog(str(tmp_path / "catalog.sqlite"))
    api = Api(anchor_app(cat, p))

    async def run():
        st, r = await call(api, "POST", "/v1/devices/rover-1/pairing")
        assert st == 200 and r["code"] and r["fleet"].startswith("not published"), r
        assert cat.pairing_key("rover-1") is not None and p.held("rover-1") is None
        st, r = await call(api, "DELETE", "/v1/devices/rover-1/pairing")
        assert st == 200 and r["unpaired"] and r["fleet"].startswith("not revoked"), r
        assert cat.pairing_key("rover-1") is None
        # not paired here and the fleet cannot be asked: nothing was done, and it says so
        st, r = await call(api, "DELETE", "/v1/devices/rover-2/pairing")
        assert st == 503 and "not revoked" in r["error"], r
    asyncio.run(run())
