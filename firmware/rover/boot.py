# A board's start (firmware/board/main.py; docs/rover.md, "On a board: main.py and
# rover.json"). A board has no command line: rover.json in the filesystem root (the current
# folder on the unix port) says what `rover ... run` would, and what the links need brought
# up first (Wi-Fi, the UART's pins, the BLE name). It is checked whole before anything
# starts: a bad setting is one line on the console naming its key, and no backup runs.
import json

from rover import run
from rover.run_loop import log_line

CONFIG = "rover.json"
_KEYS = ("device", "links", "state", "root", "every", "jitter", "wifi", "uart", "ble", "mqtt")
_NEEDED = ("device", "links", "state", "root", "every")
_WIFI_WAIT_MS = 20000
# network.STAT_* that will not turn into a connection by waiting longer
_WIFI_FATAL = ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL")


class ConfigError(ValueError):
    pass


def _bad(key, text):
    return ConfigError('%s: "%s" %s' % (CONFIG, key, text))


def _device_id(v):
    # the anchor's rule (README, `rover`): 1-64 letters, digits, '.', '_', '-'
    if not (type(v) is str and 1 <= len(v) <= 64):
        return False
    for c in v:
        if not (c.isalpha() or c.isdigit() or c in "._-") or ord(c) > 127:
            return False
    return True


def _section(cfg, key, fields, needed):
    """A sub-object such as "uart": a dict of known fields with the types given."""
    v = cfg.get(key)
    if v is None:
        return None
    if type(v) is not dict:
        raise _bad(key, "must be an object like %s" % _EXAMPLES[key])
    for k in v:
        if k not in fields:
            raise _bad(key + "." + k, "is not a setting (%s takes %s)" % (key, ", ".join(fields)))
    for k in needed:
        if k not in v:
            raise _bad(key + "." + k, "is required")
    for k in v:
        t = fields[k]
        if type(v[k]) is not t or (t is str and not v[k] and k != "password") or (t is int and v[k] < 0):
            raise _bad(key + "." + k, "must be %s, got %s" % (
                "a non-negative whole number" if t is int else "a non-empty string", run.show(v[k])))
    return v


_EXAMPLES = {"wifi": '{"ssid": "home", "password": "secret"}',
             "uart": '{"id": 1, "tx": 17, "rx": 16, "baud": 115200}',
             "ble": '{"name": "anchor"}',
             "mqtt": '{"user": "hand-1", "password": "secret", "ca": "/ca.pem"}'}


def check(cfg):
    """The settings of a decoded rover.json, checked: (opts for the loop, root, the run's state).
    ConfigError naming the key for anything wrong."""
    from rover.link import BadAddress
    from anchor_core import linkurl
    if type(cfg) is not dict:
        raise ConfigError("%s: must be a JSON object like {\"device\": \"hand-1\", ...}" % CONFIG)
    for k in cfg:
        if k not in _KEYS:
            raise ConfigError('%s: unknown key "%s" (keys: %s)' % (CONFIG, k, ", ".join(_KEYS)))
    for k in _NEEDED:
        if k not in cfg:
            raise _bad(k, "is required")
    if not _device_id(cfg["device"]):
        raise _bad("device", "must be 1-64 letters, digits, '.', '_' or '-', got %s" % run.show(cfg["device"]))
    for k in ("state", "root"):
        if type(cfg[k]) is not str or not cfg[k]:
            raise _bad(k, "must be a folder path, got %s" % run.show(cfg[k]))
    links = cfg["links"]
    if type(links) is not list or not links or [u for u in links if type(u) is not str]:
        raise _bad("links", 'must be a list of link addresses like ["tcp://192.168.1.2:7440"], got %s'
                   % run.show(links))
    try:
        every = run.duration(cfg["every"], '"every"')
        jit = run.jitter(cfg.get("jitter", "10%"), every, '"jitter"')
    except ValueError as e:
        raise ConfigError("%s: %s" % (CONFIG, e))
    _section(cfg, "wifi", {"ssid": str, "password": str}, ("ssid", "password"))
    uart = _section(cfg, "uart", {"id": int, "tx": int, "rx": int, "baud": int}, ("id", "baud"))
    ble = _section(cfg, "ble", {"name": str}, ("name",))
    # The broker's login and, for mqtts:// links, the CA file on the board (the command
    # line's --mqtt-user, --mqtt-password-file, --mqtt-ca).
    mq = _section(cfg, "mqtt", {"user": str, "password": str, "ca": str}, ())
    if mq is not None:
        if not [u for u in links if u.startswith("mqtt")]:
            raise _bad("mqtt", "is set, but no link is mqtt:// or mqtts://")
        if "ca" in mq and not [u for u in links if u.startswith("mqtts://")]:
            raise _bad("mqtt.ca", "is for mqtts:// links, and none is")
    out = []
    for u in links:
        try:
            sch = linkurl.scheme(u)
            if sch == "serial":
                dev, baud, _ = linkurl.serial(u)
                if dev.startswith("uart"):
                    # a board's UART: its pins and speed come from "uart"
                    if uart is None:
                        raise _bad("uart", "is required for the link %s (its id, pins and baud)" % u)
                    if dev != "uart%d" % uart["id"]:
                        raise _bad("uart", "has id %d, but the link %s names %s" % (uart["id"], u, dev))
                    if baud != uart["baud"]:
                        raise _bad("uart", "has baud %d, but the link %s runs at %d: make them agree"
                                   % (uart["baud"], u, baud))
            elif sch == "ble":
                name, _ = linkurl.ble(u)
                if ble is None:
                    raise _bad("ble", "is required for the link %s (the name to advertise)" % u)
                if not name:
                    u = "ble:" + ble["name"] + u[4:]
                elif name != ble["name"]:
                    raise _bad("ble", "has name %s, but the link %s names %s" % (run.show(ble["name"]), u, run.show(name)))
            linkurl.cost(u)
        except (ValueError, BadAddress) as e:
            if isinstance(e, ConfigError):
                raise
            raise _bad("links", "has a bad address: %s" % e)
        out.append(u)
    probe = run.default_probe(every)
    opts = {"links": out, "link": out[0], "device": cfg["device"], "state": cfg["state"],
            "quiet": False}
    return opts, cfg["root"], run.schedule(out, every, jit, probe, every, None, cfg["device"], log_line)


def load(path=CONFIG):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("%s: cannot be read (%s): write one (docs/rover.md)" % (path, e))
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError("%s: is not JSON (%s)" % (path, e))


def _net_links(links):
    return [u for u in links if u.startswith("tcp://") or u.startswith("mqtt")]


def bring_up(cfg, links, log):
    """Wi-Fi before TCP or MQTT links, the UART's pins before a serial one. ConfigError if
    what they need is not there or does not come up."""
    try:
        import network
    except ImportError:
        network = None      # the unix port, a Linux rover: the system has its own network
    wifi = cfg.get("wifi")
    if network is None:
        if wifi is not None:
            log('no network module on this runtime: "wifi" is not used')
    elif _net_links(links):
        if wifi is None:
            raise _bad("wifi", "is required for the link %s: this board joins a network first"
                       % _net_links(links)[0])
        import time
        w = network.WLAN(network.STA_IF)
        w.active(True)
        if not w.isconnected():
            w.connect(wifi["ssid"], wifi["password"])
            fatal = [getattr(network, n, None) for n in _WIFI_FATAL]
            t0 = time.ticks_ms()
            while not w.isconnected():
                st = w.status()
                if st in fatal and st is not None:
                    raise _bad("wifi", "network %s refused us (status %s): check ssid and password"
                               % (run.show(wifi["ssid"]), st))
                if time.ticks_diff(time.ticks_ms(), t0) > _WIFI_WAIT_MS:
                    raise _bad("wifi", "network %s not joined within %d s (status %s)"
                               % (run.show(wifi["ssid"]), _WIFI_WAIT_MS // 1000, st))
                time.sleep_ms(100)
        log("wifi: joined %s" % run.show(wifi["ssid"]))
    uart = cfg.get("uart")
    if uart is not None and [u for u in links if u.startswith("serial:uart")]:
        try:
            from machine import UART
        except ImportError:
            raise _bad("uart", "is set, but this runtime has no machine.UART")
        kw = {"baudrate": uart["baud"]}
        for k in ("tx", "rx"):
            if k in uart:
                kw[k] = uart[k]
        # The pins are set here; the serial port opens UART(id) again with its own buffer
        # and timeout, which keeps them (pins not given are left as they are).
        UART(uart["id"], **kw)
        log("uart%d: %d baud%s" % (uart["id"], uart["baud"],
                                   ", tx %d rx %d" % (uart.get("tx", -1), uart.get("rx", -1)) if "tx" in uart or "rx" in uart else ""))


def prepare(path=CONFIG):
    """Read, check, bring up, take the lock: (opts, root, the run's state) for rover/run_loop.py's
    loop, or an exit status (2 for a bad config, as the command line's)."""
    try:
        cfg = load(path)
        opts, root, st = check(cfg)
        bring_up(cfg, opts["links"], log_line)
        mq = cfg.get("mqtt")
        if mq is not None:
            from rover import link
            link.MQTT_LOGIN = (mq.get("user"), None, mq.get("ca"),
                               mq["password"].encode() if "password" in mq else None)
    except ConfigError as e:
        print(e)
        return 2
    st = run.begin(opts, root, st)
    return st if type(st) is int else (opts, root, st)
