"""HTTP forward proxy: relay and capture for rovers that have IP (docs/protocol.md section 5).

A rover points its HTTP client at the anchor (`anchor serve --proxy tcp://HOST:PORT`) and
sends absolute-form requests (`GET http://origin/path HTTP/1.1`). The anchor forwards GET,
HEAD, PUT and POST over its own uplink and streams the answer back, and keeps every whole
body exactly as the relay does: a 200 answer to a GET, and the body of a PUT or POST. A body
that breaks off is never kept, and the client sees the break (the connection closes short).

The device is the user name of `Proxy-Authorization: Basic base64(DEVICE:SECRET)`, SECRET
its pairing secret in hex (the 32 bytes of the rover's pairing.key): a paired device is
served only with it. An --open anchor also serves devices that are not paired, on their
word. Every other client gets 407, the same answer whatever was wrong. CONNECT is
refused: the bytes of a TLS tunnel cannot be seen into, so HTTPS goes through the rover's
`fetch` relay, which terminates TLS at the anchor.

Plain asyncio, one origin connection per request (`Connection: close` towards the origin),
keep-alive towards the client. Every read and write towards either side is bounded by the
relay timeout (anchor serve --relay-timeout); a body by the relay's size limit. CPython only.
"""
import asyncio
import base64
import binascii
import logging
import os
from urllib.parse import urlsplit

from anchor_core import messages as m
from anchor_core.secure import equal

log = logging.getLogger("anchor.proxy")

MAX_HEAD = 16384              # bytes of a request or response head (line + headers)
STREAM_LIMIT = 65536          # asyncio's buffer per connection (a head is checked against MAX_HEAD)
MAX_HEADERS = 100
MAX_INTERIM = 8               # 1xx answers skipped before the real one
MAX_TRAILERS = 32
MAX_REQUESTS = 10000          # per client connection
IDLE_TIMEOUT = 60.0           # between requests on a kept-alive client connection
FIRST_HEAD = 10.0             # from connecting to the end of the first request head
READ_BLOCK = 65536
METHODS = ("GET", "HEAD", "PUT", "POST")
# Not passed on; Expect too, because the proxy answers 100-continue itself.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
              "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"}

_REASONS = {400: "Bad Request", 407: "Proxy Authentication Required", 411: "Length Required",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 501: "Not Implemented",
            502: "Bad Gateway", 504: "Gateway Timeout"}

TLS_REFUSED = ("CONNECT refused: this anchor does not tunnel TLS, because it cannot capture what it "
               "cannot read. Fetch https:// URLs with the rover's relay instead "
               "(rover ... fetch https://HOST/PATH --out FILE); the anchor terminates TLS itself there.\n")
AUTH_NEEDED = ("Authenticate as your device: this proxy serves paired devices and files what "
               "passes under the device that sent it. Send Proxy-Authorization: Basic "
               "base64(DEVICE:SECRET), SECRET the pairing secret in hex (the rover's pairing.key), "
               "e.g. proxy URL http://DEVICE:SECRET@ANCHOR:PORT.\n")


class HttpError(Exception):
    """An answer the proxy gives itself, after which it closes the client connection (a
    request body may be left unread)."""

    def __init__(self, status, text, headers=()):
        Exception.__init__(self, text)
        self.status = status
        self.text = text
        self.headers = list(headers)


class Broken(Exception):
    """A body or a write stopped before its end (peer closed or reset, bad framing,
    timeout); `side` says whose: 'client' or 'origin'."""

    def __init__(self, side, text, timeout=False):
        Exception.__init__(self, text)
        self.side = side
        self.timeout = timeout


# --- reading heads and bodies --------------------------------------------------------------

async def _timed(aw, timeout, side):
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise Broken(side, "%s: nothing for %g s" % (side, timeout), True)
    except asyncio.IncompleteReadError:
        raise Broken(side, "%s closed the connection early" % side)
    except asyncio.LimitOverrunError:
        raise Broken(side, "%s sent a line above %d bytes" % (side, STREAM_LIMIT))
    except ConnectionError as e:
        raise Broken(side, "%s: %s" % (side, e.strerror or type(e).__name__))


def _parse_head(head, what):
    """(first line parts, [(name, value)]) of a head ending in CRLFCRLF."""
    lines = head[:-4].decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(lines) - 1 > MAX_HEADERS:
        raise ValueError("%s has more than %d header lines" % (what, MAX_HEADERS))
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t" or _controls(line):
            raise ValueError("%s has a malformed header line %r" % (what, line[:80]))
        headers.append((name, value.strip(" \t")))
    return first, headers


def _controls(text):
    """Whether text holds control characters other than tab (a bare CR or LF would let a
    header smuggle a second one past us to the origin)."""
    return any(c < " " and c != "\t" or c == "\x7f" for c in text)


def _get(headers, name):
    """All values of a header, comma lists split, lower-cased tokens."""
    out = []
    for k, v in headers:
        if k.lower() == name:
            out += [t.strip().lower() for t in v.split(",") if t.strip()]
    return out


def _framing(headers, what):
    """('chunked',) | ('length', n) | None (no framing header)."""
    te = _get(headers, "transfer-encoding")
    cl = [v.strip() for k, v in headers if k.lower() == "content-length"]
    if te:
        if te[-1] != "chunked":
            raise ValueError("%s: transfer coding %r not supported" % (what, ",".join(te)))
        if cl:
            raise ValueError("%s has both Transfer-Encoding and Content-Length" % what)
        return ("chunked",)
    if cl:
        if len(set(cl)) != 1 or not cl[0].isdigit() or len(cl[0]) > 18:
            raise ValueError("%s: bad Content-Length %r" % (what, ",".join(cl)))
        return ("length", int(cl[0]))
    return None


async def _body(reader, framing, timeout, side):
    """Yield a body's bytes as they arrive; raise Broken if it stops before its end.
    framing: ('length', n), ('chunked',) or ('close',) (until the peer closes)."""
    if framing[0] == "length":
        left = framing[1]
        while left:
            b = await _timed(reader.read(min(left, READ_BLOCK)), timeout, side)
            if not b:
                raise Broken(side, "%s stopped %d bytes short of %d" % (side, left, framing[1]))
            left -= len(b)
            yield b
    elif framing[0] == "close":
        while True:
            b = await _timed(reader.read(READ_BLOCK), timeout, side)
            if not b:
                return
            yield b
    else:
        while True:
            line = await _timed(reader.readuntil(b"\r\n"), timeout, side)
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
                raise Broken(side, "%s: bad chunk size line %r" % (side, line[:40]))
            left = int(size, 16)
            if left == 0:
                break
            while left:
                b = await _timed(reader.read(min(left, READ_BLOCK)), timeout, side)
                if not b:
                    raise Broken(side, "%s: chunked body stopped inside a chunk" % side)
                left -= len(b)
                yield b
            if await _timed(reader.readexactly(2), timeout, side) != b"\r\n":
                raise Broken(side, "%s: chunk not followed by CRLF" % side)
        for _ in range(MAX_TRAILERS + 1):        # trailers are read and dropped
            if await _timed(reader.readuntil(b"\r\n"), timeout, side) == b"\r\n":
                return
        raise Broken(side, "%s: more than %d trailer lines" % (side, MAX_TRAILERS))


def _chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def _refuse():
    """407, the same for every reason (no credentials, an unknown device, a wrong secret):
    a stranger must not learn which device names are paired."""
    return HttpError(407, AUTH_NEEDED, headers=[("Proxy-Authenticate", 'Basic realm="anchor: device:pairing-secret"')])


def _device(headers, catalog, open_anchor):
    """The device Proxy-Authorization proves (or, at an --open anchor, names when it is not
    paired), or HttpError 407."""
    creds = [v for k, v in headers if k.lower() == "proxy-authorization"]
    if len(creds) != 1:
        raise _refuse()
    scheme, _, token = creds[0].partition(" ")
    try:
        if scheme.lower() != "basic":
            raise ValueError("scheme %r" % scheme)
        user, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        device = m.check_device(user)
    except (ValueError, binascii.Error, UnicodeDecodeError, m.ProtocolError):
        raise _refuse()
    key = catalog.pairing_key(device)
    if key is None:
        if open_anchor:
            return device
        # compared anyway, so that an unknown name costs what a known one does
        key = os.urandom(32)
    try:
        given = bytes.fromhex(password)
    except ValueError:
        given = b""
    if not equal(given, key):
        raise _refuse()
    return device


# --- the proxy -----------------------------------------------------------------------------

class HttpProxy:
    def __init__(self, catalog, capture, timeout, max_body, keep_bodies=True, open=False, admission=None):
        self.catalog = catalog            # pairings (proxy passwords), device counters
        self.open = open                  # --open: devices that are not paired are served too
        self.admission = admission        # anchor/admission.py: how many clients at most
        self.capture = capture            # bodies are captured as they stream (services.capture)
        self.timeout = timeout
        self.max_body = max_body
        self.keep_bodies = keep_bodies    # False only to measure capture (anchor serve --no-capture)

    async def start(self, host, port):
        """A started listener (anchor.links.TcpListener: .port, .close())."""
        from anchor.links import TcpListener
        lst = TcpListener(self, host, port, limit=STREAM_LIMIT)
        await lst.start_serving()
        return lst

    async def serve_stream(self, reader, writer):
        """One client connection, while it holds a place among the proxy's clients."""
        peer = writer.get_extra_info("peername")
        slot = None
        if self.admission is not None:
            slot = self.admission.take_proxy(peer[0] if isinstance(peer, tuple) else peer, writer.transport.abort)
            if slot is None:
                writer.transport.abort()
                return
        try:
            await self.client(reader, writer)
        finally:
            if slot is not None:
                slot.release()

    async def client(self, reader, writer):
        """One client connection: requests one after another while both sides keep it. The
        first request head must come within FIRST_HEAD seconds (a silent connection holds a
        descriptor for nothing)."""
        peer = writer.get_extra_info("peername")
        try:
            for n in range(MAX_REQUESTS):
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT if n else FIRST_HEAD)
                    if len(head) > MAX_HEAD:
                        raise asyncio.LimitOverrunError("head", len(head))
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    break
                except asyncio.LimitOverrunError:
                    await self._answer(writer, HttpError(431, "request head above %d bytes\n" % MAX_HEAD))
                    break
                try:
                    if not await self._request(head, reader, writer):
                        break
                except HttpError as e:
                    await self._answer(writer, e)
                    break
        except Exception:  # one broken client must not take the anchor down
            log.exception("proxy client %s failed", peer)
        finally:
            writer.close()

    async def _answer(self, writer, e):
        body = e.text.encode("utf-8")
        head = ["HTTP/1.1 %d %s" % (e.status, _REASONS.get(e.status, "Error")),
                "Content-Type: text/plain; charset=utf-8", "Content-Length: %d" % len(body),
                "Connection: close"]
        head += ["%s: %s" % h for h in e.headers]
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), self.timeout)
        except (ConnectionError, asyncio.TimeoutError):
            pass

    async def _request(self, head, reader, writer):
        """Forward one request; returns whether the client connection may carry another."""
        try:
            first, headers = _parse_head(head, "request")
            if len(first) != 3 or first[2] not in ("HTTP/1.1", "HTTP/1.0"):
                raise ValueError("request line %r is not METHOD TARGET HTTP/1.x" % " ".join(first)[:120])
            method, target, version = first
            req_framing = _framing(headers, "request")
        except ValueError as e:
            raise HttpError(400, "%s\n" % e)
        if method == "CONNECT":
            raise HttpError(501, TLS_REFUSED)
        if method not in METHODS:
            raise HttpError(501, "method %s is not relayed; this proxy forwards %s\n" % (method[:20], ", ".join(METHODS)))
        if _controls(target):
            raise HttpError(400, "request target holds control characters\n")
        if target.lower().startswith("https://"):
            raise HttpError(501, TLS_REFUSED.replace("CONNECT refused", "https:// through the proxy refused"))
        if not target.lower().startswith("http://"):
            raise HttpError(400, "this is a forward proxy: send absolute-form requests "
                                 "(%s http://HOST/PATH HTTP/1.1), not %r\n" % (method, target[:100]))
        try:
            u = urlsplit(target)
            host, port = u.hostname, u.port or 80
            if not host:
                raise ValueError("no host")
        except ValueError as e:
            raise HttpError(400, "bad URL %r: %s\n" % (target[:200], e))
        device = _device(headers, self.catalog, self.open)
        if req_framing is None:
            if method in ("PUT", "POST"):
                raise HttpError(411, "%s needs Content-Length or Transfer-Encoding: chunked\n" % method)
            req_framing = ("length", 0)
        if req_framing[0] == "length" and req_framing[1] > self.max_body:
            raise HttpError(413, "body of %d bytes above the relay limit of %d bytes\n"
                            % (req_framing[1], self.max_body))
        conn_tokens = _get(headers, "connection")
        client_keep = ("close" not in conn_tokens) if version == "HTTP/1.1" else ("keep-alive" in conn_tokens)
        dev = self.catalog.device_id(device)
        self.catalog.seen(dev)
        ex = _Exchange(self, device, dev, method, target, u, host, port, headers, req_framing,
                       version, client_keep)
        try:
            return await ex.run(reader, writer)
        finally:
            ex.finish()


class _Exchange:
    """One proxied request: client -> origin, origin -> client, captures, counters."""

    def __init__(self, proxy, device, dev, method, target, u, host, port, headers, req_framing,
                 version, client_keep):
        self.proxy = proxy
        self.timeout = proxy.timeout
        self.device, self.dev = device, dev
        self.method, self.target, self.u = method, target, u
        self.host, self.port = host, port
        self.headers, self.req_framing = headers, req_framing
        self.version, self.client_keep = version, client_keep
        self.counts = {"relay_requests": 1, "proxy_requests": 1}
        self.keeps = []                   # capture streams of this exchange's bodies
        self.origin_w = None

    def _fail(self, why):
        self.counts["relay_failures"] = 1
        log.info("proxy %s: %s %s failed: %s", self.device, self.method, self.target, why)

    def _record_counts(self):
        try:
            self.proxy.catalog.count(self.dev, **self.counts)
        except Exception:
            log.exception("could not record proxy counters")
        self.counts = {}

    def finish(self):
        if self.origin_w is not None:
            self.origin_w.close()
        for k in self.keeps:
            k.discard()
        self._record_counts()

    def _keep(self, cap, prov):
        done = cap.finish(prov)
        if done is None:
            return
        oid, size = done
        self.counts["captured_objects"] = self.counts.get("captured_objects", 0) + 1
        self.counts["captured_bytes"] = self.counts.get("captured_bytes", 0) + size
        log.info("proxy %s: captured %s %s %s (%d bytes, object %s)", self.device, prov["direction"],
                 prov["method"], prov["target"], size, oid.hex()[:16])

    def _stream(self):
        k = self.proxy.capture.stream(self.dev)
        self.keeps.append(k)
        return k

    async def run(self, reader, writer):
        netloc = "%s:%d" % (self.host, self.port)
        try:
            o_reader, self.origin_w = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=STREAM_LIMIT), self.timeout)
        except asyncio.TimeoutError:
            self._fail("connect timed out")
            raise HttpError(504, "origin %s did not accept a connection in %g s\n" % (netloc, self.timeout))
        except OSError as e:
            self._fail(str(e))
            raise HttpError(502, "origin %s unreachable: %s\n" % (netloc, e.strerror or e))
        cap = await self._forward_request(reader, writer, netloc)
        if cap is False:
            return False
        status, reason, rheaders, framing = await self._read_answer(o_reader, netloc, cap)
        return await self._forward_answer(o_reader, writer, netloc, status, reason, rheaders, framing)

    async def _forward_request(self, reader, writer, netloc):
        """Request head, then the body streamed to the origin (and captured as it passes when
        it is an upload). Returns the capture (None when nothing is kept), False if the client
        broke off."""
        target = (self.u.path or "/") + ("?" + self.u.query if self.u.query else "")
        out = ["%s %s HTTP/1.1" % (self.method, target)]
        drop = HOP_BY_HOP | {"host", "content-length"} | set(_get(self.headers, "connection"))
        out += ["%s: %s" % (k, v) for k, v in self.headers if k.lower() not in drop]
        out.append("Host: %s" % self.u.netloc.rpartition("@")[2])
        chunked = self.req_framing[0] == "chunked"
        out.append("Transfer-Encoding: chunked" if chunked else "Content-Length: %d" % self.req_framing[1])
        out += ["Via: 1.1 anchor", "Connection: close"]
        if "100-continue" in _get(self.headers, "expect"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        w = self.origin_w
        cap = self._stream() if self.method in ("PUT", "POST") and self.proxy.keep_bodies else None
        sent = 0
        try:
            w.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            async for piece in _body(reader, self.req_framing, self.timeout, "client"):
                sent += len(piece)
                if sent > self.proxy.max_body:
                    self._fail("upload above relay_max")
                    raise HttpError(413, "body above the relay limit of %d bytes\n" % self.proxy.max_body)
                if cap is not None:
                    cap.write(piece)
                w.write(_chunk(piece) if chunked else piece)
                await _timed(w.drain(), self.timeout, "origin")
            if chunked:
                w.write(b"0\r\n\r\n")
            await _timed(w.drain(), self.timeout, "origin")
        except Broken as e:
            self.counts["relay_up_bytes"] = sent
            self._fail(str(e))
            if e.side == "client":            # the client stopped sending: nobody to answer
                return False
            raise HttpError(504 if e.timeout else 502, "origin %s stopped taking the request body: %s\n" % (netloc, e))
        self.counts["relay_up_bytes"] = sent
        return cap

    async def _read_answer(self, o_reader, netloc, cap):
        """The origin's status and headers (1xx skipped). A whole upload is kept here,
        whatever the origin answers: it is the rover's own bytes (as the relay does)."""
        status, err = 0, None
        try:
            for _ in range(MAX_INTERIM):
                head = await asyncio.wait_for(o_reader.readuntil(b"\r\n\r\n"), self.timeout)
                if len(head) > MAX_HEAD:
                    raise asyncio.LimitOverrunError("head", len(head))
                first, rheaders = _parse_head(head, "origin's answer")
                if len(first) < 2 or not first[0].startswith("HTTP/1.") or not (first[1].isdigit() and len(first[1]) == 3):
                    raise ValueError("status line %r is not HTTP/1.x" % " ".join(first)[:120])
                status = int(first[1])
                if status >= 200:
                    break
            else:
                raise ValueError("more than %d interim answers" % MAX_INTERIM)
            if self.method == "HEAD" or status in (204, 304):
                framing = None
            else:
                framing = _framing(rheaders, "answer") or ("close",)
            if framing and framing[0] == "length" and framing[1] > self.proxy.max_body:
                err = HttpError(502, "origin %s answers with %d bytes, above the relay limit of %d bytes\n"
                                % (netloc, framing[1], self.proxy.max_body))
        except asyncio.TimeoutError:
            err = HttpError(504, "origin %s did not answer in %g s\n" % (netloc, self.timeout))
        except (asyncio.IncompleteReadError, ConnectionError):
            err = HttpError(502, "origin %s closed the connection without answering\n" % netloc)
        except asyncio.LimitOverrunError:
            err = HttpError(502, "origin %s sent an answer head above %d bytes\n" % (netloc, MAX_HEAD))
        except ValueError as e:
            err = HttpError(502, "origin %s: %s\n" % (netloc, e))
        if cap is not None:
            self._keep(cap, {"direction": "up", "protocol": "http", "method": self.method,
                                    "target": self.target, "status": status,
                                    "content_type": _one(self.headers, "content-type")})
        if err is not None:
            self._fail(err.text.strip())
            raise err
        return status, first[2] if len(first) > 2 else "", rheaders, framing

    async def _forward_answer(self, o_reader, writer, netloc, status, reason, rheaders, framing):
        """Answer head, then the body streamed to the client (and captured for a 200 GET).
        Returns whether the client connection may carry another request."""
        keep = self.client_keep
        # Without a length, an HTTP/1.1 client gets chunks, so a break is visible to it;
        # an HTTP/1.0 client reads until we close.
        reframe = framing is not None and framing[0] != "length"
        chunked = reframe and self.version == "HTTP/1.1"
        if reframe and not chunked:
            keep = False
        back = ["HTTP/1.1 %d %s" % (status, reason)]
        drop = HOP_BY_HOP | {"content-length"} | set(_get(rheaders, "connection"))
        back += ["%s: %s" % (k, v) for k, v in rheaders if k.lower() not in drop]
        if framing is None:
            if self.method == "HEAD":        # the length a GET would have had
                back += ["Content-Length: %s" % v for k, v in rheaders if k.lower() == "content-length"][:1]
        elif framing[0] == "length":
            back.append("Content-Length: %d" % framing[1])
        elif chunked:
            back.append("Transfer-Encoding: chunked")
        back += ["Via: 1.1 anchor", "Connection: %s" % ("keep-alive" if keep else "close")]
        writer.write(("\r\n".join(back) + "\r\n\r\n").encode("latin-1"))
        cap = self._stream() if self.method == "GET" and status == 200 and self.proxy.keep_bodies else None
        got = 0
        held = b""
        try:
            if framing is not None:
                async for piece in _body(o_reader, framing, self.timeout, "origin"):
                    got += len(piece)
                    if got > self.proxy.max_body:
                        raise Broken("origin", "answer above the relay limit of %d bytes" % self.proxy.max_body)
                    if cap is not None:
                        cap.write(piece)
                    if held:
                        writer.write(_chunk(held) if chunked else held)
                        await _timed(writer.drain(), self.timeout, "client")
                    held = piece
        except Broken as e:
            # The head is out: the only way to tell the client is to stop short.
            self.counts["relay_down_bytes"] = got
            self._fail("%s (after %d bytes)" % (e, got))
            self._record_counts()
            writer.transport.abort()
            return False
        # The last piece is held back until the body is kept and counted, so a client
        # that has the whole body can rely on the anchor having it too.
        self.counts["relay_down_bytes"] = got
        if cap is not None:
            self._keep(cap, {"direction": "down", "protocol": "http", "method": "GET",
                                    "target": self.target, "status": status, "etag": _one(rheaders, "etag"),
                                    "last_modified": _one(rheaders, "last-modified"),
                                    "content_type": _one(rheaders, "content-type")})
        self._record_counts()
        if held:
            writer.write(_chunk(held) if chunked else held)
        if chunked:
            writer.write(b"0\r\n\r\n")
        try:
            await _timed(writer.drain(), self.timeout, "client")
        except Broken:
            return False
        return keep


def _one(headers, name):
    for k, v in headers:
        if k.lower() == name:
            return v
    return None
