"""Segment files: the chunk store's on-flash record format (CPython only).

    root/segments/NNNNNNNN.seg   16-byte header, then records (RECORD_HEAD + crc32 + payload)

Everything here is about the bytes of one segment file: the header and record layouts and
their constants, framing and checking a record, decoding its payload, writing records with
gathered writes, scanning a tail for intact records and cutting a torn one off. What a record
means to the store (which chunk lives where) is the index's business (storage/index.py).
Formats and recovery rules: docs/storage.md (storage format version 1).
"""

import os
import re
import struct
import zlib

import zstandard

FORMAT_VERSION = 1

SEGMENT_MAGIC = b"ANCHSEG\x00"
SEGMENT_HEADER = struct.Struct("<8sHHI")       # magic, format version, reserved (0), segment number
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size      # 16

RECORD_MAGIC = b"\x89CHK"
RECORD_HEAD = struct.Struct("<4s32sBII")       # magic, chunk id, encoding, raw length, stored length
RECORD_CRC = struct.Struct("<I")               # crc32 of the 45 head bytes, then of the payload
RECORD_HEADER_SIZE = RECORD_HEAD.size + RECORD_CRC.size   # 49: what a record costs besides its payload

ENC_RAW = 0
ENC_ZLIB = 1
ENC_ZSTD = 2
ENCODINGS = (ENC_RAW, ENC_ZLIB, ENC_ZSTD)

MAX_CHUNK = 64 * 1024

SEGMENT_NAME = re.compile(r"^(\d{8})\.seg$")

_pack_head = RECORD_HEAD.pack
_pack_crc = RECORD_CRC.pack
_crc32 = zlib.crc32


class StoreError(Exception):
    """Raised for anything the store refuses or cannot do: bad input, missing or corrupt data."""


class HeaderDamaged(StoreError):
    """A segment's header is not what the store wrote (bad magic, wrong number, zeros): damage,
    not a newer format. Its records are still each checked (CRC, SHA-256) when read, so the
    store serves them and reports the header (verify); repair writes it again."""


def segment_name(seq):
    return "%08d.seg" % seq


def segment_header(seq):
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, seq)


def list_segments(seg_dir):
    """{seq: path} of the files in seg_dir named like segments (others are ignored)."""
    out = {}
    for name in os.listdir(seg_dir):
        m = SEGMENT_NAME.match(name)
        if m:
            out[int(m.group(1))] = os.path.join(seg_dir, name)
    return out


def make_head(chunk_id, encoding, raw_len, payload):
    """The 49 bytes that precede a payload: head fields, then CRC-32 over them and the payload."""
    head = _pack_head(RECORD_MAGIC, chunk_id, encoding, raw_len, len(payload))
    return head + _pack_crc(_crc32(payload, _crc32(head)))


def make_record(chunk_id, encoding, raw_len, payload):
    """One whole record as bytes."""
    return make_head(chunk_id, encoding, raw_len, payload) + bytes(payload)


def decode_payload(encoding, raw_len, payload):
    """Return the raw bytes of a payload, never producing more than raw_len bytes."""
    if encoding == ENC_RAW:
        return bytes(payload)
    if encoding == ENC_ZLIB:
        d = zlib.decompressobj()
        try:
            out = d.decompress(payload, raw_len)
        except zlib.error as e:
            raise StoreError("zlib payload does not decode: %s" % e) from None
        if not d.eof or d.unconsumed_tail or d.unused_data:
            raise StoreError("zlib payload is not one stream of %d bytes" % raw_len)
        return out
    if encoding == ENC_ZSTD:
        try:
            size = zstandard.frame_content_size(payload)
        except zstandard.ZstdError:
            raise StoreError("zstd payload has no valid frame header") from None
        if size not in (-1, raw_len):
            raise StoreError("zstd frame declares %d bytes, expected %d" % (size, raw_len))
        try:
            return zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise StoreError("zstd payload does not decode: %s" % e) from None
    raise StoreError("unknown encoding %r" % (encoding,))


def parse_record(buf, pos):
    """Check the record at buf[pos:] (magic, lengths, CRC). Return (id, enc, raw_len, stored_len,
    end) or None when it is incomplete or damaged."""
    if len(buf) - pos < RECORD_HEADER_SIZE:
        return None
    magic, cid, enc, raw_len, stored_len = RECORD_HEAD.unpack_from(buf, pos)
    if magic != RECORD_MAGIC or enc not in ENCODINGS or raw_len > MAX_CHUNK:
        return None
    if (enc == ENC_RAW and stored_len != raw_len) or (enc != ENC_RAW and stored_len >= raw_len):
        return None
    start = pos + RECORD_HEADER_SIZE
    end = start + stored_len
    if end > len(buf):
        return None
    (crc,) = RECORD_CRC.unpack_from(buf, pos + RECORD_HEAD.size)
    mv = memoryview(buf)
    if _crc32(mv[start:end], _crc32(mv[pos:pos + RECORD_HEAD.size])) != crc:
        return None
    return cid, enc, raw_len, stored_len, end


def read_header(path, seq, fresh=False):
    """Return 'ok', or 'torn' for a header that is short or all zero; raise for a foreign or
    newer file. fresh: a segment past every committed one, which no flush ever promised:
    there a header without the magic is 'torn' too (the power went before the header
    landed, and the file holds whatever the card had in those blocks)."""
    with open(path, "rb") as f:
        head = f.read(SEGMENT_HEADER_SIZE)
    if len(head) < SEGMENT_HEADER_SIZE or head == bytes(SEGMENT_HEADER_SIZE):
        return "torn"
    magic, version, _reserved, number = SEGMENT_HEADER.unpack(head)
    if magic != SEGMENT_MAGIC:
        if fresh:
            return "torn"
        raise HeaderDamaged("%s is not an Anchor segment (bad magic)" % path)
    if version != FORMAT_VERSION:
        raise StoreError("%s has segment format version %d; this anchor reads version %d "
                         "(upgrade the anchor software, or restore a matching backup)"
                         % (path, version, FORMAT_VERSION))
    if number != seq:
        raise HeaderDamaged("%s says it is segment %d" % (path, number))
    return "ok"


def header_problem(path, seq):
    """None when segment seq's header is whole, else what is wrong with it (a missing file
    too). For a segment the index lists: the index (format version 1, checked when it opened)
    was written by this format, so another version in the header is damage too."""
    try:
        if read_header(path, seq) == "torn":
            return "%s has a damaged header (short or zeros)" % path
    except FileNotFoundError:
        return "segment %s is missing" % segment_name(seq)
    except StoreError as e:
        return str(e)
    except OSError as e:
        return "%s cannot be read: %s" % (path, e)
    return None


def write_header(path, seq):
    """Write segment seq's header again (repair) and make it durable."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, segment_header(seq), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def scan(path, start):
    """The intact records of a segment from offset start on, up to the first bytes that do not
    form one: ([(id, off, raw_len, stored_len, enc)], end of the last intact record)."""
    with open(path, "rb") as f:
        f.seek(start)
        tail = f.read()
    found = []
    pos = 0
    while True:
        r = parse_record(tail, pos)
        if r is None:
            break
        cid, enc, raw_len, stored_len, nxt = r
        found.append((cid, start + pos, raw_len, stored_len, enc))
        pos = nxt
    return found, start + pos


def salvage_scan(path):
    """Every intact record of a whole segment, stepping over damage: after bytes that do not
    form a record, the next record marker is looked for (a false marker inside a payload is
    refused by the CRC). For rebuilding an index; nothing is cut. ([(id, off, raw_len,
    stored_len, enc)], end of the last intact record)."""
    with open(path, "rb") as f:
        buf = f.read()
    found = []
    pos = SEGMENT_HEADER_SIZE
    end = pos
    while pos < len(buf):
        r = parse_record(buf, pos)
        if r is None:
            pos = buf.find(RECORD_MAGIC, pos + 1)
            if pos < 0:
                break
            continue
        cid, enc, raw_len, stored_len, nxt = r
        found.append((cid, pos, raw_len, stored_len, enc))
        pos = end = nxt
    return found, end


def truncate(path, end):
    """Cut a segment at end (a torn tail) and make that durable."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, end)
        os.fsync(fd)
    finally:
        os.close(fd)


def open_for_append(seg_dir, seq):
    """(fd opened O_RDWR, created) for segment seq, creating the file (with its header) if
    needed."""
    path = os.path.join(seg_dir, segment_name(seq))
    created = False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        created = True
    except FileExistsError:
        fd = os.open(path, os.O_RDWR)
    if created or os.fstat(fd).st_size < SEGMENT_HEADER_SIZE:
        os.pwrite(fd, segment_header(seq), 0)
    return fd, created


_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def pwrite_all(fd, buffers, off):
    """Write buffers back to back at off with gathered writes (no joined copy); return the end."""
    for i in range(0, len(buffers), _IOV_MAX):
        part = buffers[i:i + _IOV_MAX]
        want = sum(map(len, part))
        done = os.pwritev(fd, part, off)
        if done < want:                         # short write: finish the rest plainly
            rest = memoryview(b"".join(part))
            while done < want:
                done += os.pwrite(fd, rest[done:], off + done)
        off += want
    return off


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentFiles:
    """The segment files of one store, by number: the one appended to stays open (O_RDWR), and
    a few read-only fds are cached. Appends are gathered writes then fsyncs (steps 1 and 2 of
    the write order in docs/storage.md); what they mean is the store's and the index's."""

    def __init__(self, seg_dir):
        self.dir = seg_dir
        self._wfd = None            # (seq, fd) of the current (last) segment
        self._rfds = {}             # seq -> read-only fd

    def path(self, seq):
        return os.path.join(self.dir, segment_name(seq))

    def size(self, seq):
        return os.path.getsize(self.path(seq))

    def _append_fd(self, seq):
        if self._wfd is not None and self._wfd[0] == seq:
            return self._wfd[1], False
        return open_for_append(self.dir, seq)

    def write_groups(self, groups):
        """Append [seq, offset, [buffers]] groups, fsync every file written (and the directory
        when a file was created). Returns {seq: new end}."""
        ends = {}
        fds = []                    # (seq, fd) in group order; the last one stays open for appends
        new_file = False
        try:
            try:
                for seq, off, buffers in groups:
                    fd, created = self._append_fd(seq)
                    fds.append((seq, fd))
                    new_file |= created
                    ends[seq] = pwrite_all(fd, buffers, off)
                for _, fd in fds:
                    os.fsync(fd)
                if new_file:
                    fsync_dir(self.dir)
            finally:
                keep = fds[-1] if fds else self._wfd
                opened = {fd for _, fd in fds}
                if self._wfd is not None:
                    opened.add(self._wfd[1])
                for fd in opened - {keep[1] if keep else None}:
                    os.close(fd)
                self._wfd = keep
        except OSError as e:
            raise StoreError("writing segments failed: %s" % e) from e
        return ends

    def read(self, seq, off, n):
        """Up to n bytes of segment seq at off."""
        fd = self._rfds.get(seq)
        if fd is None:
            if len(self._rfds) >= 32:
                for old in self._rfds.values():
                    os.close(old)
                self._rfds.clear()
            try:
                fd = os.open(self.path(seq), os.O_RDONLY)
            except FileNotFoundError:
                raise StoreError("segment %s is missing" % segment_name(seq)) from None
            self._rfds[seq] = fd
        return os.pread(fd, n, off)

    def remove(self, seqs):
        """Unlink segment files (closing their fds), then fsync the directory."""
        for seq in seqs:
            fd = self._rfds.pop(seq, None)
            if fd is not None:
                os.close(fd)
            if self._wfd is not None and self._wfd[0] == seq:
                os.close(self._wfd[1])
                self._wfd = None
            try:
                os.unlink(self.path(seq))
            except FileNotFoundError:
                pass
        fsync_dir(self.dir)

    def usage(self):
        """(segment numbers on flash, their files' total size)."""
        seqs = set()
        disk = 0
        for seq, path in list_segments(self.dir).items():
            seqs.add(seq)
            try:
                disk += os.path.getsize(path)
            except FileNotFoundError:
                pass
        return seqs, disk

    def close(self):
        if self._wfd is not None:
            os.close(self._wfd[1])
            self._wfd = None
        for fd in self._rfds.values():
            os.close(fd)
        self._rfds.clear()
