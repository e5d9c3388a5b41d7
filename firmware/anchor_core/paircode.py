# Pairing codes a person reads off `anchorctl pair` and types into `rover pair`: 20 symbols of a
# 32-letter alphabet (no I, O, 0 or 1 to misread), in groups of five; the last is a check symbol
# over the other 19 (95 random bits remain). A mistyped code is caught when typed, not later as
# a handshake the anchor refuses.
#
# The check is Damm's scheme over GF(32): interim = 2*interim XOR symbol for every symbol, and a
# code is whole when the interim ends at 0. x -> 2x XOR y is a totally anti-symmetric quasigroup
# (2 is neither 0 nor 1 in the field), so every single wrong symbol and every swap of two
# neighbouring different symbols changes the result (tests/core/test_paircode.py tries them all).
# Loaded only by the pairing command and the anchor's pair(), never during a backup.
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _times2(v):
    v <<= 1
    return v ^ 0x25 if v & 0x20 else v     # reduce by x^5 + x^2 + 1


def _interim(values):
    r = 0
    for v in values:
        r = _times2(r) ^ v
    return r


def make(raw):
    """A code from 19 random bytes or more (one symbol from each of the first 19)."""
    values = [b % 32 for b in raw[:19]]
    if len(values) != 19:
        raise ValueError("a pairing code takes 19 random bytes")
    values.append(_times2(_interim(values)))
    code = "".join(ALPHABET[v] for v in values)
    return "-".join(code[i:i + 5] for i in range(0, 20, 5))


def check(code):
    """The code as code_to_key reads it (letters and digits, upper case), or ValueError saying
    what is wrong with what was typed."""
    clean = "".join(c for c in code.upper() if c.isalpha() or c.isdigit())
    if len(clean) != 20:
        raise ValueError("pairing code has %d letters and digits, not 20 (as anchorctl pair printed it)" % len(clean))
    values = []
    for c in clean:
        i = ALPHABET.find(c)
        if i < 0:
            raise ValueError("pairing code mistyped: %r is not in it (codes have no I, O, 0 or 1)" % c)
        values.append(i)
    if _interim(values):
        raise ValueError("pairing code mistyped (check symbol): compare it with what anchorctl pair printed")
    return clean
