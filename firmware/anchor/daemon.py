"""The anchor daemon: serves rover links (a session per stream) and, in serve(), every
listener of an anchor.app.App: rover links, the management API, the HTTP proxy."""
import asyncio
import logging
import time

from anchor_core import messages as m
from anchor_core import states
from anchor_core.session import Session
from anchor.services.relay import RELAY_TYPES
from anchor.services.restore_link import LinkRestore, RESTORE_TYPES
from anchor_core import restoremsg
from anchor.secure_session import Refused
from anchor.links import TcpListener, start_links     # the listeners, by address
from anchor.admission import Admission, HANDSHAKE_SECONDS

log = logging.getLogger("anchor")

READ_SIZE = 65536
# Replies after which the rover may hang up: counters are written before they go out.
ENDS_A_REQUEST = (m.COMMITTED, m.END, m.RESULT, m.FAIL, m.WATCHED, m.ERROR, restoremsg.RDONE)
IDLE_TIMEOUT = 300


def _abort(writer):
    """Close a link at once (its descriptor is what a flood is after)."""
    t = getattr(writer, "transport", None)
    if t is not None:
        t.abort()
    else:
        writer.close()


class SessionServer:
    """Serves rover links: one session per byte stream, each with its own backup and relay
    handler from the services. Keeps who is connected (to cut an unpaired rover off) and
    the bytes links moved."""

    def __init__(self, backup, relay, catalog, open=False, broker=None, admission=None, restore=None,
                 fleet=None, fleet_pairings=None):
        self.backup = backup              # services.backup.BackupService
        self.relay = relay                # services.relay.RelayService
        self.restore = restore            # services.restore.RestoreService (restores over the link)
        self.catalog = catalog            # pairings (the handshake), per-device counters
        # open: also serve rovers that are not paired, without the secure channel (a lab or
        # test bench; `anchor serve --open`). Otherwise only paired rovers get anything.
        self.open = open
        self.broker = broker              # (host, port): MQTT links ride the relay's broker
        self.secure_writers = {}          # device -> writers of its live secure sessions
        self.link_bytes = {"rx": 0, "tx": 0}
        # The sessions running now, for `anchorctl stats`: their counters reach the catalog
        # only when a request ends, and a long backup over a slow link is one request.
        self.live = {}                    # key -> (Session, backup handler, paired device, started)
        self.admission = admission or Admission()   # connections this anchor holds at most
        # Every link being served (its task and raw writer), so a shutdown can close them and
        # let each session flush and count what it received.
        self.streams = {}                 # task -> writer
        self.channel_links = {}           # port name -> its latest links.chanlink.ChannelConnection
        self.sessions_total = 0
        self.fleet = fleet                # anchor.fleet.service.Fleet of a fleet anchor, or None
        self.fleet_pairings = fleet_pairings   # ...and its pairings (fleet/pairings.py): read at handshakes

    # --- one rover link ----------------------------------------------------------------

    async def serve_stream(self, reader, writer):
        """Run one session over a byte stream (a TCP connection, a channel stream): the
        secure handshake first (unless a plain rover meets an --open anchor), then the
        session. Errors end this session only. A link holds a place in the anchor's pools
        (anchor/admission.py) while it lasts, and has HANDSHAKE_SECONDS to prove itself."""
        from anchor import secure_session
        task = asyncio.current_task()
        self.streams[task] = writer
        try:
            return await self._serve_stream(reader, writer)
        finally:
            self.streams.pop(task, None)

    async def close_all(self, timeout):
        """Cut every link being served and wait (at most `timeout` s) for their sessions to
        end: each session's own ending flushes what it received and records its counters.
        Returns how many links were open."""
        streams = dict(self.streams)
        for w in streams.values():
            _abort(w)
        if streams:
            await asyncio.wait(list(streams), timeout=timeout)
        return len(streams)

    async def _serve_stream(self, reader, writer):
        from anchor import secure_session
        peer = writer.get_extra_info("peername")
        # TCP: the peer's address (its port changes per connection); a channel: the port.
        address = peer[0] if isinstance(peer, tuple) else peer
        adm = self.admission
        pending = adm.take_pending(address, lambda: _abort(writer))
        if pending is None:
            _abort(writer)
            return
        try:
            reader, swriter, device = await asyncio.wait_for(secure_session.accept(self, reader, writer),
                                                             HANDSHAKE_SECONDS)
        except asyncio.TimeoutError:
            adm.rate.warning("slow", "link %s: no secure handshake within %g s; closed", peer, HANDSHAKE_SECONDS)
            _abort(writer)
            return
        except secure_session.Refused as e:
            adm.rate.warning("refused", "link %s refused: %s", peer, e)
            # The same words for every refusal: a stranger learns nothing from them (not
            # even whether the device name it tried is paired here).
            await self._send_error(Session(states.ANCHOR), writer, m.E_PROTOCOL, secure_session.REFUSED)
            writer.close()
            return
        except (ConnectionError, OSError) as e:
            adm.rate.warning("lost", "link %s lost during the handshake: %s", peer, e)
            writer.close()
            return
        finally:
            pending.release()
        slot = adm.take_session(device, address, lambda: _abort(writer))
        if slot is None:
            await self._send_error(Session(states.ANCHOR), swriter, m.E_INTERNAL,
                                   "the anchor serves as many sessions as it can; try again later")
            writer.close()
            return
        try:
            if device is None:
                return await self._serve_session(reader, writer, None)
            if self.fleet is not None:
                # Before its HELLO: the snapshots other anchors of the fleet made for it, so the
                # backup builds on the newest and HAVE counts what the fleet holds.
                await self.fleet.visit(device)
            live = self.secure_writers.setdefault(device, set())
            live.add(writer)
            try:
                await self._serve_session(reader, swriter, device)
            finally:
                live.discard(writer)
        finally:
            slot.release()

    def live_sessions(self):
        """What each running session has moved so far: device (None until a HELLO names
        it, unless the link is paired), link bytes in and out, since when, for how long."""
        now = time.monotonic()
        out = []
        for sess, handler, auth_device, started, t0 in self.live.values():
            out.append({"device": handler.device or auth_device, "link_rx": sess.bytes_in,
                        "link_tx": sess.bytes_out, "started": started,
                        "seconds": round(now - t0, 3)})
        out.sort(key=lambda s: s["started"])
        return out

    def revoke(self, device):
        """Unpair a rover now: its pairing goes, and its live sessions are cut."""
        gone = self.catalog.unpair(device)
        for w in list(self.secure_writers.get(device, ())):
            w.close()
        return gone

    async def _serve_session(self, reader, writer, auth_device):
        peer = writer.get_extra_info("peername")
        sess = Session(states.ANCHOR)
        handler = self.backup.session()
        relay = self.relay.session(handler)
        restore = (LinkRestore(self.restore, handler, auth_device is not None, self.catalog)
                   if self.restore is not None else None)

        recorded = {}
        key = object()
        self.live[key] = (sess, handler, auth_device, time.time(), time.monotonic())
        self.sessions_total += 1

        def account():
            """Add what this session moved since the last call to the device's counters.

            Called before every reply that ends a request, so a rover that has its answer
            finds the counters already written (and once more when the session ends)."""
            if handler.dev is None:
                return
            counts = dict(handler.counts)
            for k, v in relay.counts.items():
                counts[k] = counts.get(k, 0) + v
            if restore is not None:
                counts.update(restore.counts)
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
                    if msg[m.MSG_TYPE] in RESTORE_TYPES and restore is not None:
                        await restore.handle(msg, send)
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
            if handler.device is None:
                # Garbage before any HELLO (only an --open anchor gets here unauthenticated):
                # one line per interval, or a flood of bad links writes the log full.
                self.admission.rate.warning("garbage", "session %s: %s", peer, e.text)
            else:
                log.warning("session %s (%s): %s", peer, handler.device, e.text)
            await self._send_error(sess, writer, e.code, e.text)
        except Exception as e:  # one broken session must not take the anchor down
            log.exception("session %s (%s) failed", peer, handler.device)
            await self._send_error(sess, writer, m.E_INTERNAL, "anchor error: %s" % e)
        finally:
            self.live.pop(key, None)
            self.link_bytes["rx"] += sess.bytes_in
            self.link_bytes["tx"] += sess.bytes_out
            try:
                account()
            except Exception:
                log.exception("could not record counters")
            handler.end()
            relay.end()
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


class BindError(Exception):
    """A listener could not take its address: `what` is the option that named it."""

    def __init__(self, what, address, err):
        Exception.__init__(self, "cannot listen on %s (%s): %s"
                           % (address, what, getattr(err, "strerror", None) or err))


async def _bind(what, address, start):
    try:
        return await start()
    except OSError as e:
        raise BindError(what, address, e)


SHUTDOWN_SECONDS = 5.0      # sessions get this long to end once their links are cut


async def serve(app, listen_host, listen_port, mgmt_path=None, ready=None, proxy=None, links=None,
                notifier=None, stop=None, http=None, http_token=None):
    """Serve the rover links, the management API and, if `proxy` is (host, port), the HTTP
    forward proxy of `app` (an anchor.app.App) until `stop` (an asyncio.Event) is set.
    `ready(port, proxy_port)` is called once all of them listen. `links`: keyword arguments
    for start_links (serial, MQTT and BLE listeners). `http`: (host, port) of the status page
    and /metrics (anchor/api/web.py), `http_token` the token it asks for. `notifier`: anchor.notify.Notifier (the
    service manager hears READY, STATUS, WATCHDOG and STOPPING). A listener that cannot take
    its address raises BindError naming the option."""
    from anchor.api import mgmt
    from anchor.notify import Notifier
    notifier = notifier or Notifier({})
    stop = stop or asyncio.Event()
    notifier.status("starting: checking the store against its budget")
    app.retention.enforce()     # a smaller --capacity than last time applies at once
    sessions = app.sessions
    opened = []
    background = []
    watchdog = None
    try:
        # First, so a management path that is taken stops the anchor before it serves anyone.
        if mgmt_path:
            opened.append(await _bind("mgmt", "unix:" + mgmt_path, lambda: mgmt.start(app, mgmt_path)))
        opened.extend(await start_links(sessions, **(links or {})))
        # The same listener class the link registry opens for tcp:// (and the conformance suite
        # tests), started here because serve() runs until it stops.
        tcp = TcpListener(sessions, listen_host, listen_port)
        await _bind("listen", "tcp://%s:%d" % (listen_host, listen_port), tcp.start_serving)
        opened.append(tcp)
        port = tcp.port
        proxy_port = None
        if proxy:
            pserver = await _bind("proxy", "tcp://%s:%d" % proxy, lambda: app.http_proxy.start(*proxy))
            opened.append(pserver)
            proxy_port = pserver.port
            log.info("HTTP proxy on tcp://%s:%d", proxy[0], proxy_port)
        if http:
            from anchor.api.web import StatusServer
            opened.append(await _bind("http", "tcp://%s:%d" % http,
                                      lambda: StatusServer(app, http_token).start(*http)))
        if not app.capturing:
            log.warning("capture is OFF (--no-capture, for measurement): relayed bodies are not kept")
        log.info("anchor listening on tcp://%s:%d, management on unix:%s", listen_host, port, mgmt_path)
        if ready:
            ready(port, proxy_port)
        where = "rovers on tcp://%s:%d" % (listen_host, port)
        notifier.send("READY=1", "STATUS=serving " + where)
        watchdog = asyncio.get_running_loop().create_task(_keepalive(notifier, sessions, where))
        if app.fleet is not None:
            from anchor.fleet import pairings
            background.append(asyncio.get_running_loop().create_task(app.fleet.run()))
            background.append(asyncio.get_running_loop().create_task(pairings.watch(
                app.fleet.pairings, app.catalog, sessions.revoke, app.fleet.config.pairing_poll)))
            app.fleet.offload_now()       # what was committed while the anchor was down
        await stop.wait()
        notifier.send("STOPPING=1", "STATUS=stopping: closing links and flushing the store")
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for task in background:
            task.cancel()
        for lst in opened:
            aclose = getattr(lst, "aclose", None)
            if aclose is not None:
                await aclose()
            else:
                lst.close()
    n = await sessions.close_all(SHUTDOWN_SECONDS)
    return n


async def _keepalive(notifier, sessions, where):
    """WATCHDOG=1 at half the service manager's interval, sent by this task: a loop that hangs
    sends none and gets the anchor restarted. STATUS= follows what the anchor is doing."""
    every = notifier.watchdog_s / 2 if notifier.watchdog_s else 30.0
    last = None
    while True:
        links = len(sessions.streams)
        text = "serving %s: %d link%s open, %d session%s since start" % (
            where, links, "" if links == 1 else "s", sessions.sessions_total,
            "" if sessions.sessions_total == 1 else "s")
        lines = ["WATCHDOG=1"] if notifier.watchdog_s else []
        if text != last:
            lines.append("STATUS=" + text)
            last = text
        if lines:
            notifier.send(*lines)
        await asyncio.sleep(every)
