# The rover's link errors, in a leaf module: every port raises them and rover/link.py opens
# every port, so kept in link.py they made an import cycle through all the ports.


class LinkError(Exception):
    pass


class BadAddress(LinkError):
    """The link's address or settings are wrong (an unknown scheme, a malformed URL): no
    retry can fix that, unlike a link that was lost."""


class NotPaired(Exception):
    """The anchor does not know this rover's pairing, or could not prove its own."""
