"""Packs: the fleet store's objects of chunks (docs/fleet.md, section 1). CPython only.

A pack is one object, written once under a random name:
  header   16 bytes: b"ANCHORF1", version (u16 BE, 1), kind (u16 BE, 1 = pack), 4 reserved
  chunks   each sealed alone, back to back: nonce (12) | ChaCha20-Poly1305 of
           [encoding (1: 0 raw, 1 zstd)] + payload, with the chunk's keyed id as associated
           data, so one range GET fetches and checks one chunk
  index    sealed the same way (associated data b"index" + the pack id): CBOR
           [[keyed id, offset, length], ...] in the order written
  trailer  the sealed index's length (u32 BE)
Keyed ids are HMAC-SHA256(content key, SHA-256 of the chunk): the store's operator can neither
read a chunk nor test whether a known one is there. A chunk that does not unseal, or whose
bytes do not hash to the id asked for, raises DamagedObject: the caller fetches another copy
or asks a holder to offload it again."""
import hashlib
import hmac
import os
import struct

import cbor2
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

MAGIC = b"ANCHORF1"
VERSION = 1
KIND_PACK = 1
HEADER = struct.pack(">8sHH4x", MAGIC, VERSION, KIND_PACK)
NONCE = 12
TAG = 16
TARGET_BYTES = 16 << 20      # a pack is finished once it holds this much (docs/fleet.md)
MAX_INDEX = 4 << 20          # a sealed index larger than this is not one this code wrote

_ZSTD = zstandard.ZstdCompressor(level=3)


class DamagedObject(Exception):
    """An object (or a piece of one) that does not unseal or does not hash to its id."""


def keyed_id(content_key, chunk_sha):
    return hmac.new(content_key, chunk_sha, hashlib.sha256).digest()


def _seal(aead, plain, aad):
    nonce = os.urandom(NONCE)
    return nonce + aead.encrypt(nonce, plain, aad)


def _open(aead, sealed, aad, what):
    if len(sealed) < NONCE + TAG:
        raise DamagedObject("%s: %d bytes are too few to be sealed" % (what, len(sealed)))
    try:
        return aead.decrypt(bytes(sealed[:NONCE]), bytes(sealed[NONCE:]), aad)
    except InvalidTag:
        raise DamagedObject("%s does not unseal: damaged, or sealed under another key" % what)


class PackWriter:
    """Chunks into one pack. add() until full(); then name and data()."""

    def __init__(self, seal_key, content_key, target=TARGET_BYTES):
        self.target = target
        self.aead = ChaCha20Poly1305(seal_key)
        self.content_key = content_key
        self.name = os.urandom(16).hex()
        # One growing buffer, not parts joined at the end: a 16 MiB pack is then held once
        # while it is built and PUT, not twice (docs/benchmarks.md, fleet: peak RSS).
        self.buf = bytearray(HEADER)
        self.size = len(HEADER)
        self.entries = []           # [keyed id, offset, length]

    def add(self, raw):
        """Seal chunk bytes `raw` into the pack; its (keyed id, offset, length)."""
        kid = keyed_id(self.content_key, hashlib.sha256(raw).digest())
        packed = _ZSTD.compress(raw)
        plain = (b"\x01" + packed) if len(packed) < len(raw) else (b"\x00" + bytes(raw))
        sealed = _seal(self.aead, plain, kid)
        entry = [kid, self.size, len(sealed)]
        self.buf += sealed
        self.size += len(sealed)
        self.entries.append(entry)
        return tuple(entry)

    def full(self):
        return self.size >= self.target

    def data(self):
        """The whole pack (a bytearray: PUT as it is; call once)."""
        index = _seal(self.aead, cbor2.dumps(self.entries), b"index" + self.name.encode())
        self.buf += index
        self.buf += struct.pack(">I", len(index))
        return self.buf


def read_chunk(objects, key, name, offset, length, seal_key, content_key, chunk_sha):
    """The chunk whose SHA-256 is chunk_sha, from pack `key` (object key; `name` its pack id)
    at [offset, offset + length): one range GET, unsealed and checked."""
    sealed = objects.get_range(key, offset, offset + length)
    kid = keyed_id(content_key, chunk_sha)
    plain = _open(ChaCha20Poly1305(seal_key), sealed, kid,
                  "chunk at %d in pack %s" % (offset, name))
    if plain[:1] == b"\x01":
        raw = zstandard.ZstdDecompressor().decompress(plain[1:], max_output_size=1 << 20)
    elif plain[:1] == b"\x00":
        raw = plain[1:]
    else:
        raise DamagedObject("chunk at %d in pack %s has unknown encoding %r" % (offset, name, plain[:1]))
    if hashlib.sha256(raw).digest() != chunk_sha:
        raise DamagedObject("chunk at %d in pack %s does not hash to its id" % (offset, name))
    return raw


def read_index(objects, key, name, seal_key, expect_size=None):
    """The pack's own index, [(keyed id, offset, length)], from its header and tail;
    expect_size: the length it must have (a writer reading its PUT back)."""
    size = objects.size(key)
    if size is None:
        raise DamagedObject("pack %s is missing" % name)
    if expect_size is not None and size != expect_size:
        raise DamagedObject("pack %s is %d bytes in the store, %d were written" % (name, size, expect_size))
    if size < len(HEADER) + 4:
        raise DamagedObject("pack %s is %d bytes: too short" % (name, size))
    head = objects.get_range(key, 0, len(HEADER))
    magic, version, kind = struct.unpack(">8sHH4x", head)
    if magic != MAGIC or kind != KIND_PACK:
        raise DamagedObject("pack %s does not start as a pack" % name)
    if version != VERSION:
        raise DamagedObject("pack %s is format version %d; this anchor reads %d" % (name, version, VERSION))
    n = struct.unpack(">I", objects.get_range(key, size - 4, size))[0]
    if n > MAX_INDEX or n > size - len(HEADER) - 4:
        raise DamagedObject("pack %s names an index of %d bytes" % (name, n))
    plain = _open(ChaCha20Poly1305(seal_key), objects.get_range(key, size - 4 - n, size - 4),
                  b"index" + name.encode(), "index of pack %s" % name)
    try:
        entries = cbor2.loads(plain)
    except Exception as e:
        raise DamagedObject("index of pack %s does not decode: %s" % (name, e))
    return [(bytes(k), o, ln) for k, o, ln in entries]
