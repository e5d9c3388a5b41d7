"""CPython only: the field indices the rover copies as private consts (MicroPython folds
those into its bytecode; public ones cost heap) equal the ones anchor_core/messages.py states."""
from anchor_core import messages as m
from rover import backup


def test_part_fields_copied_by_the_rover_match_messages():
    for name in ("_PART_INDEX", "_PART_START", "_PART_IDS", "_PART_WANTED", "_WELCOME_CAPS", "_CAP_NAMES"):
        assert getattr(backup, name) == getattr(m, name), name
    p = m.list_part(2, 5, [b"i" * 32], True)
    assert (p[backup._PART_INDEX], p[backup._PART_START], p[backup._PART_IDS]) == (2, 5, [b"i" * 32])
    assert m.need_part(2, 5, [0])[backup._PART_WANTED] == [0]
