"""The anchor daemon: opens the data directory, serves rover links and the management API."""
import asyncio
import logging
import os

from core import messages as m
from core import states
from core.session import Session
from anchor.backup_service import BackupHandler
from anchor import watchlist
from anchor.catalog import Catalog
from anchor.relay_service import RelayHandler, RELAY_TYPES
from anchor.store import ChunkStore
from anchor.trees import TreeStore
from anchor.secure_session import Refused

log = logging.getLogger("anchor")

DATA_VERSION = 1
READ_SIZE = 65536
# Replies after which the rover may hang up: counters are written before they go out.
ENDS_A_REQUEST = (m.COMMITTED, m.END, m.RESULT, m.FAIL, m.WATCHED, m.ERROR)
IDLE_TIMEOUT = 300


class Anchor:
    """Everything the anchor holds, opened from one data directory."""

    def __init__(self, data_dir, broker=None, relay_timeout=30.0, relay_max=256 << 20, capture=True,
                 capacity=None, open=False):
        self.data_dir = os.path.abspath(data_dir)
        self.capacity = capacity          # store budget in bytes; None: never evict
        # open: also serve rovers that are not paired, without the secure channel (a lab or
        # test bench; `anchor serve --open`). Otherwise only paired rovers get anything.
        self.open = open
        self.secure_writers = {}          # device -> writers of its live secure sessions
        self.broker = broker              # (host, port) of the MQTT broker relays publish to
        self.relay_timeout = relay_timeout
        self.relay_max = relay_max
        # False only to measure what capture costs (anchor serve --no-capture): relayed
        # bodies then pass without being kept, and later backups must upload them.
        self.capture = capture
        os.makedirs(self.data_dir, exist_ok=True)
        self._check_version()
        # Sessions flush every 1 MiB themselves (backup_service.FLUSH_BYTES); the store's
        # own threshold is a backstop above that.
        self.store = ChunkStore(os.path.join(self.data_dir, "chunks"), flush_bytes=4 << 20)
        self.catalog = Catalog(os.path.join(self.data_dir, "catalog.sqlite"))
        self.trees = TreeStore(os.path.join(self.data_dir, "trees"))
        # Relayed bodies wait here until whole; anything left is from a crash mid-transfer.
        self.spool_dir = os.path.join(self.data_dir, "spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        for name in os.listdir(self.spool_dir):
            os.unlink(os.path.join(self.spool_dir, name))
        self.link_bytes = {"rx": 0, "tx": 0}

    def _check_version(self):
        p = os.path.join(self.data_dir, "ANCHOR-DATA")
        if os.path.exists(p):
            with open(p) as f:
                v = f.read().strip()
            if v != "anchor-data %d" % DATA_VERSION:
                raise SystemExit("%s: data format %r, this anchor reads 'anchor-data %d'" % (p, v, DATA_VERSION))
        else:
            with open(p + ".tmp", "w") as f:
                f.write("anchor-data %d\n" % DATA_VERSION)
                f.flush()
                os.fsync(f.fileno())
            os.rename(p + ".tmp", p)

    def close(self):
        self.store.close()
        self.catalog.close()

    # --- one rover link ----------------------------------------------------------------

    async def serve_stream(self, reader, writer):
        """Run one session over a byte stream (a TCP connection, a channel stream): the
        secure handshake first (unless a plain rover meets an --open anchor), then the
        session. Errors end this session only."""
        from anchor import secure_session
        peer = writer.get_extra_info("peername")
        try:
            reader, swriter, device = await secure_session.accept(self, reader, writer)
        except secure_session.Refused as e:
            log.warning("link %s refused: %s", peer, e)
            await self._send_error(Session(states.ANCHOR), writer, m.E_PROTOCOL, str(e))
            writer.close()
            return
        except (ConnectionError, OSError) as e:
            log.info("link %s lost during the handshake: %s", peer, e)
            writer.close()
            return
        if device is None:
            return await self._serve_session(reader, writer, None)
        live = self.secure_writers.setdefault(device, set())
        live.add(writer)
        try:
            await self._serve_session(reader, swriter, device)
        finally:
            live.discard(writer)

    def revoke(self, device):
        """Unpair a rover now: its pairing goes, and its live sessions are cut."""
        gone = self.catalog.unpair(device)
        for w in list(self.secure_writers.get(device, ())):
            w.close()
        return gone

    async def _serve_session(self, reader, writer, auth_device):
        peer = writer.get_extra_info("peername")
        sess = Session(states.ANCHOR)
        handler = BackupHandler(self)
        relay = (RelayHandler if self.capture else _UncapturedRelay)(self, handler)

        recorded = {}

        def account():
            """Add what this session moved since the last call to the device's counters.

            Called before every reply that ends a request, so a rover that has its answer
            finds the counters already written (and once more when the session ends)."""
            if handler.dev is None:
                return
            counts = dict(handler.counts)
            for k, v in relay.counts.items():
                counts[k] = counts.get(k, 0) + v
            counts["link_rx"] = sess.bytes_in
            counts["link_tx"] = sess.bytes_out
            for name, n in zip(("link_control", "link_backup", "link_relay"), sess.purpose_bytes):
                counts[name] = n
            delta = dict((k, v - recorded.get(k, 0)) for k, v in counts.items())
            recorded.update(counts)
            self.catalog.count(handler.dev, **delta)

        def reply(msg):
            if msg[m.MSG_TYPE] in ENDS_A_REQUEST:
                account()
            writer.write(sess.send(msg))

        async def send(msg):
            reply(msg)
            await writer.drain()

        try:
            while not sess.closed:
                try:
                    data = await asyncio.wait_for(reader.read(READ_SIZE), IDLE_TIMEOUT)
                except asyncio.TimeoutError:
                    raise m.ProtocolError(m.E_PROTOCOL, "no data for %d s; closing" % IDLE_TIMEOUT)
                if not data:
                    break
                sess.receive_data(data)
                while True:
                    msg = sess.next_event()
                    if sess.corrupt:
                        # A stream link delivers bytes intact or not at all: damage here
                        # means a broken or hostile peer, not noise to resynchronise over.
                        raise m.ProtocolError(m.E_PROTOCOL, "corrupt frame on a stream link (%d bad frames, %d garbage bytes)"
                                              % sess.corrupt)
                    if msg is None:
                        break
                    if msg[m.MSG_TYPE] in RELAY_TYPES:
                        await relay.handle(msg, send)
                        continue
                    if msg[m.MSG_TYPE] == m.HELLO and auth_device is not None and msg[m.HELLO_DEVICE] != auth_device:
                        raise m.ProtocolError(m.E_PROTOCOL, "this link is paired as %r, not %r"
                                              % (auth_device, msg[m.HELLO_DEVICE]))
                    for r in handler.handle(msg):
                        reply(r)
                    if sess.closed:
                        break
                await writer.drain()
        except Refused as e:
            # A record failed authentication: tampering, a replay, or a broken peer. Nothing
            # more is read from this link; nothing of it is committed.
            log.warning("session %s (%s) cut: %s", peer, handler.device, e)
        except m.ProtocolError as e:
            log.warning("session %s (%s): %s", peer, handler.device, e.text)
            await self._send_error(sess, writer, e.code, e.text)
        except Exception as e:  # one broken session must not take the anchor down
            log.exception("session %s (%s) failed", peer, handler.device)
            await self._send_error(sess, writer, m.E_INTERNAL, "anchor error: %s" % e)
        finally:
            self.link_bytes["rx"] += sess.bytes_in
            self.link_bytes["tx"] += sess.bytes_out
            try:
                account()
            except Exception:
                log.exception("could not record counters")
            handler.end()
            # A watch lives as long as the session that waits on it.
            for oid in handler.watching:
                watchlist.of(self).remove(handler.dev, oid)
            # Chunks that arrived stay useful to a resumed session.
            try:
                handler.flush()
            except Exception:
                log.exception("flush after session failed")
            writer.close()

    async def _send_error(self, sess, writer, code, text):
        try:
            if not sess.closed:
                writer.write(sess.send(m.error(code, text)))
                await writer.drain()
        except Exception:
            pass


class _UncapturedRelay(RelayHandler):
    """The relay with capture switched off, for measurement only (anchor serve --no-capture):
    bodies are still spooled as they pass, but never chunked, stored or registered."""

    def _capture(self, path, prov):
        pass


class _MqttLinks:
    """The MQTT link listener, retried in the background while the broker is away: the
    anchor serves its other links meanwhile, and relayed publishes fail clearly."""

    def __init__(self, broker, on_port):
        self.broker = broker
        self.on_port = on_port
        self.listener = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        from anchor.mqtt_port import MqttListener
        backoff = 1.0
        while True:
            lst = MqttListener(self.broker[0], self.broker[1], self.on_port)
            try:
                await lst.start()
            except ConnectionError as e:
                if backoff == 1.0:
                    log.warning("MQTT links not available yet: %s; retrying", e)
                await asyncio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            self.listener = lst
            log.info("MQTT links on mqtt://%s:%d (topics anchor/v1/+/up)", *self.broker)
            return

    def close(self):
        self.task.cancel()
        if self.listener is not None:
            self.listener.close()


async def start_links(anchor, serial=(), mqtt_links=False, ble=None):
    """Listeners for the radio links; each rover that appears on one gets a channel whose
    streams are served like TCP connections. serial: [(device, baud)]; mqtt_links: take
    rover links on the relay's broker; ble: None, or an allow list (empty: any rover
    advertising the service). Returns the listeners (each has close())."""
    from anchor.chanlink import serve_port
    out = []

    def on_port(port):
        return serve_port(anchor, port)
    for device, baud in serial:
        from anchor.serial_port import SerialListener
        lst = SerialListener(device, baud, on_port=on_port)
        lst.start()
        out.append(lst)
        log.info("serial link on %s at %d baud", device, baud)
    if mqtt_links and anchor.broker:
        out.append(_MqttLinks(anchor.broker, on_port))
    if ble is not None:
        from anchor.ble_port import BleScanner
        def paired_names():
            # Without an explicit list: the rovers paired with this anchor, by the name they
            # advertise (an open anchor takes any rover advertising the service).
            from core import gatt
            out = []
            for d in anchor.catalog.paired():
                try:
                    out.append(gatt.adv_name(d))
                except ValueError:
                    pass
            return out
        allow = list(ble) or (None if anchor.open else paired_names)
        lst = BleScanner(on_port=on_port, allow=allow)
        lst.start()
        out.append(lst)
        log.info("BLE: scanning for rovers")
    return out


async def serve(anchor, listen_host, listen_port, mgmt_path=None, ready=None, proxy=None, links=None):
    """Serve rover links, the management API and, if `proxy` is (host, port), the HTTP
    forward proxy. `ready(port, proxy_port)` is called once all of them listen. `links`:
    keyword arguments for start_links (serial, MQTT and BLE listeners)."""
    from anchor import mgmt
    from anchor import retention
    retention.of(anchor).enforce()     # a smaller --capacity than last time applies at once
    listeners = await start_links(anchor, **(links or {}))
    server = await asyncio.start_server(anchor.serve_stream, listen_host, listen_port)
    port = server.sockets[0].getsockname()[1]
    mserver = pserver = None
    proxy_port = None
    if mgmt_path:
        mserver = await mgmt.start(anchor, mgmt_path)
    if proxy:
        from anchor.http_proxy import HttpProxy
        pserver = await HttpProxy(anchor).start(*proxy)
        proxy_port = pserver.sockets[0].getsockname()[1]
        log.info("HTTP proxy on tcp://%s:%d", proxy[0], proxy_port)
    if not anchor.capture:
        log.warning("capture is OFF (--no-capture, for measurement): relayed bodies are not kept")
    log.info("anchor listening on tcp://%s:%d, management on unix:%s", listen_host, port, mgmt_path)
    if ready:
        ready(port, proxy_port)
    try:
        await server.serve_forever()
    finally:
        server.close()
        for lst in listeners:
            lst.close()
        for s in (mserver, pserver):
            if s:
                s.close()
