"""A store that hands back other bytes than were written (docs/fleet.md, section 5): the pack
object is overwritten in the bucket behind the anchors' backs with altered bytes of the same
length, as a faulty disk under the store or a hostile operator would. Its length still checks;
the seal does not, and the reader is told which pack."""
import hashlib
import os

import obstore
import pytest

from anchor.fleet import packs
from anchor.fleet.remote import pack_key

SEAL = bytes(range(32))
CONTENT = bytes(range(32, 64))


def overwrite(objects, key, data):
    # not through S3Objects, which only ever creates: the store itself changes the object
    obstore.put(objects.store, objects.prefix + key, bytes(data))
    assert objects.get(key) == bytes(data)


def a_pack(objects):
    """A pack of 8 incompressible chunks of one size (so their sealed lengths are equal)."""
    w = packs.PackWriter(SEAL, CONTENT)
    data = [os.urandom(4000) for _ in range(8)]
    where = [w.add(c) for c in data]
    body = w.data()
    key = pack_key(w.name)
    assert objects.put_once(key, body)
    return w.name, key, body, data, where


def read(objects, key, name, where, data, i):
    _, off, ln = where[i]
    return packs.read_chunk(objects, key, name, off, ln, SEAL, CONTENT, hashlib.sha256(data[i]).digest())


def test_altered_chunk_bytes_of_the_same_length_are_caught_naming_the_pack(objects):
    name, key, body, data, where = a_pack(objects)
    assert [read(objects, key, name, where, data, i) for i in range(8)] == data

    bad = bytearray(body)
    _, off, ln = where[3]
    bad[off:off + ln] = os.urandom(ln)                 # chunk 3: other bytes, same length
    _, off5, _ = where[5]
    bad[off5] ^= 0x80                                  # chunk 5: one bit of its nonce
    # chunks 1 and 6 swapped: each genuinely sealed by this fleet, but in the other's place
    (_, o1, l1), (_, o6, l6) = where[1], where[6]
    assert l1 == l6
    bad[o1:o1 + l1], bad[o6:o6 + l6] = body[o6:o6 + l6], body[o1:o1 + l1]
    overwrite(objects, key, bad)
    assert objects.size(key) == len(body)

    for i in (3, 5, 1, 6):
        with pytest.raises(packs.DamagedObject, match="chunk at %d in pack %s does not unseal"
                           % (where[i][1], name)):
            read(objects, key, name, where, data, i)
    for i in (0, 2, 4, 7):                             # the rest read as written
        assert read(objects, key, name, where, data, i) == data[i]
    assert packs.read_index(objects, key, name, SEAL) == [tuple(e) for e in where]


def test_a_damaged_tail_is_caught_by_read_index_naming_the_pack(objects):
    name, key, body, data, where = a_pack(objects)
    n = int.from_bytes(body[-4:], "big")
    sealed_index = len(body) - 4 - n

    bad = bytearray(body)
    bad[sealed_index + n // 2] ^= 0x01                 # one bit inside the sealed index
    overwrite(objects, key, bad)
    with pytest.raises(packs.DamagedObject, match="index of pack %s does not unseal" % name):
        packs.read_index(objects, key, name, SEAL)

    bad = bytearray(body)
    bad[-4:] = (n - 16).to_bytes(4, "big")             # the trailer's length, off by 16
    overwrite(objects, key, bad)
    with pytest.raises(packs.DamagedObject, match="index of pack %s" % name):
        packs.read_index(objects, key, name, SEAL)

    bad = bytearray(body)
    bad[-4:] = (len(body)).to_bytes(4, "big")          # a length larger than the object
    overwrite(objects, key, bad)
    with pytest.raises(packs.DamagedObject, match="pack %s names an index of %d bytes" % (name, len(body))):
        packs.read_index(objects, key, name, SEAL)

    # the chunks themselves are untouched by a damaged tail: each still reads on its own
    assert [read(objects, key, name, where, data, i) for i in range(8)] == data
