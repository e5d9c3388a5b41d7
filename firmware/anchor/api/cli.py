"""`anchor serve`: the gateway daemon's command line (CPython only).

Options come from flags and, with --config, a TOML file (anchor/api/config.py; a flag wins).
Run by systemd (hw/anchor.service) it tells the service manager when it is ready, pings its
watchdog from the event loop and logs for journald; SIGTERM and SIGINT stop it cleanly.
"""
import argparse
import asyncio
import logging
import os
import signal
import sys

from anchor_core import linkurl

DEFAULT_DATA = "./var/anchor"
DEFAULT_LISTEN = "tcp://127.0.0.1:7420"


# Addresses follow the one grammar of anchor_core/linkurl.py; each takes ValueError for a bad one.

def parse_tcp(url):
    """--listen, --proxy: tcp://HOST:PORT; port 0 picks a free one."""
    host, port, _ = linkurl.host_port(url, "tcp", True)
    return host, port


def parse_mqtt(url):
    """--broker: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS."""
    from anchor.broker import Broker
    b = Broker.parse(url)
    return b.host, b.port


def parse_serial(spec):
    """--serial DEVICE[:BAUD] (or a whole serial: address) -> (device, baud)."""
    device, baud, _ = linkurl.serial(spec if spec.startswith("serial:") else "serial:" + spec, "serial")
    return device, baud


def parse_unix(url):
    return linkurl.unix(url, "management address")


def parse_seconds(value):
    if not value > 0:
        raise ValueError("%r: expected a number of seconds above 0" % (value,))
    return value


def _size(text):
    from anchor.storage.retention import parse_size
    return parse_size(text)


def _token(path):
    from anchor.api.web import read_token
    return read_token(path)


# Values checked after the file and the flags are merged, so an error can say where the value
# came from: (key, parse). A list (--serial) is checked item by item.
CHECKS = (("listen", parse_tcp), ("mgmt", parse_unix), ("broker", parse_mqtt), ("proxy", parse_tcp),
          ("serial", parse_serial), ("capacity", _size), ("spool-max", _size),
          ("relay-timeout", parse_seconds), ("http", parse_tcp), ("http-token-file", _token),
          ("fleet-rate", _size), ("fleet-interval", parse_seconds))


def build_parser():
    """(the whole parser, the serve subparser). No abbreviated flags: the config layer must
    see exactly which options the command line gave."""
    ap = argparse.ArgumentParser(prog="anchor", description="Anchor gateway daemon", allow_abbrev=False)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="serve rover links and the management API", allow_abbrev=False)
    sp.add_argument("--config", default=None, metavar="FILE",
                    help="read options from this TOML file, keys named as these flags "
                         "(docs/configuration.md); a flag given here wins over the file")
    sp.add_argument("--data", default=DEFAULT_DATA, help="data directory (default %(default)s)")
    sp.add_argument("--listen", default=DEFAULT_LISTEN, help="rover link, tcp://HOST:PORT (default %(default)s; port 0 picks one)")
    sp.add_argument("--mgmt", default=None, help="management socket, unix:PATH (default unix:DATA/mgmt.sock)")
    sp.add_argument("--broker", default=None, help="MQTT broker for relayed publishes and for rovers that link over MQTT "
                    "(topics anchor/v1/DEVICE/up and /down), mqtt://HOST:PORT (default: none)")
    sp.add_argument("--broker-ca", default=None, metavar="FILE",
                    help="with a mqtts:// broker: the CA certificate (PEM) its certificate must chain to "
                         "(default: the system's CAs); its host name is checked either way")
    sp.add_argument("--broker-user", default=None, metavar="NAME", help="user name to log in to the broker with")
    sp.add_argument("--broker-password-file", default=None, metavar="FILE",
                    help="a file whose first line is the broker password (never on the command line)")
    sp.add_argument("--no-mqtt-links", action="store_true", help="use the broker for relayed publishes only")
    sp.add_argument("--serial", action="append", default=[], metavar="DEVICE[:BAUD]",
                    help="serve rovers on a serial line (UART radio modem, USB serial); repeatable; "
                         "reopened when it vanishes and comes back (default baud 115200)")
    sp.add_argument("--ble", action="store_true", help="scan for BLE rovers and connect (BlueZ, via bleak)")
    sp.add_argument("--ble-allow", action="append", default=[], metavar="ADDRESS_OR_NAME",
                    help="with --ble: only these rovers (repeatable; default: any advertising the Anchor service)")
    sp.add_argument("--proxy", default=None, help="HTTP forward proxy for rovers with IP, tcp://HOST:PORT (default: off; port 0 picks one)")
    sp.add_argument("--http", default=None,
                    help="status page and /metrics, tcp://HOST:PORT (default: off); without --http-token-file "
                         "only loopback and private or link-local networks may look")
    sp.add_argument("--http-token-file", default=None, metavar="FILE",
                    help="with --http: a file (mode 0600) whose first line is the token a client must present")
    sp.add_argument("--open", action="store_true",
                    help="also serve rovers that are not paired, unauthenticated and unencrypted "
                         "(a lab or test bench only; by default only paired rovers get anything)")
    sp.add_argument("--no-capture", action="store_true", help=argparse.SUPPRESS)  # measurement only: relay without keeping bodies
    sp.add_argument("--capacity", default=None,
                    help="flash budget for the store, e.g. 20G or 500M: pass-through data is evicted "
                         "least recently used first beyond it (default: no limit)")
    sp.add_argument("--spool-max", default="1G",
                    help="bytes of relayed bodies held at once while they pass (default %(default)s); past it, "
                         "or within 256 MiB of a full disk, a body passes without being kept")
    sp.add_argument("--fleet", default=None, metavar="s3://BUCKET",
                    help="share this anchor's backups with the other anchors of a fleet through this "
                         "S3 bucket (docs/fleet.md); needs --fleet-endpoint and --fleet-key-file")
    sp.add_argument("--fleet-endpoint", default=None, metavar="URL", help="the S3 store's address, e.g. https://s3.example.net")
    sp.add_argument("--fleet-key-file", default=None, metavar="FILE",
                    help="the fleet key (mode 0600; `anchorctl fleet new-key FILE` makes one, every anchor of the fleet gets a copy)")
    sp.add_argument("--fleet-credentials-file", default=None, metavar="FILE",
                    help="TOML with access_key and secret_key for the store (default: AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY from the environment; never on the command line)")
    sp.add_argument("--fleet-rate", default=None, metavar="BYTES",
                    help="offload at most this many bytes a second on average, e.g. 500K (default: no limit)")
    sp.add_argument("--fleet-window", default=None, metavar="HH:MM-HH:MM",
                    help="offload only in this local time window, when the uplink is cheap (default: any time; "
                         "`anchorctl fleet offload` starts a pass at once)")
    sp.add_argument("--fleet-captures", default="all", choices=("all", "no-recipe", "none"),
                    help="relayed bodies offloaded too: all (default), no-recipe (only those that cannot be fetched "
                         "from their origin again: uploads, publishes), or none")
    sp.add_argument("--fleet-pack-bytes", type=int, default=None, help=argparse.SUPPRESS)  # tests: small packs
    sp.add_argument("--fleet-pairing-poll", type=float, default=300.0, help=argparse.SUPPRESS)  # tests: quick polls
    sp.add_argument("--fleet-interval", type=float, default=300.0,
                    help="seconds between offload passes (default %(default)s)")
    sp.add_argument("--relay-timeout", type=float, default=30.0, help="seconds to wait on an origin or broker (default %(default)s)")
    sp.add_argument("--ready-file", default=None, help="write the bound port here once listening (for scripts)")
    sp.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    return ap, sp


def _journal():
    """True when stderr is the journal (systemd sets JOURNAL_STREAM to its device:inode)."""
    want = os.environ.get("JOURNAL_STREAM")
    if not want:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return want == "%d:%d" % (st.st_dev, st.st_ino)


class JournalFormatter(logging.Formatter):
    """One journal entry per event: the syslog level as a <N> prefix (systemd reads it and
    strips it), no timestamp (journald keeps its own), a traceback folded onto the same line."""

    PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def format(self, record):
        text = logging.Formatter.format(self, record)
        prio = next((p for level, p in self.PRIORITY if record.levelno >= level), 7)
        return "<%d>%s" % (prio, " | ".join(line for line in text.splitlines() if line.strip()))


def setup_logging(verbose, journal):
    handler = logging.StreamHandler(sys.stderr)
    if journal:
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def options(argv):
    """Parsed and checked options: (args, None) or (None, a one-line error). The file's
    values fill what the command line did not give; every value is checked here, before
    anything is opened, and an error names the flag or the file and key it came from."""
    from anchor.api import config
    ap, sp = build_parser()
    args = ap.parse_args(argv)
    from_file = set()
    if args.config:
        try:
            values = config.load(args.config, sp)
        except config.ConfigError as e:
            return None, str(e)
        given = config.given(sp, argv if argv is not None else sys.argv[1:])
        for dest, value in values.items():
            if dest not in given:
                setattr(args, dest, value)
                from_file.add(dest)
    for key, parse in CHECKS:
        dest = key.replace("-", "_")
        value = getattr(args, dest)
        if value is None:
            continue
        try:
            for v in value if isinstance(value, list) else (value,):
                parse(v)
        except ValueError as e:
            if dest in from_file:
                return None, "%s: key %s: %s" % (args.config, key, e)
            sp.error("--%s: %s" % (key, e))
    return args, None


def main(argv=None):
    args, err = options(argv)
    if err:
        print("anchor: %s" % err, file=sys.stderr, flush=True)
        return 2
    journal = _journal()
    setup_logging(args.verbose, journal)
    log = logging.getLogger("anchor")
    from anchor.notify import Notifier
    notifier = Notifier()
    # Run by a service manager: the journal gets one log line, not the help text below.
    service = journal or notifier.active

    host, port = parse_tcp(args.listen)
    mgmt = parse_unix(args.mgmt) if args.mgmt else os.path.join(args.data, "mgmt.sock")
    broker = None
    if args.broker:
        from anchor.broker import Broker
        try:
            broker = Broker.parse(args.broker, args.broker_ca, args.broker_user, args.broker_password_file)
        except ValueError as e:
            print("anchor: %s" % e, file=sys.stderr, flush=True)
            return 2
    elif args.broker_ca or args.broker_user or args.broker_password_file:
        print("anchor: --broker-ca, --broker-user and --broker-password-file need --broker", file=sys.stderr, flush=True)
        return 2
    proxy = parse_tcp(args.proxy) if args.proxy else None
    serial = [parse_serial(d) for d in args.serial]
    capacity = _size(args.capacity) if args.capacity else None
    spool_max = _size(args.spool_max)
    http = parse_tcp(args.http) if args.http else None
    http_token = _token(args.http_token_file) if args.http_token_file else None
    fleet = None
    if args.fleet or args.fleet_endpoint or args.fleet_key_file:
        from anchor.fleet.service import FleetConfig, FleetConfigError
        try:
            fleet = FleetConfig(args.fleet, args.fleet_endpoint, args.fleet_key_file, args.fleet_credentials_file,
                                rate=_size(args.fleet_rate) if args.fleet_rate else None,
                                window=args.fleet_window, interval=args.fleet_interval,
                                captures=args.fleet_captures, pack_bytes=args.fleet_pack_bytes,
                                pairing_poll=args.fleet_pairing_poll)
        except FleetConfigError as e:
            print("anchor: %s" % e, file=sys.stderr, flush=True)
            return 2

    from anchor.app import App
    from anchor.daemon import BindError, serve
    from anchor.datalock import DataDirBusy
    from anchor.api.mgmt import SocketPathBusy, clear_stale_socket
    notifier.status("starting: opening the store in %s" % os.path.abspath(args.data))
    try:
        clear_stale_socket(mgmt)     # before the data is opened: a taken path changes nothing
        app = App(args.data, broker=broker, relay_timeout=args.relay_timeout, capture=not args.no_capture,
                  capacity=capacity, open=args.open, spool_max=spool_max, fleet=fleet)
    except (DataDirBusy, SocketPathBusy) as e:
        print("anchor: %s" % e, file=sys.stderr, flush=True)
        return 2

    def ready(bound, proxy_bound=None):
        app.lock.describe("anchor serve, rovers on tcp://%s:%d, management on unix:%s"
                          % (host, bound, os.path.abspath(mgmt)))
        if args.ready_file:
            tmp = args.ready_file + ".tmp"
            with open(tmp, "w") as f:
                f.write("%d\n" % bound)
            os.rename(tmp, args.ready_file)
        if service:
            return
        print("anchor: data in %s" % app.data_dir, flush=True)
        print("anchor: rovers connect to tcp://%s:%d, e.g.\n"
              "    .venv/bin/rover --link tcp://%s:%d --device my-rover --state ./var/rover-state backup ROOT\n"
              "    tools/rover-mpy --link tcp://%s:%d --device my-rover --state ./var/rover-state backup ROOT"
              % (host, bound, host, bound, host, bound), flush=True)
        print("anchor: operators use  ANCHOR=unix:%s .venv/bin/anchorctl devices" % os.path.abspath(mgmt), flush=True)
        if proxy_bound is not None:
            print("anchor: HTTP proxy on tcp://%s:%d; a device authenticates with its pairing secret, e.g.\n"
                  "    curl -x http://my-rover:$(xxd -p -c32 STATE/pairing.key)@%s:%d http://example.org/"
                  % (proxy[0], proxy_bound, proxy[0], proxy_bound), flush=True)
        if app.open:
            print("anchor: OPEN: rovers that are not paired are served too, unauthenticated and "
                  "unencrypted (--open; a lab or test bench only)", flush=True)
        else:
            print("anchor: only paired rovers are served:  anchorctl pair DEVICE  prints the code "
                  "for  rover ... pair CODE", flush=True)
        if not app.capturing:
            print("anchor: capture is OFF (--no-capture): for measurement only", flush=True)

    caught = []

    async def run():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(sig):
            if not caught:
                log.info("%s: stopping", signal.Signals(sig).name)
            caught.append(sig)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        links = {"serial": serial, "mqtt_links": bool(broker) and not args.no_mqtt_links,
                 "ble": args.ble_allow if args.ble else None}
        return await serve(app, host, port, mgmt, ready, proxy, links, notifier=notifier, stop=stop,
                           http=http, http_token=http_token)

    status = 0
    closed = 0
    try:
        closed = asyncio.run(run())
    except KeyboardInterrupt:
        caught.append(signal.SIGINT)     # before the loop took the signal over
    except (SocketPathBusy, BindError) as e:
        print("anchor: %s" % e, file=sys.stderr, flush=True)
        status = 2
    finally:
        app.close()
    if caught:
        log.info("stopped on %s: %d link%s closed, store flushed and closed", signal.Signals(caught[0]).name,
                 closed, "" if closed == 1 else "s")
    notifier.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
