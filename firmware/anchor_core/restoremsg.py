# Restore over the rover's own link (docs/protocol.md §9): the message numbers, builders,
# checks and session transitions of a restore.
#
# They live here, not in messages.py and states.py, because a module's every public name and
# every table entry is heap on a MicroPython rover, and a paired MQTT backup has about 2 KB of
# its 256 KB to spare: the backup never loads this module. install() adds the restore's rules
# to the shared table (states.TRANSITIONS) and its checks to messages.check(), so one table
# still holds every transition of a session once a restore is possible; both ends call it.
from anchor_core.compat import const
from anchor_core import messages as m
from anchor_core import states as st

RESTORE = const(21)     # rover: [snapshot or null, path prefix ("" for all), flags, window bits]
RSNAP = const(22)       # anchor: [snapshot, entries, bytes]: the restore is on
SEEDS = const(23)       # rover: [batch, root, entries]: what it holds (ENTRIES' PUT form)
SEEDASK = const(24)     # anchor: [batch, indices]: the seeds whose chunk lists it wants
SEEDLIST = const(25)    # rover: [index, first, chunk ids, lengths, last]
SEEDEND = const(26)     # rover: [seed count]: now the plan
RPUT = const(27)        # anchor: [path, type, size, mtime, mode, object id, target, how, link bytes, text]
RCOPY = const(28)       # anchor: [root, path, offset, length]: bytes the rover holds
RDATA = const(29)       # anchor: [chunk id, encoding, raw length, encoded length, first piece]
RDEL = const(30)        # anchor: [path]
RDONE = const(31)       # anchor: [files written, bytes written, chunks sent, failed]
RTOTAL = const(32)      # anchor: [files to write, their bytes, raw bytes to come down]: the plan's first

# RESTORE flags
F_DELETE = const(1)     # remove what the snapshot does not hold (under the prefix)
F_DRY_RUN = const(2)    # say what would happen; no content is sent
F_NO_SEEDS = const(4)   # copy nothing from the rover's files (after a seed failed its check)
F_NO_META = const(8)    # the rover cannot set modes and mtimes (MicroPython): never send them alone

# RPUT how
H_WRITE = const(0)      # create or replace; a file's content follows (RCOPY, RDATA)
H_META = const(1)       # it is there with this content: set mode and mtime only
H_DIR_TIMES = const(2)  # a folder's mode and mtime, after everything below it
H_FAILED = const(3)     # cannot be restored (text says why); what is there stays

MAX_ROOTS = const(9)    # --to and at most 8 --seed folders
MAX_SEED_IDS = const(64)
PIECE = const(4096)     # chunk bytes per RDATA or BODY sent to a rover

# new states of the session table (states.py numbers up to 11)
R_ASKED = const(12)     # anchor owes RSNAP (or FAIL)
R_SEEDING = const(13)   # rover describes what it holds
R_AWAIT_ASK = const(14)  # anchor owes SEEDASK for the last SEEDS
R_PLAN = const(15)      # anchor streams the plan; RDONE (or FAIL) ends it


def install():
    if RESTORE in m.NAMES:
        return
    for t, name in ((RESTORE, "RESTORE"), (RSNAP, "RSNAP"), (SEEDS, "SEEDS"), (SEEDASK, "SEEDASK"),
                    (SEEDLIST, "SEEDLIST"), (SEEDEND, "SEEDEND"), (RPUT, "RPUT"), (RCOPY, "RCOPY"),
                    (RDATA, "RDATA"), (RDEL, "RDEL"), (RDONE, "RDONE"), (RTOTAL, "RTOTAL")):
        m.NAMES[t] = name
    st.name_states(R_ASKED, ("R_ASKED", "R_SEEDING", "R_AWAIT_ASK", "R_PLAN"))
    tr = st.TRANSITIONS
    tr[(st.READY, st.ROVER, RESTORE)] = R_ASKED
    tr[(R_ASKED, st.ANCHOR, RSNAP)] = R_SEEDING
    tr[(R_ASKED, st.ANCHOR, m.FAIL)] = st.READY
    tr[(R_SEEDING, st.ROVER, SEEDS)] = R_AWAIT_ASK
    tr[(R_AWAIT_ASK, st.ANCHOR, SEEDASK)] = R_SEEDING
    tr[(R_SEEDING, st.ROVER, SEEDLIST)] = R_SEEDING
    tr[(R_SEEDING, st.ROVER, SEEDEND)] = R_PLAN
    for t in (RPUT, RCOPY, RDATA, m.BODY, RDEL, RTOTAL):
        tr[(R_PLAN, st.ANCHOR, t)] = R_PLAN
    tr[(R_PLAN, st.ANCHOR, RDONE)] = st.READY
    tr[(R_PLAN, st.ANCHOR, m.FAIL)] = st.READY
    m.extend(RESTORE, RTOTAL, check)


def _path(p, empty=False):
    if empty and p == "":
        return p
    m.check_path(p)
    return p


def _n(v, hi, what):
    if type(v) is not int or v < 0 or v > hi:
        m._fail("%s out of range" % what)
    return v


def check(msg):
    """messages.check() for the restore's types; raises ProtocolError."""
    t = msg[0]
    n = len(msg)
    need = (5, 4, 4, 3, 7, 2, 11, 5, 6, 2, 5, 4)[t - RESTORE] if RESTORE <= t <= RTOTAL else 0
    if not need:
        m._fail("unknown message type %d" % t)
    if n < need:
        m._fail("%s too short" % m.NAMES[t])
    if t == RESTORE:
        if msg[1] is not None and _n(msg[1], 1 << 62, "snapshot") < 1:
            m._fail("snapshot numbers start at 1")
        _path(msg[2], True)
        _n(msg[3], 15, "restore flags")
        if type(msg[4]) is not int or msg[4] < 9 or msg[4] > 15:
            m._fail("window bits must be 9..15")
    elif t == RSNAP:
        _n(msg[1], 1 << 62, "snapshot")
        _n(msg[2], 1 << 40, "entry count")
        _n(msg[3], 1 << 62, "total bytes")
    elif t == SEEDS:
        _n(msg[1], 1 << 62, "batch number")
        _n(msg[2], MAX_ROOTS - 1, "seed root")
        if type(msg[3]) is not list or len(msg[3]) > m.MAX_ENTRIES:
            m._fail("seeds must be an array of at most %d" % m.MAX_ENTRIES, m.E_TOO_LARGE)
        for e in msg[3]:
            if type(e) is not list or len(e) < 7 or e[0] != m.OP_PUT:
                m._fail("a seed is a PUT entry")
            if e[m.ENTRY_TYPE] == m.T_FILE and e[m.ENTRY_OID] is None:
                e = e[:m.ENTRY_OID] + [b"\0" * 32] + e[m.ENTRY_OID + 1:]
            m.check_entry(e)
    elif t == SEEDASK:
        _n(msg[1], 1 << 62, "batch number")
        if type(msg[2]) is not list or len(msg[2]) > m.MAX_ENTRIES:
            m._fail("seed indices must be an array")
        for i in msg[2]:
            _n(i, m.MAX_ENTRIES - 1, "seed index")
    elif t == SEEDLIST:
        _n(msg[1], m.MAX_ENTRIES - 1, "seed index")
        _n(msg[2], 1 << 40, "chunk index")
        ids, lens = msg[3], msg[4]
        if type(ids) is not list or type(lens) is not list or len(ids) != len(lens) or len(ids) > MAX_SEED_IDS:
            m._fail("a seed chunk list holds at most %d ids, each with its length" % MAX_SEED_IDS)
        for c in ids:
            if type(c) is not bytes or len(c) != 32:
                m._fail("chunk id must be 32 bytes")
        for ln in lens:
            _n(ln, m.MAX_CHUNK, "chunk length")
        if type(msg[5]) is not bool:
            m._fail("last must be a bool")
        _n(msg[6], m.MAX_SIZE, "seed size")
    elif t == SEEDEND:
        _n(msg[1], 1 << 40, "seed count")
    elif t == RPUT:
        m.check_entry([m.OP_PUT] + msg[1:8])
        _n(msg[8], 3, "how")
        _n(msg[9], m.MAX_SIZE, "link bytes")
        if msg[10] is not None and (type(msg[10]) is not str or len(msg[10]) > 512):
            m._fail("RPUT text must be text of at most 512")
    elif t == RCOPY:
        _n(msg[1], MAX_ROOTS - 1, "seed root")
        _path(msg[2])
        _n(msg[3], m.MAX_SIZE, "offset")
        _n(msg[4], m.MAX_SIZE, "length")
    elif t == RDATA:
        if type(msg[1]) is not bytes or len(msg[1]) != 32:
            m._fail("chunk id must be 32 bytes")
        _n(msg[2], 1, "encoding")
        _n(msg[3], m.MAX_CHUNK, "chunk length")
        _n(msg[4], m.MAX_CHUNK + 1024, "encoded length")
        b = msg[5]
        if (type(b) is not bytes and type(b) is not memoryview) or len(b) > msg[4] or len(b) > PIECE:
            m._fail("RDATA piece must be bytes of at most %d" % PIECE, m.E_TOO_LARGE)
    elif t == RDEL:
        _path(msg[1])
    elif t == RDONE:
        for i in (1, 2, 3, 4):
            _n(msg[i], 1 << 62, "count")
    elif t == RTOTAL:
        for i in (1, 2, 3):
            _n(msg[i], 1 << 62, "total")
    return msg


def restore(snapshot, prefix, flags, wbits):
    return [RESTORE, snapshot, prefix, flags, wbits]


def seeds(batch, root, items):
    return [SEEDS, batch, root, items]


def seedlist(index, first, ids, lens, last, size):
    return [SEEDLIST, index, first, ids, lens, last, size]
