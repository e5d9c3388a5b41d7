"""A download resumed from the anchor's own copy, whose chunks cannot all be read when it is
sent (a damaged record, a fleet store that went away after the check): the body breaks off
as an origin's would (FAIL, broken), and nothing else happens to the session."""
import asyncio
import random

from anchor.storage.chunks import StoreError
from anchor_core import messages as m


class Info:
    def __init__(self, dev):
        self.dev = dev
        self.device = "phone"
        self.caps = 0


class Unreadable:
    """The app's store, with one chunk failing to read (as a damaged record does)."""

    def __init__(self, store, bad):
        self.store = store
        self.bad = bad

    def __getattr__(self, name):
        return getattr(self.store, name)

    def get(self, cid):
        if bytes(cid) == self.bad:
            raise StoreError("chunk %s: record damaged" % cid.hex()[:16])
        return self.store.get(cid)


def test_a_copy_that_cannot_be_read_breaks_the_body_off(app):
    dev = app.catalog.device_id("phone")
    body = random.Random(5).randbytes(200_000)
    url = "http://origin.example/f.bin"
    cap = app.capture.stream(dev)
    cap.write(body)
    cap.finish({"direction": "down", "protocol": "http", "method": "GET", "target": url,
                "status": 200, "etag": '"v1"'})
    oid = app.catalog.download(dev, url, '"v1"')[0]
    ids = app.catalog.object_chunks(oid)[1]
    app.capture.store = Unreadable(app.store, bytes(ids[len(ids) // 2]))
    relay = app.relay.session(Info(dev))
    sent = []

    async def send(msg):
        sent.append(msg)

    assert asyncio.run(relay._from_capture(url, (10, '"v1"'), send)) is True
    assert sent[0][0] == m.RESULT, sent[0]
    assert sent[-1][0] == m.FAIL and sent[-1][1] == m.F_BROKEN, sent[-1]
    got = b"".join(bytes(x[1]) for x in sent if x[0] == m.BODY)
    assert body[10:].startswith(got) and 0 < len(got) < len(body) - 10
