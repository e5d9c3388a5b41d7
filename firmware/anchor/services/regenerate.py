"""Regeneration: content evicted from the store but fetched over HTTP once is fetched again
from its origin when a backup needs it, instead of crossing the radio.

The body is captured like any relayed body (chunked, stored, registered); if it hashes to
the object the backup names, the waiting session sees it arrive. If the origin changed,
the new version's chunks are still kept: the rover then uploads only the chunks that
differ. The first request is conditional (If-Match with the captured ETag), so a 200 is
the version the rover has; a 412 is followed by a plain GET, because the changed body
still shares most chunks with the rover's copy, and the radio, not the anchor's uplink, is
the scarce link. CPython only.
"""
import asyncio
import logging
import threading

from anchor.services.relay import _Feed, _http_worker

log = logging.getLogger("anchor.regenerate")


async def _fetch(url, headers, keep, timeout):
    """GET url into `keep` (a capture stream) if it answers 200; returns the response head (status, size, etag, last-modified,
    content type) once the body is whole, or None (the status stays in the log)."""
    feed = _Feed(asyncio.get_running_loop())
    threading.Thread(target=_http_worker, daemon=True,
                     args=(feed, "GET", url, headers, None, timeout)).start()
    try:
        item = await feed.get()
        if item[0] != "head" or item[1] != 200:
            return item
        head = item
        while True:
            item = await feed.get()
            if item[0] != "data":
                break
            keep.write(item[1])
        return head if item[0] == "end" else item
    finally:
        feed.cancel.set()


class Regenerator:
    def __init__(self, capture, watchlist, timeout):
        self.capture = capture            # a regenerated body is captured like a relayed one
        self.watchlist = watchlist        # its watch ends at once when regeneration fails
        self.timeout = timeout            # per request to the origin, as for the relay

    @property
    def watch_seconds(self):
        """The deadline of a watch on a regenerated object: the conditional GET, and the
        plain one after a 412, each within the relay timeout."""
        return int(self.timeout * 2) + 1

    async def regenerate(self, dev, oid, recipe):
        """Fetch `recipe`'s URL again for object `oid` of device `dev`; returns whether the
        body is that object. The waiting backup session is woken either way."""
        wl = self.watchlist
        url = recipe["url"]
        ok = False
        keep = self.capture.stream(dev)
        try:
            # Conditional first: with the ETag of the version captured, a 200 is that version.
            cond = [("If-Match", recipe["etag"])] if recipe.get("etag") else []
            got = await _fetch(url, cond, keep, self.timeout)
            if got[0] == "head" and got[1] == 412:
                # The origin changed. Its new version still shares most chunks with the rover's
                # copy, so keep it anyway: the rover then uploads only the chunks that differ.
                # (A 412 has no body for the stream: it is still empty.)
                got = await _fetch(url, [], keep, self.timeout)
            if got[0] != "head" or got[1] != 200:
                log.info("regenerating %s from %s failed: %s", oid.hex()[:16], url, got[1:])
            else:
                _, status, _, etag, lastmod, ctype, _ = got
                done = keep.finish({
                    "direction": "regen", "protocol": "http", "method": "GET", "target": url,
                    "status": status, "etag": etag, "last_modified": lastmod, "content_type": ctype})
                if done is None:
                    log.info("regenerating %s from %s: no spool room; the rover uploads it",
                             oid.hex()[:16], url)
                else:
                    new, size = done
                    ok = new == oid
                    log.info("regenerated %s from %s: %s", oid.hex()[:16], url,
                             "same content" if ok else "the origin changed (%d bytes now)" % size)
        except Exception:
            log.exception("regenerating %s from %s failed", oid.hex()[:16], url)
        finally:
            keep.discard()
            if not ok:
                wl.expire(dev, oid)
        return ok
