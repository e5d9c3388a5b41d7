"""Real services on loopback for relay tests: an HTTP origin and a mosquitto broker."""
import hashlib
import os
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
        self.ranges = True          # answers "Range: bytes=N-" (with If-Range) with 206
        self.cut_once = {}          # path -> n: the next 200 answer of path stops after n bytes
        self.etags = {}             # path -> ETag to give instead of the content's (an origin that lies)
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
                etag = origin.etags.get(self.path) or '"%s"' % hashlib.sha256(body).hexdigest()[:16]
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
                rng = self.headers.get("Range", "")
                if (origin.ranges and rng.startswith("bytes=") and rng.endswith("-")
                        and self.headers.get("If-Range") in (None, etag)
                        and rng[6:-1].isdigit() and int(rng[6:-1]) < len(body)):
                    # The rest of the body from an offset, as a server that takes ranges does.
                    first = int(rng[6:-1])
                    self.send_response(206)
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (first, len(body) - 1, len(body)))
                    self.send_header("Content-Length", str(len(body) - first))
                    self.send_header("ETag", etag)
                    self.end_headers()
                    self.wfile.write(body[first:])
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                cut = origin.cut_once.pop(self.path, None)
                if cut is not None or self.path.startswith("/broken/"):
                    self.wfile.write(body[:len(body) // 2 if cut is None else cut])
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
    """Debian's mosquitto on a free loopback port, started and stopped by the test.

    Its log goes to a file (a pipe nobody reads fills up and freezes mosquitto), and it
    counts as started once it says it is running, not when it opens the socket (it does
    not accept connections between the two). TCP_NODELAY on: with Nagle, a packet to a
    rover waits behind the broker's previous PUBACK for the rover's delayed ACK (40 ms),
    which made a 1 MB backup over MQTT take 22 s instead of 0.8 s."""

    def __init__(self, workdir, port=None, conf_lines=None):
        """conf_lines: settings of the listener instead of anonymous access (TLS, a
        password file)."""
        self.port = port or free_port()
        self.workdir = workdir
        conf = os.path.join(workdir, "mosquitto-%d.conf" % self.port)
        with open(conf, "w") as f:
            f.write("listener %d 127.0.0.1\npersistence false\nset_tcp_nodelay true\n" % self.port)
            f.write("".join(line + "\n" for line in (conf_lines or ["allow_anonymous true"])))
        self.log_path = os.path.join(workdir, "mosquitto-%d.log" % self.port)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", conf, "-v"], stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        # Wait (bounded) for the line that says it is running.
        deadline = time.monotonic() + 20
        seen = b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.log_path, "rb") as f:
                seen = f.read()
            if b" running" in seen:
                return
            time.sleep(0.02)    # polling a log file mosquitto writes; bounded by the deadline
        self.close()
        raise RuntimeError("mosquitto did not start: %r" % seen[-2000:])

    @property
    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.log.close()


class Subscriber:
    """Collects messages on a topic filter, with an event per arrival."""

    def __init__(self, port, topic, setup=None):
        """setup(client): TLS and credentials for a broker that asks for them."""
        import paho.mqtt.client as mqtt
        self.messages = []
        self.got = threading.Condition()
        subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub-%d" % os.getpid())
        if setup is not None:
            setup(self.c)
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


# --- a broker as deployed --------------------------------------------------------------------

OPENSSL = shutil.which("openssl")
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def make_ca(d, name):
    key, pem = os.path.join(d, name + ".key"), os.path.join(d, name + ".pem")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", pem, "-days", "2", "-subj", "/CN=" + name], check=True, capture_output=True)
    return key, pem


def tls_broker(d):
    """mosquitto as deployed: a TLS listener with certificates made here (a test CA signs one
    for localhost and 127.0.0.1; another CA signs nothing), a password file with the users
    anchor, watcher and rover, no anonymous access. Returns the paths, the port and the
    Broker (the caller closes it)."""
    ca_key, ca = make_ca(d, "test-ca")
    _, other_ca = make_ca(d, "other-ca")
    key, csr, crt, ext = (os.path.join(d, n) for n in ("srv.key", "srv.csr", "srv.pem", "ext"))
    subprocess.run([OPENSSL, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", csr, "-subj", "/CN=localhost"], check=True, capture_output=True)
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run([OPENSSL, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", crt, "-days", "2", "-extfile", ext], check=True, capture_output=True)
    passwd = os.path.join(d, "passwd")
    subprocess.run([PASSWD, "-c", "-b", passwd, "anchor", "anchor-secret-1"], check=True, capture_output=True)
    subprocess.run([PASSWD, "-b", passwd, "watcher", "watcher-secret-2"], check=True, capture_output=True)
    subprocess.run([PASSWD, "-b", passwd, "rover", "rover-secret-3"], check=True, capture_output=True)
    # Started as root, mosquitto would drop to its own user, who cannot enter pytest's
    # private folders: it keeps the test's user instead.
    stay = ["user root"] if os.geteuid() == 0 else []
    broker = Broker(d, conf_lines=stay + ["cafile " + ca, "certfile " + crt, "keyfile " + key,
                                          "allow_anonymous false", "password_file " + passwd])
    pw = os.path.join(d, "anchor.pw")
    with open(pw, "w") as f:
        f.write("anchor-secret-1\n")
    rover_pw = os.path.join(d, "rover.pw")
    with open(rover_pw, "w") as f:
        f.write("rover-secret-3\n")
    bad_pw = os.path.join(d, "bad.pw")
    with open(bad_pw, "w") as f:
        f.write("not-the-password\n")
    return {"dir": d, "ca": ca, "other_ca": other_ca, "port": broker.port, "pw": pw, "bad_pw": bad_pw,
           "rover_pw": rover_pw,
           "broker": broker}
