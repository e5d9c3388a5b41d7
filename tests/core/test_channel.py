# The channel under a simulated link with virtual time: loss, latency, a slow UART-like
# receiver, restarts. Runs under CPython (pytest) and MicroPython (mpy_runner).
from anchor_core import channel as c


class Lcg:
    """Deterministic pseudo-random numbers, the same on both runtimes."""

    def __init__(self, seed):
        self.x = seed & 0x7FFFFFFF or 1

    def next(self):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x

    def chance(self, per_million):
        return self.next() % 1000000 < per_million


class Wire:
    """One direction: packets arrive `latency` ms later, at `rate` bytes/ms, some lost."""

    def __init__(self, latency=5, rate=20, loss=0, seed=1, overhead=0):
        self.q = []               # [due, bytes]
        self.latency = latency
        self.rate = rate
        self.loss = loss          # per million packets
        self.rnd = Lcg(seed)
        self.free_at = 0
        self.sent = 0
        self.lost = 0
        self.overhead = overhead

    def put(self, pkt, now):
        start = max(now, self.free_at)
        self.free_at = start + (len(pkt) + self.overhead) // self.rate + 1
        self.sent += len(pkt)
        if self.rnd.chance(self.loss):
            self.lost += 1
            return
        self.q.append([self.free_at + self.latency, bytes(pkt)])

    def due(self, now):
        out = []
        while self.q and self.q[0][0] <= now:
            out.append(self.q.pop(0)[1])
        return out


class Sim:
    def __init__(self, rover=None, anchor=None, up=None, down=None):
        self.r = rover or c.Channel(True, 256)
        self.a = anchor or c.Channel(False, 256)
        self.up = up or Wire(seed=3)
        self.down = down or Wire(seed=5)
        self.now = 0
        self.r_hold = False      # a busy rover: packets wait in its "UART" unread
        self.r_uart = []
        self.max_r_uart = 0
        self.uart_size = None    # bytes the rover's UART holds; more are lost, as on a real one
        self.overrun = 0
        self.overrun_new = 0     # lost packets the rover had never received a copy of
        self.seen = {}

    def step(self, ms=1):
        for _ in range(ms):
            self.now += 1
            for ch, w in ((self.r, self.up), (self.a, self.down)):
                for _ in range(64):
                    p = ch.packet_to_send(self.now)
                    if p is None:
                        break
                    w.put(p, self.now)
            for p in self.up.due(self.now):
                self.a.receive_packet(p, self.now)
            held = 0
            for p in self.r_uart:
                held += len(p) + self.r.overhead
            for p in self.down.due(self.now):
                key = bytes(p[2:4]) + bytes(p[8:])
                if self.uart_size is not None and held + len(p) + self.r.overhead > self.uart_size:
                    self.overrun += 1
                    if key not in self.seen:
                        self.overrun_new += 1
                    continue
                self.seen[key] = 1
                self.r_uart.append(p)
                held += len(p) + self.r.overhead
            if held > self.max_r_uart:
                self.max_r_uart = held
            if not self.r_hold:
                for p in self.r_uart:
                    self.r.receive_packet(p, self.now)
                self.r_uart = []

    def run_until(self, cond, limit=200000):
        for _ in range(limit):
            if cond():
                return
            self.step()
        raise AssertionError("condition not met within %d virtual ms" % limit)


def connect(sim):
    sim.r.connect(0x1234567, sim.now)
    sim.run_until(lambda: sim.r.is_open and sim.a.is_open, 5000)


def pattern(n, seed):
    out = bytearray(n)
    x = seed
    for i in range(n):
        x = (x * 73 + 41) & 0xFF
        out[i] = x
    return bytes(out)


def pump_bytes(sim, src, dst, sid, data, dst_sid=None, limit=400000):
    """Write data on src's stream and read it all on dst; returns what arrived."""
    got = bytearray(len(data))     # preallocated: MicroPython's heap is small
    have = 0
    pos = 0
    dmv = memoryview(data)
    accepted = [dst_sid]
    for _ in range(limit):
        if pos < len(data):
            pos += src.write(sid, dmv[pos:pos + 300])
        if accepted[0] is None:
            accepted[0] = dst.accept()
        if accepted[0] is not None:
            while have < len(got):
                n = dst.read_into(accepted[0], memoryview(got)[have:have + 97])
                if n <= 0:
                    break
                have += n
        if have >= len(data):
            return got, accepted[0]
        sim.step()
    raise AssertionError("only %d of %d bytes arrived" % (have, len(data)))


def test_handshake_and_stream_both_ways():
    sim = Sim()
    connect(sim)
    sid = sim.r.open_stream(1)
    data = pattern(5000, 1)
    got, asid = pump_bytes(sim, sim.r, sim.a, sid, data)
    assert got == data and asid == 1
    back = pattern(3000, 2)
    got, _ = pump_bytes(sim, sim.a, sim.r, 1, back, dst_sid=1)
    assert got == back
    assert sim.r.retransmits == 0 and sim.a.retransmits == 0


def test_loss_is_recovered_in_order():
    sim = Sim(up=Wire(loss=80000, seed=11), down=Wire(loss=80000, seed=13))
    connect(sim)
    sid = sim.r.open_stream(2)
    data = pattern(20000, 3)
    got, _ = pump_bytes(sim, sim.r, sim.a, sid, data)
    assert got == data
    assert sim.up.lost > 0 and sim.r.retransmits + sim.a.retransmits > 0


def test_duplicates_and_stale_packets_are_dropped():
    sim = Sim()
    connect(sim)
    sid = sim.r.open_stream(1)
    sim.r.write(sid, b"hello")
    p = sim.r.packet_to_send(sim.now)
    sim.a.receive_packet(p, sim.now)
    sim.a.receive_packet(p, sim.now)             # duplicate
    before = sim.a.dropped
    stale = bytearray(p)
    stale[1] ^= 0xFF                             # another connection's epoch
    sim.a.receive_packet(stale, sim.now)
    sim.a.receive_packet(b"\x10\x00", sim.now)   # too short
    assert sim.a.dropped == before + 2
    buf = bytearray(16)
    n = sim.a.read_into(sim.a.accept(), buf)
    assert bytes(buf[:n]) == b"hello"


def test_window_protects_a_busy_uart():
    # The rover takes in at most 600 wire bytes unread (a small UART buffer) and stops
    # reading for long stretches, as when it hashes a file.
    r = c.Channel(True, 256, overhead=10, rx_window=600, rx_buffer=2048)
    a = c.Channel(False, 256, overhead=10, rx_window=8192, rx_buffer=8192, tx_window=8192)
    sim = Sim(r, a)
    sim.uart_size = 600
    connect(sim)
    sid = sim.r.open_stream(1)
    sim.r.write(sid, b"x")
    sim.run_until(lambda: sim.a.accept() is not None or False, 2000)
    data = pattern(12000, 4)
    pos = 0
    got = bytearray(len(data))
    have = 0
    dmv = memoryview(data)
    for t in range(400000):
        sim.r_hold = (t // 300) % 3 == 0          # busy one third of the time
        if pos < len(data):
            pos += sim.a.write(1, dmv[pos:pos + 1000])
        while have < len(got):
            n = sim.r.read_into(sid, memoryview(got)[have:have + 512])
            if n <= 0:
                break
            have += n
        if have == len(data):
            break
        sim.step()
    assert got == data
    assert sim.max_r_uart > 400
    # Timeouts while the rover was busy resent copies it already held; nothing it
    # needed was ever lost to a full buffer.
    assert sim.overrun_new == 0, (sim.overrun, sim.overrun_new)
    assert sim.a.retransmits <= sim.a.timeouts + 5


def test_urgent_stream_overtakes_bulk():
    # tx_window keeps about the link's bandwidth-delay product in flight: anything more
    # would queue in front of the urgent bytes where no priority can reach it.
    sim = Sim(c.Channel(True, 256, tx_window=600), up=Wire(rate=1, latency=10))
    connect(sim)
    bulk = sim.r.open_stream(1)
    urgent = sim.r.open_stream(c.URGENT)
    sim.r.write(bulk, pattern(4000, 5))
    for _ in range(200):
        sim.step()
    sim.r.write(urgent, b"GET /page")
    first_urgent = None
    buf = bytearray(64)
    seen = {}
    for _ in range(60000):
        sim.step()
        while True:
            s = sim.a.accept()
            if s is None:
                break
            seen[s] = 0
        for s in seen:
            while True:
                n = sim.a.read_into(s, buf)
                if n <= 0:
                    break
                seen[s] += n
        if seen.get(c.URGENT) == 9 and first_urgent is None:
            first_urgent = seen.get(1, 0)
        if seen.get(1) == 4000:
            break
    assert first_urgent is not None
    # the urgent request waited only for the bulk bytes already in flight
    assert first_urgent < 4000 - 1000, first_urgent


def test_fin_ends_streams_and_frees_them():
    sim = Sim()
    connect(sim)
    sid = sim.r.open_stream(3)
    sim.r.write(sid, b"abc")
    sim.r.close_stream(sid)
    sim.run_until(lambda: sim.a.accept() == 3 or 3 in sim.a.streams, 2000)
    buf = bytearray(8)
    sim.run_until(lambda: sim.a.readable(3) == 3 or sim.a.at_eof(3), 2000)
    assert sim.a.read_into(3, buf) == 3
    sim.run_until(lambda: sim.a.read_into(3, buf) == -1, 2000)
    sim.a.close_stream(3)
    sim.run_until(lambda: 3 not in sim.r.streams and 3 not in sim.a.streams, 5000)
    assert sim.r.read_into(3, buf) == -1


def test_rover_restart_resets_the_anchor_end():
    sim = Sim()
    connect(sim)
    sid = sim.r.open_stream(1)
    sim.r.write(sid, b"old")
    sim.run_until(lambda: sim.a.accept() is not None, 2000)
    sim.r = c.Channel(True, 256)             # the rover rebooted
    sim.r.connect(0x7654321, sim.now)
    sim.run_until(lambda: sim.r.is_open, 5000)
    assert sim.a.resets == 1 and not sim.a.streams
    sid = sim.r.open_stream(1)
    got, _ = pump_bytes(sim, sim.r, sim.a, sid, b"new session")
    assert got == b"new session"


def test_anchor_restart_kills_the_rover_channel():
    sim = Sim()
    connect(sim)
    sim.a = c.Channel(False, 256)            # the anchor restarted and knows nothing
    sid = sim.r.open_stream(1)
    sim.r.write(sid, b"data")
    sim.run_until(lambda: sim.r.state == c.DEAD, 5000)
    assert "reset" in sim.r.error
    try:
        sim.r.write(sid, b"more")
        raise AssertionError("write on a dead channel")
    except c.ChannelError:
        pass


def test_silent_peer_times_out():
    r = c.Channel(True, 256, dead_ms=3000)
    sim = Sim(r, c.Channel(False, 256), up=Wire(loss=1000000))
    sim.r.connect(1, 0)
    sim.run_until(lambda: sim.r.state == c.DEAD, 10000)
    assert "no answer" in sim.r.error


def test_malformed_packets_change_nothing():
    sim = Sim()
    connect(sim)
    before = (sim.a.rcv_nxt, len(sim.a.streams))
    rnd = Lcg(99)
    for i in range(300):
        n = rnd.next() % 40
        p = bytearray(n)
        for j in range(n):
            p[j] = rnd.next() & 0xFF
        if n > 1:
            p[1] = 0x55                        # not this channel's epoch
        sim.a.receive_packet(bytes(p), sim.now)
    assert (sim.a.rcv_nxt, len(sim.a.streams)) == before
    assert sim.a.is_open


def test_window_grows_to_fill_a_link_with_latency():
    # 20 bytes/ms with 60 ms each way: the bandwidth-delay product is ~2.4 KB, more than
    # the initial four packets; the channel must find it to keep the link busy.
    r = c.Channel(True, 256, overhead=10, tx_window=16384, rx_buffer=8192)
    a = c.Channel(False, 256, overhead=10, rx_window=16384, rx_buffer=16384)
    sim = Sim(r, a, up=Wire(latency=60, rate=20), down=Wire(latency=60, rate=20))
    connect(sim)
    sid = sim.r.open_stream(1)
    data = pattern(40000, 6)
    t0 = sim.now
    got, _ = pump_bytes(sim, sim.r, sim.a, sid, data)
    assert got == data
    took = sim.now - t0
    wire = 40000 * 266 // 248            # data plus headers and port overhead
    # 75% of the line rate over a transfer short enough that the ramp-up weighs in (the
    # four packets it starts with alone give 36%)
    assert wire / took >= 20 * 0.75, (wire / took, sim.r.cwnd)
    assert sim.r.cwnd > 4 * 266


def test_window_stays_small_on_a_link_without_latency():
    r = c.Channel(True, 256, overhead=10, tx_window=16384, rx_buffer=8192)
    a = c.Channel(False, 256, overhead=10, rx_window=16384, rx_buffer=16384)
    sim = Sim(r, a, up=Wire(latency=0, rate=2), down=Wire(latency=0, rate=2))
    connect(sim)
    sid = sim.r.open_stream(1)
    data = pattern(20000, 7)
    got, _ = pump_bytes(sim, sim.r, sim.a, sid, data)
    assert got == data
    assert sim.r.cwnd <= 5 * 266, sim.r.cwnd    # a few packets: no standing queue


def test_a_dead_anchor_end_resets_a_rover_that_still_talks():
    # The anchor gave up (no progress for dead_ms with data in flight: the rover was away);
    # the rover comes back and sends on the old channel. It must hear RST at once, not wait
    # out its own dead_ms on a channel the anchor no longer serves.
    sim = Sim(c.Channel(True, 256, dead_ms=60000), c.Channel(False, 256, dead_ms=2000))
    connect(sim)
    sid = sim.r.open_stream(1)
    sim.r.write(sid, b"hello")
    sim.run_until(lambda: sim.a.accept() is not None, 2000)
    sim.a.write(1, b"answer")
    sim.r_hold = True                       # the rover hears nothing for a while
    sim.run_until(lambda: sim.a.state == c.DEAD, 10000)
    sim.r_hold = False
    sim.r_uart = []                         # what it missed is gone
    start = sim.now
    sim.r.write(sid, b"still there?")
    sim.run_until(lambda: sim.r.state == c.DEAD, 5000)
    assert "reset" in sim.r.error
    assert sim.now - start < 1000


def test_a_lent_send_ring_serves_one_stream_at_a_time():
    # The rover lends the channel the 16 KiB it took at start-up: the first stream sends
    # through it (and keeps that much in flight), a second open at the same time gets a ring
    # of its own, and once the first is gone the next stream has the lent ring again.
    ring = bytearray(16384)
    r = c.Channel(True, 256, overhead=10, tx_buffer=ring, tx_window=16384, rx_buffer=2048)
    a = c.Channel(False, 256, overhead=10, rx_window=16384, rx_buffer=16384)
    sim = Sim(r, a, up=Wire(latency=60, rate=20), down=Wire(latency=60, rate=20))
    connect(sim)
    sid = r.open_stream(1)
    other = r.open_stream(2)
    assert r.streams[sid].tx.buf is ring and r.streams[sid].tx.size == 16384
    assert r.streams[other].tx.buf is not ring and r.streams[other].tx.size == 2048
    data = pattern(40000, 7)
    t0 = sim.now
    got, _ = pump_bytes(sim, r, a, sid, data)
    assert got == data
    wire = 40000 * 266 // 248
    assert wire / (sim.now - t0) >= 20 * 0.75, (wire / (sim.now - t0), r.cwnd)
    r.close_stream(sid)
    sim.run_until(lambda: a.read_into(1, bytearray(8)) == -1, 5000)
    a.close_stream(1)
    sim.run_until(lambda: sid not in r.streams, 5000)
    third = r.open_stream(3)
    assert r.streams[third].tx.buf is ring and r.streams[third].tx.count == 0
