# HMAC-SHA-256 (RFC 2104) from hashlib.sha256, the same on CPython and MicroPython (which
# has no hmac module). Small on purpose: the rover imports it for proofs of possession
# without the rest of the secure channel.
import hashlib


def hmac_sha256(key, *parts):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    k = bytearray(64)
    k[:len(key)] = key
    ipad = bytearray(64)
    opad = bytearray(64)
    for i in range(64):
        ipad[i] = k[i] ^ 0x36
        opad[i] = k[i] ^ 0x5C
    h = hashlib.sha256(ipad)
    for p in parts:
        h.update(p)
    return hashlib.sha256(bytes(opad) + h.digest()).digest()
