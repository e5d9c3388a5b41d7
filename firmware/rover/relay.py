# Relay requests: the anchor fetches, sends and publishes for the rover over its own
# uplink and keeps what passes. Bodies stream through the rover's fixed buffers, so their
# size is bounded by flash, not by the heap.
import hashlib

from anchor_core.compat import MICROPYTHON, const
from anchor_core import messages as m
from anchor_core import resumemsg as rm
from rover import fsys
from rover.conversation import Conversation, RoverError
from rover.linkerror import LinkError

# RESULT's fields the relay reads beyond anchor_core/messages.py's public ones.
_RESULT_ETAG = const(3)
_RESULT_MODIFIED = const(4)
_RESULT_START = const(6)      # a resumed FETCH: where the BODYs that follow start
_WELCOME_CAPS = const(4)
_UP_MARK = "/relay-upload"    # in the state folder: the id of the upload a lost link cut off

BODY_UP = const(4096)         # bytes per BODY a MicroPython rover sends (its chunk buffer is
                              # 32 KiB; a CPython one sends MAX_BODY, what every anchor takes)


class RelayError(RoverError):
    """The request failed at the origin or broker; the link and session are fine."""


class Relay(Conversation):
    body_up = BODY_UP if MICROPYTHON else m.MAX_BODY
    state = None                  # the state folder: where a cut-off upload's id is kept
    caps = 0                      # WELCOME's

    def open(self):
        # CAP_BODY when this conversation's receive buffer takes a whole BODY (a CPython
        # rover's does; a MicroPython rover's 4.6 KB one takes the anchor's 4 KiB BODYs).
        w = self.hello(None, m.CAP_BODY if self.rx >= m.MAX_BODY + 16 else 0)
        self.caps = w[_WELCOME_CAPS]
        if self.caps & rm.CAP_UPRESUME:
            rm.install()

    def _result(self):
        r = self.recv(m.RESULT, m.FAIL)
        if r[m.MSG_TYPE] == m.FAIL:
            raise RelayError("relay failed: %s" % r[m.FAIL_TEXT])
        return r

    def fetch(self, url, out_path, headers=None):
        """GET url through the anchor into out_path; returns (status, size).

        The body lands in out_path + '.part' and is renamed only once it is whole, so a
        broken transfer never leaves a file that looks complete. A transfer the link cut
        keeps its .part and, in .part.tag, the version it is of (ETag, else Last-Modified):
        the next fetch of the same URL into the same place asks only for the rest."""
        part = out_path + ".part"
        tag = part + ".tag"
        have = 0
        resume = None
        if fsys.exists(tag):
            st = fsys.stat(part)
            have = st[1] if st else 0
            with open(tag) as t:
                v = t.read()
            if have and v:
                resume = [have, v]
        self.send(m.fetch(url, headers, resume))
        r = self.recv(m.RESULT, m.FAIL)
        if r[m.MSG_TYPE] == m.FAIL:
            if resume is not None and r[1] == rm.F_RESUME:
                # What this rover holds does not fit the anchor's copy: start the file over.
                self.log("anchor refused the resume (%s); fetching from the start" % r[m.FAIL_TEXT])
                fsys.remove(part)
                fsys.remove(tag)
                return self.fetch(url, out_path, headers)
            raise RelayError("relay failed: %s" % r[m.FAIL_TEXT])
        status, declared = r[m.RESULT_STATUS], r[m.RESULT_SIZE]
        start = r[_RESULT_START] if len(r) > _RESULT_START else 0
        if start and (resume is None or start != have or type(start) is not int):
            raise RelayError("anchor resumed at byte %s; the rover holds %d" % (start, have))
        f = None
        if status == 200:
            f = open(part, "ab" if start else "wb")
            if not start:
                fsys.remove(tag)
                v = r[_RESULT_ETAG] or r[_RESULT_MODIFIED]
                if v:                       # without one a cut-off body cannot be resumed
                    with open(tag, "w") as t:
                        t.write(v)
        got = 0
        kept = False
        try:
            while True:
                msg = self.recv(m.BODY, m.END, m.FAIL)
                if msg[m.MSG_TYPE] == m.BODY:
                    got += len(msg[m.BODY_DATA])
                    if f:
                        f.write(msg[m.BODY_DATA])
                elif msg[m.MSG_TYPE] == m.FAIL:
                    # The origin broke off: what arrived is the start of that version, kept for
                    # a resume. Any other failure (the anchor's check of it, say) starts over.
                    kept = msg[1] == m.F_BROKEN
                    raise RelayError("transfer broke off after %d bytes: %s" % (start + got, msg[m.FAIL_TEXT]))
                else:
                    if msg[m.END_SIZE] != got or (declared is not None and declared != start + got):
                        raise RelayError("body ended at %d bytes, expected %s" % (start + got, declared or msg[m.END_SIZE]))
                    break
        except LinkError:
            # The link, not the origin: what arrived stays for the resume.
            if f:
                f.close()
            raise
        except BaseException:
            if f:
                f.close()
                if not kept:
                    fsys.remove(part)
                    fsys.remove(tag)
            raise
        if f is None:
            raise RelayError("HTTP %d from %s" % (status, url))
        f.close()
        fsys.rename(part, out_path)
        fsys.remove(tag)
        return status, start + got

    def _stream_file(self, path, size, off=0):
        """The file's bytes from `off` on as BODYs, then END with the whole body's size."""
        sent = off
        mv = memoryview(self.cbuf)
        with open(path, "rb") as f:
            if off:
                f.seek(off)
            while True:
                n = f.readinto(mv[:self.body_up])
                if not n:
                    break
                self.send_blob([m.BODY], mv[:n])
                sent += n
        if sent != size:
            raise RoverError("%s changed size while it was sent (%d, not %d bytes)" % (path, sent, size))
        self.send(m.end(sent))
        return sent

    def _upload(self, req, target, path):
        """SEND or PUBLISH `req` with the file's bytes; returns RESULT. Through an anchor that
        keeps cut-off uploads (CAP_UPRESUME), the request carries an upload id: after a lost
        link, the next upload of the same file (same size and mtime) to the same target asks
        the anchor how much it holds and sends only the rest."""
        st = fsys.stat(path)
        size = st[1]
        if not (self.caps & rm.CAP_UPRESUME) or self.state is None:
            self.send(req)
            self._stream_file(path, size)
            return self._result()
        h = hashlib.sha256(b"anchor.up.v1\x00")
        h.update(("%d %s %d %d %s" % (req[m.MSG_TYPE], target, size, st[2], path)).encode())
        uid = h.digest()[:rm.ID_SIZE]
        mark = self.state + _UP_MARK
        off = 0
        try:
            if fsys.exists(mark):
                with open(mark, "rb") as f:
                    if f.read() == uid:
                        off = self._held(uid, path, size)
            while True:
                self.send(req + [[uid, off]])
                self._stream_file(path, size, off)
                r = self.recv(m.RESULT, m.FAIL)
                if r[m.MSG_TYPE] == m.FAIL and off and r[1] == rm.F_RESUME:
                    # What the anchor held is gone since it answered: the whole body, once.
                    self.log("anchor refused the resume (%s); sending the whole body" % r[m.FAIL_TEXT])
                    off = 0
                    continue
                break
        except LinkError:
            # The link, not the origin: the anchor holds what arrived, under this id.
            fsys.makedirs(self.state)
            with open(mark, "wb") as f:
                f.write(uid)
            raise
        fsys.remove(mark)
        if r[m.MSG_TYPE] == m.FAIL:
            raise RelayError("relay failed: %s" % r[m.FAIL_TEXT])
        return r

    def _held(self, uid, path, size):
        """How many of the file's first bytes the anchor holds under `uid` (0: none, or not
        these bytes: the file changed since, or the anchor's copy is another)."""
        self.send(rm.upask(uid))
        r = self.recv(rm.HELD, m.FAIL)
        if r[m.MSG_TYPE] == m.FAIL:
            self.log("anchor holds none of the upload (%s); sending it whole" % r[m.FAIL_TEXT])
            return 0
        n = r[2]
        if r[1] != uid or n > size:
            return 0
        h = hashlib.sha256()
        mv = memoryview(self.cbuf)
        left = n
        with open(path, "rb") as f:
            while left:
                k = f.readinto(mv[:min(left, len(mv))])
                if not k:
                    return 0
                h.update(mv[:k])
                left -= k
        if h.digest() != r[3]:
            self.log("the anchor's %d bytes of the upload are not this file's; sending it whole" % n)
            return 0
        self.log("the anchor holds %d of %d bytes; sending the rest" % (n, size))
        return n

    def send_file(self, path, url, method="PUT", content_type="application/octet-stream"):
        """PUT or POST a file through the anchor; returns the origin's HTTP status."""
        size = fsys.stat(path)[1]
        status = self._upload(m.send_req(method, url, size, content_type), url, path)[m.RESULT_STATUS]
        if status >= 300:
            raise RelayError("HTTP %d from %s" % (status, url))
        return status

    def publish(self, topic, path, qos=1, retain=False):
        """Publish a file's bytes as one MQTT message through the anchor's broker."""
        size = fsys.stat(path)[1]
        self._upload(m.publish(topic, size, qos, retain), topic, path)
        return size
