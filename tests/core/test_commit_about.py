# COMMIT's optional description ([root, host, tag]): accepted when whole, refused when it is
# not an array of at most 3 texts (or nulls) of at most 255 characters; an old COMMIT without it
# still passes. Runs under pytest and under tests/core/mpy_runner.py (MicroPython).
from anchor_core import messages as m

ROOT = bytes(32)


def _refused(msg):
    try:
        m.check(msg)
    except m.ProtocolError:
        return True
    return False


def test_commit_with_and_without_a_description():
    assert m.check(m.commit(ROOT, 3, 100)) == [m.COMMIT, ROOT, 3, 100]
    msg = m.commit(ROOT, 3, 100, ["/home/me/Documents", "pi-garage", None])
    assert m.check(msg)[m.COMMIT_ABOUT] == ["/home/me/Documents", "pi-garage", None]
    assert m.check(m.commit(ROOT, 3, 100, []))


def test_bad_descriptions_are_refused():
    for about in ("just text", ["a", "b", "c", "d"], ["x" * 256], [7], [b"bytes"], {"root": "x"}):
        assert _refused(m.commit(ROOT, 3, 100, about)), about
