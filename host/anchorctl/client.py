"""Library API over the anchor's management socket; `anchorctl` is a thin shell over it."""
import contextlib
import http.client
import json
import os
import socket
import struct
from urllib.parse import quote, urlencode

from anchorctl.errors import AnchorError
from anchorctl.restore import FileFailed, Restorer

ENV = "ANCHOR"
DEFAULT = "unix:./var/anchor/mgmt.sock"
RESTORE_TYPE = "application/x-anchor-restore; version=2"
FAILED = 0xFFFFFFFF
MAX_CHUNK = 65536


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=120):
        http.client.HTTPConnection.__init__(self, "anchor", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.unix_path)
        except OSError as e:
            s.close()
            raise AnchorError("cannot reach the anchor at unix:%s: %s" % (self.unix_path, e))
        self.sock = s


def resolve(address=None):
    from anchor_core import linkurl
    address = address or os.environ.get(ENV) or DEFAULT
    try:
        return linkurl.unix(address, "anchor address")
    except ValueError as e:
        raise AnchorError(str(e))


class Client:
    def __init__(self, address=None):
        self.path = resolve(address)

    def _get(self, path, params=None, method="GET"):
        conn = _UnixHTTPConnection(self.path)
        url = path + ("?" + urlencode(params) if params else "")
        try:
            conn.request(method, url)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise AnchorError("anchor at unix:%s: %s" % (self.path, e))
        if resp.status != 200:
            body = resp.read()
            conn.close()
            try:
                msg = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                msg = body.decode(errors="replace")
            raise AnchorError(msg)
        return conn, resp

    def _json(self, path, params=None):
        conn, resp = self._get(path, params)
        try:
            return json.loads(resp.read())
        finally:
            conn.close()

    @staticmethod
    def _dev(device):
        return "/v1/devices/" + quote(device, safe="")

    def devices(self):
        return self._json("/v1/devices")

    def snapshots(self, device):
        return self._json(self._dev(device) + "/snapshots")

    def ls(self, device, snapshot="latest", path="", recursive=False):
        params = {"path": path}
        if recursive:
            params["recursive"] = "1"
        return self._json("%s/snapshots/%s/tree" % (self._dev(device), snapshot), params)

    def stats(self):
        return self._json("/v1/stats")

    def forget(self, device, snapshot):
        """Remove one snapshot; what only it kept falls back to pass-through data."""
        conn, resp = self._get("%s/snapshots/%s" % (self._dev(device), snapshot), method="DELETE")
        try:
            return json.loads(resp.read())
        finally:
            conn.close()

    def prune(self, device, keep_last=None, keep_daily=None, keep_weekly=None, dry_run=False):
        """Apply snapshot retention rules to a device: keep the newest keep_last, the newest
        of each of the last keep_daily days and keep_weekly weeks (UTC), and the latest;
        forget the rest. Returns {"keep", "forget", "chunks_released", "bytes_released",
        "evicted_chunks", "evicted_bytes", "dry_run"}."""
        params = {}
        for name, n in (("keep_last", keep_last), ("keep_daily", keep_daily), ("keep_weekly", keep_weekly)):
            if n is not None:
                params[name] = str(n)
        if dry_run:
            params["dry_run"] = "1"
        conn, resp = self._get("%s/prune" % self._dev(device), params, method="POST")
        try:
            return json.loads(resp.read())
        finally:
            conn.close()

    def pair(self, device):
        return self._call("%s/pairing" % self._dev(device), "POST")

    def unpair(self, device):
        return self._call("%s/pairing" % self._dev(device), "DELETE")

    def _call(self, path, method):
        conn, resp = self._get(path, method=method)
        try:
            return json.loads(resp.read())
        finally:
            conn.close()

    def verify(self, repair=False):
        """Check everything a restore depends on; with repair, also quarantine what is bad
        and rebuild what can be (docs/management.md, "Verify and repair")."""
        if repair:
            return self._call("/v1/verify?repair=1", "POST")
        return self._json("/v1/verify")

    def fleet_status(self):
        return self._json("/v1/fleet")

    def fleet_take_over(self, device):
        return self._call("/v1/fleet/devices/%s/take-over" % quote(device, safe=""), "POST")

    def fleet_offload(self):
        return self._call("/v1/fleet/offload", "POST")

    def watch(self):
        return self._json("/v1/watch")

    def restore(self, device, to, snapshot="latest", path="", keep_special_bits=False, overwrite="never",
                dry_run=False, plan=None):
        """Restore a snapshot (or the subtree at `path`) under directory `to`.

        Every path is checked to stay inside `to` before anything is written; each file is
        written to a temporary name, checked chunk by chunk and renamed into place only
        when whole; mode and mtime are set after contents, directories last so their mtime
        survives; setuid/setgid bits only with keep_special_bits.
        A file or symlink already there is left alone unless overwrite says otherwise
        ("if-changed", "always"; see restore.Restorer); dry_run writes nothing and fills
        `plan` (a list) with (action, path).
        Returns {"files", "dirs", "symlinks", "bytes", "failed": [{"path", "error"}],
        "skipped": [paths left alone], "unchanged": n (if-changed found them the same),
        "incomplete": None or why the rest of the snapshot could not be read}.
        """
        r = Restorer(to, keep_special_bits, overwrite, dry_run)
        with self.restore_stream(device, snapshot, path) as reader:
            counts = r.run(reader)
        if plan is not None:
            plan.extend(r.plan)
        return counts

    @contextlib.contextmanager
    def restore_stream(self, device, snapshot="latest", path=""):
        """The restore stream of a snapshot (or of `path` in it), as a reader of entries
        and their checked frames; an unknown device, snapshot or path is an AnchorError
        before anything is read."""
        conn, resp = self._get("%s/snapshots/%s/restore" % (self._dev(device), snapshot), {"path": path})
        try:
            kind = resp.getheader("Content-Type", "")
            if kind != RESTORE_TYPE:
                raise AnchorError("the anchor answers a restore with %r; this anchorctl reads %r "
                                  "(use the anchorctl of the anchor's version)" % (kind, RESTORE_TYPE))
            yield _Reader(resp)
        finally:
            conn.close()


_U32 = struct.Struct(">I").unpack


class _Reader:
    """The restore stream, version 2 (docs/management.md, "Restore stream")."""

    def __init__(self, resp):
        self.resp = resp

    def exactly(self, n):
        out = self.resp.read(n)
        if len(out) == n:
            return out              # the usual case: one read, no copy
        out = bytearray(out)
        while len(out) < n:
            b = self.resp.read(min(n - len(out), 1 << 20))
            if not b:
                raise AnchorError("restore stream ended early: the anchor stopped or the connection broke")
            out += b
        return bytes(out)

    def _u32(self):
        return _U32(self.exactly(4))[0]

    def _failed(self):
        n = self._u32()
        if n > 1 << 20:
            raise AnchorError("restore stream is corrupt (reason of %d bytes)" % n)
        try:
            why = json.loads(self.exactly(n))["error"]
        except (ValueError, KeyError, TypeError):
            raise AnchorError("restore stream is corrupt (unreadable reason)")
        return FileFailed(why)

    def header(self):
        """The next entry's header; None at the end; FileFailed when the anchor cannot read
        the rest of the snapshot."""
        n = self._u32()
        if n == 0:
            return None
        if n == FAILED:
            raise self._failed()
        if n > 1 << 20:
            raise AnchorError("restore stream is corrupt (header of %d bytes)" % n)
        return json.loads(self.exactly(n))

    def frame(self):
        """(chunk id, bytes) of a file's next chunk; None when the file is whole; FileFailed
        when the anchor cannot read the file back."""
        n = self._u32()
        if n == 0:
            return None
        if n == FAILED:
            raise self._failed()
        if n > MAX_CHUNK:
            raise AnchorError("restore stream is corrupt (chunk of %d bytes)" % n)
        cid = self.exactly(32)
        return cid, self.exactly(n)
