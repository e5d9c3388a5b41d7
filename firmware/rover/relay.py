# Relay requests: the anchor fetches, sends and publishes for the rover over its own
# uplink and keeps what passes. Bodies stream through the rover's fixed buffers, so their
# size is bounded by flash, not by the heap.
from anchor_core.compat import MICROPYTHON, const
from anchor_core import messages as m
from rover import fsys
from rover.conversation import Conversation, RoverError
from rover.linkerror import LinkError

# RESULT's fields the relay reads beyond anchor_core/messages.py's public ones.
_RESULT_ETAG = const(3)
_RESULT_MODIFIED = const(4)
_RESULT_START = const(6)      # a resumed FETCH: where the BODYs that follow start

BODY_UP = const(4096)         # bytes per BODY a MicroPython rover sends (its chunk buffer is
                              # 32 KiB; a CPython one sends MAX_BODY, what every anchor takes)


class RelayError(RoverError):
    """The request failed at the origin or broker; the link and session are fine."""


class Relay(Conversation):
    body_up = BODY_UP if MICROPYTHON else m.MAX_BODY

    def open(self):
        # CAP_BODY when this conversation's receive buffer takes a whole BODY (a CPython
        # rover's does; a MicroPython rover's 4.6 KB one takes the anchor's 4 KiB BODYs).
        self.hello(None, m.CAP_BODY if self.rx >= m.MAX_BODY + 16 else 0)

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
        r = self._result()
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
        try:
            while True:
                msg = self.recv(m.BODY, m.END, m.FAIL)
                if msg[m.MSG_TYPE] == m.BODY:
                    got += len(msg[m.BODY_DATA])
                    if f:
                        f.write(msg[m.BODY_DATA])
                elif msg[m.MSG_TYPE] == m.FAIL:
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
                fsys.remove(part)
                fsys.remove(tag)
            raise
        if f is None:
            raise RelayError("HTTP %d from %s" % (status, url))
        f.close()
        fsys.rename(part, out_path)
        fsys.remove(tag)
        return status, start + got

    def _stream_file(self, path, size):
        sent = 0
        mv = memoryview(self.cbuf)
        with open(path, "rb") as f:
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

    def send_file(self, path, url, method="PUT", content_type="application/octet-stream"):
        """PUT or POST a file through the anchor; returns the origin's HTTP status."""
        size = fsys.stat(path)[1]
        self.send(m.send_req(method, url, size, content_type))
        self._stream_file(path, size)
        status = self._result()[m.RESULT_STATUS]
        if status >= 300:
            raise RelayError("HTTP %d from %s" % (status, url))
        return status

    def publish(self, topic, path, qos=1, retain=False):
        """Publish a file's bytes as one MQTT message through the anchor's broker."""
        size = fsys.stat(path)[1]
        self.send(m.publish(topic, size, qos, retain))
        self._stream_file(path, size)
        self._result()
        return size
