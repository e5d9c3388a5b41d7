"""Real services on loopback for relay tests: an HTTP origin and a mosquitto broker."""
import hashlib
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Origin:
    """An HTTP/1.1 origin on 127.0.0.1: GET of `files`, PUT/POST into `received`.

    /slow/... answers after `slow_seconds` (for relay timeouts); /broken/... promises more
    bytes than it sends and closes the connection.
    """

    def __init__(self):
        self.files = {}
        self.received = {}
        self.requests = []
        self.slow_seconds = 3.0
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                origin.requests.append(("GET", self.path, dict(self.headers)))
                if self.path.startswith("/slow/"):
                    time.sleep(origin.slow_seconds)   # an origin that is slow, on purpose
                body = origin.files.get(self.path)
                if body is None:
                    msg = b"not here\n"
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                etag = '"%s"' % hashlib.sha256(body).hexdigest()[:16]
                if self.headers.get("If-Match") not in (None, etag):
                    self.send_response(412)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if self.path.startswith("/broken/"):
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def _receive(self):
                n = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(n)
                origin.received[self.path] = data
                origin.requests.append((self.command, self.path, dict(self.headers)))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = _receive
            do_POST = _receive

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """Debian's mosquitto on a free loopback port, started and stopped by the test."""

    def __init__(self, workdir):
        self.port = free_port()
        conf = os.path.join(workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n" % self.port)
        self.proc = subprocess.Popen([MOSQUITTO, "-c", conf, "-v"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, bufsize=0)
        # mosquitto logs when its listener is open; read until then, bounded in time.
        deadline = time.monotonic() + 20
        seen = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stderr], [], [], deadline - time.monotonic())
            if not r:
                break
            line = self.proc.stderr.readline()
            if not line:
                break
            seen += line
            if b"Opening ipv4 listen socket on port %d" % self.port in line:
                return
        self.close()
        raise RuntimeError("mosquitto did not start: %r" % seen)

    @property
    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc.stderr.close()


class Subscriber:
    """Collects messages on a topic filter, with an event per arrival."""

    def __init__(self, port, topic):
        import paho.mqtt.client as mqtt
        self.messages = []
        self.got = threading.Condition()
        subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub-%d" % os.getpid())
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: subscribed.set()

        def on_message(c, u, msg):
            with self.got:
                self.messages.append((msg.topic, msg.payload))
                self.got.notify_all()
        self.c.on_message = on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not subscribed.wait(20):
            raise RuntimeError("subscription not confirmed")

    def wait(self, n, timeout=20):
        with self.got:
            return self.got.wait_for(lambda: len(self.messages) >= n, timeout)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()
