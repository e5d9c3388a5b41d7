"""Pairings through the fleet store: what one anchor publishes another opens; nothing forged,
moved, damaged or sealed by another fleet is trusted; a revocation on any anchor reaches the
others; and a neighbour trying names cannot make an anchor hammer the store."""
import os
import sqlite3

import pytest

from anchor.fleet.keys import FleetKeys
from anchor.fleet.pairings import GLOBAL_LOOKUPS, FleetPairings

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
