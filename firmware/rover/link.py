# The rover's links, found by the scheme of their address (docs/links.md). Each opener
# imports its port only when called, so a rover holds in its heap the code of the links it
# uses, not of every kind it knows.
#
# Addresses are parsed by anchor_core/linkurl.py. On MicroPython that module is dropped again once
# an address is parsed: the grammar is needed while a link opens, and its bytecode (~4 KB)
# would otherwise sit in the 256 KB heap through the whole backup.
from anchor_core.compat import MICROPYTHON
# Raised by every port; defined in a leaf module so that ports need not import this one.
from rover.linkerror import LinkError, BadAddress, NotPaired  # noqa: F401


def _url(name, url, *args):
    """anchor_core.linkurl's `name`(url, *args), its ValueError as BadAddress."""
    from anchor_core import linkurl
    try:
        return getattr(linkurl, name)(url, *args)
    except ValueError as e:
        raise BadAddress(str(e))
    finally:
        if MICROPYTHON:
            drop_grammar()


def drop_grammar():
    from anchor_core import compat, linkurl
    compat.unload(linkurl)


def cost(url):
    """The link's configured cost (`?cost=N`, default 1): backups take the cheapest link."""
    return _url("cost", url)


def over_channel(port, urgent=False, rx_window=None, **kw):
    """A stream on a channel (anchor_core/channel.py) over a packet port; closing it closes the
    port. kw: ChannelLink's other settings (tx_buffer, tx_window)."""
    from rover.chanlink import ChannelLink
    try:
        cl = ChannelLink(port, rx_window=rx_window, **kw)
    except LinkError:
        port.close()
        raise
    s = cl.stream(urgent)
    s.owns_link = True
    return s


def _tcp(url, device, urgent):
    from rover.tcp_link import TcpLink
    host, port, _ = _url("host_port", url)
    return TcpLink(host, port)        # a stream already: the session runs on it directly


def _serial(url, device, urgent):
    dev, baud, opts = _url("serial", url)
    from rover.serial_port import SerialPort
    kw = {}
    if "mtu" in opts:
        kw["mtu"] = opts["mtu"]
    port = SerialPort(dev, baud, rxbuf=opts.get("rxbuf"), **kw)
    # The UART's receive buffer is all the anchor may have in flight towards us.
    return over_channel(port, urgent, opts.get("rxbuf"))


# The broker login from the command line (--mqtt-user, --mqtt-password-file, --mqtt-ca) or
# a board's rover.json ("mqtt"): (user, password file, CA file, password), each None when
# not given.
MQTT_LOGIN = (None, None, None, None)


def _mqtt(url, device, urgent):
    from rover.mqtt_port import MqttPort
    if device is None:
        raise BadAddress("an MQTT link needs the device id")
    tls = url.startswith("mqtts:")
    host, port_no, opts = _url("host_port", url, "mqtts" if tls else "mqtt")
    user, pw_file, ca, password = MQTT_LOGIN
    if pw_file is not None:
        try:
            with open(pw_file, "rb") as f:
                password = f.read().strip()
        except OSError as e:
            raise BadAddress("--mqtt-password-file %s: %s" % (pw_file, e))
    if ca is not None and not tls:
        raise BadAddress("--mqtt-ca is for an mqtts:// link, not %s" % url)
    # A broker over cellular holds a round trip of 100 ms or more: a MicroPython rover keeps
    # up to 12 KiB in flight (rover/buffers.py MQTT_RING), CPython up to the anchor's whole
    # window (the channel's cwnd finds the link's own share of either).
    port = MqttPort(host, port_no, device, opts.get("mtu"), (ca or "") if tls else None, user, password)
    if MICROPYTHON:
        return over_channel(port, urgent, tx_buffer=_mqtt_ring())
    return over_channel(port, urgent, tx_buffer=65535, tx_window=65535)


def _mqtt_ring():
    """The MQTT send ring main.py took at start-up, or one taken now (a board's main.py does
    not know its link before rover.json is read) if the heap can spare it; else the
    channel's 2 KiB (a fifth of the goodput over cellular)."""
    import gc
    from rover import buffers
    if buffers.ring is None:
        gc.collect()
        buffers.ring = 0
        if gc.mem_free() >= buffers.MQTT_RING + buffers.RING_RESERVE:
            try:
                buffers.ring = bytearray(buffers.MQTT_RING)
            except MemoryError:
                pass
    return buffers.ring or 2048


def _ble(url, device, urgent, adapter=None, **kw):
    # On a board with aioble: advertise as anchor-rover-<ID> and wait for the anchor. Tests
    # give the adapter (a bumble virtual controller) and GattPeripheralLink's settings.
    name, _ = _url("ble", url)
    try:
        from rover.ble_port import AiobleAdapter, GattPeripheralLink, RX_WINDOW
        port = GattPeripheralLink(adapter or AiobleAdapter(name or device or "rover"), **kw)
    except ImportError:
        raise BadAddress("link %s: BLE needs aioble (a MicroPython board with Bluetooth)" % url)
    # What aioble's capture queue holds is what the anchor may have in flight to us: with the
    # channel's default of 4 packets a restore used 59% of a BLE-like link, with 10 about 87%
    # (tools/bench-restore).
    return over_channel(port, urgent, RX_WINDOW * (port.mtu + port.overhead))


# scheme -> opener(url, device, urgent[, **kw]): a stream link (write, readinto, set_timeout, close,
# tx, rx; rover/port.py). A new kind of link is one more line here.
OPENERS = {
    "tcp": _tcp,
    "serial": _serial,
    "mqtt": _mqtt,
    "mqtts": _mqtt,
    "ble": _ble,
}


def open_link(url, device=None, urgent=False, **kw):
    """A link to the anchor. TCP carries the session directly; a serial line, an MQTT
    broker or BLE carries a channel (anchor_core/channel.py), and the session runs on one of its
    streams (`urgent` for relay requests, which then go before any backup traffic). kw go
    to the opener: only BLE takes any (an injected adapter)."""
    head, sep, _ = url.partition(":") if type(url) is str else ("", "", "")
    opener = OPENERS.get(head) if sep else None
    if opener is None:
        _url("cost", url)     # raises the error naming the forms we take
    return opener(url, device, urgent, **kw)
