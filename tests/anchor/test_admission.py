"""The anchor's connection pools (anchor/admission.py): sized below the file limit, the
oldest unfinished handshake makes room, a paired device's newest session replaces its
oldest, a full session pool refuses."""
from anchor.admission import (Admission, Limits, PENDING_PER_ADDRESS, RESERVED_FDS,
                              SESSIONS_PER_DEVICE)


class Conn:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def test_pools_stay_below_the_file_limit():
    for nofile in (64, 256, 1024, 4096, 1 << 20):
        lim = Limits.for_fd_limit(nofile)
        used = lim.pending + lim.sessions + 3 * lim.proxy
        assert used <= max(nofile - RESERVED_FDS, 24) + 30, (nofile, used)
        assert lim.pending >= 4 and lim.sessions >= 4 and lim.proxy >= 2


def test_unfinished_handshakes_make_room_oldest_first():
    adm = Admission(Limits(pending=4, sessions=4, proxy=2))
    conns = [Conn() for _ in range(6)]
    slots = [adm.take_pending("10.0.0.%d" % i, c.close) for i, c in enumerate(conns)]
    assert all(s is not None for s in slots)
    assert [c.closed for c in conns] == [True, True, False, False, False, False]
    assert len(adm.pending) == 4
    slots[3].release()
    assert len(adm.pending) == 3


def test_one_address_cannot_take_the_whole_pool():
    adm = Admission(Limits(pending=1000, sessions=4, proxy=2))
    conns = [Conn() for _ in range(PENDING_PER_ADDRESS + 3)]
    for c in conns:
        assert adm.take_pending("10.0.0.9", c.close) is not None
    assert sum(c.closed for c in conns) == 3 and conns[0].closed and not conns[-1].closed
    assert adm.pending.count("10.0.0.9") == PENDING_PER_ADDRESS
    assert adm.take_pending("10.0.0.10", Conn().close) is not None


def test_sessions_per_device_and_in_total():
    adm = Admission(Limits(pending=4, sessions=SESSIONS_PER_DEVICE + 2, proxy=2))
    mine = [Conn() for _ in range(SESSIONS_PER_DEVICE + 1)]
    for c in mine:
        assert adm.take_session("rover-a", "10.0.0.1", c.close) is not None
    assert mine[0].closed and not any(c.closed for c in mine[1:])
    assert adm.take_session("rover-b", "10.0.0.2", Conn().close) is not None
    assert adm.take_session("rover-c", "10.0.0.3", Conn().close) is not None
    assert adm.take_session("rover-d", "10.0.0.4", Conn().close) is None     # full: refused
    assert adm.refused["sessions"] == 1


def test_the_proxy_pool_refuses_when_full():
    adm = Admission(Limits(pending=4, sessions=4, proxy=2))
    a = adm.take_proxy("10.0.0.1", Conn().close)
    assert adm.take_proxy("10.0.0.2", Conn().close) is not None
    assert adm.take_proxy("10.0.0.3", Conn().close) is None
    a.release()
    assert adm.take_proxy("10.0.0.3", Conn().close) is not None
