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
