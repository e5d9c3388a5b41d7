"""The one error type of anchorctl's library: a leaf module, so that the client and the
restore writer can both raise it without importing each other."""


class AnchorError(Exception):
    pass
