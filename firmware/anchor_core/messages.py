# Protocol messages: numbers, builders and the checks every received message passes.
#
# A message is a CBOR array [type, field, ...] (docs/protocol.md §3). Arrays, not maps:
# field names would cost radio bytes on every message. Receivers ignore trailing fields
# they do not know, so a later minor revision can append fields without a version bump.
from anchor_core.compat import const
from anchor_core import cbor

_PROTO_VERSION = const(1)

HELLO = const(1)
WELCOME = const(2)
ENTRIES = const(3)
VERDICT = const(4)
CHUNKLIST = const(5)
NEED = const(6)
DATA = const(7)
COMMIT = const(8)
COMMITTED = const(9)
ERROR = const(10)
FETCH = const(11)
SEND = const(12)
PUBLISH = const(13)
RESULT = const(14)
BODY = const(15)
END = const(16)
FAIL = const(17)
WATCHWAIT = const(18)
WATCHED = const(19)
PROOF = const(20)

NAMES = {
    HELLO: "HELLO", WELCOME: "WELCOME", ENTRIES: "ENTRIES", VERDICT: "VERDICT",
    CHUNKLIST: "CHUNKLIST", NEED: "NEED", DATA: "DATA", COMMIT: "COMMIT",
    COMMITTED: "COMMITTED", ERROR: "ERROR", FETCH: "FETCH", SEND: "SEND", PUBLISH: "PUBLISH",
    RESULT: "RESULT", BODY: "BODY", END: "END", FAIL: "FAIL", WATCHWAIT: "WATCHWAIT",
    WATCHED: "WATCHED", PROOF: "PROOF",
}

# --- field indices ---------------------------------------------------------------------
# msg[MSG_TYPE] is every message's type; msg[<TYPE>_<FIELD>] is a field of that type,
# counted from the type at 0 (HELLO_DEVICE is 2 in [HELLO, version, device, ...]). Arrays
# nested in a message are named for what they hold: ENTRY_* (an item of ENTRIES), PART_*
# (a part of CHUNKLIST or NEED), WATCH_* (an item of VERDICT's watched list), CHALLENGE_*
# (NEED's proof challenge); REC_* is a field of a tree record (tree_record()). The builders
# below write these positions and check() reads them. A field no other module reads is
# private (leading underscore): on MicroPython every public name costs heap on the rover
# (~40 bytes, and a step of ~900 when the module's globals outgrow 167). So are the
# _PART_* fields, which only the rover's chunk loops read, from copies in rover/backup.py.
MSG_TYPE = const(0)

_HELLO_VERSION = const(1)
HELLO_DEVICE = const(2)
HELLO_PARENT = const(3)
HELLO_CAPS = const(4)

_WELCOME_VERSION = const(1)
_WELCOME_LATEST = const(2)
WELCOME_PARENT_OK = const(3)
_WELCOME_CAPS = const(4)

ENTRIES_SEQ = const(1)
ENTRIES_ITEMS = const(2)

ENTRY_OP = const(0)
ENTRY_PATH = const(1)
ENTRY_TYPE = const(2)      # PUT only, from here on
ENTRY_SIZE = const(3)
ENTRY_MTIME = const(4)
ENTRY_MODE = const(5)
ENTRY_OID = const(6)
ENTRY_TARGET = const(7)    # optional: symlinks, or None before flags
ENTRY_FLAGS = const(8)     # optional

_VERDICT_SEQ = const(1)
VERDICT_WANTED = const(2)
VERDICT_WATCHED = const(3)  # optional

WATCH_INDEX = const(0)
WATCH_SECONDS = const(1)

CHUNKLIST_PARTS = const(1)

_PART_INDEX = const(0)
_PART_START = const(1)
_PART_IDS = const(2)        # CHUNKLIST: the chunk ids
_PART_WANTED = const(2)     # NEED: indices into _PART_IDS of the chunks to send
_PART_LAST = const(3)      # CHUNKLIST only

NEED_PARTS = const(1)
NEED_CHALLENGE = const(2)  # optional

CHALLENGE_NONCE = const(0)
CHALLENGE_POSITIONS = const(1)

DATA_ID = const(1)
DATA_ENC = const(2)
DATA_PAYLOAD = const(3)

PROOF_ID = const(1)
PROOF_MAC = const(2)       # PROOF_TAG bytes

COMMIT_ROOT = const(1)
COMMIT_COUNT = const(2)
COMMIT_BYTES = const(3)
COMMIT_ABOUT = const(4)    # optional: [root as the rover named it, host, tag], each text or None

COMMITTED_SNAPSHOT = const(1)

ERROR_CODE = const(1)
ERROR_TEXT = const(2)

FETCH_URL = const(1)
FETCH_HEADERS = const(2)

_HEADER_NAME = const(0)
_HEADER_VALUE = const(1)

SEND_METHOD = const(1)
SEND_URL = const(2)
SEND_SIZE = const(3)
SEND_TYPE = const(4)

PUBLISH_TOPIC = const(1)
PUBLISH_SIZE = const(2)
PUBLISH_QOS = const(3)
PUBLISH_RETAIN = const(4)

RESULT_STATUS = const(1)
RESULT_SIZE = const(2)
_RESULT_ETAG = const(3)
_RESULT_MODIFIED = const(4)
_RESULT_TYPE = const(5)

BODY_DATA = const(1)

END_SIZE = const(1)

_FAIL_CODE = const(1)
FAIL_TEXT = const(2)

WATCHWAIT_SECONDS = const(1)

WATCHED_MISSING = const(1)

REC_PATH = const(0)
REC_TYPE = const(1)
REC_SIZE = const(2)
REC_MTIME = const(3)
REC_MODE = const(4)
REC_OID = const(5)
REC_TARGET = const(6)

# Entry flags (the optional ninth field of a file PUT).
FLAG_QUEUED = const(1)   # the file waits in the rover's outbox: it will pass through soon

# Entry operations and types inside ENTRIES.
OP_PUT = const(0)
_OP_DEL = const(1)
T_FILE = const(0)
T_DIR = const(1)
T_LINK = const(2)

# Chunk payload encodings inside DATA (the store uses the same numbers).
ENC_RAW = const(0)
ENC_ZLIB = const(1)

# Capability bits in HELLO/WELCOME.
CAP_ZLIB = const(1)   # sender can produce zlib DATA (every anchor accepts it)
CAP_PROVE = const(2)  # rover answers NEED's proof challenges (PROOF) for chunks it holds
CAP_BODY = const(8)   # rover takes BODY of up to MAX_BODY bytes from the anchor (else 4 KiB)
CAP_DELTA = const(16)  # rover sends changed chunks as deltas against a base (anchor_core/delta.py)
# The anchor takes raw names (byte-string paths and link targets that are not UTF-8), paths
# and targets of up to 4096 bytes, and mtimes anywhere in CBOR's integer range (§3,
# "Entries"). A rover talking to an anchor without it skips, and lists, what needs it.
_CAP_NAMES = const(4)      # private: a public name costs the rover heap; it copies it
PROOF_TAG = const(16)

# Error codes (ERROR message). Numbers are part of the protocol; text is for people.
E_PROTOCOL = const(1)     # malformed or out-of-order message
E_VERSION = const(2)      # unsupported protocol version
E_DEVICE = const(3)       # unknown or refused device
E_BAD_DATA = const(4)     # chunk bytes do not match their id, object id mismatch
E_MISSING = const(5)      # COMMIT names data the anchor does not hold
E_TREE = const(6)         # the tree the anchor built differs from the rover's root digest
E_INTERNAL = const(7)     # the anchor failed; nothing was committed
E_TOO_LARGE = const(8)    # a length or count above the limits
E_FULL = const(9)         # the backup does not fit the anchor's capacity budget; nothing was committed

# Relay failures (FAIL message): the session goes on, only this request failed.
F_UNREACHABLE = const(1)  # origin or broker refused or could not be reached
F_TIMEOUT = const(2)      # origin or broker did not answer in time
F_BROKER = const(3)       # no broker configured, or it rejected the message
F_TOO_LARGE = const(4)    # body above the anchor's relay limit
F_BAD_REQUEST = const(5)  # URL, method or topic the anchor will not relay
F_BROKEN = const(6)       # the origin stopped in the middle of a body

# Limits on anything that arrives from the wire.
MAX_DEVICE_LEN = const(64)
# A path or link target: Linux's PATH_MAX; depth is bounded by the length alone (at most
# 2048 components of "a/"). Anchors before _CAP_NAMES took 1024 bytes and 64 components.
_MAX_PATH_BYTES = const(4096)
MAX_ENTRIES = const(256)       # entries per ENTRIES message
MAX_IDS = const(512)           # chunk ids per CHUNKLIST message, all parts together (16 KiB)
MAX_CHUNK = const(65536)       # largest raw chunk the anchor accepts
MAX_SIZE = 1 << 48             # largest file
_MAX_TEXT = const(512)
MAX_URL = const(2048)
_MAX_TOPIC = const(256)
MAX_HEADERS = const(32)
MAX_BODY = const(16384)        # bytes per BODY message
MAX_RELAY = 1 << 40            # largest relayed body


class ProtocolError(Exception):
    """A message broke the protocol. `code` is the ERROR code to send back."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code
        self.text = text


_P_CONTROL = const(0)
_P_BACKUP = const(1)
_P_RELAY = const(2)


def purpose(t):
    """What a message type's bytes on the link are for: control, backup or relay."""
    if FETCH <= t <= FAIL or t >= 40:    # from 40 on: a resumed upload (resumemsg.py)
        return _P_RELAY
    if ENTRIES <= t <= DATA or t >= WATCHWAIT:     # from 21 on: a restore (restoremsg.py)
        return _P_BACKUP
    return _P_CONTROL


def _fail(text, code=E_PROTOCOL):
    raise ProtocolError(code, text)


def _int(v, lo, hi, what):
    if type(v) is not int or v < lo or v > hi:
        _fail("%s must be an integer in [%d, %d]" % (what, lo, hi))
    return v


def _opt_int(v, lo, hi, what):
    if v is None:
        return v
    return _int(v, lo, hi, what)


def _bytes(v, n, what):
    if type(v) is not bytes or len(v) != n:
        _fail("%s must be %d bytes" % (what, n))
    return v


def _text(v, maxlen, what):
    if type(v) is not str or len(v) > maxlen:
        _fail("%s must be text of at most %d characters" % (what, maxlen))
    return v


def _list(v, maxlen, what):
    if type(v) is not list:
        _fail("%s must be an array" % what)
    if len(v) > maxlen:
        _fail("%s has %d items, limit %d" % (what, len(v), maxlen), E_TOO_LARGE)
    return v


def check_device(name):
    if type(name) is not str or not 0 < len(name) <= MAX_DEVICE_LEN:
        _fail("device id must be 1..%d characters" % MAX_DEVICE_LEN, E_DEVICE)
    for c in name:
        if not (("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c in "._-"):
            _fail("device id may hold only letters, digits, '.', '_' and '-'", E_DEVICE)
    return name


def _raw(name, what):
    """A path or link target: text (UTF-8) or, for a name that is not UTF-8, a byte string.
    One name has one form, so a tree has one root digest. Returns its length in bytes; text
    of at most 1024 characters is not encoded to count (at most 4096 bytes either way): the
    rover checks every entry it sends, and a copy of a long path is a block its heap may
    not have."""
    if type(name) is str:
        return len(name) if len(name) <= _MAX_PATH_BYTES // 4 else len(name.encode())
    if type(name) is not bytes:
        _fail("%s must be text or bytes" % what)
    try:
        name.decode()
    except UnicodeError:
        return len(name)
    _fail("%s is UTF-8 and must be sent as text" % what)


def check_path(path):
    """A relative path inside the backed-up tree: '/'-separated, no '', '.', '..', no NUL."""
    n = _raw(path, "path")
    if not n:
        _fail("path must not be empty")
    if n > _MAX_PATH_BYTES:
        _fail("path longer than %d bytes" % _MAX_PATH_BYTES, E_TOO_LARGE)
    if type(path) is str:
        sep, dot, nul = "/", ".", "\x00"
    else:
        sep, dot, nul = b"/", b".", b"\x00"
    if path.find(nul) >= 0:
        _fail("path holds NUL")
    # Component by component without split(): a 4 KiB path may have 2048 of them.
    n = len(path)
    start = 0
    while True:
        j = path.find(sep, start)
        end = n if j < 0 else j
        ln = end - start
        if ln == 0 or (ln <= 2 and path[start:end] in (dot, dot + dot)):
            _fail("path component %r not allowed" % path[start:end])
        if j < 0:
            return path
        start = j + 1


def path_key(path):
    # Canonical tree order compares the paths' bytes component by component; mapping '/'
    # to the lowest byte makes plain comparison do exactly that. UTF-8 keeps code point
    # order, so trees of text paths sort as they always did.
    if type(path) is str:
        path = path.encode()
    return path.replace(b"/", b"\x00")


# --- builders -------------------------------------------------------------------------

def hello(device, parent, caps):
    return [HELLO, _PROTO_VERSION, device, parent, caps]


def welcome(latest, parent_ok, caps):
    return [WELCOME, _PROTO_VERSION, latest, parent_ok, caps]


def put_entry(path, etype, size, mtime_ns, mode, oid, target=None, flags=0):
    if flags:
        return [OP_PUT, path, etype, size, mtime_ns, mode, oid, target, flags]
    if target is None:
        return [OP_PUT, path, etype, size, mtime_ns, mode, oid]
    return [OP_PUT, path, etype, size, mtime_ns, mode, oid, target]


def del_entry(path):
    return [_OP_DEL, path]


def entries(seq, items):
    return [ENTRIES, seq, items]


def verdict(seq, wanted, watched=None):
    """watched: [entry index, seconds to its deadline] of queued entries the anchor will
    wait to see pass through instead of asking for them now."""
    if watched:
        return [VERDICT, seq, wanted, watched]
    return [VERDICT, seq, wanted]


def watchwait(max_seconds):
    return [WATCHWAIT, max_seconds]


def watched(missing):
    """missing: watch numbers (order of the watched lists of all VERDICTs) still not seen."""
    return [WATCHED, missing]


def list_part(index, start, ids, last):
    """Chunk ids start.. of the object of entry `index` in the batch just answered."""
    return [index, start, ids, last]


def chunklist(parts):
    return [CHUNKLIST, parts]


def need_part(index, start, wanted):
    return [index, start, wanted]


def proof(chunk_id, tag):
    return [PROOF, chunk_id, tag]


def need(parts, challenge=None, bases=None):
    # bases: per part, the positions of wanted chunks the anchor holds an old version of
    # (anchor_core/delta.py); only for a rover that said CAP_DELTA
    if bases:
        return [NEED, parts, challenge or None, bases]
    if challenge:
        return [NEED, parts, challenge]
    return [NEED, parts]


def parts_key(parts):
    """What a NEED must echo of its CHUNKLIST: (entry index, first chunk) of each part."""
    return tuple((p[_PART_INDEX], p[_PART_START]) for p in parts)


def data(chunk_id, enc, payload):
    return [DATA, chunk_id, enc, payload]


def blob_prefix(fields, n):
    """The CBOR bytes of message `fields` + [a byte string of n bytes], up to that string's
    content (see framing.frame_around): lets DATA and BODY go out without a copy."""
    head = cbor.encode(fields)
    if n < 24:
        blen = bytes([0x40 + n])
    elif n < 256:
        blen = bytes([0x58, n])
    elif n < 65536:
        blen = bytes([0x59, n >> 8, n & 0xFF])
    else:
        blen = bytes([0x5A, n >> 24, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF])
    return bytes([0x80 + len(fields) + 1]) + head[1:] + blen


_DATA_LIMIT = const(MAX_CHUNK + 1024)   # DATA payload as sent, zlib's worst case included


def blob_limit(t):
    if t == DATA:
        return _DATA_LIMIT
    if t == BODY:
        return MAX_BODY
    if t == 35:           # anchor_core/delta.py DELTA: the instructions, as DATA's payload
        return _DATA_LIMIT
    return -1


def commit(root, n_entries, total_bytes, about=None):
    # about: the optional description, checked by the anchor (services/backup.py), which
    # alone reads it: the rover's heap does not carry that check.
    msg = [COMMIT, root, n_entries, total_bytes]
    if about is not None:
        msg.append(about)
    return msg


def committed(snapshot):
    return [COMMITTED, snapshot]


def error(code, text):
    return [ERROR, code, text[:_MAX_TEXT]]


# --- checks ---------------------------------------------------------------------------

def check_entry(e):
    if type(e) is not list or len(e) <= ENTRY_PATH:
        _fail("entry must be an array")
    op = e[ENTRY_OP]
    check_path(e[ENTRY_PATH])
    if op == _OP_DEL:
        return e
    if op != OP_PUT or len(e) <= ENTRY_OID:
        _fail("entry op must be PUT with 7 fields or DEL")
    etype = _int(e[ENTRY_TYPE], 0, 2, "entry type")
    _int(e[ENTRY_SIZE], 0, MAX_SIZE, "size")
    # the CBOR integer range: years 1385 to 2554 in nanoseconds (folded, not a global)
    _int(e[ENTRY_MTIME], -(1 << 64), (1 << 64) - 1, "mtime")
    _int(e[ENTRY_MODE], 0, 0o7777, "mode")
    if etype == T_FILE:
        _bytes(e[ENTRY_OID], 32, "object id")
    elif e[ENTRY_OID] is not None:
        _fail("only files carry an object id")
    if etype == T_LINK:
        if len(e) <= ENTRY_TARGET:
            _fail("symlink entry needs a target")
        if _raw(e[ENTRY_TARGET], "symlink target") > _MAX_PATH_BYTES:
            _fail("symlink target longer than %d bytes" % _MAX_PATH_BYTES, E_TOO_LARGE)
    if len(e) > ENTRY_FLAGS:
        _int(e[ENTRY_FLAGS], 0, 0xFFFF, "entry flags")
    return e


# Fields each message must have at least, its type included (trailing extras are ignored):
# the index of its last required field + 1, by type number (0: no such type). Bytes, not a
# dict: the rover's heap pays for the field names above, and this gives some of it back.
_MIN_FIELDS = bytes((
    0, HELLO_CAPS + 1, _WELCOME_CAPS + 1, ENTRIES_ITEMS + 1, VERDICT_WANTED + 1,
    CHUNKLIST_PARTS + 1, NEED_PARTS + 1, DATA_PAYLOAD + 1, COMMIT_BYTES + 1,
    COMMITTED_SNAPSHOT + 1, ERROR_TEXT + 1, FETCH_HEADERS + 1, SEND_TYPE + 1,
    PUBLISH_RETAIN + 1, _RESULT_TYPE + 1, BODY_DATA + 1, END_SIZE + 1, FAIL_TEXT + 1,
    WATCHWAIT_SECONDS + 1, WATCHED_MISSING + 1, PROOF_MAC + 1,
))


# The checks of the extensions' types (restoremsg.py, delta.py, resumemsg.py), once installed:
# modules a rover loads only when it needs them.
_ext = None


def extend(lo, hi, check_fn):
    """Have check() pass message types lo..hi to check_fn (an extension's install())."""
    global _ext
    prev = _ext

    def ext(msg):
        if lo <= msg[0] <= hi:
            return check_fn(msg)
        if prev is None:
            _fail("unknown message type %d" % msg[0])
        return prev(msg)
    _ext = ext


def check(msg):
    """Validate a decoded message; returns it or raises ProtocolError."""
    if type(msg) is not list or not msg or type(msg[MSG_TYPE]) is not int:
        _fail("message must be an array starting with its type")
    t = msg[MSG_TYPE]
    n = len(msg)
    need = _MIN_FIELDS[t] if 0 <= t < len(_MIN_FIELDS) else 0
    if not need:
        if _ext is not None and t > PROOF:
            return _ext(msg)
        _fail("unknown message type %d" % t)
    if n < need:
        _fail("%s too short" % NAMES[t])
    if t == HELLO:
        if msg[_HELLO_VERSION] != _PROTO_VERSION:
            _fail("protocol version %s not supported (this side speaks %d)"
                  % (msg[_HELLO_VERSION], _PROTO_VERSION), E_VERSION)
        check_device(msg[HELLO_DEVICE])
        _opt_int(msg[HELLO_PARENT], 1, 1 << 62, "parent snapshot")
        _int(msg[HELLO_CAPS], 0, 0xFFFF, "caps")
    elif t == WELCOME:
        if msg[_WELCOME_VERSION] != _PROTO_VERSION:
            _fail("protocol version %s not supported (this side speaks %d)"
                  % (msg[_WELCOME_VERSION], _PROTO_VERSION), E_VERSION)
        _opt_int(msg[_WELCOME_LATEST], 1, 1 << 62, "latest snapshot")
        if type(msg[WELCOME_PARENT_OK]) is not bool:
            _fail("parent_ok must be a bool")
        _int(msg[_WELCOME_CAPS], 0, 0xFFFF, "caps")
    elif t == ENTRIES:
        _int(msg[ENTRIES_SEQ], 0, 1 << 62, "batch number")
        for e in _list(msg[ENTRIES_ITEMS], MAX_ENTRIES, "entries"):
            check_entry(e)
    elif t == VERDICT:
        _int(msg[_VERDICT_SEQ], 0, 1 << 62, "batch number")
        for i in _list(msg[VERDICT_WANTED], MAX_ENTRIES, "wanted"):
            _int(i, 0, MAX_ENTRIES - 1, "wanted index")
        if n > VERDICT_WATCHED:
            for w in _list(msg[VERDICT_WATCHED], MAX_ENTRIES, "watched"):
                if type(w) is not list or len(w) <= WATCH_SECONDS:
                    _fail("watched item must be [index, seconds]")
                _int(w[WATCH_INDEX], 0, MAX_ENTRIES - 1, "watched index")
                _int(w[WATCH_SECONDS], 0, 1 << 31, "watch seconds")
    elif t == CHUNKLIST:
        total = 0
        for p in _list(msg[CHUNKLIST_PARTS], MAX_ENTRIES, "chunk list parts"):
            if type(p) is not list or len(p) <= _PART_LAST:
                _fail("chunk list part must be [index, first, ids, last]")
            _int(p[_PART_INDEX], 0, MAX_ENTRIES - 1, "entry index")
            _int(p[_PART_START], 0, 1 << 40, "chunk index")
            total += len(_list(p[_PART_IDS], MAX_IDS, "chunk ids"))
            if total > MAX_IDS:
                _fail("more than %d chunk ids in one CHUNKLIST" % MAX_IDS, E_TOO_LARGE)
            for c in p[_PART_IDS]:
                _bytes(c, 32, "chunk id")
            if type(p[_PART_LAST]) is not bool:
                _fail("last must be a bool")
    elif t == NEED:
        for p in _list(msg[NEED_PARTS], MAX_ENTRIES, "need parts"):
            if type(p) is not list or len(p) <= _PART_WANTED:
                _fail("need part must be [index, first, wanted]")
            _int(p[_PART_INDEX], 0, MAX_ENTRIES - 1, "entry index")
            _int(p[_PART_START], 0, 1 << 40, "chunk index")
            for i in _list(p[_PART_WANTED], MAX_IDS, "needed"):
                _int(i, 0, MAX_IDS - 1, "needed index")
        if n > NEED_CHALLENGE + 1:
            # positions per part of wanted chunks with an old version at the anchor (delta.py)
            if len(_list(msg[NEED_CHALLENGE + 1], MAX_ENTRIES, "base parts")) != len(msg[NEED_PARTS]):
                _fail("bases must list positions for every need part")
            for q in msg[NEED_CHALLENGE + 1]:
                for i in _list(q, MAX_IDS, "positions with a base"):
                    _int(i, 0, MAX_IDS - 1, "position with a base")
        if n > NEED_CHALLENGE and msg[NEED_CHALLENGE] is not None:
            # [nonce, [positions to prove, per part]]: chunks the anchor holds from another
            # rover, matched only once this one proves it has the bytes (PROOF)
            pr = msg[NEED_CHALLENGE]
            if type(pr) is not list or len(pr) != 2:
                _fail("proof challenge must be [nonce, positions per part]")
            _bytes(pr[CHALLENGE_NONCE], 16, "proof nonce")
            if len(_list(pr[CHALLENGE_POSITIONS], MAX_ENTRIES, "proof parts")) != len(msg[NEED_PARTS]):
                _fail("proof challenge must list positions for every need part")
            for q in pr[CHALLENGE_POSITIONS]:
                for i in _list(q, MAX_IDS, "positions to prove"):
                    _int(i, 0, MAX_IDS - 1, "position to prove")
    elif t == PROOF:
        _bytes(msg[PROOF_ID], 32, "chunk id")
        _bytes(msg[PROOF_MAC], PROOF_TAG, "proof tag")
    elif t == DATA:
        _bytes(msg[DATA_ID], 32, "chunk id")
        _int(msg[DATA_ENC], 0, 1, "encoding")
        if type(msg[DATA_PAYLOAD]) is not bytes or len(msg[DATA_PAYLOAD]) > _DATA_LIMIT:
            _fail("DATA payload must be bytes of at most %d" % _DATA_LIMIT, E_TOO_LARGE)
    elif t == COMMIT:
        _bytes(msg[COMMIT_ROOT], 32, "root digest")
        _int(msg[COMMIT_COUNT], 0, 1 << 40, "entry count")
        _int(msg[COMMIT_BYTES], 0, 1 << 62, "total bytes")
    elif t == COMMITTED:
        _int(msg[COMMITTED_SNAPSHOT], 1, 1 << 62, "snapshot")
    elif t == ERROR:
        _int(msg[ERROR_CODE], 0, 0xFFFF, "error code")
        _text(msg[ERROR_TEXT], _MAX_TEXT, "error text")
    elif t == FETCH:
        _url(msg[FETCH_URL])
        for h in _list(msg[FETCH_HEADERS], MAX_HEADERS, "headers"):
            if type(h) is not list or len(h) != 2:
                _fail("header must be [name, value]")
            _text(h[_HEADER_NAME], 64, "header name")
            _text(h[_HEADER_VALUE], _MAX_TEXT, "header value")
    elif t == SEND:
        if msg[SEND_METHOD] not in ("PUT", "POST"):
            _fail("SEND method must be PUT or POST")
        _url(msg[SEND_URL])
        _int(msg[SEND_SIZE], 0, MAX_RELAY, "body size")
        _text(msg[SEND_TYPE], 128, "content type")
    elif t == PUBLISH:
        topic = _text(msg[PUBLISH_TOPIC], _MAX_TOPIC, "topic")
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            _fail("topic must be non-empty, without wildcards")
        _int(msg[PUBLISH_SIZE], 0, MAX_RELAY, "payload size")
        _int(msg[PUBLISH_QOS], 0, 1, "qos")
        if type(msg[PUBLISH_RETAIN]) is not bool:
            _fail("retain must be a bool")
    elif t == RESULT:
        _int(msg[RESULT_STATUS], 0, 999, "status")
        _opt_int(msg[RESULT_SIZE], 0, MAX_RELAY, "size")
        _opt_text(msg[_RESULT_ETAG], _MAX_TEXT, "etag")
        _opt_text(msg[_RESULT_MODIFIED], _MAX_TEXT, "last-modified")
        _opt_text(msg[_RESULT_TYPE], 128, "content type")
    elif t == BODY:
        b = msg[BODY_DATA]
        if (type(b) is not bytes and type(b) is not memoryview) or len(b) > MAX_BODY:
            _fail("BODY must carry at most %d bytes" % MAX_BODY, E_TOO_LARGE)
    elif t == END:
        _int(msg[END_SIZE], 0, MAX_RELAY, "body size")
    elif t == FAIL:
        _int(msg[_FAIL_CODE], 0, 0xFFFF, "failure code")
        _text(msg[FAIL_TEXT], _MAX_TEXT, "failure text")
    elif t == WATCHWAIT:
        _int(msg[WATCHWAIT_SECONDS], 0, 1 << 31, "wait seconds")
    elif t == WATCHED:
        for i in _list(msg[WATCHED_MISSING], MAX_ENTRIES, "missing"):
            _int(i, 0, MAX_ENTRIES - 1, "watch number")
    return msg


def _url(u):
    _text(u, MAX_URL, "url")
    if not (u.startswith("http://") or u.startswith("https://")) or len(u) < 10:
        _fail("url must be http:// or https://")
    for c in u:
        if ord(c) <= 32 or ord(c) == 127:
            _fail("url holds spaces or control characters")


def encode(msg):
    return cbor.encode(msg)


def decode(payload, views=0):
    """Bytes of one frame -> checked message (views: see cbor.decode)."""
    try:
        msg = cbor.decode(payload, 0, None, views)
    except ValueError as e:
        raise ProtocolError(E_PROTOCOL, "bad CBOR: %s" % e)
    except MemoryError:
        # A small frame can still describe more items than a rover's heap holds.
        raise ProtocolError(E_TOO_LARGE, "message too large to decode here")
    return check(msg)


def fetch(url, headers=None, resume=None):
    if resume:
        return [FETCH, url, headers or [], resume]   # [offset, validator] of a cut-off download
    return [FETCH, url, headers or []]


def send_req(method, url, size, content_type):
    return [SEND, method, url, size, content_type]


def publish(topic, size, qos, retain):
    return [PUBLISH, topic, size, qos, retain]


def result(status, size=None, etag=None, last_modified=None, content_type=None, start=None):
    r = [RESULT, status, size, etag, last_modified, content_type]
    if start is not None:
        r.append(start)   # a resumed FETCH: where in the body the BODYs that follow start
    return r


def body(data):
    return [BODY, data]


def end(size):
    return [END, size]


def fail(code, text):
    return [FAIL, code, text[:_MAX_TEXT]]


def _opt_text(v, maxlen, what):
    if v is not None:
        _text(v, maxlen, what)


def tree_record(path, etype, size, mtime_ns, mode, oid, target=None):
    """One entry of a snapshot tree; its CBOR encoding feeds the root digest."""
    return [path, etype, size, mtime_ns, mode, oid, target]
