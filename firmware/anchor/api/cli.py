"""`anchor serve`: the gateway daemon's command line."""
import argparse
import asyncio
import logging
import os
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
    host, port, _ = linkurl.host_port(url, "mqtt", False, "broker")
    return host, port


def parse_serial(spec):
    """--serial DEVICE[:BAUD] (or a whole serial: address) -> (device, baud)."""
    device, baud, _ = linkurl.serial(spec if spec.startswith("serial:") else "serial:" + spec, "serial")
    return device, baud


def parse_unix(url):
    return linkurl.unix(url, "management address")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="anchor", description="Anchor gateway daemon")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="serve rover links and the management API")
    sp.add_argument("--data", default=DEFAULT_DATA, help="data directory (default %(default)s)")
    sp.add_argument("--listen", default=DEFAULT_LISTEN, help="rover link, tcp://HOST:PORT (default %(default)s; port 0 picks one)")
    sp.add_argument("--mgmt", default=None, help="management socket, unix:PATH (default unix:DATA/mgmt.sock)")
    sp.add_argument("--broker", default=None, help="MQTT broker for relayed publishes and for rovers that link over MQTT "
                    "(topics anchor/v1/DEVICE/up and /down), mqtt://HOST:PORT (default: none)")
    sp.add_argument("--no-mqtt-links", action="store_true", help="use the broker for relayed publishes only")
    sp.add_argument("--serial", action="append", default=[], metavar="DEVICE[:BAUD]",
                    help="serve rovers on a serial line (UART radio modem, USB serial); repeatable; "
                         "reopened when it vanishes and comes back (default baud 115200)")
    sp.add_argument("--ble", action="store_true", help="scan for BLE rovers and connect (BlueZ, via bleak)")
    sp.add_argument("--ble-allow", action="append", default=[], metavar="ADDRESS_OR_NAME",
                    help="with --ble: only these rovers (repeatable; default: any advertising the Anchor service)")
    sp.add_argument("--proxy", default=None, help="HTTP forward proxy for rovers with IP, tcp://HOST:PORT (default: off; port 0 picks one)")
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
    sp.add_argument("--relay-timeout", type=float, default=30.0, help="seconds to wait on an origin or broker (default %(default)s)")
    sp.add_argument("--ready-file", default=None, help="write the bound port here once listening (for scripts)")
    sp.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        host, port = parse_tcp(args.listen)
        mgmt = parse_unix(args.mgmt) if args.mgmt else os.path.join(args.data, "mgmt.sock")
        broker = parse_mqtt(args.broker) if args.broker else None
        proxy = parse_tcp(args.proxy) if args.proxy else None
        serial = [parse_serial(d) for d in args.serial]
    except ValueError as e:
        ap.error(str(e))

    from anchor.app import App
    from anchor.daemon import serve

    from anchor.storage.retention import parse_size
    try:
        capacity = parse_size(args.capacity) if args.capacity else None
    except ValueError as e:
        ap.error(str(e))
    try:
        spool_max = parse_size(args.spool_max)
    except ValueError:
        ap.error("--spool-max %r: expected a size like 256M, 1G or a number of bytes" % args.spool_max)
    from anchor.datalock import DataDirBusy
    from anchor.api.mgmt import SocketPathBusy, clear_stale_socket
    try:
        clear_stale_socket(mgmt)     # before the data is opened: a taken path changes nothing
        app = App(args.data, broker=broker, relay_timeout=args.relay_timeout, capture=not args.no_capture,
                  capacity=capacity, open=args.open, spool_max=spool_max)
    except (DataDirBusy, SocketPathBusy) as e:
        print("anchor: %s" % e, file=sys.stderr, flush=True)
        return 2

    def ready(bound, proxy_bound=None):
        app.lock.describe("anchor serve, rovers on tcp://%s:%d, management on unix:%s"
                          % (host, bound, os.path.abspath(mgmt)))
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
        if args.ready_file:
            tmp = args.ready_file + ".tmp"
            with open(tmp, "w") as f:
                f.write("%d\n" % bound)
            os.rename(tmp, args.ready_file)

    try:
        links = {"serial": serial, "mqtt_links": bool(broker) and not args.no_mqtt_links,
                 "ble": args.ble_allow if args.ble else None}
        asyncio.run(serve(app, host, port, mgmt, ready, proxy, links))
    except KeyboardInterrupt:
        pass
    except SocketPathBusy as e:
        print("anchor: %s" % e, file=sys.stderr, flush=True)
        return 2
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
