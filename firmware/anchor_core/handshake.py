# The pairing handshake (docs/security.md) as one sans-I/O state machine for both ends: the
# rover starts it (Initiator), the anchor answers (Responder). Bytes in (receive_data; b""
# when the link closed), bytes out (data_to_send), one event at a time (next_event); the
# drivers, rover/securelink.py (blocking) and anchor/secure_session.py (asyncio), only move
# bytes and, on the anchor, look up the pairing secret the HELLO event asks for. Nonces come
# from the driver too, so a test can replay a whole exchange.
#
#   rover  -> anchor   "ANC1" | len(DEVICE) u8 | DEVICE | Nr (16) | rx_max u16
#   anchor -> rover    "ANC1" | status u8 (0 ok, 1 not paired) | Na (16) | Pa (16)
#   rover  -> anchor   Pr (16)
#
# Then both ends hold the same session keys and build their record layer with records().
# A failed handshake raises HandshakeError (NotPairedError when the pairing is the cause)
# from next_event, every later call too; it never yields keys. The MicroPython rover drops
# this module again once its link is up (rover/securelink.py): keep its import cheap.
import struct

from anchor_core.compat import const
from anchor_core.secure import (MAGIC, NONCE, PROOF, MAX_RECORD, ST_OK, ST_NOT_PAIRED, SecureError,
                                Sealer, Opener, equal, proof, session_keys)

# What next_event() returns.
NEED_DATA = const(0)     # feed more bytes: at most need() of them, what follows is records
HELLO = const(1)         # responder: a rover named itself (.device): answer with secret()
PLAIN = const(2)         # responder: the link does not start with "ANC1" (a plain rover)
ESTABLISHED = const(3)   # .keys hold; send data_to_send(), then records()

HELLO2 = const(37)       # the anchor's answer: 4 + 1 + NONCE + PROOF

# States: what each end waits for.
_MAGIC = const(0)        # responder: the first 4 bytes
_HELLO1 = const(1)       # responder: the rest of the rover's hello
_SECRET = const(2)       # responder: the driver's secret() for the device the hello named
_PROOF = const(3)        # responder: the rover's proof
_HELLO2 = const(4)       # initiator: the anchor's answer
_DONE = const(5)
_PLAIN = const(6)
_FAILED = const(7)

# What moves a state on.
_GOT_MAGIC = const(0)
_NOT_MAGIC = const(1)
_GOT_HELLO1 = const(2)
_KEY = const(3)
_NO_KEY = const(4)
_GOT_PROOF = const(5)
_GOT_HELLO2 = const(6)

# Every move either end may make, in protocol order: (state, what happened, next state),
# three bytes each (a bytes constant costs the rover's heap less than a tuple of tuples).
# A move not listed (secret() twice, secret() before the hello, ...) fails the handshake.
_MOVES = bytes((
    _MAGIC, _GOT_MAGIC, _HELLO1,
    _MAGIC, _NOT_MAGIC, _PLAIN,
    _HELLO1, _GOT_HELLO1, _SECRET,
    _SECRET, _KEY, _PROOF,
    _SECRET, _NO_KEY, _FAILED,
    _PROOF, _GOT_PROOF, _DONE,
    _HELLO2, _GOT_HELLO2, _DONE,
))


class HandshakeError(SecureError):
    """The handshake failed: no keys. Send data_to_send() (it may say why), then close."""


class NotPairedError(HandshakeError):
    """The pairing is the cause: the anchor does not know the rover, or a proof failed."""


# --- messages ----------------------------------------------------------------------------

def hello1(device, nr, rx_max=MAX_RECORD):
    """rx_max: the largest record the rover takes (its heap may not hold 4 KiB twice)."""
    d = device.encode()
    return MAGIC + bytes([len(d)]) + d + nr + struct.pack(">H", rx_max)


def parse_hello1(buf):
    """-> (device, nr, rx_max, length) or None if incomplete. Raises SecureError on garbage."""
    if len(buf) < 5:
        return None
    if bytes(buf[:4]) != MAGIC:
        raise SecureError("not a secure-channel hello")
    n = buf[4]
    if n < 1 or n > 64:
        raise SecureError("bad device name length")
    end = 5 + n + NONCE + 2
    if len(buf) < end:
        return None
    try:
        device = bytes(buf[5:5 + n]).decode()
    except UnicodeError:
        raise SecureError("device name is not UTF-8")
    rx_max = struct.unpack_from(">H", buf, end - 2)[0]
    if rx_max < 256 or rx_max > MAX_RECORD:
        raise SecureError("record size %d out of range" % rx_max)
    return device, bytes(buf[5 + n:end - 2]), rx_max, end


def hello2(status, na, prf):
    return MAGIC + bytes([status]) + na + prf


# --- the two ends --------------------------------------------------------------------------

class _Handshake:
    def __init__(self, state):
        self.state = state
        self.inbuf = b""
        self.used = 0          # bytes of inbuf the handshake has taken
        self.eof = False
        self.out = b""
        self.keys = None
        self.error = None

    def receive_data(self, data):
        """Bytes from the link; empty when the link closed."""
        if len(data):
            self.inbuf += bytes(data)
        else:
            self.eof = True

    def data_to_send(self):
        out = self.out
        self.out = b""
        return out

    def trailing_data(self):
        """Bytes received past the handshake: the first records (with PLAIN: all of them)."""
        return self.inbuf[self.used:]

    def need(self):
        """At most this many bytes are the handshake's: read no more at once, when what
        follows cannot be handed on as trailing_data()."""
        return max(self._end() - len(self.inbuf), 0)

    def next_event(self):
        if self.error is None:
            try:
                return self._step()
            except HandshakeError as e:
                self.error = e
            except SecureError as e:          # a malformed message
                self.error = HandshakeError(str(e))
            self.state = _FAILED
            self.keys = None
        raise self.error

    def _move(self, what):
        for i in range(0, len(_MOVES), 3):
            if _MOVES[i] == self.state and _MOVES[i + 1] == what:
                self.state = _MOVES[i + 2]
                return
        raise HandshakeError("handshake step out of order")

    def _keys(self):
        if self.keys is None:
            raise HandshakeError("no session keys: the handshake is not done")
        return self.keys

    def _wait(self):
        if self.eof:
            raise HandshakeError(self.CLOSED)
        return NEED_DATA


class Initiator(_Handshake):
    """The rover's end: data_to_send() holds its hello at once. tx_max, rx_max: the largest
    records it makes and takes."""

    CLOSED = "the anchor closed the link during the secure handshake"

    def __init__(self, device, key, nr, rx_max=MAX_RECORD, tx_max=MAX_RECORD):
        _Handshake.__init__(self, _HELLO2)
        self.device = device
        self.key = key
        self.nr = nr
        self.rx_max = rx_max
        self.tx_max = tx_max
        self.out = hello1(device, nr, rx_max)

    def _end(self):
        return HELLO2 if self.state == _HELLO2 else 0

    def _step(self):
        if self.state == _DONE:
            return ESTABLISHED
        buf = self.inbuf
        if len(buf) < HELLO2:
            return self._wait()
        if buf[:4] != MAGIC:
            raise HandshakeError("the anchor does not speak the secure channel "
                                 "(an anchor started with --open?)")
        if buf[4] == ST_NOT_PAIRED:
            raise NotPairedError("the anchor does not know this rover's pairing: run "
                                 "`anchorctl pair %s` on the anchor and `rover ... pair CODE` here"
                                 % self.device)
        na = buf[5:5 + NONCE]
        d = self.device.encode()
        if not equal(buf[5 + NONCE:HELLO2], proof(self.key, b"anchor", d, self.nr, na)):
            raise NotPairedError("the anchor could not prove it holds this rover's pairing secret: "
                                 "not our anchor, or the pairing was renewed (pair again)")
        self._move(_GOT_HELLO2)
        self.used = HELLO2
        self.out += proof(self.key, b"rover", d, self.nr, na)
        self.keys = session_keys(self.key, self.nr, na)
        return ESTABLISHED

    def records(self, bufs=(None, None)):
        """(sealer, opener) for the session, once ESTABLISHED; bufs: their record buffers,
        if the caller took them already (secure._Records)."""
        k = self._keys()
        return Sealer(k[0], k[1], self.tx_max, bufs[0]), Opener(k[2], k[3], self.rx_max, bufs[1])


class Responder(_Handshake):
    """The anchor's end. na: its nonce for this session."""

    CLOSED = "link closed during the secure handshake"

    def __init__(self, na):
        _Handshake.__init__(self, _MAGIC)
        self.na = na
        self.device = None
        self.rx_max = MAX_RECORD
        self.nr = self.key = None

    def _end(self):
        st = self.state
        buf = self.inbuf
        if st == _MAGIC:
            return 4
        if st == _HELLO1:
            return 5 if len(buf) < 5 else 5 + buf[4] + NONCE + 2
        if st == _PROOF:
            return self.used + PROOF
        return 0

    def _step(self):
        st = self.state
        buf = self.inbuf
        if st == _MAGIC:
            if len(buf) < 4 and not self.eof:
                return NEED_DATA
            if buf[:4] != MAGIC:
                self._move(_NOT_MAGIC)
                return PLAIN
            self._move(_GOT_MAGIC)
            st = _HELLO1
        if st == _HELLO1:
            got = parse_hello1(buf)
            if got is None:
                return self._wait()
            self.device, self.nr, self.rx_max, self.used = got
            self._move(_GOT_HELLO1)
            return HELLO
        if st == _SECRET:
            return HELLO
        if st == _PROOF:
            u = self.used
            if len(buf) < u + PROOF:
                return self._wait()
            if not equal(buf[u:u + PROOF], self._proof(b"rover", self.key)):
                raise NotPairedError("rover %r failed to prove it holds its pairing secret"
                                     % self.device)
            self._move(_GOT_PROOF)
            self.used = u + PROOF
            self.keys = session_keys(self.key, self.nr, self.na)
            return ESTABLISHED
        return ESTABLISHED if st == _DONE else PLAIN

    def secret(self, key):
        """The answer to HELLO: the pairing secret of .device, or None when it has none
        (the rover is told so, and the handshake fails)."""
        if self.error is not None:
            raise self.error
        if key is None:
            self._move(_NO_KEY)
            self.out += hello2(ST_NOT_PAIRED, bytes(NONCE), bytes(PROOF))
            self.error = NotPairedError("rover %r is not paired (or was unpaired)" % self.device)
            return
        self._move(_KEY)
        self.key = key
        self.out += hello2(ST_OK, self.na, self._proof(b"anchor", key))

    def _proof(self, who, key):
        return proof(key, who, self.device.encode(), self.nr, self.na)

    def records(self):
        """(sealer, opener) for the session, once ESTABLISHED: the sealer makes records no
        larger than the rover said it takes."""
        k = self._keys()
        return Sealer(k[2], k[3], self.rx_max), Opener(k[0], k[1], MAX_RECORD)
