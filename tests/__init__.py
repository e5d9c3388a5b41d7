"""The test suite, a package so its shared helpers import as `tests.support` (CPython only).

Test directories below it are not packages: pytest imports their test modules by base name,
and tests/core is also read by the MicroPython runner from its folder.
"""
