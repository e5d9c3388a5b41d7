"""The fleet tier's engine against a real S3 store (SeaweedFS on loopback): objects created
once with If-None-Match, read by range, listed; packs of sealed chunks written and read back
chunk by chunk; damage and a wrong key caught; an unreachable store a clear, bounded error."""
import hashlib
import os
import random
import threading
import time

import pytest

from anchor.fleet import packs
from anchor.fleet.objects import ObjectStoreError, S3Objects
from tests.support.seaweed import ACCESS_KEY, BUCKET, SECRET_KEY, free_ports

SEAL = bytes(range(32))
CONTENT = bytes(range(32, 64))


def test_an_object_is_created_once_and_whole(objects):
    assert objects.put_once("epoch/1", b"first") is True
    assert objects.put_once("epoch/1", b"second") is False
    assert objects.get("epoch/1") == b"first"
    assert objects.get("epoch/2") is None and objects.size("epoch/2") is None
    assert objects.get_range("epoch/1", 1, 4) == b"irs"
    with pytest.raises(ObjectStoreError, match="read 5 bytes of epoch/1 .* wanted 99"):
        objects.get_range("epoch/1", 0, 99)


def test_racing_writers_leave_exactly_one_winner(objects):
    wins = []
    bodies = [os.urandom(4096) for _ in range(8)]

    def write(i):
        if objects.put_once("epoch/7", bodies[i]):
            wins.append(i)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(wins) == 1, wins
    assert objects.get("epoch/7") == bodies[wins[0]]


def test_listing_is_by_prefix_in_key_order(objects):
    for k in ("idx/2/b", "idx/1/a", "idx/2/a", "packs/00/x"):
        assert objects.put_once(k, k.encode())
    assert [k for k, _ in objects.list("idx/")] == ["idx/1/a", "idx/2/a", "idx/2/b"]
    assert objects.list("idx/2/") == [("idx/2/a", 7), ("idx/2/b", 7)]
    objects.delete("idx/2/a")
    objects.delete("idx/2/a")                  # gone already: not an error
    assert [k for k, _ in objects.list("idx/2/")] == ["idx/2/b"]


def chunks(n, seed):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        size = rnd.randrange(2048, 65536)
        if i % 2:
            out.append(rnd.randbytes(size))                                  # photos
        else:
            out.append((b"row %d;" % rnd.randrange(10 ** 6)) * (size // 10))  # compressible
    return out


def test_a_pack_round_trip_chunk_by_chunk(objects):
    data = chunks(120, 1)
    w = packs.PackWriter(SEAL, CONTENT)
    where = [w.add(c) for c in data]
    body = w.data()
    key = "packs/%s/%s" % (w.name[:2], w.name)
    assert objects.put_once(key, body)
    assert sum(len(c) for c in data) > len(body) * 1.2          # the compressible half shrank
    # no chunk's plaintext and no plain chunk id is visible to the store's operator
    for c in data[:20:2]:
        assert c[:64] not in body and hashlib.sha256(c).digest() not in body
    for c, (kid, off, ln) in zip(data, where):
        assert kid == packs.keyed_id(CONTENT, hashlib.sha256(c).digest())
        assert packs.read_chunk(objects, key, w.name, off, ln, SEAL, CONTENT, hashlib.sha256(c).digest()) == c
    assert packs.read_index(objects, key, w.name, SEAL) == [tuple(e) for e in where]


def test_damage_and_a_wrong_key_are_caught_by_the_seal(objects):
    data = chunks(10, 2)
    w = packs.PackWriter(SEAL, CONTENT)
    where = [w.add(c) for c in data]
    body = bytearray(w.data())
    kid, off, ln = where[3]
    body[off + ln // 2] ^= 0x01                  # a flipped bit in chunk 3, as a bad disk would
    key = "packs/%s/%s" % (w.name[:2], w.name)
    assert objects.put_once(key, bytes(body))
    sha = [hashlib.sha256(c).digest() for c in data]
    with pytest.raises(packs.DamagedObject, match="chunk at %d in pack %s does not unseal" % (off, w.name)):
        packs.read_chunk(objects, key, w.name, off, ln, SEAL, CONTENT, sha[3])
    for i in (2, 4):                             # its neighbours read as before
        assert packs.read_chunk(objects, key, w.name, where[i][1], where[i][2], SEAL, CONTENT, sha[i]) == data[i]
    with pytest.raises(packs.DamagedObject, match="another key"):
        packs.read_chunk(objects, key, w.name, where[2][1], where[2][2], bytes(32), CONTENT, sha[2])
    with pytest.raises(packs.DamagedObject, match="does not unseal"):   # asked for another chunk's id
        packs.read_chunk(objects, key, w.name, where[2][1], where[2][2], SEAL, CONTENT, sha[4])
    assert len(packs.read_index(objects, key, w.name, SEAL)) == 10


def test_a_truncated_or_foreign_object_is_not_taken_for_a_pack(objects):
    w = packs.PackWriter(SEAL, CONTENT)
    w.add(b"x" * 5000)
    body = w.data()
    objects.put_once("packs/cut", body[:-10])
    with pytest.raises(packs.DamagedObject):
        packs.read_index(objects, "packs/cut", w.name, SEAL)
    objects.put_once("packs/foreign", b"PK\x03\x04" + os.urandom(100))
    with pytest.raises(packs.DamagedObject, match="does not start as a pack"):
        packs.read_index(objects, "packs/foreign", "foreign", SEAL)
    with pytest.raises(packs.DamagedObject, match="missing"):
        packs.read_index(objects, "packs/none", "none", SEAL)


def test_an_unreachable_store_is_a_clear_error_in_bounded_time():
    port = free_ports(1)[0]                      # nothing listens there
    o = S3Objects(BUCKET, "http://127.0.0.1:%d" % port, ACCESS_KEY, SECRET_KEY, timeout=2, retries=1)
    t = time.monotonic()
    with pytest.raises(ObjectStoreError, match="cannot create epoch/1 at http://127.0.0.1:%d/fleet" % port):
        o.put_once("epoch/1", b"x")
    assert time.monotonic() - t < 20


def test_wrong_credentials_are_refused(s3):
    o = S3Objects(BUCKET, s3.endpoint, ACCESS_KEY, "not-the-secret", timeout=5, retries=0)
    with pytest.raises(ObjectStoreError, match="cannot create"):
        o.put_once("t-creds/x", b"x")
    assert s3.objects().get("t-creds/x") is None
