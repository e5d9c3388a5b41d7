# The few names that differ between CPython and MicroPython, in one place.
try:
    from micropython import const  # noqa: F401
    MICROPYTHON = True
except ImportError:
    MICROPYTHON = False

    def const(x):
        return x


if MICROPYTHON:
    import micropython  # noqa: F401
else:
    class micropython:  # noqa: N801  (CPython: @micropython.viper functions run as plain Python)
        @staticmethod
        def viper(f):
            return f


def unload(module):
    """Forget a module that was imported for a moment (a MicroPython rover's heap holds the
    bytecode of every module still referenced): drop it from sys.modules and from its
    package, so the next import loads it again."""
    import sys
    name = module.__name__
    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        try:
            delattr(sys.modules[parent], child)
        except AttributeError:
            pass
