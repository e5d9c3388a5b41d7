"""The anchor's rover links, started by address (docs/links.md). CPython only.

`await start_link(url, server)` starts the listener for one address (anchor_core/linkurl.py has
the grammar) and returns it (anchor/links/port.py, Listener): every rover that appears on it is
served by `server` (anything with `serve_stream(reader, writer)`: the SessionServer, or a test
server). TCP streams go to it directly; every other kind carries a channel
(anchor/links/chanlink.py), whose streams are served like TCP connections. Each opener imports
its port module only when called.

`start_links` turns the daemon's settings (anchor serve --serial, --broker, --ble) into
addresses and starts them.
"""
import asyncio
import errno
import logging
import socket

from anchor_core import linkurl

log = logging.getLogger("anchor")

ACCEPT_RETRY = 1.0          # seconds before accepting again once out of descriptors
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


async def _tcp(url, on_port, server, **kw):
    host, port, _ = linkurl.host_port(url, "tcp", True)
    lst = TcpListener(server, host, port)
    await lst.start_serving()
    return lst


async def _serial(url, on_port, server, **kw):
    from anchor.links.serial_port import SerialListener
    device, baud, opts = linkurl.serial(url)
    if "mtu" in opts:
        kw["mtu"] = opts["mtu"]
    lst = SerialListener(device, baud, on_port=on_port, **kw)
    lst.start()
    log.info("serial link on %s at %d baud", device, baud)
    return lst


async def _mqtt(url, on_port, server, **kw):
    from anchor.links.mqtt_port import MqttLinks
    host, port, opts = linkurl.host_port(url, "mqtt")
    if "mtu" in opts:
        kw["max_payload"] = opts["mtu"]
    lst = MqttLinks(host, port, on_port, **kw)
    lst.start()
    return lst


async def _ble(url, on_port, server, **kw):
    # kw: allow (addresses or names, or a function giving them), backend (bleak by default)
    from anchor.links.ble_port import BleScanner
    linkurl.ble(url)
    lst = BleScanner(on_port=on_port, **kw)
    lst.start()
    log.info("BLE: scanning for rovers")
    return lst


# scheme -> async opener(url, on_port, server, **kw) returning a started listener. A new kind
# of link is one more line here.
OPENERS = {
    "tcp": _tcp,
    "serial": _serial,
    "mqtt": _mqtt,
    "ble": _ble,
}


async def start_link(url, server, on_port=None, **kw):
    """Starts the listener for `url`; rovers on it are served by `server`. on_port (default:
    a channel per port, served by `server`) and kw (the listener's own settings) are for
    tests and for start_links. Raises ValueError for an address it cannot use."""
    opener = OPENERS.get(linkurl.scheme(url))
    if opener is None:
        raise ValueError("link %s: expected %s" % (url, linkurl.LINKS))
    if on_port is None:
        from anchor.links.chanlink import serve_port

        def on_port(port):
            return serve_port(server, port)
    return await opener(url, on_port, server, **kw)


async def start_links(server, serial=(), mqtt_links=False, ble=None):
    """Listeners for the radio links. serial: [(device, baud)]; mqtt_links: take rover links
    on the relay's broker; ble: None, or an allow list (empty: the rovers paired with this
    anchor, or any rover advertising the service if it is open). Returns the listeners
    (each has close())."""
    out = []
    for device, baud in serial:
        out.append(await start_link("serial:%s:%d" % (device, baud), server))
    if mqtt_links and server.broker:
        # An anchor.broker.Broker carries TLS and credentials; a (host, port) pair does not.
        kw = {"broker": server.broker} if hasattr(server.broker, "client") else {}
        out.append(await start_link("mqtt://%s:%d" % tuple(server.broker), server, **kw))
    if ble is not None:
        def paired_names():
            # Without an explicit list: the rovers paired with this anchor, by the name they
            # advertise (an open anchor takes any rover advertising the service).
            from anchor_core import gatt
            out = []
            for d in server.catalog.paired():
                try:
                    out.append(gatt.adv_name(d))
                except ValueError:
                    pass
            return out
        allow = list(ble) or (None if server.open else paired_names)
        out.append(await start_link("ble:", server, allow=allow))
    return out


class TcpListener:
    """Rover links over TCP: each connection is a session stream, served directly.

    The accept loop is our own, not asyncio.start_server's: when the process is out of file
    descriptors, asyncio's logs a traceback for every further accept attempt of the same
    tick and schedules a retry for each (hundreds of thousands of tracebacks in a minute).
    Here an accept error is logged once per interval and the next attempt waits a second."""

    def __init__(self, server, host, port, limit=None):
        self.server = server
        self.host = host
        self.port = port           # the bound one once started (0 asks for a free one)
        self.name = "tcp://%s:%d" % (host, port)
        self.limit = limit         # asyncio's stream buffer, None: its default
        self.sock = None
        self._task = None
        self._conns = set()        # tasks of the connections being served (kept referenced)

    def start(self):
        asyncio.ensure_future(self.start_serving())

    async def start_serving(self):
        if self.sock is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self.sock = socket.create_server((self.host, self.port), family=family, backlog=128)
            self.sock.setblocking(False)
            self.port = self.sock.getsockname()[1]
            self.name = "tcp://%s:%d" % (self.host, self.port)
            self._task = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self):
        from anchor.admission import RateLog
        loop = asyncio.get_running_loop()
        rate = getattr(getattr(self.server, "admission", None), "rate", None) or RateLog()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as e:
                if self.sock is None or self.sock.fileno() < 0:
                    return
                rate.warning("accept", "%s: cannot accept a connection (%s); trying again in %g s",
                             self.name, e, ACCEPT_RETRY)
                if e.errno in _OUT_OF_RESOURCES:
                    await asyncio.sleep(ACCEPT_RETRY)     # a backoff: nothing to wait on instead
                continue
            t = loop.create_task(self._serve(conn))
            self._conns.add(t)
            t.add_done_callback(self._conns.discard)

    async def _serve(self, conn):
        try:
            kw = {} if self.limit is None else {"limit": self.limit}
            reader, writer = await asyncio.open_connection(sock=conn, **kw)
        except OSError:
            conn.close()
            return
        await self.server.serve_stream(reader, writer)

    async def serve_forever(self):
        await asyncio.shield(self._task)

    def close(self):
        if self._task is not None:
            self._task.cancel()
        if self.sock is not None:
            self.sock.close()
