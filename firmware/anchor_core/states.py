# The session's transition table: every rule about which message may come when.
#
# A session is one conversation between one rover and one anchor. Both ends run the same
# table; each checks what it sends and what it receives against it, so a bug on either
# side or a hostile peer is caught at the first message out of place.
from anchor_core.compat import const
from anchor_core import messages as m

ROVER = const(0)
ANCHOR = const(1)

START = const(0)            # nothing said yet
HELLO_SENT = const(1)       # rover waits for WELCOME
READY = const(2)            # rover may send ENTRIES, CHUNKLIST, DATA or COMMIT
AWAIT_VERDICT = const(3)    # anchor owes a VERDICT for the last ENTRIES
AWAIT_NEED = const(4)       # anchor owes a NEED for the last CHUNKLIST
AWAIT_COMMITTED = const(5)  # anchor owes COMMITTED for COMMIT
CLOSED = const(6)           # after ERROR or a finished backup; nothing more
FETCHING = const(7)         # anchor owes RESULT (or FAIL) for a FETCH
RECEIVING = const(8)        # anchor streams the fetched body: BODY..., END (or FAIL)
SENDING = const(9)          # rover streams a body to send or publish: BODY..., END
AWAIT_RESULT = const(10)    # anchor owes RESULT (or FAIL) for what was sent
AWAIT_WATCHED = const(11)   # anchor waits for watched data to pass through, then says WATCHED

STATE_NAMES = ("START", "HELLO_SENT", "READY", "AWAIT_VERDICT", "AWAIT_NEED",
               "AWAIT_COMMITTED", "CLOSED", "FETCHING", "RECEIVING", "SENDING", "AWAIT_RESULT", "AWAIT_WATCHED")

# (state, sender, message type) -> next state.  ERROR from either side, in any state but
# CLOSED, goes to CLOSED; that rule is applied in session.py rather than spelled out 14 times.
TRANSITIONS = {
    (START, ROVER, m.HELLO): HELLO_SENT,
    (HELLO_SENT, ANCHOR, m.WELCOME): READY,
    (READY, ROVER, m.ENTRIES): AWAIT_VERDICT,
    (AWAIT_VERDICT, ANCHOR, m.VERDICT): READY,
    (READY, ROVER, m.CHUNKLIST): AWAIT_NEED,
    (AWAIT_NEED, ANCHOR, m.NEED): READY,
    (READY, ROVER, m.DATA): READY,
    (READY, ROVER, m.PROOF): READY,     # instead of DATA, for a chunk the anchor challenged
    (READY, ROVER, m.COMMIT): AWAIT_COMMITTED,
    (AWAIT_COMMITTED, ANCHOR, m.COMMITTED): CLOSED,
    # relay: the anchor does network work for the rover over its own uplink
    (READY, ROVER, m.FETCH): FETCHING,
    (FETCHING, ANCHOR, m.RESULT): RECEIVING,
    (FETCHING, ANCHOR, m.FAIL): READY,
    (RECEIVING, ANCHOR, m.BODY): RECEIVING,
    (RECEIVING, ANCHOR, m.END): READY,
    (RECEIVING, ANCHOR, m.FAIL): READY,
    (READY, ROVER, m.SEND): SENDING,
    (READY, ROVER, m.PUBLISH): SENDING,
    (SENDING, ROVER, m.BODY): SENDING,
    (SENDING, ROVER, m.END): AWAIT_RESULT,
    (AWAIT_RESULT, ANCHOR, m.RESULT): READY,
    (AWAIT_RESULT, ANCHOR, m.FAIL): READY,
    # watch list: before COMMIT the rover lets the anchor wait for queued data
    (READY, ROVER, m.WATCHWAIT): AWAIT_WATCHED,
    (AWAIT_WATCHED, ANCHOR, m.WATCHED): READY,
}


def name_states(first, names):
    """Names for states numbered from `first` (an extension's: restoremsg.py, delta.py),
    whichever extension installs first."""
    global STATE_NAMES
    have = list(STATE_NAMES)
    while len(have) < first + len(names):
        have.append("STATE_%d" % len(have))
    have[first:first + len(names)] = names
    STATE_NAMES = tuple(have)


def next_state(state, sender, mtype):
    """The state after `sender` sends a message of `mtype`, or -1 if not allowed."""
    if mtype == m.ERROR:
        return CLOSED if state != CLOSED else -1
    return TRANSITIONS.get((state, sender, mtype), -1)
