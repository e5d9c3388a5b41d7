# The restore's messages and transitions (anchor_core/restoremsg.py); runs under CPython (pytest)
# and MicroPython (mpy_runner).
from anchor_core import messages as m
from anchor_core import restoremsg as rm
from anchor_core import states as st
from anchor_core.session import Session
from session_support import expect_error, pipe

OID = b"\x11" * 32
CID = b"\x22" * 32


def ready_pair():
    rm.install()
    rover, anchor = Session(st.ROVER, 8192), Session(st.ANCHOR, 8192)
    pipe(rover, anchor, m.hello("phone", None, 0))
    pipe(anchor, rover, m.welcome(1, False, 0))
    return rover, anchor


def test_a_whole_restore_follows_the_table():
    rover, anchor = ready_pair()
    pipe(rover, anchor, rm.restore(None, "", rm.F_DELETE, 13))
    pipe(anchor, rover, [rm.RSNAP, 3, 10, 5000])
    pipe(rover, anchor, rm.seeds(0, 0, [m.put_entry("a/b.txt", m.T_FILE, 9, 0, 0o644, None)]))
    pipe(anchor, rover, [rm.SEEDASK, 0, [0]])
    pipe(rover, anchor, rm.seedlist(0, 0, [CID], [9], True, 9))
    pipe(rover, anchor, [rm.SEEDEND, 1])
    pipe(anchor, rover, [rm.RTOTAL, 1, 9, 5])
    pipe(anchor, rover, [rm.RPUT, "a", m.T_DIR, 0, 5, 0o755, None, None, rm.H_WRITE, 0, None])
    pipe(anchor, rover, [rm.RPUT, "a/c", m.T_FILE, 9, 5, 0o644, OID, None, rm.H_WRITE, 9, None])
    pipe(anchor, rover, [rm.RCOPY, 0, "a/b.txt", 0, 4])
    pipe(anchor, rover, [rm.RDATA, CID, m.ENC_RAW, 5, 5, b"hello"])
    pipe(anchor, rover, [rm.RDEL, "a/b.txt"])
    pipe(anchor, rover, [rm.RDONE, 1, 9, 1, 0])
    assert rover.state == st.READY and anchor.state == st.READY
    # and another request may follow on the same session
    pipe(rover, anchor, rm.restore(2, "a", 0, 15))
    pipe(anchor, rover, m.fail(m.F_BAD_REQUEST, "no snapshot 2"))
    assert rover.state == st.READY


def test_out_of_place_messages_are_protocol_errors():
    rover, anchor = ready_pair()
    # the anchor cannot start a plan nobody asked for
    expect_error(lambda: anchor.send([rm.RDONE, 0, 0, 0, 0]), m.E_PROTOCOL)
    pipe(rover, anchor, rm.restore(None, "", 0, 15))
    # no seeds before RSNAP
    expect_error(lambda: rover.send(rm.seeds(0, 0, [])), m.E_PROTOCOL)
    pipe(anchor, rover, [rm.RSNAP, 1, 0, 0])
    pipe(rover, anchor, rm.seeds(4, 0, []))
    # SEEDASK must answer the batch just sent
    expect_error(lambda: rover.receive_data(Session(st.ANCHOR).send([rm.SEEDASK, 5, []])) or rover.next_event())


def test_bad_fields_are_refused():
    rm.install()
    bad = [
        rm.restore(None, "../x", 0, 15),            # a path out of the target
        rm.restore(None, "", 99, 15),               # unknown flags
        rm.restore(None, "", 0, 20),                # window bits
        rm.restore(0, "", 0, 15),                   # snapshot 0 is none
        rm.seeds(0, 9, []),                         # root past --seed's limit
        rm.seeds(0, 0, [[1, "x"]]),                 # a DEL is not a seed
        rm.seedlist(0, 0, [CID], [], True, 1),      # an id without its length
        rm.seedlist(0, 0, [b"short"], [1], True, 1),
        rm.seedlist(0, 0, [CID] * 65, [1] * 65, True, 65),
        [rm.RPUT, "/abs", m.T_FILE, 1, 0, 0o644, OID, None, 0, 0, None],
        [rm.RPUT, "a", m.T_FILE, 1, 0, 0o644, OID, None, 7, 0, None],
        [rm.RCOPY, 0, "a/../../b", 0, 1],
        [rm.RDATA, CID, 2, 5, 5, b"hello"],
        [rm.RDATA, CID, 0, 5, 3, b"hello"],         # a piece longer than announced
        [rm.RDATA, CID, 0, 70000, 5, b"hello"],     # a chunk above the limit
        [rm.RDEL, ""],
        [rm.RDONE, 1, 2, 3],
        [rm.RTOTAL, 1, -2, 0],
    ]
    for msg in bad:
        expect_error(lambda: m.check(msg))


def test_seeds_need_no_object_id_but_the_entry_rules_hold():
    rm.install()
    m.check(rm.seeds(0, 0, [m.put_entry("f", m.T_FILE, 3, 0, 0o644, None),
                            m.put_entry("d", m.T_DIR, 0, 0, 0o755, None),
                            m.put_entry("l", m.T_LINK, 0, 0, 0o777, None, "")]))
    expect_error(lambda: m.check(rm.seeds(0, 0, [m.put_entry("l", m.T_LINK, 0, 0, 0o777, None)])))
    expect_error(lambda: m.check(rm.seeds(0, 0, [m.put_entry("f", m.T_FILE, -1, 0, 0o644, None)])))
