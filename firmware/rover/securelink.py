# The rover's end of the secure channel (anchor_core/secure.py) around any link: it proves it
# holds the pairing secret, checks that the anchor does too (the handshake itself is
# anchor_core/handshake.py; this drives it over a blocking link), then seals everything it
# writes and opens everything it reads. The session above sees a plain link.
import os

from anchor_core import secure
from anchor_core.compat import MICROPYTHON
from rover import buffers
from rover.linkerror import LinkError, BadAddress, NotPaired  # noqa: F401  (NotPaired: raised here)

KEY_FILE = "/pairing.key"
RX_RECORD = buffers.OPEN_RECORD    # records the rover takes: the anchor seals no more per record
TX_RECORD = buffers.SEAL_RECORD    # records the rover makes (the heap holds both buffers)


def load_key(state_dir):
    try:
        with open(state_dir + KEY_FILE, "rb") as f:
            k = f.read()
    except OSError:
        return None
    if len(k) != secure.KEY_BYTES:
        # a setting to fix, not a link to retry
        raise BadAddress("%s%s is damaged: pair again (rover pair CODE)" % (state_dir, KEY_FILE))
    return k


def save_key(state_dir, key):
    from rover import fsys
    fsys.makedirs(state_dir)
    tmp = state_dir + KEY_FILE + ".new"
    if MICROPYTHON:
        f = open(tmp, "wb")
    else:
        # the owner's only from the start, whatever the umask
        f = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
    with f:
        f.write(key)
    fsys.rename(tmp, state_dir + KEY_FILE)


def _handshake(link, device, key):
    """The session's (sealer, opener), once the handshake over `link` succeeded.

    On MicroPython the handshake's code is dropped again afterwards: without frozen modules
    bytecode lives in the heap, and the rover needs this code for a moment per link but the
    heap for the whole session (kept, it cost a paired rover ~5 KB more than the handshake
    inlined here did; dropped, ~1 KB less)."""
    # The session's record buffers: main.py's (rover/buffers.py, taken at start-up), else
    # taken here before the handshake's code loads. Taken after it (and after TLS, on an
    # mqtts:// link) they found no 2 KB block left in a 256 KB heap. secure._Records takes
    # a fresh one where a size does not match.
    bufs = buffers.records
    if bufs[0] is None:
        bufs = (bytearray(secure.HEADER + TX_RECORD + secure.TAG), bytearray(secure.HEADER + RX_RECORD + secure.TAG))
    from anchor_core import handshake
    try:
        hs = handshake.Initiator(device, key, os.urandom(secure.NONCE), RX_RECORD, TX_RECORD)
        link.write(hs.data_to_send())
        buf = memoryview(bytearray(handshake.HELLO2))
        try:
            # need(): never read past the anchor's answer (what follows it is records)
            while hs.next_event() == handshake.NEED_DATA:
                n = link.readinto(buf[:hs.need()])
                hs.receive_data(buf[:n or 0])       # empty: the link closed
        except handshake.NotPairedError as e:
            raise NotPaired(str(e))
        except secure.SecureError as e:
            raise LinkError(str(e))
        link.write(hs.data_to_send())
        return hs.records(bufs)
    finally:
        if MICROPYTHON:
            from anchor_core.compat import unload
            unload(handshake)


class SecureLink:
    def __init__(self, link, device, key):
        self.link = link
        self.sealer, self.opener = _handshake(link, device, key)
        self.plain = None
        self.pos = 0

    @property
    def tx(self):
        return self.link.tx

    @property
    def rx(self):
        return self.link.rx

    def set_timeout(self, seconds):
        self.link.set_timeout(seconds)

    def write(self, data):
        """Gathered into records of up to 4 KiB; they go out when full and before the rover
        waits for an answer (readinto) or closes."""
        mv = memoryview(data)
        sealer = self.sealer
        while len(mv):
            room = sealer.room()
            if not len(room):
                self.link.write(sealer.flush())
                continue
            k = min(len(room), len(mv))
            room[:k] = mv[:k]
            sealer.add(k)
            mv = mv[k:]

    def flush(self):
        r = self.sealer.flush()
        if r is not None:
            self.link.write(r)

    def readinto(self, buf):
        self.flush()
        while self.plain is None:
            room = self.opener.room()
            n = self.link.readinto(room)
            if not n:
                return 0
            try:
                p = self.opener.filled(n)
            except secure.SecureError as e:
                raise LinkError("secure channel: %s" % e)
            if p is not None and len(p):
                self.plain = p
                self.pos = 0
        p = self.plain
        k = min(len(buf), len(p) - self.pos)
        buf[:k] = p[self.pos:self.pos + k]
        self.pos += k
        if self.pos >= len(p):
            self.plain = None
        return k

    def close(self):
        try:
            self.flush()
        except Exception:
            pass            # closing after a failure: nothing more to say
        self.link.close()


def pair_command(opts, rest):
    """`rover ... pair CODE`: store the pairing secret the code stands for."""
    import sys
    from anchor_core import secure
    from anchor_core.messages import check_device, ProtocolError
    if len(rest) != 2:
        print("rover: pair takes the code anchorctl pair printed", file=sys.stderr)
        return 2
    from anchor_core import paircode
    try:
        check_device(opts["device"])
        key = secure.code_to_key(paircode.check(rest[1]), opts["device"])
    except (secure.SecureError, ProtocolError, ValueError) as e:
        print("rover: pair failed: %s" % e, file=sys.stderr)
        return 1
    save_key(opts["state"], key)
    print("rover: paired as %s; links to the anchor are now authenticated and encrypted" % opts["device"])
    return 0
