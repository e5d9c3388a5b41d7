# Pairing codes: every single mistyped symbol and every swap of neighbours is caught. Runs under
# pytest and under tests/core/mpy_runner.py (MicroPython), so no pytest, no CPython-only code.
from anchor_core import paircode

RAWS = [bytes(range(19)), bytes(range(100, 119)), bytes([7] * 19), bytes([255, 0] * 10)]


def test_made_codes_pass():
    for raw in RAWS:
        code = paircode.make(raw)
        assert len(code) == 23 and code.count("-") == 3
        assert paircode.check(code) == code.replace("-", "")
        # Case, dashes and spaces are forgiven.
        assert paircode.check(code.lower().replace("-", " ")) == code.replace("-", "")


def _rejected(code):
    try:
        paircode.check(code)
    except ValueError:
        return True
    return False


def test_every_single_substitution_is_caught():
    for raw in RAWS:
        clean = paircode.check(paircode.make(raw))
        n = 0
        for i in range(20):
            for c in paircode.ALPHABET:
                if c != clean[i]:
                    assert _rejected(clean[:i] + c + clean[i + 1:]), (clean, i, c)
                    n += 1
        assert n == 20 * 31


def test_every_adjacent_transposition_is_caught():
    for raw in RAWS:
        clean = paircode.check(paircode.make(raw))
        for i in range(19):
            if clean[i] != clean[i + 1]:
                swapped = clean[:i] + clean[i + 1] + clean[i] + clean[i + 2:]
                assert _rejected(swapped), (clean, i)


def test_other_mistakes_say_what_is_wrong():
    good = paircode.make(RAWS[0])
    for bad, words in ((good[:-1], "19 letters"), (good + "A", "21 letters"),
                       ("O" + good[1:], "not in it")):
        try:
            paircode.check(bad)
        except ValueError as e:
            assert words in str(e), (bad, str(e))
        else:
            raise AssertionError("accepted %r" % bad)
