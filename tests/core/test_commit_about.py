# COMMIT's optional description ([root, host, tag]) travels as the rover builds it; an old
# COMMIT without it still passes the checks. Runs under pytest and under
# tests/core/mpy_runner.py (MicroPython). The anchor's own check of the description is in
# tests/anchor/test_commit_about_check.py.
from anchor_core import messages as m

ROOT = bytes(32)


def test_commit_with_and_without_a_description():
    assert m.check(m.commit(ROOT, 3, 100)) == [m.COMMIT, ROOT, 3, 100]
    msg = m.commit(ROOT, 3, 100, ["/home/me/Documents", "pi-garage", None])
    assert m.check(msg)[m.COMMIT_ABOUT] == ["/home/me/Documents", "pi-garage", None]
