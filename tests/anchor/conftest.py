"""Fixtures of the anchor's unit tests (CPython only)."""
import pytest

from anchor.app import App


@pytest.fixture
def app(tmp_path):
    """An anchor's App over a fresh data directory, closed after the test."""
    a = App(str(tmp_path / "data"))
    yield a
    a.close()
