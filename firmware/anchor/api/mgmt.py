"""The management API: HTTP/1.1 over a unix socket, JSON in and out (docs/management.md).
CPython only.

HTTP because operators already have clients for it (`curl --unix-socket`), and a unix
socket because its file permissions decide who is an operator. The HTTP server is aiohttp's
(a maintained parser with limits, on a security surface; docs/decisions.md); restore streams
its answer. The work is done by the services of an anchor.app.App; this module only frames
it onto HTTP.
"""
import asyncio
import json
import logging
import os
import socket
import stat
import struct
from urllib.parse import unquote

from aiohttp import web

from anchor_core import messages as m
from anchor.services.restore import NotInSnapshot, PathError, RestoreError
from anchor.storage.integrity import snapshot_problem
from anchor.storage.trees import TreeError

log = logging.getLogger("anchor.mgmt")

MAX_REQUEST = 16384
RESTORE_TYPE = "application/x-anchor-restore; version=2"
_U32 = struct.Struct(">I")
FAILED = 0xFFFFFFFF     # in a length's place: what follows is a JSON reason, not content


def _failed(why):
    body = json.dumps({"error": why}).encode()
    return _U32.pack(FAILED) + _U32.pack(len(body)) + body



def _text(name):
    # A name that is not UTF-8 is a byte string in the tree; JSON carries it as the text
    # Python's os functions map back to those bytes (surrogateescape, docs/management.md).
    return name.decode("utf-8", "surrogateescape") if type(name) is bytes else name

class ApiError(Exception):
    def __init__(self, status, text):
        Exception.__init__(self, text)
        self.status = status
        self.text = text




class SocketPathBusy(Exception):
    """The management socket path holds something that must not be replaced."""


def clear_stale_socket(path):
    """Removes path only if it is a unix socket nobody answers on (left by an anchor that
    died). Anything else there (a file, a directory, a live socket) is refused, never
    removed: a typo such as --mgmt unix:DATA/catalog.sqlite must not cost the catalog."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathBusy("management socket path %s exists and is not a socket; "
                             "not replacing it (choose another --mgmt path)" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass                      # stale: nobody listens
    except OSError as e:
        raise SocketPathBusy("management socket %s: cannot tell whether it is in use (%s); "
                             "not replacing it" % (path, e))
    else:
        raise SocketPathBusy("management socket %s is in use by another process" % path)
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class MgmtServer:
    """The listening management socket; close() stops it and removes the socket file if
    it is still the one this server made."""

    def __init__(self, runner, path):
        self.runner = runner
        self.path = path
        st = os.lstat(path)
        self._ident = (st.st_dev, st.st_ino)
        self._closing = None

    def _unlink(self):
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except OSError:
            pass

    def close(self):
        """On the event loop's thread: the socket file goes now, the server as soon as the
        loop runs (aclose() waits for that)."""
        self._unlink()
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.runner.cleanup())

    async def aclose(self):
        self.close()
        await self._closing


MAX_FIELD = 8190       # a request line or one header field (aiohttp's default, stated here)


async def start(app, path):
    clear_stale_socket(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    api = Api(app)
    web_app = web.Application(client_max_size=MAX_REQUEST, handler_args={
        "max_line_size": MAX_FIELD, "max_field_size": MAX_FIELD})
    web_app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
    await runner.setup()
    old = os.umask(0o177)   # the socket is the operator's alone (owner read/write)
    try:
        await web.UnixSite(runner, path).start()
    except BaseException:
        await runner.cleanup()
        raise
    finally:
        os.umask(old)
    return MgmtServer(runner, path)


class Api:
    def __init__(self, app):
        self.app = app
        self.catalog = app.catalog

    async def handle(self, request):
        try:
            if request.method not in ("GET", "DELETE", "POST"):
                raise ApiError(405, "only GET, POST and DELETE are supported")
            # Split the raw path, then decode each segment: a %2F inside a device name or a
            # path stays inside its segment.
            raw = request.raw_path.split("?", 1)[0]
            segs = [unquote(x) for x in raw.split("/") if x]
            query = {k: request.query.getall(k)[-1] for k in request.query}
            return await self.route(request.method, segs, query, request)
        except ApiError as e:
            return self._json({"error": e.text}, e.status)
        except Exception as e:
            log.exception("management request failed")
            return self._json({"error": "internal error: %s" % e}, 500)

    @staticmethod
    def _json(obj, status=200):
        body = (json.dumps(obj, indent=None) + "\n").encode()
        return web.Response(body=body, status=status, content_type="application/json")

    # --- routing -----------------------------------------------------------------------

    async def route(self, method, segs, q, request):
        if len(segs) < 2 or segs[0] != "v1":
            raise ApiError(404, "no such endpoint")
        if len(segs) == 4 and segs[1] == "devices" and segs[3] == "pairing":
            if method == "POST":
                return self._json(await self._fleet_pair(self.pair(segs[2])))
            if method == "DELETE":
                return self._json(await self.unpair_everywhere(segs[2]))
        if method == "DELETE":
            if len(segs) == 5 and segs[1] == "devices" and segs[3] == "snapshots":
                dev = self._device(segs[2])
                return self._json(self.forget(dev, self._snapshot(dev, segs[4])))
            raise ApiError(405, "DELETE works on a snapshot only")
        if len(segs) == 4 and segs[1] == "devices" and segs[3] == "prune":
            if method != "POST":
                raise ApiError(405, "prune takes POST")
            from anchor.storage import prune
            dev = self._device(segs[2])
            try:
                args = prune.parse_query(q)
            except ValueError as e:
                raise ApiError(400, str(e))
            a = self.app
            out = prune.prune(a.catalog, a.store, a.trees, a.retention, dev, **args)
            return self._json(dict(out, device=segs[2]))
        if segs[1:] == ["devices"]:
            return self._json(self.catalog.devices())
        if segs[1:] == ["stats"]:
            return self._json(self.stats())
        if segs[1:] == ["verify"]:
            if method == "POST":
                if q.get("repair") != "1":
                    raise ApiError(400, "POST /v1/verify repairs: say repair=1")
                return self._json(self.verify(repair=True))
            return self._json(self.verify())
        if segs[1] == "fleet":
            fleet = self.app.fleet
            if fleet is None:
                raise ApiError(404, "this anchor is not part of a fleet (anchor serve --fleet)")
            if segs[2:] == [] and method == "GET":
                return self._json(fleet.status())
            if len(segs) == 5 and segs[2] == "devices" and segs[4] == "take-over" and method == "POST":
                from anchor.fleet.service import TakeOverError
                try:
                    return self._json(await fleet.take_over(segs[3]))
                except TakeOverError as e:
                    raise ApiError(e.status, e.text)
            if segs[2:] == ["offload"] and method == "POST":
                fleet.offload_now()
                return self._json({"offload": "started", "state": fleet.state})
            raise ApiError(404, "no such endpoint")
        if segs[1:] == ["watch"]:
            return self._json(self.app.watchlist.listing())
        if segs[1] == "devices" and len(segs) >= 4 and segs[3] == "snapshots":
            dev = self._device(segs[2])
            if len(segs) == 4:
                return self._json([self._snap_json(s) for s in self.catalog.snapshots(dev)])
            snap = self._snapshot(dev, segs[4])
            if len(segs) == 5:
                return self._json(self._snap_json(snap))
            if len(segs) == 6 and segs[5] == "tree":
                return self._json(self.ls(snap, q.get("path", ""), q.get("recursive") == "1"))
            if len(segs) == 6 and segs[5] == "restore":
                return await self.restore(request, snap, q.get("path", ""))
        raise ApiError(404, "no such endpoint")

    def _device(self, name):
        dev = self.catalog.device_id(name, create=False)
        if dev is None:
            raise ApiError(404, "no device %r" % name)
        return dev

    def _snapshot(self, dev, which):
        if which == "latest":
            seq = self.catalog.latest(dev)
            if seq is None:
                raise ApiError(404, "device has no snapshots yet")
        else:
            try:
                seq = int(which)
            except ValueError:
                raise ApiError(400, "snapshot must be a number or 'latest'")
        snap = self.catalog.snapshot(dev, seq)
        if snap is None:
            raise ApiError(404, "no snapshot %s" % which)
        return snap

    @staticmethod
    def _snap_json(s):
        return {"id": s["id"], "parent": s["parent"], "time": s["time"], "root": s["root"].hex(),
                "entries": s["entries"], "bytes": s["bytes"], "path": s.get("path"), "host": s.get("host"),
                "tag": s.get("tag")}

    @staticmethod
    def _entry_json(r):
        e = {"path": _text(r[m.REC_PATH]), "type": ("file", "dir", "symlink")[r[m.REC_TYPE]], "size": r[m.REC_SIZE],
             "mtime_ns": r[m.REC_MTIME], "mode": r[m.REC_MODE]}
        if r[m.REC_OID] is not None:
            e["object"] = r[m.REC_OID].hex()
        if r[m.REC_TARGET] is not None:
            e["target"] = _text(r[m.REC_TARGET])
        return e

    def _records(self, snap, prefix):
        """The snapshot's records under `prefix`; a bad or unknown path is an HTTP error."""
        records = self.app.restore.records(snap, prefix)
        try:
            first = next(records, None)
        except PathError as e:
            raise ApiError(400, "bad path: %s" % e)
        except NotInSnapshot as e:
            raise ApiError(404, str(e))
        if first is not None:
            yield first
            yield from records

    def ls(self, snap, prefix, recursive):
        prefix = prefix.strip("/")
        depth = prefix.count("/") + 1 if prefix else 0
        out = []
        for r in self._records(snap, prefix):
            path = _text(r[m.REC_PATH])
            d = path.count("/")
            if recursive or path == prefix or d == depth:
                out.append(self._entry_json(r))
        return out

    async def restore(self, request, snap, prefix):
        """Stream entries (docs/management.md, "Restore stream", version 2): u32 header length
        and JSON header per entry; a file's content follows as frames (u32 length, chunk id,
        bytes) ended by a zero length when whole, or by FAILED and the reason when it cannot
        be read back. A damaged file costs that file alone: the next entry follows. A zero
        header length ends the stream, so a cut connection is never taken for a whole
        restore; FAILED in a header's place says the rest of the snapshot cannot be read."""
        service = self.app.restore
        entries = service.entries(snap, prefix)
        try:
            first = next(entries, None)
        except PathError as e:
            raise ApiError(400, "bad path: %s" % e)
        except NotInSnapshot as e:
            raise ApiError(404, str(e))
        except TreeError as e:
            log.error("restore of snapshot %d refused: %s", snap["id"], e)
            raise ApiError(500, "cannot restore snapshot %d: %s" % (snap["id"], e))
        resp = web.StreamResponse(headers={"Content-Type": RESTORE_TYPE})
        await resp.prepare(request)
        write = resp.write
        in_file = False
        try:
            item = first
            while item is not None:
                r, ids, problem = item
                hdr = json.dumps(self._entry_json(r)).encode()
                await write(_U32.pack(len(hdr)) + hdr)
                if r[m.REC_TYPE] == m.T_FILE:
                    in_file = True
                    if problem is None:
                        try:
                            for cid, b in zip(ids, service.content(r, ids)):
                                await write(_U32.pack(len(b)) + cid)
                                await write(b)
                        except RestoreError as e:
                            problem = e
                    if problem is None:
                        await write(_U32.pack(0))
                    else:
                        log.error("restore of snapshot %d: %s", snap["id"], problem)
                        await write(_failed(problem.why))
                    in_file = False
                item = next(entries, None)
            await write(_U32.pack(0))
        except ConnectionError as e:
            log.info("restore of snapshot %d: the client went away (%s)", snap["id"], e)
            return resp
        except Exception as e:
            # Whatever broke, the client must be told in the stream's own terms: text here
            # that is not a frame would be read as the content of a file.
            log.exception("restore of snapshot %d cut short", snap["id"])
            try:
                if in_file:
                    await write(_failed("the anchor failed while reading it: %s" % e))
                await write(_failed("the rest of snapshot %d cannot be read: %s" % (snap["id"], e)))
            except ConnectionError:
                pass
        return resp

    def forget(self, dev, snap):
        """Remove a snapshot; content only it kept falls back to pass-through data."""
        from anchor.storage.prune import forget
        released, freed = forget(self.catalog, self.app.trees, dev, snap["id"])
        log.info("snapshot %d forgotten; %d chunks back to pass-through", snap["id"], len(released))
        return {"forgotten": snap["id"], "chunks_released": len(released), "tree_freed": freed}

    def pair(self, device):
        """A fresh pairing code for `device` (replacing any earlier pairing)."""
        import os
        from anchor_core import secure
        from anchor_core.messages import check_device, ProtocolError
        try:
            check_device(device)
        except ProtocolError as e:
            raise ApiError(400, e.text)
        from anchor_core import paircode
        code = paircode.make(os.urandom(19))      # 19 symbols of 5 random bits, and a check symbol
        self.catalog.pair(device, secure.code_to_key(code, device))
        return {"device": device, "code": code}

    def unpair(self, device):
        gone = self.app.sessions.revoke(device)
        if not gone:
            raise ApiError(404, "rover %r is not paired" % device)
        return {"device": device, "unpaired": True}

    async def _fleet_pair(self, out):
        """On a fleet anchor, a new pairing goes to the store too, so every anchor of the fleet
        knows the rover. The store away does not undo it here: `fleet` says what happened."""
        fleet = self.app.fleet_pairings
        if fleet is None:
            return out
        device = out["device"]
        secret = self.catalog.pairing_key(device)
        try:
            gen = await asyncio.to_thread(fleet.put_pairing, device, secret)
        except Exception as e:
            fleet.drop(device)
            out["fleet"] = "not published: %s (this anchor alone knows the pairing; pair again to share it)" % e
            return out
        fleet.hold(device, gen)
        out["fleet"] = "published"
        return out

    async def unpair_everywhere(self, device):
        """Unpair here, and on a fleet anchor revoke the pairing in the store so that every
        anchor of the fleet refuses the rover (at its next handshake; open links within the
        poll). 404 only if neither this anchor nor the fleet knew it."""
        fleet = self.app.fleet_pairings
        gone = self.app.sessions.revoke(device)
        if fleet is None:
            if not gone:
                raise ApiError(404, "rover %r is not paired" % device)
            return {"device": device, "unpaired": True}
        fleet.drop(device)
        try:
            n = await asyncio.to_thread(fleet.revoke, device)
        except Exception as e:
            out = {"device": device, "unpaired": gone,
                   "fleet": "not revoked: %s (other anchors of the fleet still serve it; unpair again)" % e}
            if not gone:
                raise ApiError(503, out["fleet"])
            return out
        if not gone and not n:
            raise ApiError(404, "rover %r is not paired here nor in the fleet" % device)
        return {"device": device, "unpaired": True, "fleet": "revoked (%d pairing record%s)" % (n, "" if n == 1 else "s")}

    def verify(self, repair=False):
        """Check everything a restore depends on: every indexed record (CRC, SHA-256), the
        segments' headers and the index, the catalog (SQLite's quick_check), every snapshot's
        tree (read whole and re-hashed against its root) and that every chunk of its files is
        held. With repair, quarantine what is bad and rebuild what can be (ChunkStore.repair);
        the answer describes the store as found, and `repair` what was done. Runs on the
        event loop: sessions wait while it reads."""
        app = self.app
        store = app.store
        found_at_start = list(store.damage) + list(self.catalog.damage)
        r = store.verify()
        segments = store.segment_problems()
        catalog = self.catalog.check()
        damaged = []
        seen = {}
        snapshots = self.catalog.all_snapshots()
        for device, snap in snapshots:
            key = (snap["root"], snap["entries"], snap["bytes"])
            if key not in seen:
                seen[key] = snapshot_problem(self.catalog, app.trees, store, snap)
            if seen[key] is not None:
                damaged.append({"device": device, "snapshot": snap["id"], "error": seen[key]})
        missing = 0
        for cid in self.catalog.live_chunks():
            if not store.has(cid):
                missing += 1
        out = {"chunks": r["chunks"], "bad": r["bad"], "missing": missing, "segments": segments,
               "index": "ok" if not any(p.startswith("index:") for p in segments) else "damaged",
               "catalog": catalog or "ok", "snapshots": len(snapshots), "trees": len(seen),
               "damaged_snapshots": damaged, "damage_at_start": found_at_start,
               "ok": not (r["bad"] or missing or segments or catalog or damaged or self.catalog.damage)}
        if not out["ok"]:
            log.warning("verify: %d bad chunks, %d kept chunks missing, %d segment problems, catalog %s, "
                        "%d damaged snapshots", len(r["bad"]), missing, len(segments), out["catalog"],
                        len(damaged))
        if repair:
            out["repair"] = store.repair(r["bad"])
            lost = self.catalog.acknowledge_loss()
            if lost:
                out["repair"]["catalog"] = "loss acknowledged: " + "; ".join(lost)
            log.warning("verify --repair: %s", out["repair"])
        return out

    def stats(self):
        store = self.app.store.stats()
        r = self.app.retention
        return {"store": store, "link_bytes": self.app.sessions.link_bytes, "devices": self.catalog.counters(),
                "retention": dict(r.totals, capacity=r.capacity), "sessions": self.app.sessions.live_sessions()}
