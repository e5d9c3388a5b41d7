"""`anchor serve --http tcp://HOST:PORT`: a read-only status page and /metrics (CPython only).

The page is drawn on the anchor (HTML, CSS and SVG plots, no script, nothing fetched from
elsewhere), so it works on a LAN with no internet and on a phone; /metrics is Prometheus' text
format from prometheus_client, read from the anchor's state at scrape time. Nothing here
changes anything: management stays on the unix socket. Who may look (docs/management.md,
"Status page"): with --http-token-file, a client that presents the token (a bearer header, or
?token= once, which sets a cookie); without it, clients on loopback and private or link-local
networks only.
"""
import hmac
import html
import ipaddress
import logging
import os
import shutil
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest, CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("anchor.web")

DAY = 86400
PLOT_DAYS = 60             # days a device's plot shows
OVERDUE_MIN = DAY          # a device is overdue past max(this, 2x its usual interval)
USAGE_TTL = 30.0           # seconds the store's class totals are reused (they walk the index)
COOKIE = "anchor_token"
CSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


class LogCounter(logging.Handler):
    """Counts the anchor's warnings and errors: /metrics' anchor_log_messages_total."""

    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)
        self.counts = {"warning": 0, "error": 0}

    def emit(self, record):
        self.counts["error" if record.levelno >= logging.ERROR else "warning"] += 1


LOG_COUNTER = LogCounter()
logging.getLogger("anchor").addHandler(LOG_COUNTER)


def _overdue_after(times):
    """Seconds after its last backup a device counts as overdue: twice its median interval
    over its last backups, never less than a day."""
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    usual = gaps[len(gaps) // 2] if gaps else 0
    return max(OVERDUE_MIN, 2 * usual)


class Status:
    """What the page and /metrics show, gathered from one App."""

    def __init__(self, app):
        self.app = app
        self._usage = None
        self._usage_at = 0.0

    def usage(self, now):
        if self._usage is None or now - self._usage_at > USAGE_TTL:
            live, evictable = self.app.retention.usage()
            cap = self.app.retention.capacity
            free = cap - live if cap is not None else shutil.disk_usage(self.app.data_dir).free
            self._usage = {"pinned": live - evictable, "passthrough": evictable,
                           "free": max(0, free), "capacity": cap}
            self._usage_at = now
        return self._usage

    def gather(self, now=None, days=PLOT_DAYS):
        now = time.time() if now is None else now
        app = self.app
        cat = app.catalog
        counters = cat.counters()
        last = cat.last_backups()
        first_day = int(now // DAY) - days + 1
        daily = cat.daily(first_day)
        devices = []
        for d in cat.devices():
            name = d["device"]
            times = last.get(name, [])
            c = counters.get(name, {})
            at = times[-1] if times else None
            after = _overdue_after(times)
            series = []
            per_day = daily.get(name, {})
            for day in range(first_day, first_day + days):
                v = per_day.get(day, {})
                series.append((day, v.get("link_control", 0) + v.get("link_backup", 0),
                               v.get("supplied_passthrough", 0) + v.get("supplied_backups", 0)
                               + v.get("supplied_uploaded", 0)))
            devices.append({
                "device": name, "snapshots": d["snapshots"], "last_backup": at,
                "age": None if at is None else now - at,
                "overdue": at is None or now - at > after, "overdue_after": after,
                "radio_bytes": c.get("link_control", 0) + c.get("link_backup", 0),
                "plain_bytes": c.get("supplied_passthrough", 0) + c.get("supplied_backups", 0)
                + c.get("supplied_uploaded", 0),
                "relay_bytes": c.get("link_relay", 0), "counters": c, "days": series})
        links = [cl.health() for cl in app.sessions.channel_links.values()]
        return {"time": now, "devices": devices, "store": self.usage(now), "links": links,
                "tcp": dict(app.sessions.link_bytes), "open_links": len(app.sessions.streams),
                "sessions_total": app.sessions.sessions_total,
                "watch": app.watchlist.listing(), "log": dict(LOG_COUNTER.counts)}


# --- the page --------------------------------------------------------------------------------

def size(n):
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1000.0


def ago(seconds):
    if seconds is None:
        return "never"
    s = int(seconds)
    for unit, n in (("d", DAY), ("h", 3600), ("min", 60)):
        if s >= n:
            return "%d %s ago" % (s // n, unit)
    return "%d s ago" % s


def plot(series, label):
    """Bars per day: what a plain upload would have sent (light) and what the radio carried
    (dark), on one scale; an SVG drawn here, no script."""
    w, h, pad = 600, 120, 4
    top = max([p for _, _, p in series] + [r for _, r, _ in series] + [1])
    bw = (w - 2 * pad) / float(len(series))
    bars = []
    for i, (day, radio, plain) in enumerate(series):
        x = pad + i * bw
        for cls, v in (("plain", plain), ("radio", radio)):
            if v:
                bh = max(1.0, (h - 2 * pad) * v / float(top))
                bars.append('<rect class="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f">'
                            '<title>%s: %s %s</title></rect>'
                            % (cls, x, h - pad - bh, max(1.0, bw - 1), bh,
                               time.strftime("%Y-%m-%d", time.gmtime(day * DAY)),
                               "plain upload" if cls == "plain" else "radio", size(v)))
    return ('<svg class="plot" viewBox="0 0 %d %d" role="img" aria-label="%s">'
            '<line class="axis" x1="0" y1="%d" x2="%d" y2="%d"/>%s</svg>'
            % (w, h, html.escape(label), h - pad, w, h - pad, "".join(bars)))


def render(st):
    e = html.escape
    out = ['<!doctype html><html lang="en"><head><meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           '<title>Anchor status</title><link rel="stylesheet" href="style.css"></head><body>'
           '<header><h1>Anchor</h1><p>%s &middot; %d link%s open &middot; %d sessions since start</p></header>'
           % (e(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(st["time"]))), st["open_links"],
              "" if st["open_links"] == 1 else "s", st["sessions_total"])]
    out.append('<section><h2>Devices</h2>')
    if not st["devices"]:
        out.append('<p class="none">No device has backed up yet.</p>')
    for d in st["devices"]:
        saved = d["plain_bytes"] - d["radio_bytes"]
        out.append(
            '<article class="device%s" id="device-%s"><h3>%s</h3>'
            '<p class="last">Last backup: <b>%s</b>%s &middot; %d snapshot%s</p>'
            '<dl><dt>Radio bytes for backups</dt><dd class="radio-bytes">%s</dd>'
            '<dt>A plain upload would have sent</dt><dd class="plain-bytes">%s</dd>'
            '<dt>Saved</dt><dd class="saved">%s</dd><dt>Relayed through</dt><dd>%s</dd></dl>'
            '%s<p class="legend"><span class="key plain"></span>plain upload '
            '<span class="key radio"></span>radio, per day (last %d days)</p></article>'
            % (" overdue" if d["overdue"] else "", e(d["device"]), e(d["device"]), ago(d["age"]),
               ' <span class="flag">overdue</span>' if d["overdue"] else "", d["snapshots"],
               "" if d["snapshots"] == 1 else "s", size(d["radio_bytes"]), size(d["plain_bytes"]),
               size(max(0, saved)), size(d["relay_bytes"]),
               plot(d["days"], "radio and plain-upload bytes per day for %s" % d["device"]), len(d["days"])))
    out.append('</section>')
    s = st["store"]
    total = float(max(1, s["pinned"] + s["passthrough"] + s["free"]))
    out.append('<section><h2>Store</h2><div class="bar">')
    for cls, label in (("pinned", "kept by snapshots"), ("passthrough", "pass-through"), ("free", "free")):
        # Widths by class (.w0-.w100 in the style sheet): the CSP allows no inline style.
        out.append('<span class="%s w%d" title="%s"></span>' % (cls, round(100 * s[cls] / total), label))
    out.append('</div><dl class="store"><dt>Kept by snapshots</dt><dd class="store-pinned">%s</dd>'
               '<dt>Pass-through</dt><dd class="store-passthrough">%s</dd><dt>%s</dt><dd class="store-free">%s</dd></dl>'
               '</section>' % (size(s["pinned"]), size(s["passthrough"]),
                               "Free of the budget" if s["capacity"] is not None else "Free on the disk",
                               size(s["free"])))
    out.append('<section><h2>Links</h2><table><tr><th>Link</th><th>Up</th><th>Sent</th>'
               '<th>Resent</th><th>Goodput</th></tr>')
    out.append('<tr><td>tcp</td><td>-</td><td>%s</td><td>-</td><td>-</td></tr>' % size(st["tcp"]["tx"]))
    for ln in st["links"]:
        out.append('<tr><td>%s</td><td>%s</td><td>%s</td><td>%d</td><td>%s</td></tr>'
                   % (e(ln["link"]), "yes" if ln["up"] else "no", size(ln["bytes_sent"]), ln["retransmits"],
                      "-" if ln["goodput"] is None else "%.1f%%" % (100 * ln["goodput"])))
    out.append('</table></section><section><h2>Watch list</h2>')
    if not st["watch"]:
        out.append('<p class="none">Nothing is waiting to pass through.</p>')
    else:
        out.append('<table><tr><th>Device</th><th>Path</th><th>Time left</th></tr>')
        for w in st["watch"]:
            out.append('<tr><td>%s</td><td>%s</td><td>%d s</td></tr>'
                       % (e(str(w.get("device"))), e(str(w.get("path"))), w.get("seconds_left", 0)))
        out.append('</table>')
    out.append('</section><footer>Warnings logged: %d &middot; errors: %d &middot; <a href="metrics">metrics</a>'
               '</footer></body></html>' % (st["log"]["warning"], st["log"]["error"]))
    return "".join(out)


STYLE = """body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:52rem;padding:.5rem 1rem;color:#1b2430;background:#fbfcfd}
h1{margin:.2rem 0;font-size:1.5rem}header p{margin:0;color:#566}h2{font-size:1.15rem;border-bottom:1px solid #dde;margin-top:1.4rem}
h3{margin:.2rem 0}.device{border:1px solid #dde;border-radius:6px;padding:.6rem;margin:.6rem 0;background:#fff}
.device.overdue{border-color:#c62}.flag{background:#c62;color:#fff;border-radius:3px;padding:0 .3rem;font-size:.85em}
dl{display:grid;grid-template-columns:auto auto;gap:.1rem 1rem;margin:.4rem 0}dt{color:#566}dd{margin:0;font-variant-numeric:tabular-nums}
.plot{width:100%;height:auto;display:block}.plot .plain{fill:#b9cde4}.plot .radio{fill:#1f4e8c}.plot .axis{stroke:#99a}
.legend{font-size:.85em;color:#566}.key{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 .8em}.key.plain{background:#b9cde4}.key.radio{background:#1f4e8c}
.bar{display:flex;height:1.2rem;border-radius:4px;overflow:hidden;background:#eee}.bar .pinned{background:#1f4e8c}.bar .passthrough{background:#6fa0d8}.bar .free{background:#e4e8ee}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.2rem .4rem;border-bottom:1px solid #eef}
.none{color:#566}footer{margin:1.5rem 0;color:#566;font-size:.85em}
""" + "".join(".w%d{width:%d%%}" % (i, i) for i in range(101))


# --- /metrics ----------------------------------------------------------------------------------

class Collector:
    def __init__(self, status):
        self.status = status

    def collect(self):
        st = self.status.gather(days=1)
        yield GaugeMetricFamily("anchor_devices", "Devices the anchor knows", value=len(st["devices"]))
        by_purpose = CounterMetricFamily("anchor_link_bytes", "Rover-link frame bytes by device and purpose",
                                         labels=["device", "purpose"])
        by_source = CounterMetricFamily("anchor_backup_content_bytes",
                                        "Content of backed-up files by where the anchor got it",
                                        labels=["device", "source"])
        last = GaugeMetricFamily("anchor_last_backup_timestamp_seconds", "Time of the device's latest snapshot",
                                 labels=["device"])
        overdue = GaugeMetricFamily("anchor_backup_overdue", "1 if the device's backup is overdue",
                                    labels=["device"])
        backups = CounterMetricFamily("anchor_backups", "Committed backups", labels=["device"])
        relay = CounterMetricFamily("anchor_relay_bytes", "Bytes relayed for the device", labels=["device", "direction"])
        errors = CounterMetricFamily("anchor_device_errors", "Per-device failures", labels=["device", "kind"])
        for d in st["devices"]:
            c, n = d["counters"], d["device"]
            for purpose in ("control", "backup", "relay"):
                by_purpose.add_metric([n, purpose], c.get("link_" + purpose, 0))
            for src in ("passthrough", "backups", "uploaded"):
                by_source.add_metric([n, src], c.get("supplied_" + src, 0))
            if d["last_backup"] is not None:
                last.add_metric([n], d["last_backup"])
            overdue.add_metric([n], 1 if d["overdue"] else 0)
            backups.add_metric([n], c.get("backups", 0))
            relay.add_metric([n, "down"], c.get("relay_down_bytes", 0))
            relay.add_metric([n, "up"], c.get("relay_up_bytes", 0))
            errors.add_metric([n, "relay"], c.get("relay_failures", 0))
            errors.add_metric([n, "watch_expired"], c.get("watch_expired", 0))
        for m in (by_purpose, by_source, last, overdue, backups, relay, errors):
            yield m
        store = GaugeMetricFamily("anchor_store_bytes", "Store bytes by class", labels=["class"])
        for cls in ("pinned", "passthrough", "free"):
            store.add_metric([cls], st["store"][cls])
        yield store
        yield GaugeMetricFamily("anchor_open_links", "Rover links open now", value=st["open_links"])
        yield CounterMetricFamily("anchor_sessions", "Rover sessions since start", value=st["sessions_total"])
        logs = CounterMetricFamily("anchor_log_messages", "Warnings and errors logged", labels=["level"])
        for level, v in st["log"].items():
            logs.add_metric([level], v)
        yield logs
        lp = CounterMetricFamily("anchor_channel_packets", "Channel packets by link and kind", labels=["link", "kind"])
        for ln in st["links"]:
            lp.add_metric([ln["link"], "sent"], ln["packets_sent"])
            lp.add_metric([ln["link"], "retransmitted"], ln["retransmits"])
            lp.add_metric([ln["link"], "received"], ln["packets_received"])
            lp.add_metric([ln["link"], "dropped"], ln["dropped"])
        yield lp
        yield GaugeMetricFamily("anchor_watch_items", "Objects on the watch list", value=len(st["watch"]))
        fleet = self.status.app.fleet
        if fleet is not None:
            f = fleet.status()
            yield GaugeMetricFamily("anchor_fleet_offloaded_chunks", "Chunks safely in the fleet store",
                                    value=f["offloaded"]["chunks"])
            yield GaugeMetricFamily("anchor_fleet_pending_snapshots", "Committed snapshots not yet in the fleet store",
                                    value=f["pending"]["snapshots"])
            yield GaugeMetricFamily("anchor_fleet_store_ok", "0 if the last offload pass failed (see anchorctl fleet)",
                                    value=0 if f["last_error"] else 1)
            yield GaugeMetricFamily("anchor_fleet_last_pass_timestamp_seconds", "End of the last offload pass",
                                    value=f["last_pass"] or 0)
            yield CounterMetricFamily("anchor_fleet_chunk_reads", "Chunks read from the fleet store",
                                      value=f["read_from_store"])


# --- the server --------------------------------------------------------------------------------

def allowed_without_token(peer):
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_private or ip.is_link_local


def read_token(path):
    """The token file's first line; refused if empty or readable by others."""
    try:
        st = os.stat(path)
        with open(path) as f:
            token = f.readline().strip()
    except OSError as e:
        raise ValueError("%s: cannot read it (%s)" % (path, e.strerror or e))
    if len(token) < 16:
        raise ValueError("%s: the token must be at least 16 characters" % path)
    if st.st_mode & 0o077:
        raise ValueError("%s: readable by other users (chmod 600 it)" % path)
    return token


class StatusServer:
    def __init__(self, app, token=None):
        self.status = Status(app)
        self.token = token
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(self.status))
        self.runner = None
        self.port = None

    @web.middleware
    async def guard(self, request, handler):
        headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="read only\n", headers=headers)
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            given = given[7:] if given.startswith("Bearer ") else request.cookies.get(COOKIE) or request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return web.Response(status=401, text="a token is needed (docs/management.md)\n",
                                    headers=dict(headers, **{"WWW-Authenticate": "Bearer"}))
        elif not allowed_without_token(request.remote or ""):
            return web.Response(status=403, text="only the local network may look without a token\n", headers=headers)
        resp = await handler(request)
        resp.headers.update(headers)
        if self.token is not None and request.query.get("token"):
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
        return resp

    async def page(self, request):
        return web.Response(text=render(self.status.gather()), content_type="text/html")

    async def style(self, request):
        return web.Response(text=STYLE, content_type="text/css")

    async def metrics(self, request):
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, host, port):
        app = web.Application(middlewares=[self.guard])
        app.router.add_get("/", self.page)
        app.router.add_get("/style.css", self.style)
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except BaseException:
            await self.runner.cleanup()
            raise
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("status page on http://%s:%d/ (%s)", host, self.port,
                 "token required" if self.token else "local network only")
        return self

    async def aclose(self):
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def close(self):
        import asyncio
        if self.runner is not None:
            asyncio.ensure_future(self.aclose())
