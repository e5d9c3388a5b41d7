"""The anchor's HTTP forward proxy end to end: a real anchor process (`anchor serve --proxy`),
the real loopback Origin, Python's own HTTP clients. What passes whole is captured like a
relayed body (a later backup uploads nothing for it); what breaks off is not."""
import base64
import http.client
import os
import random
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.harness import AnchorProc, counters, run_rover
from tests.support.services import Origin, free_port
from anchor.storage.catalog import Catalog


def start_anchor(data_dir, *extra):
    """An anchor with its proxy on a free port; returns (anchor, proxy port)."""
    anchor = AnchorProc(data_dir, "--proxy", "tcp://127.0.0.1:0", *extra).start()
    try:
        return anchor, anchor.proxy_port()
    except RuntimeError:
        anchor.stop()
        raise


class ChunkedOrigin:
    """An origin that answers without Content-Length: chunked, chunked and cut off before
    the last chunk, or delimited by closing; and takes chunked uploads."""

    def __init__(self):
        self.body = random.Random(9).randbytes(700_000)
        self.received = {}
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                body = origin.body
                self.send_response(200)
                self.send_header("Content-Type", "application/x-test")
                if self.path == "/close":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 50_000):
                    part = body[i:i + 50_000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    if self.path == "/chunked-broken" and i >= 300_000:
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                self.wfile.write(b"0\r\n\r\n")

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(origin.body)))
                self.end_headers()

            def do_PUT(self):
                data = b""
                for _ in range(10_000):
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    data += self.rfile.read(size)
                    self.rfile.readline()
                origin.received[self.path] = (self.headers.get("Transfer-Encoding"), data)
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.server.server_address[1], path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def world(tmp_path):
    origin = Origin()
    anchor, port = start_anchor(str(tmp_path / "anchor"), "--relay-timeout", "1.5")
    yield origin, anchor, port
    anchor.stop()
    origin.close()


def auth(device):
    return {"Proxy-Authorization": "Basic " + base64.b64encode(device.encode() + b":").decode()}


def via(port, method, url, body=None, headers=None, conn=None):
    """One request through the proxy with http.client; returns (response, body bytes)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, url, body=body, headers=headers or {})
    resp = c.getresponse()
    return resp, resp.read()


def raw(port, data):
    """Send raw bytes to the proxy; everything it answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        out = b""
        for _ in range(10_000):
            b = s.recv(65536)
            if not b:
                break
            out += b
    return out



def captures(anchor):
    catalog = Catalog(os.path.join(anchor.data_dir, "catalog.sqlite"), readonly=True)
    try:
        return [tuple(c[k] for k in ("direction", "method", "target", "status", "etag", "content_type", "size"))
                for c in catalog.captures()]
    finally:
        catalog.close()


def test_download_and_upload_then_backup_uploads_nothing(world, tmp_path):
    origin, anchor, port = world
    rnd = random.Random(11)
    clip = rnd.randbytes(1_500_000)
    origin.files["/media/clip.bin"] = clip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": "http://127.0.0.1:%d" % port}))
    req = urllib.request.Request(origin.url("/media/clip.bin"), headers=auth("px1"))
    with opener.open(req, timeout=30) as resp:
        assert resp.status == 200 and resp.headers["ETag"]
        assert resp.read() == clip
    assert origin.requests[-1][2].get("Proxy-Authorization") is None   # not passed on to the origin

    doc = rnd.randbytes(600_000)
    resp, _ = via(port, "PUT", origin.url("/upload/doc.bin"), doc,
                  dict(auth("px1"), **{"Content-Type": "application/pdf"}))
    assert resp.status == 201
    assert origin.received["/upload/doc.bin"] == doc

    rows = captures(anchor)
    assert [r[:4] for r in rows] == [("down", "GET", origin.url("/media/clip.bin"), 200),
                                     ("up", "PUT", origin.url("/upload/doc.bin"), 201)]
    assert rows[0][4] and rows[0][6] == len(clip) and rows[1][5] == "application/pdf"
    c = counters(anchor, "px1")
    assert c["captured_objects"] == 2 and c["captured_bytes"] == len(clip) + len(doc)
    assert c["relay_down_bytes"] == len(clip) and c["relay_up_bytes"] == len(doc)
    assert c["proxy_requests"] == 2

    root = tmp_path / "rover"
    (root / "Download").mkdir(parents=True)
    (root / "Download" / "clip.bin").write_bytes(clip)
    (root / "outbox").mkdir()
    (root / "outbox" / "doc.bin").write_bytes(doc)
    p = run_rover("cpython", anchor.link, "px1", str(tmp_path / "state"), "backup", str(root))
    assert "snapshot 1 committed" in p.stdout and " 0 chunks (0 bytes) uploaded" in p.stdout, p.stdout


def test_keepalive_head_404_chunked_and_close_delimited(world):
    origin, anchor, port = world
    chunked = ChunkedOrigin()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        resp, body = via(port, "HEAD", chunked.url("/chunked"), headers=auth("px2"), conn=c)
        assert resp.status == 200 and body == b"" and resp.getheader("Content-Length") == "700000"
        resp, body = via(port, "GET", origin.url("/missing"), headers=auth("px2"), conn=c)
        assert resp.status == 404 and body == b"not here\n"
        resp, body = via(port, "GET", chunked.url("/chunked"), headers=auth("px2"), conn=c)
        assert resp.status == 200 and body == chunked.body
        assert resp.getheader("Transfer-Encoding") == "chunked"
        resp, body = via(port, "GET", chunked.url("/close"), headers=auth("px2"), conn=c)
        assert resp.status == 200 and body == chunked.body
        resp, _ = via(port, "PUT", chunked.url("/up"), iter([b"part one, ", b"part two"]),
                      auth("px2"), conn=c)
        assert resp.status == 204
        assert chunked.received["/up"] == ("chunked", b"part one, part two")
        c.close()
    finally:
        chunked.close()
    rows = captures(anchor)
    assert [(r[0], r[1], r[6]) for r in rows] == [("down", "GET", len(chunked.body)),
                                                  ("down", "GET", len(chunked.body)),
                                                  ("up", "PUT", 18)]
    assert counters(anchor, "px2")["proxy_requests"] == 5


def test_no_device_is_407_with_a_clear_message(world):
    origin, anchor, port = world
    origin.files["/x"] = b"x"
    for headers in ({}, {"Proxy-Authorization": "Basic " + base64.b64encode(b"no spaces allowed:").decode()},
                    {"Proxy-Authorization": "Basic !!!"}, {"Proxy-Authorization": "Bearer abc"}):
        resp, body = via(port, "GET", origin.url("/x"), headers=headers)
        assert resp.status == 407, headers
        assert resp.getheader("Proxy-Authenticate", "").startswith("Basic ")
        assert b"Proxy-Authorization: Basic base64(DEVICE:SECRET)" in body, body
    assert origin.requests == []


def test_connect_and_https_are_refused(world):
    _, anchor, port = world
    out = raw(port, b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 501 "), out
    assert b"TLS" in out and b"fetch https://" in out
    resp, body = via(port, "GET", "https://example.org/", headers=auth("px3"))
    assert resp.status == 501 and b"fetch https://" in body


def test_origin_errors_map_to_502_504_and_nothing_half_captured(world):
    origin, anchor, port = world
    dead = free_port()
    resp, body = via(port, "GET", "http://127.0.0.1:%d/x" % dead, headers=auth("px4"))
    assert resp.status == 502 and b"unreachable" in body, body
    origin.files["/slow/page"] = b"late"
    resp, body = via(port, "GET", origin.url("/slow/page"), headers=auth("px4"))
    assert resp.status == 504 and b"did not answer in 1.5 s" in body, body

    origin.files["/broken/file"] = os.urandom(300_000)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", origin.url("/broken/file"), headers=auth("px4"))
    resp = c.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    c.close()
    chunked = ChunkedOrigin()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", chunked.url("/chunked-broken"), headers=auth("px4"))
        resp = c.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        c.close()
    finally:
        chunked.close()
    c = counters(anchor, "px4")
    assert c.get("captured_objects", 0) == 0 and c["relay_failures"] == 4, c
    assert captures(anchor) == []
    assert os.listdir(os.path.join(anchor.data_dir, "spool")) == []
    # and the proxy still works after all that
    origin.files["/ok"] = b"fine"
    resp, body = via(port, "GET", origin.url("/ok"), headers=auth("px4"))
    assert resp.status == 200 and body == b"fine"
    assert counters(anchor, "px4")["captured_objects"] == 1


def test_bad_requests_get_clear_answers(world):
    origin, anchor, port = world
    out = raw(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ") and b"absolute-form" in out, out
    big = b"X-Pad: " + b"a" * 20000 + b"\r\n"
    out = raw(port, b"GET http://127.0.0.1/ HTTP/1.1\r\n" + big + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431 "), out[:100]
    a = "Proxy-Authorization: %s\r\n" % auth("px5")["Proxy-Authorization"]
    out = raw(port, ("PUT %s HTTP/1.1\r\n%sContent-Length: 300000000\r\n\r\n" % (origin.url("/u"), a)).encode())
    assert out.startswith(b"HTTP/1.1 413 ") and b"relay limit" in out, out
    out = raw(port, ("POST %s HTTP/1.1\r\n%s\r\n" % (origin.url("/u"), a)).encode())
    assert out.startswith(b"HTTP/1.1 411 "), out
    out = raw(port, ("GET %s HTTP/1.1\r\n%sX-Evil: a\rInjected: b\r\n\r\n" % (origin.url("/u"), a)).encode())
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert origin.requests == []


def test_no_capture_relays_but_keeps_nothing(tmp_path):
    origin = Origin()
    anchor, port = start_anchor(str(tmp_path / "anchor"), "--no-capture")
    try:
        origin.files["/f"] = os.urandom(100_000)
        resp, body = via(port, "GET", origin.url("/f"), headers=auth("px6"))
        assert resp.status == 200 and body == origin.files["/f"]
        out = tmp_path / "f"
        p = run_rover("cpython", anchor.link, "px6", str(tmp_path / "st"), "fetch", origin.url("/f"), "--out", str(out))
        assert "fetched 100000 bytes" in p.stdout and out.read_bytes() == origin.files["/f"]
        c = counters(anchor, "px6")
        assert c["relay_requests"] == 2 and "captured_objects" not in c, c
        assert captures(anchor) == []
    finally:
        anchor.stop()
        origin.close()
