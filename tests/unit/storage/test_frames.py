from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import CorruptFile
from engine.storage.frames import TornTail, frame, read_frames

MAGIC = b"TESTMAG\n"
payloads = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8)
_tmp = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write(path: Path, records: list[bytes]) -> bytes:
    data = MAGIC + b"".join(frame(r) for r in records)
    path.write_bytes(data)
    return data


def read(path: Path) -> tuple[list[bytes], list[TornTail]]:
    torn: list[TornTail] = []
    return [p for _, p in read_frames(path, MAGIC, torn)], torn


@_tmp
@given(records=payloads, data=st.data())
def test_a_tail_torn_at_any_length_reads_back_as_a_prefix(
    tmp_path: Path, records: list[bytes], data: st.DataObject
) -> None:
    path = tmp_path / "f"
    full = write(path, records)
    cut = data.draw(st.integers(len(MAGIC), len(full)))
    path.write_bytes(full[:cut])
    got, torn = read(path)
    assert got == records[: len(got)], "always a prefix of what was written"
    ends = [len(MAGIC) + sum(len(frame(r)) for r in records[:i]) for i in range(len(records) + 1)]
    assert len(got) == max(i for i, end in enumerate(ends) if end <= cut)
    assert bool(torn) == (cut not in ends)
    assert not any(t.whole for t in torn), "a record cut short is never taken for a whole one"


@_tmp
@given(records=payloads, data=st.data())
def test_a_flipped_bit_anywhere_in_the_last_record_is_cut_as_a_whole_record(
    tmp_path: Path, records: list[bytes], data: st.DataObject
) -> None:
    """Its length, checksum or payload: the record was written whole, so it may have been
    acknowledged, and the torn tail says so (engine.storage.wal tells the operator)."""
    path = tmp_path / "f"
    full = bytearray(write(path, records))
    last_start = len(full) - len(frame(records[-1]))
    position = data.draw(st.integers(last_start, len(full) - 1))
    full[position] ^= 1 << data.draw(st.integers(0, 7))
    path.write_bytes(bytes(full))
    got, torn = read(path)
    assert got == records[:-1]
    assert [(t.offset, t.whole) for t in torn] == [(last_start, True)], torn


@_tmp
@given(records=st.lists(st.binary(min_size=1, max_size=40), min_size=2, max_size=8), data=st.data())
def test_a_flipped_byte_before_the_last_record_is_reported_with_file_and_offset(
    tmp_path: Path, records: list[bytes], data: st.DataObject
) -> None:
    path = tmp_path / "f"
    full = bytearray(write(path, records))
    last_start = len(full) - len(frame(records[-1]))
    position = data.draw(st.integers(len(MAGIC), last_start - 1))
    full[position] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(full))
    with pytest.raises(CorruptFile) as info:
        read(path)
    assert info.value.path == path
    assert len(MAGIC) <= info.value.offset <= position
    assert str(path) in str(info.value) and str(info.value.offset) in str(info.value)


def test_a_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"NOTMAGIC" + frame(b"x"))
    with pytest.raises(CorruptFile, match="magic"):
        read(path)


def test_without_a_torn_list_a_torn_tail_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "f"
    full = write(path, [b"one", b"two"])
    path.write_bytes(full[:-1])
    with pytest.raises(CorruptFile):
        list(read_frames(path, MAGIC))
