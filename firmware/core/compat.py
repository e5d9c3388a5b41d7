# The few names that differ between CPython and MicroPython, in one place.
try:
    from micropython import const  # noqa: F401
    MICROPYTHON = True
except ImportError:
    MICROPYTHON = False

    def const(x):
        return x
