# Helpers of the session tests (test_session, test_restoremsg), under both interpreters.
from anchor_core import messages as m


def expect_error(fn, code=None):
    try:
        fn()
    except m.ProtocolError as e:
        if code is not None and e.code != code:
            raise AssertionError("error code %d, expected %d (%s)" % (e.code, code, e.text))
        return e
    raise AssertionError("no ProtocolError raised")


def pipe(src, dst, msg):
    dst.receive_data(src.send(msg))
    got = dst.next_event()
    assert got == msg, (got, msg)
    return got
