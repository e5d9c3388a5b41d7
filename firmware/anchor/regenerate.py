"""Regeneration: content evicted from the store but fetched over HTTP once is fetched again
from its origin when a backup needs it, instead of crossing the radio.

The body is captured like any relayed body (chunked, stored, registered); if it hashes to
the object the backup names, the waiting session sees it arrive. If the origin changed,
the new version's chunks are still kept: the rover then uploads only the chunks that
differ. A plain GET rather than a conditional one (If-Match would answer 412 and nothing
else for a changed file) because the radio, not the anchor's uplink, is the scarce link.
"""
import asyncio
import logging
import os
import tempfile
import threading

from anchor import watchlist
from anchor.capture import Capture
from anchor.relay_service import _Feed, _http_worker

log = logging.getLogger("anchor.regenerate")


async def regenerate(anchor, dev, oid, recipe):
    wl = watchlist.of(anchor)
    url = recipe["url"]
    feed = _Feed(asyncio.get_running_loop())
    spool = tempfile.NamedTemporaryFile(dir=anchor.spool_dir, prefix="regen-", delete=False)
    timeout = getattr(anchor, "relay_timeout", 30)
    threading.Thread(target=_http_worker, daemon=True,
                     args=(feed, "GET", url, [], None, timeout)).start()
    ok = False
    try:
        item = await feed.get()
        if item[0] == "head" and item[1] == 200:
            _, status, _, etag, lastmod, ctype = item
            while True:
                item = await feed.get()
                if item[0] != "data":
                    break
                spool.write(item[1])
            spool.close()
            if item[0] == "end":
                got, size = Capture(anchor).record(dev, spool.name, {
                    "direction": "regen", "protocol": "http", "method": "GET", "target": url,
                    "status": status, "etag": etag, "last_modified": lastmod, "content_type": ctype})
                ok = got == oid
                log.info("regenerated %s from %s: %s", oid.hex()[:16], url,
                         "same content" if ok else "the origin changed (%d bytes now)" % size)
        else:
            log.info("regenerating %s from %s failed: %s", oid.hex()[:16], url, item[1:])
    except Exception:
        log.exception("regenerating %s from %s failed", oid.hex()[:16], url)
    finally:
        feed.cancel.set()
        spool.close()
        os.unlink(spool.name)
        if not ok:
            wl.expire(dev, oid)
    return ok
