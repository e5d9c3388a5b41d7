# Link addresses: the one grammar both sides parse (docs/links.md, "Using them").
#
#   tcp://HOST:PORT            HOST may be [v6]; a listener may take port 0 (a free one)
#   serial:DEVICE[:BAUD]       DEVICE a tty path (its own ':' allowed) or a board UART (uart1);
#                              only a trailing :DIGITS is a baud
#   mqtt://HOST:PORT           the broker; mqtts:// over TLS (the rover only: the anchor's
#                              broker is its --broker)
#   ble:[ID]                   the name the rover advertises
#   unix:PATH                  a local socket (management); takes no options
#
# Any of the first four may end in ?key=N&key=N, each value a whole number; which keys a
# scheme takes is in known_options(). Errors are ValueError naming the address and the form
# expected. Runs on MicroPython: string methods only, no urllib or re. The rover unloads
# this module after each parse (rover/link.py): keep it free of state.
from anchor_core.compat import const

DEFAULT_BAUD = const(115200)
# The forms an error names. No tables of schemes and options: on the rover a dict of
# strings costs more heap than the few tests below.
LINKS = "tcp://HOST:PORT, serial:DEVICE[:BAUD], mqtt://HOST:PORT (mqtts:// for TLS) or ble:ID"
_SERIAL = "serial:DEVICE[:BAUD][?key=value&...]"


def _bad(what, url, text):
    # One format for every message: each distinct string costs the rover heap.
    return ValueError("%s %s: %s" % (what, url, text))


def scheme(url):
    """The scheme of a link address ("tcp", "serial", "mqtt", "mqtts", "ble", "unix"), or None."""
    if type(url) is str:
        for prefix in ("tcp://", "serial:", "mqtt://", "mqtts://", "ble:", "unix:"):
            if url.startswith(prefix):
                return prefix[:prefix.index(":")]
    return None


def known_options(name):
    """The options a scheme's addresses may carry (cost: backups take the cheapest link)."""
    if name == "serial":
        return ("rxbuf", "mtu", "cost")
    if name == "mqtt" or name == "mqtts":
        return ("mtu", "cost")
    return ("cost",) if name in ("tcp", "ble") else ()


def split_query(url, known, what="link"):
    """url -> (the part before '?', {key: int}); keys outside `known` are refused."""
    base, _, query = url.partition("?")
    options = {}
    for item in query.split("&") if query else ():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise _bad(what, url, "option %r is not key=value" % item)
        if key not in known:
            raise _bad(what, url, "unknown option %r (known: %s)" % (key, ", ".join(known)))
        if key in options:
            raise _bad(what, url, "option %r given twice" % key)
        if not value.isdigit():
            raise _bad(what, url, "option %s=%r is not a non-negative integer" % (key, value))
        options[key] = int(value)
    return base, options


def _parts(url, name, form, what):
    if scheme(url) != name:
        raise _bad(what, repr(url), "expected " + form)
    return split_query(url, known_options(name), what)


def port_number(text, url, listen=False, what="link"):
    """The one port check: 1..65535; a listener (listen=True) may also take 0, "any free one"."""
    n = int(text) if text.isdigit() else -1
    if not (0 if listen else 1) <= n <= 65535:
        raise _bad(what, url, "port %s is not in %s..65535" % (text, "0 (a free one)" if listen else "1"))
    return n


def host_port(url, name="tcp", listen=False, what="link"):
    """tcp://, mqtt:// or mqtts://HOST:PORT (name says which) -> (host, port, {key: int})."""
    form = name + "://HOST:PORT[?key=value&...]"
    base, options = _parts(url, name, form, what)
    host, sep, port = base[len(name) + 3:].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]          # [::1]:1883
    if not sep or not host or not port.isdigit():
        raise _bad(what, url, "expected " + form)
    if "@" in host or "/" in host:
        raise _bad(what, url, "no user name or path here; expected " + form)
    # An MQTT packet is held whole in RAM on both sides (anchor_core/mqtt_profile.py MAX_MTU).
    if not 0 < options.get("mtu", 1) <= 65536:
        raise _bad(what, url, "mtu must be 1..65536")
    return host, port_number(port, url, listen, what), options


def serial(url, what="link"):
    """serial:DEVICE[:BAUD][?key=value&...] -> (device, baud, {key: int})."""
    base, options = _parts(url, "serial", _SERIAL, what)
    device = base[7:]
    baud = DEFAULT_BAUD
    head, sep, tail = device.rpartition(":")
    # Only a numeric tail is a baud: /dev/serial/by-path/ names contain ':' themselves.
    if sep and tail.isdigit():
        device = head
        baud = int(tail)
        if baud <= 0:
            raise _bad(what, url, "baud must be positive")
    if not device:
        raise _bad(what, url, "no device (serial:/dev/ttyUSB0 or serial:uart1)")
    if not 0 < options.get("mtu", 1) <= 65535:
        raise _bad(what, url, "mtu must be 1..65535")
    if options.get("rxbuf") == 0:
        raise _bad(what, url, "rxbuf must be positive")
    return device, baud, options


def ble(url, what="link"):
    """ble:[ID][?key=value&...] -> (ID, may be "", {key: int})."""
    base, options = _parts(url, "ble", "ble:ID", what)
    return base[4:], options


def unix(url, what="address"):
    """unix:PATH -> PATH. No options: a path may hold '?' itself."""
    if scheme(url) != "unix" or len(url) <= 5:
        raise _bad(what, repr(url), "expected unix:PATH")
    return url[5:]


def cost(url, what="link"):
    """A link's configured cost (`?cost=N`, default 1), its options checked for its scheme."""
    known = known_options(scheme(url))
    if not known:
        raise _bad(what, url, "expected " + LINKS)
    return split_query(url, known, what)[1].get("cost", 1)
