"""The anchor refuses a COMMIT description that is not up to 3 texts of at most 255 characters."""
import pytest

from anchor.services.backup import check_about
from anchor_core import messages as m


def test_good_descriptions_pass():
    for about in ([], ["/data"], ["/data", "host", None], ["x" * 255, None, "t"]):
        assert check_about(about) == about


@pytest.mark.parametrize("about", ["just text", ["a", "b", "c", "d"], ["x" * 256], [7], [b"bytes"],
                                   {"root": "x"}, None])
def test_bad_descriptions_are_refused(about):
    with pytest.raises(m.ProtocolError):
        check_about(about)
