"""The IDX file format of the MNIST family, read and written with numpy.

Layout: two zero bytes, a type code, the number of dimensions `ndim`; then `ndim`
big-endian uint32 sizes; then the elements, big-endian, in C order.  A file whose first two
bytes are `1f 8b` is gzip-compressed; the same layout then holds for its decompressed
content.  Every problem with a file raises one :class:`IdxError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from typing import BinaryIO

import numpy as np

from fbprop.files import atomic_write

__all__ = ["IdxError", "read_idx", "write_idx"]

DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODES: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code for code, dt in DTYPES.items()}
MAX_NDIM = 16
GZIP_MAGIC = b"\x1f\x8b"
# Deflate emits at least ~2 bits per 258-byte match, so no gzip stream inflates by more than
# 1032:1; a header claiming more data than that bound is rejected before anything is read.
MAX_DEFLATE_RATIO = 1032
CHUNK = 1 << 20
SUPPORTED = "uint8, int8, int16, int32, float32, float64"


class IdxError(ValueError):
    """A file that is not a well-formed IDX file."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed, into a native-byte-order array.

    The header's shape is checked against the actual data size before anything is allocated;
    a gzip stream is inflated at most one byte past the size the header announces.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        compressed = f.read(2) == GZIP_MAGIC
        f.seek(0)
        if not compressed:
            return _parse(path, f, available=size, bound=size)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _parse(path, stream, available=None, bound=size * MAX_DEFLATE_RATIO)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxError(f"IDX file {path!r}: corrupt gzip stream ({err})") from None


def _parse(path: str, stream: BinaryIO, available: int | None, bound: int) -> np.ndarray:
    """Header then data; `available` is the exact byte count of a raw file, None for gzip."""
    where = f"IDX file {path!r}" + (" (gzip)" if available is None else "")
    magic = _read_up_to(stream, 4)
    if len(magic) < 4:
        raise IdxError(f"{where}: expected a 4-byte header, got {len(magic)} bytes")
    if magic[:2] != b"\x00\x00":
        got = magic[:2].hex(" ")
        raise IdxError(f"{where}: expected magic starting with bytes 00 00, got {got}")
    code, ndim = magic[2], magic[3]
    if code not in DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in DTYPES)
        raise IdxError(f"{where}: expected a type code in {{{known}}}, got 0x{code:02X}")
    if not 1 <= ndim <= MAX_NDIM:
        raise IdxError(f"{where}: expected 1 to {MAX_NDIM} dimensions, got {ndim}")
    sizes = _read_up_to(stream, 4 * ndim)
    if len(sizes) < 4 * ndim:
        raise IdxError(
            f"{where}: truncated header, expected {4 + 4 * ndim} bytes for {ndim} dimensions, "
            f"got {4 + len(sizes)}"
        )
    shape = struct.unpack(f">{ndim}I", sizes)
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    described = f"shape {shape} of {dtype.newbyteorder('=').name} needs {expected} data bytes"
    if available is None and expected > bound:
        raise IdxError(f"{where}: {described}, but the gzip file can inflate to at most {bound}")
    found = None if available is None else available - 4 - 4 * ndim
    if found is None or found == expected:
        data = _read_up_to(stream, expected + 1)
        found = len(data)
    if found < expected:
        raise IdxError(f"{where}: truncated data, {described}, found {found}")
    if found > expected:
        extra = "at least 1" if available is None else str(found - expected)
        raise IdxError(f"{where}: trailing bytes, {described}, found {extra} more")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _read_up_to(stream: BinaryIO, n: int) -> bytearray:
    """Up to `n` bytes, fewer only at end of stream, in a buffer numpy may write to.

    Read in chunks: memory grows with the bytes actually there, not with `n`.
    """
    parts = []
    while n > 0:
        part = stream.read(min(n, CHUNK))
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return bytearray().join(parts)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as IDX, gzip-compressed when `path` ends in `.gz`.

    The file is written under a temporary name in the same directory, flushed to disk and
    renamed over `path`, so `path` holds either its old content or the complete new file.
    """
    path = os.fspath(path)
    array = np.asarray(array)
    code = CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.dtype.kind == "b":
        raise ValueError(f"write_idx({path!r}): expected dtype in {SUPPORTED}, got {array.dtype}")
    if not 1 <= array.ndim <= MAX_NDIM:
        raise ValueError(f"write_idx({path!r}): expected 1 to {MAX_NDIM} dimensions, got {array.ndim}")
    if max(array.shape) > 0xFFFFFFFF:
        raise ValueError(f"write_idx({path!r}): expected every size below 2**32, got shape {array.shape}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    big_endian = np.ascontiguousarray(array, dtype=DTYPES[code])
    payload = memoryview(big_endian.reshape(-1).view(np.uint8))

    def write(raw) -> None:
        if path.endswith(".gz"):
            # mtime=0 and no stored name: the same array always gives the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
                stream.write(header)
                stream.write(payload)
        else:
            raw.write(header)
            raw.write(payload)

    atomic_write(path, write)
