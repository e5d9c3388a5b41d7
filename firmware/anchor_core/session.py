# One end of a backup session, sans I/O: bytes in, checked messages out; messages in,
# framed bytes out. Drivers (sockets, UARTs, asyncio) only move the bytes.
from anchor_core import cbor
from anchor_core import framing
from anchor_core import messages as m
from anchor_core import states as st

NEED_DATA = None


class Session:
    def __init__(self, role, max_payload=framing.MAX_PAYLOAD, buffer_size=None, tx_buffer=0, zero_copy=False):
        # tx_buffer: 0 for fresh bytes per send, a size, or a preallocated bytearray.
        # zero_copy: a received BODY is a view into the receive buffer, valid until the
        # next call of next_event or receive_data (the rover writes it out at once; its heap
        # has no 4 KiB to spare).
        self.role = role
        self.peer = st.ANCHOR if role == st.ROVER else st.ROVER
        self.state = st.START
        self._deframer = framing.Deframer(max_payload, buffer_size, zero_copy)
        self._views = 256 if zero_copy else 0     # byte strings this long come as views
        self._pending = b""          # bytes the deframer had no room for yet
        # With tx_buffer, send() encodes into one preallocated buffer and returns a
        # memoryview of it, valid until the next send (the rover's heap cannot afford a
        # new block per message). Without, send() returns fresh bytes.
        if type(tx_buffer) is int:
            tx_buffer = bytearray(tx_buffer) if tx_buffer else None
        self._tx = tx_buffer
        self._request = None         # (type, key) of the request the peer must answer
        self.bytes_in = 0
        self.bytes_out = 0
        # Frame bytes both ways by purpose: [control, backup, relay] (see messages.PURPOSE).
        self.purpose_bytes = [0, 0, 0]

    # --- receiving ---------------------------------------------------------------------

    def receive_data(self, data):
        """Take bytes from the link. Call next_event() until it returns NEED_DATA before
        passing more: then the deframer has room and nothing is copied."""
        self.bytes_in += len(data)
        if self._pending:
            self._pending = self._pending + bytes(data)
            self._feed()
            return
        n = self._deframer.receive_data(data)
        if n < len(data):
            self._pending = bytes(data[n:])

    def _feed(self):
        if self._pending:
            n = self._deframer.receive_data(self._pending)
            self._pending = self._pending[n:]

    def next_event(self):
        """The next checked message from the peer, or NEED_DATA. Raises ProtocolError."""
        while True:
            payload = self._deframer.next_frame()
            if payload is None:
                if not self._pending:
                    return NEED_DATA
                before = len(self._pending)
                self._feed()
                if len(self._pending) == before:
                    return NEED_DATA
                continue
            msg = m.decode(payload, self._views)
            self._advance(self.peer, msg)
            self.purpose_bytes[m.purpose(msg[0])] += len(payload) + framing.frame_overhead
            return msg

    # --- sending -----------------------------------------------------------------------

    def send(self, msg):
        """Check `msg` against the protocol and return its framed bytes."""
        m.check(msg)
        state, request = self.state, self._request
        self._advance(self.role, msg)
        try:
            if self._tx is not None:
                try:
                    n = cbor.encode_into(msg, self._tx, 6)
                except cbor.CBORError as e:
                    raise m.ProtocolError(m.E_TOO_LARGE, str(e))
                out = memoryview(self._tx)[:framing.frame_in_place(self._tx, n - 6)]
            else:
                out = framing.encode_frame(m.encode(msg))
        except BaseException:
            # Nothing was sent: the state stays where it was (found by fuzzing).
            self.state, self._request = state, request
            raise
        self.bytes_out += len(out)
        self.purpose_bytes[m.purpose(msg[0])] += len(out)
        return out

    def send_data(self, chunk_id, enc, body):
        """DATA without copying `body`: returns (head, tail) to write around it."""
        return self.send_blob([m.DATA, chunk_id, enc], body)

    def send_blob(self, fields, body):
        """A message whose last field is `body` (DATA, BODY), without copying the body:
        returns (head, tail) to write around it."""
        head, crc = self.send_blob_open(fields, len(body))
        return head, framing.frame_tail(framing.crc32(body, crc))

    def send_blob_open(self, fields, n):
        """As send_blob, for a body of n bytes the caller writes in pieces after head:
        returns (head, crc); each piece goes through crc = framing.crc32(piece, crc), and
        framing.frame_tail(crc) follows the last."""
        m.check(fields + [b""])
        if n > m.blob_limit(fields[0]):
            raise m.ProtocolError(m.E_TOO_LARGE, "%s payload too large" % m.NAMES.get(fields[0], fields[0]))
        self._advance(self.role, fields)
        head, crc = framing.frame_open(m.blob_prefix(fields, n), n)
        self.bytes_out += len(head) + n + 4
        self.purpose_bytes[m.purpose(fields[0])] += len(head) + n + 4
        return head, crc

    # --- rules -------------------------------------------------------------------------

    def _advance(self, sender, msg):
        t = msg[0]
        nxt = st.next_state(self.state, sender, t)
        if nxt < 0:
            raise m.ProtocolError(
                m.E_PROTOCOL, "%s not allowed from %s in state %s" % (
                    m.NAMES.get(t, str(t)), "rover" if sender == st.ROVER else "anchor",
                    st.STATE_NAMES[self.state]))
        # Replies must answer the request they follow, not an earlier one.
        if t == m.ENTRIES:
            self._request = (m.VERDICT, msg[1])
        elif t == m.CHUNKLIST:
            self._request = (m.NEED, m.parts_key(msg[1]))
        elif t == m.VERDICT:
            self._expect(t, msg[1])
        elif t == m.NEED:
            self._expect(t, m.parts_key(msg[1]))
        elif t == 23:                  # restoremsg.SEEDS, answered by SEEDASK of its batch
            self._request = (24, msg[1])
        elif t == 24:
            self._expect(t, msg[1])
        elif t == 33 or t == 35:       # delta.BASEQ, DELTA: answered by BASE, DELTAOK of that chunk
            self._request = (t + 1, msg[1])
        elif t == 34 or t == 36:
            self._expect(t, msg[1])
        self.state = nxt

    def _expect(self, t, key):
        if self._request != (t, key):
            raise m.ProtocolError(m.E_PROTOCOL, "%s does not answer the pending request" % m.NAMES[t])
        self._request = None

    @property
    def corrupt(self):
        """(bad frames, garbage bytes) seen so far, or None if the stream was clean."""
        d = self._deframer
        if d.bad_frames or d.garbage_bytes:
            return (d.bad_frames, d.garbage_bytes)
        return None

    @property
    def closed(self):
        return self.state == st.CLOSED
