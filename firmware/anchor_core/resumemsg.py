# Relayed uploads that resume after a lost link (docs/protocol.md §5, "Resuming an upload"):
# the message numbers, builders, checks and session transitions.
#
# As for the restore's (restoremsg.py) and the delta's (delta.py), they live outside
# messages.py and states.py because every public name and table entry there is heap on a
# MicroPython rover's backup: only a rover that sends a file through the relay loads this.
# install() adds the rules to the shared table and the checks to messages.check().
from anchor_core.compat import const
from anchor_core import messages as m
from anchor_core import states as st

UPASK = const(40)       # rover: [upload id]: how much of this upload do you hold?
HELD = const(41)        # anchor: [upload id, bytes held, SHA-256 of those bytes]
U_AWAIT_HELD = const(20)  # anchor owes HELD (or FAIL) for the last UPASK

CAP_UPRESUME = const(32)  # WELCOME: the anchor keeps a cut upload and answers UPASK
ID_SIZE = const(16)     # an upload id: the rover's name for one body it sends
F_RESUME = const(7)     # FAIL code: nothing held under that id, or not what the resume says

# SEND's and PUBLISH's optional sixth field: [upload id, offset] (both types have five).
UPLOAD_FIELD = const(5)


def install():
    if UPASK in m.NAMES:
        return
    m.NAMES[UPASK] = "UPASK"
    m.NAMES[HELD] = "HELD"
    st.name_states(U_AWAIT_HELD, ("U_AWAIT_HELD",))
    tr = st.TRANSITIONS
    tr[(st.READY, st.ROVER, UPASK)] = U_AWAIT_HELD
    tr[(U_AWAIT_HELD, st.ANCHOR, HELD)] = st.READY
    tr[(U_AWAIT_HELD, st.ANCHOR, m.FAIL)] = st.READY
    m.extend(UPASK, HELD, check)


def check(msg):
    """messages.check() for UPASK and HELD; raises ProtocolError."""
    t = msg[0]
    if len(msg) < (2, 4)[t - UPASK]:
        m._fail("%s too short" % m.NAMES[t])
    if type(msg[1]) is not bytes or len(msg[1]) != ID_SIZE:
        m._fail("upload id must be %d bytes" % ID_SIZE)
    if t == HELD:
        if type(msg[2]) is not int or msg[2] < 0 or msg[2] > m.MAX_RELAY:
            m._fail("bytes held must be an integer in [0, 2^40]")
        if type(msg[3]) is not bytes or len(msg[3]) != 32:
            m._fail("digest of the bytes held must be 32 bytes")
    return msg


def upload_field(msg):
    """SEND's or PUBLISH's [upload id, offset], or None; a malformed one breaks the
    protocol. The offset is checked against the body size here, against what is held by the
    anchor's relay."""
    if len(msg) <= UPLOAD_FIELD or msg[UPLOAD_FIELD] is None:
        return None
    u = msg[UPLOAD_FIELD]
    size = msg[m.PUBLISH_SIZE] if msg[0] == m.PUBLISH else msg[m.SEND_SIZE]
    if (type(u) is not list or len(u) != 2 or type(u[0]) is not bytes or len(u[0]) != ID_SIZE
            or type(u[1]) is not int or u[1] < 0):
        m._fail("upload must be [id (%d bytes), offset]" % ID_SIZE)
    if u[1] > size:
        m._fail("upload offset %d past the end of a %d-byte body" % (u[1], size))
    return u[0], u[1]


def upask(uid):
    return [UPASK, uid]


def held(uid, n, digest):
    return [HELD, uid, n, digest]
