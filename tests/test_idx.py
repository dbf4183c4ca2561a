"""IDX reading and writing: round trips, every malformed file, atomic writes."""

import gzip
import os
import re
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fbprop.data import IdxError, read_idx, write_idx

DTYPES = ["u1", "i1", "i2", "i4", "f4", "f8"]
CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
HYPOTHESIS = settings(
    max_examples=200, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def header(code: int, *shape: int) -> bytes:
    return struct.pack(f">BBBB{len(shape)}I", 0, 0, code, len(shape), *shape)


def example(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    values = np.linspace(float(info.min) / 4, float(info.max) / 4, num=int(np.prod(shape)))
    values[[0, -1]] = info.min, info.max
    return values.astype(dtype).reshape(shape)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    native = a.astype(a.dtype.newbyteorder("="))
    return native.dtype == b.dtype and native.shape == b.shape and native.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 3, 1, 4)], ids=["1d", "3d", "4d"])
@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gzip"])
def test_round_trip_keeps_dtype_shape_and_values(tmp_path, dtype, shape, suffix):
    a = example(dtype, shape)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert same_bits(a, b)
    assert b.dtype.isnative and b.flags.c_contiguous and b.flags.writeable
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


@pytest.mark.parametrize("dtype", ["i2", "i4", "f4", "f8"])
def test_disk_layout_is_big_endian_with_the_type_code(tmp_path, dtype):
    a = np.arange(6, dtype=f"<{dtype}").reshape(2, 3)
    write_idx(tmp_path / "a.idx", a)
    raw = (tmp_path / "a.idx").read_bytes()
    assert raw == header(CODES[dtype], 2, 3) + a.astype(f">{dtype}").tobytes()


def test_gzip_detected_by_magic_not_by_name(tmp_path):
    a = np.arange(10, dtype=np.int16)
    write_idx(tmp_path / "a.gz", a)
    os.rename(tmp_path / "a.gz", tmp_path / "plain-name")
    write_idx(tmp_path / "b", a)
    os.rename(tmp_path / "b", tmp_path / "b.gz")
    assert same_bits(a, read_idx(tmp_path / "plain-name"))
    assert same_bits(a, read_idx(tmp_path / "b.gz"))


@HYPOTHESIS
@given(
    a=hnp.arrays(
        dtype=st.sampled_from([np.dtype(e + d) for d in DTYPES for e in "<>"]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
    ),
    gz=st.booleans(),
)
def test_any_supported_array_round_trips(tmp_path, a, gz):
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a)
    assert same_bits(a, read_idx(path))


def consistent_or_idx_error(path, data: bytes) -> None:
    try:
        a = read_idx(path)
    except IdxError as err:
        assert str(path) in str(err)
        return
    assert data[:2] == b"\x00\x00" and a.ndim == data[3]
    assert a.dtype == np.dtype(DTYPES[list(CODES.values()).index(data[2])])
    assert a.shape == struct.unpack(f">{a.ndim}I", data[4 : 4 + 4 * a.ndim])


@HYPOTHESIS
@given(data=st.binary(max_size=64) | st.builds(
    lambda code, ndim, rest: bytes([0, 0, code, ndim]) + rest,
    st.sampled_from([*CODES.values(), 0x00, 0x0A]), st.integers(0, 4), st.binary(max_size=64),
))
def test_random_bytes_parse_consistently_or_raise_idx_error(tmp_path, data):
    path = tmp_path / "random"
    path.write_bytes(data)
    consistent_or_idx_error(path, data)


@HYPOTHESIS
@given(data=st.binary(max_size=64), cut=st.integers(0, 80), flip=st.integers(0, 80))
def test_damaged_gzip_parses_consistently_or_raises_idx_error(tmp_path, data, cut, flip):
    packed = bytearray(gzip.compress(data))
    if flip < len(packed):
        packed[flip] ^= 0x10
    path = tmp_path / "random.gz"
    path.write_bytes(bytes(packed[: max(cut, 2)]))
    consistent_or_idx_error(path, data)


VALID = header(0x08, 2, 3) + bytes(range(6))
NEEDS = "shape (2, 3) of uint8 needs 6 data bytes"
BROKEN = {
    "empty": (b"", "expected a 4-byte header, got 0 bytes"),
    "short header": (b"\x00\x00\x08", "expected a 4-byte header, got 3 bytes"),
    "truncated sizes": (VALID[:9], "truncated header, expected 12 bytes for 2 dimensions, got 9"),
    "bad magic": (b"\x01\x00" + VALID[2:], "expected magic starting with bytes 00 00, got 01 00"),
    "unknown type": (b"\x00\x00\x0a" + VALID[3:], "expected a type code in {0x08, 0x09, "),
    "zero dimensions": (b"\x00\x00\x08\x00", "expected 1 to 16 dimensions, got 0"),
    "too many dimensions": (header(0x08, *[1] * 17), "expected 1 to 16 dimensions, got 17"),
    "truncated data": (VALID[:-1], f"truncated data, {NEEDS}, found 5"),
    "trailing bytes": (VALID + b"\x00\x00", f"trailing bytes, {NEEDS}, found"),
    "sizes disagree": (
        header(0x0C, 2, 3) + bytes(6),
        "truncated data, shape (2, 3) of int32 needs 24 data bytes, found 6",
    ),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", BROKEN)
def test_malformed_file_raises_idx_error_naming_file_and_problem(tmp_path, case, gz):
    data, message = BROKEN[case]
    path = tmp_path / f"broken.idx{'.gz' if gz else ''}"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(IdxError) as info:
        read_idx(path)
    text = str(info.value)
    assert str(path) in text and message in text
    assert "\n" not in text


def test_trailing_bytes_counted_in_raw_file(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(VALID + bytes(3))
    with pytest.raises(IdxError, match=f"trailing bytes, {re.escape(NEEDS)}, found 3 more"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_gigantic_header_rejected_before_allocating(tmp_path, gz):
    data = header(0x0E, 10_000, 10_000, 10_000) + bytes(64)
    path = tmp_path / "huge.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    tracemalloc.start()
    try:
        with pytest.raises(IdxError, match="needs 8000000000000 data bytes") as info:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 1 << 20


def test_corrupt_gzip_crc_raises_idx_error(tmp_path):
    packed = bytearray(gzip.compress(VALID))
    packed[-8] ^= 0xFF  # the CRC-32 of the gzip trailer
    path = tmp_path / "crc.idx.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(IdxError, match="corrupt gzip stream") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_raises_idx_error(tmp_path):
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(header(0x08, 1000) + bytes(1000))[:-12])
    with pytest.raises(IdxError, match="corrupt gzip stream") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.idx"):
        read_idx(tmp_path / "nowhere.idx")


@pytest.mark.parametrize("bad", [np.arange(3, dtype=np.int64), np.zeros(3, dtype=bool),
                                 np.zeros(3, dtype=np.uint16), np.zeros(3, dtype=np.complex64)])
def test_write_rejects_dtypes_without_idx_code(tmp_path, bad):
    with pytest.raises(ValueError, match=f"got {bad.dtype}") as info:
        write_idx(tmp_path / "a.idx", bad)
    assert "uint8, int8, int16, int32, float32, float64" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_zero_dimensions(tmp_path):
    with pytest.raises(ValueError, match="expected 1 to 16 dimensions, got 0"):
        write_idx(tmp_path / "a.idx", np.array(3, dtype=np.uint8))


def test_write_accepts_non_contiguous_arrays(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[::2, ::-3]
    write_idx(tmp_path / "a.idx", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), a)


@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gzip"])
def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"a.idx{suffix}"
    old = np.arange(5, dtype=np.uint8)
    write_idx(path, old)
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_idx(path, np.zeros((100, 100), dtype=np.float64))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    np.testing.assert_array_equal(read_idx(path), old)


def test_write_interrupted_mid_data_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "a.idx"
    write_idx(path, np.arange(5, dtype=np.uint8))
    before = path.read_bytes()
    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_idx(path, np.ones(1000, dtype=np.int32))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.idx"]
