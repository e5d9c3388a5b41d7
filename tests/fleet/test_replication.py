"""A volume server lost under the store's own replication (docs/fleet.md, section 5): SeaweedFS
run as master, two volume servers, filer and S3 gateway, every volume kept on both servers
(-defaultReplication=001). Packs and index objects written through S3Objects, one volume server
killed, and every chunk, every pack's own index and the fleet index still read back."""
import hashlib
import os
import random
import time

import pytest

from anchor.fleet import index as fi, packs
from anchor.fleet.objects import ObjectStoreError
from anchor.fleet.remote import pack_key
from tests.support.seaweed import SeaweedCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SeaweedCluster(str(tmp_path_factory.mktemp("replicated")))
    yield c
    c.stop()


def test_every_chunk_and_the_index_read_back_with_a_volume_server_lost(cluster):
    t0 = time.monotonic()
    seal, content, index_key = os.urandom(32), os.urandom(32), os.urandom(32)
    objects = cluster.objects(prefix="t-replication/")
    ix = fi.FleetIndex(objects, index_key, "anchor-a")
    rnd = random.Random(15)
    written = []                  # (pack name, keyed id, offset, length, chunk)
    own = {}                      # pack name -> its own index as written
    for p in range(4):            # four packs of ~1 MiB of incompressible chunks
        w = packs.PackWriter(seal, content)
        for _ in range(24):
            raw = rnd.randbytes(rnd.randrange(8 << 10, 80 << 10))
            kid, off, ln = w.add(raw)
            written.append((w.name, kid, off, ln, raw))
        assert objects.put_once(pack_key(w.name), w.data())
        own[w.name] = [(k, o, ln) for n, k, o, ln, _ in written if n == w.name]
        ix.write([(b"dev-1", k, n, o, ln, len(raw)) for n, k, o, ln, raw in written if n == w.name])
    expected = ix.load()
    assert len(expected) == len(written) and sum(len(c) for *_, c in written) > 3 << 20

    # What was written is on both servers, as the master sees it, before one goes.
    copies = cluster.replicas()
    assert copies and set(copies.values()) == {2}, copies

    cluster.stop_volume(0)
    for name, kid, off, ln, raw in written:
        assert packs.read_chunk(objects, pack_key(name), name, off, ln, seal, content,
                                hashlib.sha256(raw).digest()) == raw
    for name, entries in own.items():
        assert packs.read_index(objects, pack_key(name), name, seal) == entries
    assert fi.FleetIndex(objects, index_key, "anchor-b").load() == expected

    # The reads above came from the surviving volume server, not from a cache in front of
    # them: with both servers gone, the same read fails.
    cluster.stop_volume(1)
    name, kid, off, ln, raw = written[0]
    with pytest.raises(ObjectStoreError):
        packs.read_chunk(cluster.objects(prefix="t-replication/", timeout=3, retries=0), pack_key(name),
                         name, off, ln, seal, content, hashlib.sha256(raw).digest())
    print("replication test: %.1f s after the cluster was up" % (time.monotonic() - t0))
