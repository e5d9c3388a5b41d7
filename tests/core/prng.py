# A small deterministic generator for core test data, the same on CPython and MicroPython
# (MicroPython's random module differs by port): 32-bit xorshift.


def xorshift(seed):
    x = seed & 0xFFFFFFFF or 1
    while True:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        yield x
