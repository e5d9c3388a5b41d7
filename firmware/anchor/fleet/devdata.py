"""A device's snapshots, trees and object lists in the fleet store (docs/fleet.md, section 1).
CPython only.

  dev/<device id>/snap/<seq, 10 digits>   the snapshot record: CBOR {"seq", "parent", "time",
                                          "root", "entries", "bytes", "about"}; created once
                                          (If-None-Match), so two anchors cannot both commit
                                          snapshot n of one device
  dev/<device id>/tree/<root, hex>        the tree file as docs/storage.md describes it
  dev/<device id>/objs/<root, hex>        CBOR [[object id, size, chunk ids], ...] of every file
                                          of that tree: what HAVE at another anchor answers from
Each object is the 16-byte header (ANCHORF1, version, kind) and then the body sealed with
ChaCha20-Poly1305 under the device's key, its own key as associated data: an object moved to
another name, or to another device, does not open."""
import os
import struct

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from anchor.fleet.packs import DamagedObject, MAGIC, NONCE, TAG

VERSION = 1
KIND_SNAP = 3
KIND_TREE = 4
KIND_OBJS = 5
_HEAD = ">8sHH4x"
HEAD_LEN = struct.calcsize(_HEAD)


def snap_key(did, seq):
    return "dev/%s/snap/%010d" % (did, seq)


def tree_key(did, root):
    return "dev/%s/tree/%s" % (did, root.hex())


def objs_key(did, root):
    return "dev/%s/objs/%s" % (did, root.hex())


def seal(device_key, kind, key, plain):
    nonce = os.urandom(NONCE)
    head = struct.pack(_HEAD, MAGIC, VERSION, kind)
    return head + nonce + ChaCha20Poly1305(device_key).encrypt(nonce, plain, head + key.encode())


def unseal(device_key, kind, key, raw):
    """The plain body of object `key`, or DamagedObject saying why not."""
    if raw is None:
        raise DamagedObject("%s is missing" % key)
    if len(raw) < HEAD_LEN + NONCE + TAG or raw[:8] != MAGIC:
        raise DamagedObject("%s is not a fleet object" % key)
    head = raw[:HEAD_LEN]
    _, version, got = struct.unpack(_HEAD, head)
    if version != VERSION or got != kind:
        raise DamagedObject("%s is version %d kind %d; this anchor reads %d/%d" % (key, version, got, VERSION, kind))
    try:
        return ChaCha20Poly1305(device_key).decrypt(raw[HEAD_LEN:HEAD_LEN + NONCE], raw[HEAD_LEN + NONCE:],
                                                    head + key.encode())
    except InvalidTag:
        raise DamagedObject("%s does not unseal: damaged, or sealed under another device's key" % key)


def snap_record(snap):
    return cbor2.dumps({"seq": snap["id"], "parent": snap["parent"], "time": snap["time"],
                        "root": snap["root"], "entries": snap["entries"], "bytes": snap["bytes"],
                        "about": [snap.get("path"), snap.get("host"), snap.get("tag")]})


def read_snap_record(key, plain):
    try:
        r = cbor2.loads(plain)
        out = {"seq": int(r["seq"]), "parent": r["parent"], "time": float(r["time"]),
               "root": bytes(r["root"]), "entries": int(r["entries"]), "bytes": int(r["bytes"]),
               "about": list(r.get("about") or ())[:3]}
    except Exception as e:
        raise DamagedObject("%s holds no snapshot record: %s" % (key, e))
    if len(out["root"]) != 32 or (out["parent"] is not None and type(out["parent"]) is not int):
        raise DamagedObject("%s holds a malformed snapshot record" % key)
    return out


def objs_list(rows):
    return cbor2.dumps([[bytes(oid), size, bytes(ids)] for oid, size, ids in rows])


def read_objs_list(key, plain):
    try:
        rows = cbor2.loads(plain)
        out = [(bytes(o), int(s), bytes(ids)) for o, s, ids in rows]
    except Exception as e:
        raise DamagedObject("%s holds no object list: %s" % (key, e))
    for oid, size, ids in out:
        if len(oid) != 32 or len(ids) % 32 or size < 0:
            raise DamagedObject("%s holds a malformed object list" % key)
    return out
