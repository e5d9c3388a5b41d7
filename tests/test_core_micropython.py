"""Runs every tests/core/test_*.py module under the real MicroPython interpreter (256 KB heap).

The same modules are collected by pytest under CPython, so each core test runs on both runtimes.
The core checked against reference libraries (cbor2, pyfastcdc, zlib) is CPython only and
lives in tests/core/reference/, which this runner does not list.
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORE_TESTS = os.path.join(HERE, "core")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

MODULES = sorted(
    f[:-3] for f in os.listdir(CORE_TESTS) if f.startswith("test_") and f.endswith(".py")
)


@pytest.mark.parametrize("module", MODULES)
def test_core_module_under_micropython(module):
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=256K", os.path.join(CORE_TESTS, "mpy_runner.py"),
         os.path.join(ROOT, "firmware"), CORE_TESTS, module],
        capture_output=True, text=True, timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    last = [l for l in proc.stdout.splitlines() if l.strip()][-1]
    n_passed = int(last.split()[0])
    assert last.endswith(" 0 failed") and n_passed > 0, out
