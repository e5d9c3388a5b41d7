"""Relay: the anchor fetches, sends and publishes for a rover over its own uplink.

Network calls run in worker threads (http.client, paho-mqtt) and hand their results to
the session's event loop through a small bounded queue, so a slow rover slows the origin
read instead of filling the anchor's memory. Every body that passes whole is captured
(services.capture) for later backups; a body that breaks off is reported and dropped.
CPython only.
"""
import asyncio
import hashlib
import http.client
import logging
import os
import socket
import threading
import time
from urllib.parse import urlsplit

from anchor_core import messages as m
from anchor_core import resumemsg
from anchor.storage.chunks import StoreError

resumemsg.install()

log = logging.getLogger("anchor.relay")

BODY_DOWN = 4096              # BODY bytes per message to a rover (a MicroPython one takes 4.6 KB)...
# ...and to one that said it takes whole BODYs (CAP_BODY: a CPython rover): a quarter of the
# messages to encode, frame and decode per byte relayed.
READ_BLOCK = 131072          # origin bytes per hand-over from the worker thread (each costs a GIL switch)
QUEUE_DEPTH = 8
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 256 << 20
# Messages whose handling awaits the network (the daemon awaits handle() for these).
RELAY_TYPES = (m.FETCH, m.SEND, m.PUBLISH, m.BODY, m.END, m.WATCHWAIT, resumemsg.UPASK)
FETCH_RESUME = 3              # FETCH's optional [offset, validator] (docs/protocol.md §5)
# An upload the link cut off (SEND or PUBLISH with an upload id) is held for its rover to
# come back and send the rest: this long, at most this many per device and in all (the
# oldest goes first). Its bytes stay drawn on the spool budget while held.
HOLD_SECONDS = 600.0
HOLD_PER_DEVICE = 2
HOLD_MAX = 8
# A resume of an upload another session of the rover is still receiving (its link is gone but
# the anchor has not seen it close yet, or is reading what arrived before the cut) waits this
# long for that session to end, then takes the upload from it.
TAKEOVER_WAIT = 5.0


class _Feed:
    """Worker thread -> event loop, bounded; the worker gives up once the session is gone.

    Each item crosses exactly once: call_soon_threadsafe either schedules the hand-over or
    raises, it never leaves it in doubt. (A put through run_coroutine_threadsafe that timed
    out could still land after the worker had given up on it and sent the item again: a
    loop that did not run for a second, on a loaded machine or behind other sessions'
    synchronous work, duplicated 16 KiB of a body or a response head.) A semaphore the
    consumer releases bounds what is in flight."""

    def __init__(self, loop):
        self.loop = loop
        self.q = asyncio.Queue()
        self.slots = threading.Semaphore(QUEUE_DEPTH)
        self.cancel = threading.Event()

    def put(self, item):
        # Polled, because the session sets `cancel` without knowing whether we wait here.
        while not self.slots.acquire(timeout=1.0):
            if self.cancel.is_set():
                return False
        if self.cancel.is_set():
            return False
        try:
            self.loop.call_soon_threadsafe(self.q.put_nowait, item)
        except RuntimeError:      # the loop is closed
            return False
        return True

    async def get(self):
        item = await self.q.get()
        self.slots.release()
        return item


def _http_worker(feed, method, url, headers, body_path, timeout, read_body=True):
    u = urlsplit(url)
    try:
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=timeout)
    except (ValueError, http.client.InvalidURL) as e:
        feed.put(("fail", m.F_BAD_REQUEST, "bad url: %s" % e))
        return
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    started = False
    try:
        hdrs = dict(headers)
        if body_path is not None:
            size = os.path.getsize(body_path)
            hdrs["Content-Length"] = str(size)
            with open(body_path, "rb") as f:
                conn.request(method, path, body=f, headers=hdrs)
        else:
            conn.request(method, path, headers=hdrs)
        resp = conn.getresponse()
        length = resp.getheader("Content-Length")
        started = True
        if not feed.put(("head", resp.status, int(length) if length and length.isdigit() else None,
                         resp.getheader("ETag"), resp.getheader("Last-Modified"),
                         resp.getheader("Content-Type"), resp.getheader("Content-Range"))):
            return
        declared = int(length) if length and length.isdigit() else None
        total = 0
        while True:
            b = resp.read(READ_BLOCK)
            if not b:
                break
            total += len(b)
            if read_body and not feed.put(("data", b)):
                return
        # http.client's read(n) returns short, not an error, when the origin closes early
        if declared is not None and total != declared:
            feed.put(("fail", m.F_BROKEN, "%s stopped after %d of %d bytes" % (u.netloc, total, declared)))
            return
        feed.put(("end",))
    except socket.timeout:
        feed.put(("fail", m.F_TIMEOUT, "%s timed out after %g s" % (u.netloc, timeout)))
    except http.client.IncompleteRead as e:
        feed.put(("fail", m.F_BROKEN, "%s stopped after %d bytes" % (u.netloc, len(e.partial))))
    except (ConnectionError, OSError, http.client.HTTPException) as e:
        code = m.F_BROKEN if started else m.F_UNREACHABLE
        feed.put(("fail", code, "%s: %s" % (u.netloc, e or type(e).__name__)))
    finally:
        conn.close()


def _mqtt_publish(broker, topic, path, qos, retain, timeout):
    """Publish one message; returns None or (failure code, text)."""
    import paho.mqtt.client as mqtt
    from anchor.broker import Broker, refusal
    host, port = broker
    if not isinstance(broker, Broker):
        broker = Broker(host, port)
    with open(path, "rb") as f:
        payload = f.read()
    c = broker.client("anchor-relay-%d-%d" % (os.getpid(), threading.get_ident()))
    refused = []
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason, props):
        if reason.is_failure:
            refused.append(refusal(reason))
        connected.set()
    c.on_connect = on_connect
    try:
        c.connect(host, port, keepalive=30)
    except (OSError, ValueError) as e:
        return (m.F_BROKER, "broker %s unavailable: %s" % (broker.url, broker.explain(e)))
    c.loop_start()
    try:
        # A refused login (bad user name or password) says so, not "did not acknowledge".
        if not connected.wait(timeout):
            return (m.F_TIMEOUT, "broker %s did not answer the connection in %g s" % (broker.url, timeout))
        if refused:
            return (m.F_BROKER, "broker %s %s" % (broker.url, refused[0]))
        info = c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            return (m.F_TIMEOUT, "broker %s did not acknowledge in %g s" % (broker.url, timeout))
        return None
    except (RuntimeError, ValueError) as e:
        return (m.F_BROKER, "broker refused the message: %s" % e)
    finally:
        c.disconnect()
        c.loop_stop()


def _resume(msg):
    """FETCH's optional resume field [offset, validator]: the rover holds the body's first
    `offset` bytes of the version whose ETag (or Last-Modified) is `validator`. Returns
    (offset, validator) or None; a malformed one breaks the protocol."""
    if len(msg) <= FETCH_RESUME or msg[FETCH_RESUME] is None:
        return None
    r = msg[FETCH_RESUME]
    if (type(r) is not list or len(r) != 2 or type(r[0]) is not int or not 0 < r[0] <= m.MAX_RELAY
            or type(r[1]) is not str or not 0 < len(r[1]) <= 512):
        raise m.ProtocolError(m.E_PROTOCOL, "FETCH resume must be [offset (1..2^40), validator (text)]")
    return r[0], r[1]


def _prefix_digest(stream):
    """SHA-256 of what a partial capture holds (the start of a body)."""
    h = hashlib.sha256()
    for piece in stream.read(0):
        h.update(piece)
    return h.digest()


def _range_total(crange, start):
    """The whole body's size from a 206's Content-Range when it starts at `start` and runs to
    the end; None for any other range."""
    try:
        unit, _, rest = (crange or "").partition(" ")
        span, _, total = rest.partition("/")
        first, _, last = span.partition("-")
        first, last, total = int(first), int(last), int(total)
    except ValueError:
        return None
    if unit != "bytes" or first != start or last != total - 1:
        return None
    return total


def _digest(path, n):
    """SHA-256 of the first n bytes of a held upload's spool file (what HELD tells the
    rover, which checks it against its own file before it sends the rest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while n > 0:
            b = f.read(min(n, 1 << 20))
            if not b:
                raise OSError("spool file %s is shorter than what it should hold" % path)
            h.update(b)
            n -= len(b)
    return h.digest()


class _Upload:
    """One SEND or PUBLISH body on its way in from the rover."""
    __slots__ = ("kind", "req", "declared", "spool", "keep", "got", "start", "uid", "refused")

    def __init__(self, kind, req, spool, keep, uid=None, got=0):
        self.kind = kind
        self.req = req
        self.declared = req[m.PUBLISH_SIZE] if kind == m.PUBLISH else req[m.SEND_SIZE]
        self.spool = spool                # None: passed over (too large, or a refused resume)
        self.keep = keep                  # its capture as it passes, or None
        self.uid = uid                    # the rover's upload id: kept when the link is cut
        self.got = got                    # bytes of the body received, this session and before
        self.start = got                  # ... of which before this session
        self.refused = None               # why a resume was refused (FAIL after END)

    def discard(self):
        if self.spool is not None:
            self.spool.discard()
        if self.keep is not None:
            self.keep.discard()


class RelayService:
    """What every relay session shares: where uploads are spooled, how bodies are kept, the limits, and
    the broker publishes go to. One RelayHandler per link session (session())."""

    def __init__(self, capture, spool_room, timeout=DEFAULT_TIMEOUT, max_body=DEFAULT_MAX_BODY, broker=None):
        # None only to measure what capture costs (anchor serve --no-capture): bodies pass
        # (uploads still through a spool file, to be sent on whole) but are never kept.
        self.capture = capture
        self.spool_room = spool_room      # services.spool.SpoolRoom: uploads wait whole in it
        self.timeout = timeout            # seconds to wait on an origin or the broker
        self.max_body = max_body
        self.broker = broker              # (host, port), or None: publishes fail clearly
        self.hold_seconds = HOLD_SECONDS  # 0: a cut upload is dropped, as before resumes
        self.held = {}                    # (device, upload id) -> (since, _Upload), oldest first
        self.active = {}                  # (device, upload id) -> RelayHandler receiving it now
        self.reads = {}                   # (device, url, validator) -> Event: a fetch being kept
        self.partial = {}                 # (device, url, validator) -> (since, CaptureStream)

    # --- uploads held for a rover to come back --------------------------------------------

    def hold(self, dev, up):
        """Keep a cut-off upload (its spool file and capture) until its rover resumes it."""
        self.expire()
        self.drop(dev, up.uid)
        mine = [k for k in self.held if k[0] == dev]
        while len(mine) >= HOLD_PER_DEVICE:
            self.drop(*mine.pop(0))
        while len(self.held) >= HOLD_MAX:
            self.drop(*next(iter(self.held)))
        up.spool.f.flush()
        self.held[(dev, up.uid)] = (time.monotonic(), up)

    def held_upload(self, dev, uid):
        """The upload `uid` of device `dev` held here, or None (another device's never shows)."""
        self.expire()
        h = self.held.get((dev, uid))
        return h[1] if h else None

    def take(self, dev, uid):
        return self.held.pop((dev, uid))[1]

    def drop(self, dev, uid):
        h = self.held.pop((dev, uid), None)
        if h is not None:
            h[1].discard()

    def expire(self):
        now = time.monotonic()
        for k in [k for k, (since, _) in self.held.items() if now - since > self.hold_seconds]:
            log.info("relay: upload %s of device %s held %g s without a resume; dropped", k[1].hex(), k[0],
                     self.hold_seconds)
            self.drop(*k)

    def close(self):
        for k in list(self.held):
            self.drop(*k)
        for k in list(self.partial):
            self.partial.pop(k)[1].discard()

    # --- downloads: read on after a cut, and what broke off ---------------------------------

    def reading(self, dev, url, validator):
        """A fetch of that version is under way and kept: a resume of it waits for its end."""
        key = (dev, url, validator)
        self.reads[key] = self.reads.get(key) or asyncio.Event()
        return key

    def read_on_over(self, key):
        ev = self.reads.pop(key, None)
        if ev is not None:
            ev.set()

    async def read_on_done(self, dev, url, validator):
        """Wait (at most the relay timeout) for a fetch of that version still reading on after
        its rover's link was cut: once it ends, the body is held whole (or its start is)."""
        ev = self.reads.get((dev, url, validator))
        if ev is not None:
            try:
                await asyncio.wait_for(ev.wait(), self.timeout)
            except asyncio.TimeoutError:
                pass

    def hold_partial(self, key, stream):
        """The start of a body whose origin broke off (a CaptureStream, its chunks stored):
        kept like a held upload, for a resume to serve and to complete with a range request."""
        now = time.monotonic()
        for k in [k for k, (since, _) in self.partial.items() if now - since > self.hold_seconds or k == key]:
            self.partial.pop(k)[1].discard()
        mine = [k for k in self.partial if k[0] == key[0]]
        while len(mine) >= HOLD_PER_DEVICE:
            self.partial.pop(mine.pop(0))[1].discard()
        while len(self.partial) >= HOLD_MAX:
            self.partial.pop(next(iter(self.partial)))[1].discard()
        self.partial[key] = (now, stream)

    def take_partial(self, dev, url, validator):
        h = self.partial.pop((dev, url, validator), None)
        if h is None:
            return None
        if time.monotonic() - h[0] > self.hold_seconds:
            h[1].discard()
            return None
        return h[1]

    def session(self, backup):
        """The relay of one link session; `backup` (its BackupHandler) names the device and
        waits for watched data."""
        return RelayHandler(self, backup)


class RelayHandler:
    def __init__(self, service, session_info):
        self.service = service
        self.info = session_info          # gives .dev and .device once HELLO arrived
        self.capture = service.capture
        self.upload = None                # the _Upload coming in
        self.counts = {}
        self.ended = asyncio.Event()      # set when the session is over (end())

    def end(self):
        """The session is over. An upload cut off mid-body that has an upload id is held for
        its rover to resume (RelayService.hold); any other lets go of its spool file and its
        capture (their bytes leave the spool budget; chunks already stored stay, unregistered,
        as pass-through data)."""
        self.ended.set()
        up = self._let_go()
        if up is None:
            return
        if (up.uid is not None and up.spool is not None and up.spool.kept and up.refused is None
                and 0 < up.got < up.declared and self.service.hold_seconds > 0):
            self.service.hold(self.info.dev, up)
            log.info("rover %s: link lost after %d of %d bytes of upload %s; held for a resume",
                     self.info.device, up.got, up.declared, up.uid.hex())
            return
        up.discard()

    def _let_go(self):
        """The upload this session receives, which it no longer does."""
        up, self.upload = self.upload, None
        if up is not None and up.uid is not None and self.service.active.get((self.info.dev, up.uid)) is self:
            del self.service.active[(self.info.dev, up.uid)]
        return up

    async def _settle(self, uid):
        """Before a resume of `uid` is answered: the rover's older session that was receiving
        it has ended (its upload is held now), or it is taken from that session."""
        key = (self.info.dev, uid)
        other = self.service.active.get(key)
        if other is None or other is self:
            return
        try:
            await asyncio.wait_for(other.ended.wait(), TAKEOVER_WAIT)
        except asyncio.TimeoutError:
            pass
        if self.service.active.get(key) is other:
            up = other._let_go()
            other.upload = _Upload(up.kind, up.req, None, None, None, up.got)    # what still comes there is dropped
            if up.spool is not None and up.spool.kept and up.refused is None and 0 < up.got < up.declared:
                self.service.hold(self.info.dev, up)
            else:
                up.discard()

    def _count(self, **kv):
        for k, v in kv.items():
            self.counts[k] = self.counts.get(k, 0) + v

    def _spool(self):
        return self.service.spool_room.open("relay-")

    def _stream(self, counted=True):
        """The capture of a body about to pass, or None when nothing is kept (--no-capture).
        counted=False: a spool file already draws on the room for it."""
        return self.capture.stream(self.info.dev, counted) if self.capture is not None else None

    async def handle(self, msg, send):
        t = msg[m.MSG_TYPE]
        if t == m.WATCHWAIT:
            await self.info.watch_wait(msg, send)    # the backup's wait for relayed data
        elif t == m.FETCH:
            await self._fetch(msg, send)
        elif t in (m.SEND, m.PUBLISH):
            # Refusals (too large, no broker, a resume of what is not held) come as FAIL after
            # the body: the rover streams it first, and the table has no FAIL while it sends.
            u = resumemsg.upload_field(msg)
            uid, offset = u if u is not None else (None, 0)
            if uid is not None:
                await self._settle(uid)
            if msg[m.PUBLISH_SIZE if t == m.PUBLISH else m.SEND_SIZE] > self.service.max_body:
                self.upload = _Upload(t, msg, None, None, None, offset)
            elif offset:
                self.upload = self._resumed(t, msg, uid, offset)
            else:
                if uid is not None:
                    self.service.drop(self.info.dev, uid)     # the rover starts that body over
                self.upload = _Upload(t, msg, self._spool(), self._stream(False), uid)
            if self.upload.uid is not None:
                self.service.active[(self.info.dev, uid)] = self
        elif t == m.BODY:
            up = self.upload
            up.got += len(msg[m.BODY_DATA])
            if up.got > up.declared:
                raise m.ProtocolError(m.E_PROTOCOL, "body longer than the %d bytes announced" % up.declared)
            if up.spool is not None:
                up.spool.write(msg[m.BODY_DATA])
                if up.keep is not None:
                    up.keep.write(msg[m.BODY_DATA])
        elif t == m.END:
            await self._finish_upload(msg, send)
        elif t == resumemsg.UPASK:
            await self._upask(msg, send)

    # --- uploads that resume -------------------------------------------------------------

    def _resumed(self, t, msg, uid, offset):
        """SEND or PUBLISH with [upload id, offset > 0]: the rest of a held upload. Anything
        that does not continue exactly what is held here is refused after END, and what is
        held stays as it was."""
        up = self.service.held_upload(self.info.dev, uid)
        why = None
        if up is None:
            why = "this anchor holds no upload %s of this rover" % uid.hex()
        elif up.kind != t or up.req[1:5] != msg[1:5]:
            why = "upload %s was another request" % uid.hex()
        elif up.got != offset:
            why = "the anchor holds %d bytes of upload %s, not %d" % (up.got, uid.hex(), offset)
        if why is not None:
            refused = _Upload(t, msg, None, None, None, offset)
            refused.refused = why
            return refused
        self.service.take(self.info.dev, uid)
        up.req = msg
        up.start = up.got
        log.info("rover %s: upload %s resumes at byte %d of %d", self.info.device, uid.hex(), offset, up.declared)
        return up

    async def _upask(self, msg, send):
        uid = msg[1]
        await self._settle(uid)
        up = self.service.held_upload(self.info.dev, uid)
        if up is None:
            await send(m.fail(resumemsg.F_RESUME, "this anchor holds no upload %s of this rover (never begun "
                              "here, finished, or dropped after %g s)" % (uid.hex(), self.service.hold_seconds)))
            return
        n = up.got
        digest = await asyncio.get_running_loop().run_in_executor(None, _digest, up.spool.name, n)
        await send(resumemsg.held(uid, n, digest))

    # --- fetch -------------------------------------------------------------------------

    async def _fetch(self, msg, send):
        url = msg[m.FETCH_URL]
        resume = _resume(msg)
        headers = list(msg[m.FETCH_HEADERS])
        part = None         # a capture of that version that broke off: its first part.size bytes
        if resume is not None:
            # A read-on of that very body (the rover's last session, cut) may still be on.
            await self.service.read_on_done(self.info.dev, url, resume[1])
            if await self._from_capture(url, resume, send):
                return
            part = self.service.take_partial(self.info.dev, url, resume[1])
            # The origin sends what neither the anchor nor the rover holds, if it still has
            # that version (If-Range), else the whole of the new one.
            frm = part.size if part is not None else resume[0]
            headers += [("Range", "bytes=%d-" % frm), ("If-Range", resume[1])]
        feed = _Feed(asyncio.get_running_loop())
        keep = None
        worker = threading.Thread(target=_http_worker, daemon=True,
                                  args=(feed, "GET", url, headers, None, self.service.timeout))
        worker.start()
        complete = False
        key = None
        try:
            item = await feed.get()
            if item[0] == "fail":
                log.info("rover %s: fetch %s failed: %s", self.info.device, url, item[2])
                await send(m.fail(item[1], item[2]))
                return
            _, status, length, etag, lastmod, ctype, crange = item
            start = skip = 0
            held = None     # (from, to): bytes for the rover from the anchor's partial capture
            check = None    # an origin that ignored the range: its first bytes must be part's
            if resume is not None and status == 206:
                # The rest only. Kept when the anchor holds the start (part): the capture goes
                # on from where it broke off; else passed on and not kept.
                start = resume[0]
                length = _range_total(crange, frm)
                if length is None:
                    why = "%s answered a range the anchor did not ask for (%s)" % (urlsplit(url).netloc, crange)
                    log.info("rover %s: fetch %s failed: %s", self.info.device, url, why)
                    await send(m.fail(m.F_BROKEN, why))
                    return
                status = 200
                if part is not None:
                    keep, part = part, None
                    skip = max(0, start - keep.size)
                    if start < keep.size:
                        held = (start, keep.size)
            elif resume is not None and status == 200 and resume[1] == (etag or lastmod):
                # The same version, whole (the origin ignored the range): the rover gets the
                # rest, the anchor keeps all of it. With a partial capture, the origin's first
                # bytes must be those (checked), and the capture goes on after them.
                start = skip = resume[0]
                if part is not None:
                    keep, part = part, None
                    check = [hashlib.sha256(), keep.size, _prefix_digest(keep), keep.size]
                    skip = 0
                else:
                    keep = self._stream()
            elif status == 200:
                keep = self._stream()
            if part is not None:
                # Another version, or an error: what the anchor held of that version is of no use.
                part.discard()
                part = None
            if keep is not None and (etag or lastmod):
                key = self.service.reading(self.info.dev, url, etag or lastmod)
            await send(m.result(status, length, etag, lastmod, ctype, start) if resume is not None
                       else m.result(status, length, etag, lastmod, ctype))
            total = sent = 0
            if held is not None:
                for data in keep.read(*held):
                    await self._send_body(data, send)
                    sent += len(data)
                held = None
            gone = None
            while True:
                item = await feed.get()
                if item[0] == "data":
                    data = item[1]
                    total += len(data)
                    if total > self.service.max_body:
                        if gone is None:
                            await send(m.fail(m.F_TOO_LARGE, "body above the relay limit of %d bytes" % self.service.max_body))
                        return
                    if check is not None:
                        # The bytes the anchor held, again: compared, not kept twice.
                        n = min(len(data), check[1])
                        check[0].update(data[:n])
                        check[1] -= n
                        data = data[n:]
                        if check[1] == 0:
                            if check[0].digest() != check[2]:
                                why = ("%s sent other bytes under the same validator than the anchor "
                                       "holds; the download starts over" % urlsplit(url).netloc)
                                log.info("rover %s: fetch %s: %s", self.info.device, url, why)
                                if gone is None:
                                    await send(m.fail(resumemsg.F_RESUME, why))
                                return
                            psize, check = check[3], None
                            if start < psize and gone is None:
                                # Checked: the rover's missing bytes the anchor held, from its copy.
                                for b in keep.read(start, psize):
                                    await self._send_body(b, send)
                                    sent += len(b)
                            skip = max(0, start - psize)
                        if not data:
                            continue
                    if keep is not None:
                        keep.write(data)
                    if gone is not None:
                        continue
                    if skip:
                        if len(data) <= skip:
                            skip -= len(data)
                            continue
                        data = data[skip:]
                        skip = 0
                    try:
                        await self._send_body(data, send)
                    except ConnectionError as e:
                        if keep is None or not keep.kept:
                            raise
                        # The link is gone, the origin is not: read on and keep the body whole,
                        # so that the rover's resume is served from here (and never asks the
                        # origin twice, nor moves a byte over the link twice).
                        gone = e
                        log.info("rover %s: link lost during fetch %s; reading on so the body is kept whole",
                                 self.info.device, url)
                        continue
                    sent += len(data)
                elif item[0] == "end":
                    break
                else:
                    log.info("rover %s: fetch %s broke: %s", self.info.device, url, item[2])
                    if keep is not None and key is not None and keep.kept and check is None and keep.size:
                        # What passed is the start of that version: a resume takes it from here
                        # and asks the origin for the rest only.
                        self.service.hold_partial(key, keep)
                        log.info("rover %s: kept the first %d bytes of %s for a resume", self.info.device,
                                 keep.size, url)
                        keep = None
                    if gone is None:
                        await send(m.fail(item[1], item[2]))
                    return
            if check is not None:
                why = "%s sent a body shorter than what the anchor holds of it" % urlsplit(url).netloc
                if gone is None:
                    await send(m.fail(resumemsg.F_RESUME, why))
                return
            self._count(relay_down_bytes=sent, relay_requests=1)
            if resume is not None and start:
                self._count(relay_resumed=1)
            if keep is not None:
                # Kept before END goes out: when the rover has its whole file, so does the
                # anchor (and its counters say so). Cut and stored as it passed, only the last
                # block and the flush are left here.
                self._capture(keep, {"direction": "down", "protocol": "http", "method": "GET",
                                     "target": url, "status": status, "etag": etag,
                                     "last_modified": lastmod, "content_type": ctype})
            if gone is not None:
                raise gone
            complete = True
            await send(m.end(sent))
        finally:
            feed.cancel.set()
            if keep is not None:
                keep.discard()
            if part is not None:
                # Not used (the origin failed, or sent another version): kept for a next try
                # only while it is that version's start, which a new version's answer ends.
                self.service.hold_partial((self.info.dev, url, resume[1]), part)
            if key is not None:
                self.service.read_on_over(key)
            if not complete:
                self._count(relay_failures=1)

    async def _send_body(self, data, send):
        """`data` to the rover as BODYs as large as it takes (CAP_BODY: 16 KiB, else 4 KiB)."""
        step = m.MAX_BODY if self.info.caps & m.CAP_BODY else BODY_DOWN
        for off in range(0, len(data), step):
            await send(m.body(data[off:off + step]))

    async def _from_capture(self, url, resume, send):
        """A cut-off download whose body the anchor holds whole (it read on after the link
        was lost, or fetched it before): the rest, from the store. Returns False when it
        does not hold it (never captured, another version, or evicted since)."""
        cap = self.capture
        if cap is None:
            return False
        offset, validator = resume
        row = cap.catalog.download(self.info.dev, url, validator)
        if row is None:
            return False
        if row[1] < offset:
            # That version is known here and is shorter: the rover's bytes are not a start of it.
            why = "resume at byte %d is past the end of the %d-byte body of that version" % (offset, row[1])
            log.info("rover %s: fetch %s: %s", self.info.device, url, why)
            self._count(relay_failures=1)
            await send(m.fail(resumemsg.F_RESUME, why))
            return True
        oid, size, etag, lastmod, ctype = row
        ids = cap.catalog.object_chunks(oid)[1]
        store = cap.store
        if store.missing(ids):
            return False
        await send(m.result(200, size, etag, lastmod, ctype, offset))
        pos = sent = 0
        for cid in ids:
            n = store.info(cid)["raw_len"]
            if pos + n <= offset:
                pos += n
                continue
            try:
                data = store.get(cid)[max(0, offset - pos):]
            except StoreError as e:
                # Gone or unreadable since the check (a fleet store away): the body breaks off
                # here as an origin's would, and the rover may resume it later.
                log.warning("rover %s: fetch %s from the anchor's copy broke at byte %d: %s",
                            self.info.device, url, pos, e)
                self._count(relay_failures=1)
                await send(m.fail(m.F_BROKEN, "the anchor's copy cannot be read: %s" % e))
                return True
            pos += n
            await self._send_body(data, send)
            sent += len(data)
        self._count(relay_down_bytes=sent, relay_requests=1, relay_resumed=1)
        log.info("rover %s: fetch %s resumed at %d from the anchor's copy (%d bytes sent)",
                 self.info.device, url, offset, sent)
        await send(m.end(sent))
        return True

    def _capture(self, keep, prov):
        done = keep.finish(prov)
        if done is None:
            return
        oid, size = done
        self._count(captured_objects=1, captured_bytes=size)
        log.info("rover %s: captured %s %s %s (%d bytes, object %s)", self.info.device, prov["direction"],
                 prov["method"], prov["target"], size, oid.hex()[:16])

    # --- send and publish ----------------------------------------------------------------

    async def _finish_upload(self, msg, send):
        up = self._let_go()
        kind, req, spool, got, keep, declared = up.kind, up.req, up.spool, up.got, up.keep, up.declared
        if msg[m.END_SIZE] != got or got != declared:
            up.discard()
            raise m.ProtocolError(m.E_PROTOCOL, "body of %d bytes announced, %d sent, END says %d"
                                  % (declared, got, msg[m.END_SIZE]))
        if up.refused is not None:
            log.info("rover %s: resumed upload refused: %s", self.info.device, up.refused)
            self._count(relay_failures=1)
            await send(m.fail(resumemsg.F_RESUME, up.refused))
            return
        if spool is None:
            await send(m.fail(m.F_TOO_LARGE, "body above the relay limit of %d bytes" % self.service.max_body))
            return
        if not spool.kept:
            # The relay sends an upload on only once it holds it whole, and it had no room.
            spool.discard()
            if keep is not None:
                keep.discard()
            await send(m.fail(m.F_TOO_LARGE, "the anchor has no room to hold this body now "
                              "(its spool is full); try again later"))
            return
        spool.close()
        try:
            self._count(relay_up_bytes=got - up.start, relay_requests=1)
            if up.start:
                self._count(relay_resumed=1)
            if kind == m.PUBLISH:
                prov = {"direction": "up", "protocol": "mqtt", "method": "PUBLISH", "target": req[m.PUBLISH_TOPIC]}
            else:
                prov = {"direction": "up", "protocol": "http", "method": req[m.SEND_METHOD], "target": req[m.SEND_URL],
                        "content_type": req[m.SEND_TYPE]}
            # Captured whatever the origin says: these are the rover's own bytes, whole.
            if keep is not None:
                self._capture(keep, prov)
            if kind == m.PUBLISH:
                await self._publish(req, spool.name, send)
            else:
                await self._send_http(req, spool.name, send)
        finally:
            spool.discard()
            if keep is not None:
                keep.discard()

    async def _publish(self, req, path, send):
        if self.service.broker is None:
            await send(m.fail(m.F_BROKER, "this anchor has no broker (anchor serve --broker mqtt://HOST:PORT)"))
            return
        loop = asyncio.get_running_loop()
        err = await loop.run_in_executor(None, _mqtt_publish, self.service.broker, req[m.PUBLISH_TOPIC], path,
                                         req[m.PUBLISH_QOS], req[m.PUBLISH_RETAIN], self.service.timeout)
        if err:
            self._count(relay_failures=1)
            await send(m.fail(err[0], err[1]))
        else:
            await send(m.result(0))

    async def _send_http(self, req, path, send):
        feed = _Feed(asyncio.get_running_loop())
        worker = threading.Thread(target=_http_worker, daemon=True,
                                  args=(feed, req[m.SEND_METHOD], req[m.SEND_URL], [("Content-Type", req[m.SEND_TYPE])], path,
                                        self.service.timeout, False))
        worker.start()
        try:
            item = await feed.get()
            if item[0] == "fail":
                self._count(relay_failures=1)
                await send(m.fail(item[1], item[2]))
                return
            status = item[1]
            while item[0] not in ("end", "fail"):
                item = await feed.get()
            await send(m.result(status))
        finally:
            feed.cancel.set()
