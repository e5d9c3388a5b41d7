"""The keys of a fleet, all derived from its one fleet key (docs/fleet.md, section 3).
CPython only.

The fleet key (32 random bytes) is what makes an anchor part of a fleet: with it an anchor can
name, read and write the fleet's objects; without it the bucket is random-looking names and
sealed bytes. Every purpose gets its own key by HKDF-SHA256, so a key used to seal one kind of
object can never open another kind. A device's own data is sealed under a key derived from the
fleet key *and* the device's pairing secret: an anchor of the fleet that holds no pairing for a
rover cannot read that rover's chunks, trees or snapshots."""
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32


class FleetKeyError(Exception):
    """A fleet key file that cannot be used; the text says which file and why."""


def _derive(secret, info, salt=None):
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(secret)


class FleetKeys:
    def __init__(self, fleet_key):
        if len(fleet_key) != KEY_BYTES:
            raise FleetKeyError("a fleet key is %d bytes, not %d" % (KEY_BYTES, len(fleet_key)))
        self._key = bytes(fleet_key)
        self.content = _derive(self._key, b"anchor-fleet content ids")    # keyed chunk ids
        self.index = _derive(self._key, b"anchor-fleet index")            # index objects
        self.directory = _derive(self._key, b"anchor-fleet directory")    # device names -> ids
        self.pairing = _derive(self._key, b"anchor-fleet pairings")       # pairing records
        self.fleet_id = hmac.new(self.directory, b"fleet", hashlib.sha256).hexdigest()[:16]

    def prefix(self):
        """Where this fleet's objects live in the bucket: another fleet sharing it never
        meets them."""
        return "f/%s/" % self.fleet_id

    def device_id(self, name):
        """The device's name in object keys: a keyed hash, so the store's operator does not
        learn device names."""
        return hmac.new(self.directory, name.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def device_key(self, name, pairing_secret):
        """The key that seals a device's chunks, trees and snapshots."""
        return _derive(self._key, b"anchor-fleet device " + name.encode("utf-8"), salt=bytes(pairing_secret))


def new_key():
    return os.urandom(KEY_BYTES)


def read_key_file(path):
    """The fleet key from a file holding it as 64 hexadecimal digits (`anchorctl fleet
    new-key` writes one). Refused unless only its owner can read it."""
    try:
        st = os.stat(path)
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise FleetKeyError("%s: no such fleet key file" % path)
    except (OSError, UnicodeDecodeError) as e:
        raise FleetKeyError("%s: cannot read the fleet key (%s)" % (path, getattr(e, "strerror", None) or e))
    if st.st_mode & 0o077:
        raise FleetKeyError("%s: the fleet key is readable by others (mode %o); chmod 600 it"
                            % (path, st.st_mode & 0o777))
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise FleetKeyError("%s: a fleet key file holds %d hexadecimal digits and nothing else"
                            % (path, 2 * KEY_BYTES))
    return key


def write_key_file(path, key):
    """Create a key file only its owner can read; never over an existing one (a fleet's key
    replaced by mistake makes everything in the store unreadable to this anchor)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
