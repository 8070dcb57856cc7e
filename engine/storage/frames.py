"""Framed records: `length (u32 LE) | crc32 of payload (u32 LE) | payload`, after an 8-byte file magic.

Reading tells a torn tail (the last record cut short by a crash: expected, cut off with a warning)
from corruption (a bad record with intact records after it: never skipped silently). A damaged last
record whose bytes are all there (its checksum does not match them, or only its length is wrong) is
cut off too, but it is told apart: it was written whole, so it may have been acknowledged before its
bytes changed on disk, and what it held may be lost (engine.storage.wal says so when it cuts one).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CorruptFile

from .lock import write_atomically

HEADER = struct.Struct("<II")
_WALK_BLOCK = 1 << 20  # bytes read at once when walking record headers
MAX_FRAME_BYTES = 1 << 30


@dataclass(slots=True)
class TornTail:
    offset: int  # where the valid records end; everything from here on is cut off
    reason: str
    # The record is all there but does not read back (a bit flip, a bad sector): it may have been
    # acknowledged. False: it was cut short, a write a crash interrupted before it was whole.
    whole: bool = False


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(path: Path, magic: bytes, torn: list[TornTail] | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, payload) of each intact record. A torn tail ends the iteration and is reported
    in `torn` (if given; otherwise it is corruption too). Damage before the tail raises CorruptFile."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        if f.read(len(magic)) != magic:
            if size < len(magic) and torn is not None:
                torn.append(TornTail(0, "file shorter than its header"))
                return
            raise CorruptFile(path, 0, "not a file of this kind (bad magic)")
        offset = len(magic)
        while offset < size:
            problem, whole = None, False
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                problem = "record header cut short"
            else:
                length, crc = HEADER.unpack(header)
                end = offset + HEADER.size + length
                if length == 0 or length > MAX_FRAME_BYTES or end > size:
                    problem = "record runs past the end of the file"
                    # A flipped bit in the length looks like a record cut short, unless the bytes
                    # that are there match the checksum: then the record is whole, its length wrong.
                    rest = f.read()
                    if rest and zlib.crc32(rest) == crc:
                        problem, whole = "record length damaged (its bytes match their checksum)", True
                else:
                    payload = f.read(length)
                    if zlib.crc32(payload) != crc:
                        problem, whole = "checksum mismatch", True
            if problem is not None:
                # Only the last record can be torn by a crash: intact records after this one mean damage.
                if torn is None or _intact_record_after(path, offset + 1, size):
                    raise CorruptFile(path, offset, problem)
                torn.append(TornTail(offset, problem, whole))
                return
            yield offset, payload
            offset = end


def frame_headers(path: Path, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(offset, payload length, crc32) of each record between `start` (a record's first byte) and
    `end`, from the headers alone: how a copy finds a record's place and checksum without decoding
    what it holds. The file is read in large blocks, not a read per record. The bytes are not
    checked; the copy's reader checks them."""
    with path.open("rb") as f:
        f.seek(start)
        block, base = b"", start  # block holds the file's bytes from offset `base`
        offset = start
        while offset + HEADER.size <= end:
            if offset + HEADER.size > base + len(block):
                f.seek(offset)
                block, base = f.read(min(_WALK_BLOCK, end - offset)), offset
                if len(block) < HEADER.size:
                    return
            length, crc = HEADER.unpack_from(block, offset - base)
            if offset + HEADER.size + length > end:
                return
            yield offset, length, crc
            offset += HEADER.size + length


def _intact_record_after(path: Path, start: int, size: int) -> bool:
    data = path.read_bytes()
    for offset in range(start, size - HEADER.size):
        length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if (
            0 < length <= MAX_FRAME_BYTES
            and end <= size
            and zlib.crc32(data[offset + HEADER.size : end]) == crc
        ):
            return True
    return False


def quarantine(path: Path, offset: int) -> Path | None:
    """Copy the bytes of `path` from `offset` on to `<name>.<offset>.quarantine` beside it, synced,
    before they are cut; None when there are none."""
    data = path.read_bytes()[offset:]
    if not data:
        return None
    target = path.with_name(f"{path.name}.{offset}.quarantine")
    write_atomically(target, data)
    return target
