# Link addresses: the one grammar both sides parse (docs/links.md, "Addresses").
#
#   tcp://HOST:PORT            HOST may be [v6]; a listener may take port 0 (a free one)
#   serial:DEVICE[:BAUD]       DEVICE a tty path (its own ':' allowed) or a board UART (uart1);
#                              only a trailing :DIGITS is a baud
#   mqtt://HOST:PORT           the broker
#   ble:[ID]                   the name the rover advertises
#   unix:PATH                  a local socket (management); takes no options
#
# Any of the first four may end in ?key=N&key=N, each value a whole number; which keys a
# scheme takes is in OPTIONS. Errors are ValueError (LinkUrlError) naming the address and
# the form expected. Runs on MicroPython: string methods only, no urllib or re.
from core.compat import const

DEFAULT_BAUD = const(115200)
MAX_PORT = const(65535)

# scheme -> the options its addresses may carry (cost: backups take the cheapest link)
OPTIONS = {
    "tcp": ("cost",),
    "serial": ("rxbuf", "mtu", "cost"),
    "mqtt": ("mtu", "cost"),
    "ble": ("cost",),
}
FORMS = {
    "tcp": "tcp://HOST:PORT",
    "serial": "serial:DEVICE[:BAUD][?key=value&...]",
    "mqtt": "mqtt://HOST:PORT[?key=value&...]",
    "ble": "ble:ID",
    "unix": "unix:PATH",
}


class LinkUrlError(ValueError):
    pass


def scheme(url):
    """The scheme of a link address ("tcp", "serial", ...), or None if it has none we know."""
    if type(url) is not str:
        return None
    head, sep, _ = url.partition(":")
    if not sep or head not in FORMS:
        return None
    if head in ("tcp", "mqtt") and not url.startswith(head + "://"):
        return None
    return head


def _expect(url, name, what):
    if scheme(url) != name:
        raise LinkUrlError("%s %r: expected %s" % (what, url, FORMS[name]))


def split_query(url, known, what="link"):
    """url -> (the part before '?', {key: int}); keys outside `known` are refused."""
    base, _, query = url.partition("?")
    options = {}
    if not query:
        return base, options
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise LinkUrlError("%s %s: option %r is not key=value" % (what, url, item))
        if key not in known:
            raise LinkUrlError("%s %s: unknown option %r (known: %s)" % (what, url, key, ", ".join(known)))
        if key in options:
            raise LinkUrlError("%s %s: option %r given twice" % (what, url, key))
        if not value.isdigit():
            raise LinkUrlError("%s %s: option %s=%r is not a non-negative integer" % (what, url, key, value))
        options[key] = int(value)
    return base, options


def port_number(text, url, listen=False, what="link"):
    """The one port check: 1..65535; a listener (listen=True) may also take 0, "any free one"."""
    if not text.isdigit():
        raise LinkUrlError("%s %s: port %r is not a number" % (what, url, text))
    n = int(text)
    low = 0 if listen else 1
    if not low <= n <= MAX_PORT:
        raise LinkUrlError("%s %s: port %d is not in %d..%d%s"
                           % (what, url, n, low, MAX_PORT, " (0 picks a free one)" if listen else ""))
    return n


def host_port(url, name="tcp", listen=False, what="link"):
    """tcp://HOST:PORT or mqtt://HOST:PORT (name says which) -> (host, port, {key: int})."""
    _expect(url, name, what)
    form = FORMS[name]
    base, options = split_query(url, OPTIONS[name], what)
    host, sep, port = base[len(name) + 3:].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]          # [::1]:1883
    if not sep or not host or not port.isdigit():
        raise LinkUrlError("%s %s: expected %s" % (what, url, form))
    if "@" in host or "/" in host:
        raise LinkUrlError("%s %s: no user name or path here; expected %s" % (what, url, form))
    return host, port_number(port, url, listen, what), options


def serial(url, what="link"):
    """serial:DEVICE[:BAUD][?key=value&...] -> (device, baud, {key: int})."""
    _expect(url, "serial", what)
    base, options = split_query(url, OPTIONS["serial"], what)
    device = base[7:]
    baud = DEFAULT_BAUD
    head, sep, tail = device.rpartition(":")
    # Only a numeric tail is a baud: /dev/serial/by-path/ names contain ':' themselves.
    if sep and tail.isdigit():
        device = head
        baud = int(tail)
        if baud <= 0:
            raise LinkUrlError("%s %s: baud must be positive" % (what, url))
    if not device:
        raise LinkUrlError("%s %s: no device (serial:/dev/ttyUSB0 or serial:uart1)" % (what, url))
    mtu = options.get("mtu")
    if mtu is not None and not 0 < mtu <= 0xFFFF:
        raise LinkUrlError("%s %s: mtu must be 1..65535" % (what, url))
    if options.get("rxbuf") == 0:
        raise LinkUrlError("%s %s: rxbuf must be positive" % (what, url))
    return device, baud, options


def ble(url, what="link"):
    """ble:[ID][?key=value&...] -> (ID, may be "", {key: int})."""
    _expect(url, "ble", what)
    base, options = split_query(url, OPTIONS["ble"], what)
    return base[4:], options


def unix(url, what="address"):
    """unix:PATH -> PATH. No options: a path may hold '?' itself."""
    if scheme(url) != "unix" or len(url) <= 5:
        raise LinkUrlError("%s %r: expected unix:PATH" % (what, url))
    return url[5:]


def cost(url, what="link"):
    """A link's configured cost (`?cost=N`, default 1), its options checked for its scheme."""
    name = scheme(url)
    if name is None or name not in OPTIONS:
        raise LinkUrlError("%s %s: expected %s" % (what, url, forms()))
    return split_query(url, OPTIONS[name], what)[1].get("cost", 1)


def forms(names=("tcp", "serial", "mqtt", "ble")):
    """The forms of the schemes named, for an error message."""
    return ", ".join([FORMS[n] for n in names[:-1]]) + " or " + FORMS[names[-1]]
