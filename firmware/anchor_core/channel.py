# A reliable, ordered, flow-controlled channel of several byte streams over a link that
# moves whole packets and may lose some (serial radio, MQTT, BLE GATT). Sans-I/O: the
# driver feeds received packets and the time in, and sends what packet_to_send() hands
# out. Wire format and rules: docs/protocol.md §7.
#
# Why not TCP's full machinery: the rover has a 256 KB heap and a radio of a few kB/s.
# Go-back-N with one cumulative ACK keeps the receiver free of reordering buffers (a lost
# packet is rare on these links, and cheap to resend because the window is small), and the
# receiver advertises its window in bytes *on the wire*, so a UART whose receive buffer
# holds N bytes is never sent more than N bytes it has not taken in yet.
import struct

from anchor_core.compat import const

VERSION = const(1)
HEADER = const(8)

# packet kinds (high nibble of byte 0)
DATA = const(1)
ACK = const(2)
SYN = const(3)
SYNACK = const(4)
RST = const(5)
FIN = const(6)
PROBE = const(7)

# channel states
LISTEN = const(0)        # responder waiting for a SYN
SYN_SENT = const(1)
OPEN = const(2)
DEAD = const(3)          # reset by the peer, or no progress for dead_ms: open a new one

MAX_STREAMS = const(16)
URGENT = const(8)        # streams 8..15 carry relay traffic and always go first

ACK_DELAY = const(20)    # ms a receiver may hold an ACK hoping to piggyback it
MIN_RTO = const(150)
MAX_RTO = const(3000)    # outages last seconds; resume soon after the link returns
INITIAL_RTO = const(1000)
DUPACKS = const(2)

_HDR = ">BBHHH"


def _before(a, b):
    """Sequence number a comes before b (16-bit serial arithmetic)."""
    return a != b and ((b - a) & 0xFFFF) < 0x8000


class ChannelError(Exception):
    pass


class _Ring:
    """Fixed-size byte FIFO: the only per-stream memory, allocated once."""

    def __init__(self, size):
        # size: a length, or a bytearray lent by the application (taken while its heap was whole)
        self.buf = bytearray(size) if type(size) is int else size
        self.size = len(self.buf)
        self.head = 0
        self.count = 0

    def free(self):
        return self.size - self.count

    def put(self, data):
        n = min(len(data), self.size - self.count)
        tail = (self.head + self.count) % self.size
        first = min(n, self.size - tail)
        mv = memoryview(self.buf)
        mv[tail:tail + first] = data[:first]
        if n > first:
            mv[0:n - first] = data[first:n]
        self.count += n
        return n

    def peek_into(self, out, skip, n):
        """Copy n bytes starting `skip` bytes after the head into memoryview `out`."""
        start = (self.head + skip) % self.size
        first = min(n, self.size - start)
        mv = memoryview(self.buf)
        out[0:first] = mv[start:start + first]
        if n > first:
            out[first:n] = mv[0:n - first]

    def drop(self, n):
        self.head = (self.head + n) % self.size
        self.count -= n

    def get_into(self, out, n):
        """Move up to n bytes into memoryview `out`; returns how many."""
        n = min(n, self.count, len(out))
        first = min(n, self.size - self.head)
        mv = memoryview(self.buf)
        out[0:first] = mv[self.head:self.head + first]
        if n > first:
            out[first:n] = mv[0:n - first]
        self.head = (self.head + n) % self.size
        self.count -= n
        return n


class _Stream:
    def __init__(self, rx_size, tx_size):
        self.rx = _Ring(rx_size)
        # The tx ring keeps what was sent until the peer acknowledges it, so a packet is
        # rebuilt from it when resent: no copy of in-flight data is held anywhere else.
        self.tx = _Ring(tx_size)
        self.tx_base = 0            # stream offset of the tx ring's head
        self.tx_sent = 0            # bytes after the head already sent (awaiting ACK)
        self.more = False           # the writer has more to add: hold a partial packet
        self.fin_wanted = False     # the local side closed: send FIN after the data
        self.fin_sent = False
        self.fin_acked = False
        self.eof = False            # the peer's FIN arrived


class _Flight:
    """Packets sent and not yet acknowledged, oldest first, in arrays taken once."""

    def __init__(self, cap):
        self.cap = cap
        self.sid = bytearray(cap)
        self.kind = bytearray(cap)
        self.sends = bytearray(cap)
        self.length = [0] * cap
        self.off = [0] * cap        # stream offset of the packet's first byte
        self.sent = [0] * cap       # time of the last send
        self.head = 0
        self.count = 0

    def slot(self, i):
        return (self.head + i) % self.cap


MAX_INFLIGHT = const(48)
_TX_SPARE = const(2048)    # the send ring of a second stream while the lent one is in use


class Channel:
    """One end of a channel. `initiator` (the rover) sends SYN; the other end listens.

    mtu: largest packet the port carries; overhead: bytes the port adds per packet;
    rx_window: wire bytes this end can hold unread (a UART buffer); rx_buffer and
    tx_buffer: per-stream byte buffers (tx_buffer may be a bytearray: the send ring of one
    stream at a time, the others get _TX_SPARE bytes); tx_window: the most wire bytes this end may keep
    in flight. Within it the channel keeps about the link's bandwidth-delay product in
    flight and no more (`cwnd`, adjusted once per round trip from how far the RTT rises
    above the least seen, as TCP Vegas does): bytes beyond that only queue in the link,
    in front of the next urgent packet. dead_ms: no progress for this long ends the
    channel."""

    def __init__(self, initiator, mtu, overhead=0, rx_window=4096, rx_buffer=4096, tx_buffer=4096,
                 tx_window=4096, dead_ms=30000):
        if mtu < HEADER + 8 or mtu > 0xFFFF:
            raise ChannelError("mtu %d out of range" % mtu)
        self.initiator = initiator
        self.mtu = mtu
        self.peer_mtu = mtu
        self.overhead = overhead
        self.rx_window = min(rx_window, 0xFFFF)
        self._out = bytearray(max(mtu, HEADER + 7))   # every packet is built here
        self._outmv = memoryview(self._out)
        self.rx_buffer = rx_buffer
        self.tx_buffer = tx_buffer
        self.tx_window = tx_window
        self.cwnd = 0              # set once the peer's mtu is known
        self.min_rtt = 0
        self._cwnd_at = 0          # time of the next cwnd adjustment
        self._cwnd_limited = False # data waited for cwnd (not the peer or the app) lately
        self.dead_ms = dead_ms
        self.state = LISTEN
        self.error = None
        self.conn_id = 0
        self.epoch = 0
        self.streams = {}
        self._accepted = []        # streams the peer opened, for accept()
        self._rr = 0               # round-robin start among streams of one priority
        # sender
        self.snd_nxt = 0
        self.fl = _Flight(MAX_INFLIGHT)
        self.snd_una = 0           # seq of the oldest packet in flight
        self.inflight_bytes = 0
        self.resend = 0            # index into the flight of the next packet to resend
        self.peer_wnd = 0
        self.rto = INITIAL_RTO
        self.srtt = 0
        self.rttvar = 0
        self.rto_at = None
        self.dupacks = 0
        self.last_progress = None
        self._ctrl = None          # SYN/SYNACK/RST waiting to go out
        self._ctrl_at = None
        self._probe_at = None
        self._syn_sent = 0
        self.resend_end = 0        # resend flight[resend:resend_end] before anything new
        self.recovering = False    # after a timeout, the next ACK decides what to resend
        self.ghost = 0             # wire bytes of a resent copy that may still arrive
        self.ghost_until = 0
        # receiver
        self.rcv_nxt = 0
        self.ack_due = None        # time an ACK must go out by (None: nothing to ACK)
        self._wnd_sent = 0
        self._rx_since_ack = 0
        # counters
        self.resets = 0            # peer-initiated restarts seen (responder: new SYN)
        self.retransmits = 0        # packets sent again
        self.timeouts = 0           # retransmission timer expiries
        self.dropped = 0           # packets discarded: out of order, stale, malformed

    # --- connection ----------------------------------------------------------------------

    def connect(self, conn_id, now):
        """Initiator: start (or restart) the channel with a fresh random 32-bit id."""
        self._reset_state()
        self.conn_id = conn_id & 0xFFFFFFFF
        self.epoch = self.conn_id & 0xFF
        self.state = SYN_SENT
        self._ctrl = SYN
        self._ctrl_at = now
        self.last_progress = now

    def _reset_state(self):
        self.cwnd = 0
        self.min_rtt = 0
        self._cwnd_at = 0
        self.streams = {}
        self._accepted = []
        self.snd_nxt = 0
        self.snd_una = 0
        self.fl.head = self.fl.count = 0
        self.inflight_bytes = 0
        self.resend = 0
        self.resend_end = 0
        self.peer_wnd = 0
        self.rto = INITIAL_RTO
        self.srtt = 0
        self.rto_at = None
        self.dupacks = 0
        self.rcv_nxt = 0
        self.ack_due = None
        self._probe_at = None
        self.error = None

    @property
    def is_open(self):
        return self.state == OPEN

    def _die(self, why):
        self.state = DEAD
        self.error = why

    # --- streams -------------------------------------------------------------------------

    def open_stream(self, sid):
        if self.state != OPEN:
            raise ChannelError("channel not open")
        if sid in self.streams or sid < 0 or sid >= MAX_STREAMS:
            raise ChannelError("stream %d busy or out of range" % sid)
        s = self._stream()
        self.streams[sid] = s
        return sid

    def _stream(self):
        b = self.tx_buffer
        if type(b) is not int:
            for o in self.streams.values():
                if o.tx.buf is b:
                    b = _TX_SPARE
                    break
        return _Stream(self.rx_buffer, b)

    def free_stream_id(self, urgent=False):
        base = URGENT if urgent else 0
        for sid in range(base + 1 if not urgent else base, base + 8):
            if sid not in self.streams:
                return sid
        return None

    def accept(self):
        """A stream the peer opened since the last call, or None."""
        if self._accepted:
            return self._accepted.pop(0)
        return None

    def write(self, sid, data, more=False):
        """Queue bytes on a stream; returns how many fit (0: wait for the peer).
        more: the rest of `data` follows as soon as there is room, so a partial packet
        at the end may wait for it while earlier packets are in flight (without this,
        every ACK let a sliver go out alone: 3% of a BLE link went to extra headers)."""
        s = self.streams.get(sid)
        if s is None or s.fin_wanted:
            raise ChannelError("stream %d is not open for writing" % sid)
        if self.state != OPEN:
            raise ChannelError(self.error or "channel not open")
        n = s.tx.put(data)
        s.more = more and n < len(data)
        return n

    def writable(self, sid):
        s = self.streams.get(sid)
        return s.tx.free() if s else 0

    def read_into(self, sid, buf):
        """Move received bytes into buf; returns the count, 0 if none yet, -1 at end."""
        s = self.streams.get(sid)
        if s is None:
            return -1
        n = s.rx.get_into(memoryview(buf), len(buf))
        if n == 0 and s.eof:
            self._maybe_forget(sid)
            return -1
        # A window that opened from nearly shut must be announced, or a sender that
        # respected it waits for a probe.
        if n and self._wnd_sent < self.peer_mtu_wire() and self._window() >= self.peer_mtu_wire():
            if self.ack_due is None:
                self.ack_due = 0
        return n

    def readable(self, sid):
        s = self.streams.get(sid)
        return s.rx.count if s else 0

    def at_eof(self, sid):
        s = self.streams.get(sid)
        return s is None or (s.eof and s.rx.count == 0)

    def close_stream(self, sid):
        """No more bytes from this end; FIN follows what is queued."""
        s = self.streams.get(sid)
        if s is not None:
            s.fin_wanted = True
            self._maybe_forget(sid)

    def flushed(self, sid):
        """Everything written on the stream (and its FIN, if closed) was acknowledged."""
        s = self.streams.get(sid)
        if s is None:
            return True
        if s.tx.count:
            return False       # unsent, or sent and not acknowledged
        return not s.fin_wanted or s.fin_acked

    def _maybe_forget(self, sid):
        s = self.streams.get(sid)
        if s is not None and s.fin_acked and s.eof and s.rx.count == 0:
            del self.streams[sid]

    def release(self, sid):
        """The application is done with a stream that has ended both ways."""
        self._maybe_forget(sid)

    def peer_mtu_wire(self):
        return self.peer_mtu + self.overhead

    # --- receiving -----------------------------------------------------------------------

    def _window(self):
        fullest = 0
        for s in self.streams.values():
            if s.rx.count > fullest:
                fullest = s.rx.count
        # Room is kept for two bare control packets (ACK, PROBE): they travel outside
        # the window and must not push data out of a full UART buffer.
        return max(0, min(self.rx_window - 2 * (HEADER + self.overhead), self.rx_buffer - fullest))

    def receive_packet(self, pkt, now):
        """Take one packet from the port. Bad or stale packets are dropped and counted."""
        n = len(pkt)
        if n < HEADER:
            self.dropped += 1
            return
        b0, epoch, seq, ack, wnd = struct.unpack_from(_HDR, pkt, 0)
        kind = b0 >> 4
        sid = b0 & 15
        if kind == SYN:
            self._on_syn(pkt, now)
            return
        if self.state == LISTEN or self.state == DEAD:
            if kind != RST and kind != SYNACK and not self.initiator:
                # The peer thinks a channel is open that this end never had (it restarted)
                # or has given up on (dead_ms without progress): tell it now, not after its
                # own dead_ms, so it starts a new one at once.
                self._ctrl = RST
                self._ctrl_at = now
                self.epoch = epoch
            self.dropped += 1
            return
        if epoch != self.epoch:
            self.dropped += 1
            return
        if kind == SYNACK:
            if self.state == SYN_SENT and n >= HEADER + 7 and struct.unpack_from(">I", pkt, HEADER + 1)[0] == self.conn_id:
                self.peer_mtu = min(self.mtu, struct.unpack_from(">H", pkt, HEADER + 5)[0])
                self.state = OPEN
                self._ctrl = None
                self.peer_wnd = wnd
                self.last_progress = now
                self._take_rtt(now - self._syn_sent, now)
            else:
                self.dropped += 1
            return
        if self.state != OPEN:
            self.dropped += 1
            return
        if kind == RST:
            self._die("the anchor reset the channel" if self.initiator else "the rover reset the channel")
            return
        self._on_ack(ack, wnd, kind == ACK or kind == PROBE, now)
        if kind == PROBE:
            self.ack_due = 0
            return
        if kind == DATA or kind == FIN:
            if seq != self.rcv_nxt:
                # A gap (something before it was lost) or a duplicate (our ACK was lost):
                # either way the peer needs to hear where we are, now.
                self.dropped += 1
                self.ack_due = 0
                return
            s = self.streams.get(sid)
            if s is None:
                if kind == FIN or self.initiator:
                    # A stream this end forgot: accept and ignore, so the seq moves on.
                    self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFF
                    self.ack_due = 0
                    return
                s = self._stream()
                self.streams[sid] = s
                self._accepted.append(sid)
            body = memoryview(pkt)[HEADER:]
            if len(body) > s.rx.free():
                self.dropped += 1        # beyond the window we advertised: sender bug or race
                self.ack_due = 0
                return
            if kind == FIN:
                s.eof = True
                self._maybe_forget(sid)
            else:
                s.rx.put(body)
            self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFF
            self.last_progress = now
            if self.ack_due is None:
                self.ack_due = now + ACK_DELAY
            # Half a window unacknowledged: acknowledge now so the sender keeps streaming.
            # Every second packet, as TCP does: the sender may keep less in flight than our
            # window (its tx_window), so half our window could be a long wait.
            self._rx_since_ack += 1
            if self._rx_since_ack >= 2:
                self.ack_due = 0

    def _on_syn(self, pkt, now):
        if self.initiator or len(pkt) < HEADER + 7 or pkt[HEADER] != VERSION:
            self.dropped += 1
            return
        cid = struct.unpack_from(">I", pkt, HEADER + 1)[0]
        mtu = struct.unpack_from(">H", pkt, HEADER + 5)[0]
        if cid != self.conn_id or self.state != OPEN:
            if self.state == OPEN or self.state == DEAD:
                self.resets += 1
            self._reset_state()
            self.conn_id = cid
            self.epoch = cid & 0xFF
            self.state = OPEN
            self.peer_mtu = min(self.mtu, mtu)
            self.peer_wnd = struct.unpack_from(_HDR, pkt, 0)[4]
            self.last_progress = now
        self._ctrl = SYNACK       # again if the first SYNACK was lost
        self._ctrl_at = now

    def _on_ack(self, ack, wnd, pure, now):
        fl = self.fl
        if fl.count and _before(ack, self.snd_una):
            return                          # an old packet overtaken by newer news
        if _before(self.snd_nxt, ack):
            return                          # acknowledges what was never sent: ignore
        freed = 0
        sample = None
        while fl.count and _before(self.snd_una, ack):
            i = fl.head
            n = fl.length[i]
            self.inflight_bytes -= HEADER + n + self.overhead
            freed += 1
            if fl.sends[i] == 1:
                sample = now - fl.sent[i]
            s = self.streams.get(fl.sid[i])
            if s is not None:
                if fl.kind[i] == FIN:
                    s.fin_acked = True
                    self._maybe_forget(fl.sid[i])
                else:
                    s.tx.drop(n)
                    s.tx_base += n
                    s.tx_sent -= n
            fl.head = (i + 1) % fl.cap
            fl.count -= 1
            self.snd_una = (self.snd_una + 1) & 0xFFFF
        old_wnd = self.peer_wnd
        self.peer_wnd = wnd
        if freed:
            self.resend = max(0, self.resend - freed)
            self.resend_end = max(0, self.resend_end - freed)
            self.dupacks = 0
            self.last_progress = now
            if self.recovering:
                self.recovering = False
                if fl.count and self.resend_end == 0:
                    self._go_back(now)
            self.rto_at = now + self.rto if fl.count else None
            if sample is not None:
                self._take_rtt(sample, now)
        elif pure and fl.count and wnd == old_wnd:
            self.dupacks += 1
            if self.dupacks == DUPACKS and self.resend_end == 0:
                # The peer keeps saying where it is stuck: go back now, not at the timeout.
                self._go_back(now)
        if self.peer_wnd >= self.peer_mtu_wire():
            self._probe_at = None

    def _pkt_wire(self):
        return self.peer_mtu + self.overhead

    def _adjust_cwnd(self, sample, now):
        pkt = self._pkt_wire()
        if self.min_rtt == 0 or sample < self.min_rtt:
            self.min_rtt = sample
        if now < self._cwnd_at:
            return
        self._cwnd_at = now + max(sample, 1)
        limited = self._cwnd_limited
        self._cwnd_limited = False
        # Bytes the link holds queued = cwnd * (1 - min_rtt / rtt): keep one to three
        # packets there, enough to keep it busy, too few to delay an urgent packet long.
        queued = self.cwnd * (sample - self.min_rtt) // max(sample, 1)
        if queued < pkt and limited:
            self.cwnd = min(self.tx_window, self.cwnd + pkt)
        elif queued > 3 * pkt:
            self.cwnd = max(3 * pkt, self.cwnd - pkt)

    def _take_rtt(self, sample, now):
        if sample < 0:
            return
        if self.cwnd:
            self._adjust_cwnd(sample, now)
        if self.srtt == 0:
            self.srtt = sample
            self.rttvar = sample // 2
        else:
            err = sample - self.srtt
            self.srtt += err // 8
            self.rttvar += (abs(err) - self.rttvar) // 4
        self.rto = max(MIN_RTO, min(MAX_RTO, self.srtt + 4 * self.rttvar + ACK_DELAY))

    def _go_back(self, now, count=0):
        self.resend = 0
        self.resend_end = count or self.fl.count
        self.recovering = count != 0
        self.rto_at = now + self.rto

    # --- sending -------------------------------------------------------------------------

    def _header(self, kind, sid, seq):
        """Write a header into the packet buffer; every packet carries our ACK and window."""
        self._wnd_sent = self._window()
        self._rx_since_ack = 0
        self.ack_due = None
        struct.pack_into(_HDR, self._out, 0, (kind << 4) | sid, self.epoch, seq, self.rcv_nxt, self._wnd_sent)

    def packet_to_send(self, now):
        """The next packet to put on the link now, or None. Call until None after every
        receive, write, read or timeout. The packet is a view of one buffer, valid until
        the next call: send it (or copy it) at once."""
        if self.state == DEAD:
            if self._ctrl != RST:
                return None
            self._ctrl = None
            struct.pack_into(_HDR, self._out, 0, RST << 4, self.epoch, 0, 0, 0)
            return self._outmv[:HEADER]
        fl = self.fl
        if self.last_progress is not None and self.state != LISTEN and now - self.last_progress > self.dead_ms:
            if fl.count or self.state == SYN_SENT:
                self._die("no answer on the link for %d s" % (self.dead_ms // 1000))
                return None
        if self._ctrl is not None and now >= self._ctrl_at:
            kind = self._ctrl
            if kind == SYN:
                self._syn_sent = now
                self._ctrl_at = now + self.rto
                self.rto = min(MAX_RTO, self.rto * 2)
            else:
                self._ctrl = None
            if kind == RST:
                struct.pack_into(_HDR, self._out, 0, RST << 4, self.epoch, 0, 0, 0)
                return self._outmv[:HEADER]
            self._header(kind, 0, 0)
            struct.pack_into(">BIH", self._out, HEADER, VERSION, self.conn_id, self.mtu)
            return self._outmv[:HEADER + 7]
        if self.state != OPEN:
            return None
        # retransmissions first: the peer can use nothing after a gap
        if self.rto_at is not None and now >= self.rto_at and fl.count:
            self.timeouts += 1
            self.rto = min(MAX_RTO, self.rto * 2)
            # Only the oldest packet: the peer may just be busy with the rest sitting in
            # its receive buffer, which must not overflow with copies. An ACK that then
            # moves but stops short says the rest were lost, and they follow.
            self._go_back(now, 1)
            # The copy may land in the peer's buffer after it has drained the original:
            # keep its room free for a while, so it cannot push out a new packet.
            self.ghost = HEADER + fl.length[fl.head] + self.overhead
            self.ghost_until = now + self.rto
        if self.resend < self.resend_end and self.resend < fl.count:
            i = fl.slot(self.resend)
            seq = (self.snd_una + self.resend) & 0xFFFF
            self.resend += 1
            self.retransmits += 1
            if fl.sends[i] < 255:
                fl.sends[i] += 1
            fl.sent[i] = now
            return self._build(i, seq)
        self.resend = self.resend_end = 0
        pkt = self._next_data(now)
        if pkt is not None:
            return pkt
        if self.ack_due is not None and now >= self.ack_due:
            self._header(ACK, 0, self.snd_nxt)
            return self._outmv[:HEADER]
        if self._window_blocked():
            if self._probe_at is None:
                self._probe_at = now + self.rto
            elif now >= self._probe_at:
                self._probe_at = now + self.rto
                self._header(PROBE, 0, self.snd_nxt)
                return self._outmv[:HEADER]
        return None

    def _build(self, i, seq):
        """The packet in flight slot i, rebuilt from its stream's tx ring."""
        fl = self.fl
        n = fl.length[i]
        self._header(fl.kind[i], fl.sid[i], seq)
        if n:
            s = self.streams[fl.sid[i]]
            s.tx.peek_into(self._outmv[HEADER:HEADER + n], fl.off[i] - s.tx_base, n)
        return self._outmv[:HEADER + n]

    def _window_blocked_any(self):
        for s in self.streams.values():
            if s.tx.count > s.tx_sent:
                return True
        return False

    def _window_blocked(self):
        if self.fl.count:
            return False
        for s in self.streams.values():
            if s.tx.count > s.tx_sent or (s.fin_wanted and not s.fin_sent):
                return True
        return False

    def _next_data(self, now):
        fl = self.fl
        if fl.count >= fl.cap:
            return None
        if not self.cwnd:
            self.cwnd = min(self.tx_window, 4 * self._pkt_wire())
        room = min(self.peer_wnd, self.cwnd) - self.inflight_bytes
        if self.ghost and now < self.ghost_until:
            room -= self.ghost
        limit = self.peer_mtu - HEADER
        if room < HEADER + self.overhead + 1:
            if self.cwnd < self.peer_wnd and self._window_blocked_any():
                self._cwnd_limited = True
            return None
        pick = None
        for urgent in (True, False):
            for i in range(MAX_STREAMS // 2):
                sid = (URGENT if urgent else 0) + (self._rr + i) % (MAX_STREAMS // 2)
                s = self.streams.get(sid)
                if s is not None and (s.tx.count > s.tx_sent or (s.fin_wanted and not s.fin_sent)):
                    pick = sid
                    break
            if pick is not None:
                break
        if pick is None:
            return None
        s = self.streams[pick]
        if not urgent:
            # While a relay exchange is open, backup data trickles one packet at a time:
            # whatever is in flight queues in front of the relay's next message.
            if self.inflight_bytes and self._urgent_open():
                return None
            self._rr = (pick + 1) % (MAX_STREAMS // 2)
        unsent = s.tx.count - s.tx_sent
        if unsent:
            n = min(unsent, limit, room - HEADER - self.overhead)
            if n <= 0:
                return None
            if n < limit and s.more and fl.count:
                return None          # the writer is topping up: send a whole packet
            off = s.tx_base + s.tx_sent
            s.tx_sent += n
            kind = DATA
        else:
            n = 0
            off = 0
            s.fin_sent = True
            kind = FIN
        seq = self.snd_nxt
        self.snd_nxt = (seq + 1) & 0xFFFF
        i = fl.slot(fl.count)
        fl.count += 1
        fl.sid[i] = pick
        fl.kind[i] = kind
        fl.length[i] = n
        fl.off[i] = off
        fl.sent[i] = now
        fl.sends[i] = 1
        self.inflight_bytes += HEADER + n + self.overhead
        if self.rto_at is None:
            self.rto_at = now + self.rto
        if self.last_progress is None or fl.count == 1:
            self.last_progress = now
        return self._build(i, seq)

    def _urgent_open(self):
        for sid in self.streams:
            if sid >= URGENT:
                return True
        return False

    def next_timeout(self, now):
        """The time packet_to_send() next has something to do, or None."""
        t = None
        for c in (self._ctrl_at if self._ctrl is not None else None, self.ack_due,
                  self.rto_at if self.fl.count else None, self._probe_at):
            if c is not None and (t is None or c < t):
                t = c
        if self.last_progress is not None and (self.fl.count or self.state == SYN_SENT):
            d = self.last_progress + self.dead_ms + 1
            if t is None or d < t:
                t = d
        return t
