"""IDX files, the format of MNIST and Fashion-MNIST, raw or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian ``uint32`` per dimension, then the values in
row-major order, big-endian.  :func:`read_idx` checks every part of that and
reports a truncated, padded or corrupt file by its path; a gzip file is
recognised by its content, not its name.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from infdepth.errors import InputError

#: IDX type code -> NumPy dtype (big-endian, as stored)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"data file {path} cannot be read ({exc.strerror or exc})") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"data file {path} is a corrupt or truncated gzip file ({exc})") from exc


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array stored in the IDX bytes ``data`` (native byte order); ``name`` is used in errors."""
    if len(data) < 4:
        raise InputError(f"data file {name} is truncated: {len(data)} bytes, no complete IDX header")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_TYPES:
        raise InputError(
            f"data file {name} is not an IDX file: magic number 0x{data[:4].hex()} "
            "(expected 0x0000 then a type code 08/09/0B/0C/0D/0E and the number of dimensions)"
        )
    if ndim == 0:
        raise InputError(f"data file {name} is corrupt: its IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"data file {name} is truncated inside its IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise InputError(
            f"data file {name} is truncated: shape {dims} needs {expected} bytes of values, found {got}"
        )
    if got > expected:
        raise InputError(
            f"data file {name} is corrupt: shape {dims} needs {expected} bytes of values, "
            f"found {got} (trailing data)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip); any defect raises :class:`InputError` naming ``path``."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in ``.gz``."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise InputError(
            f"dtype {array.dtype} cannot be stored in IDX; accepted: uint8, int8, int16, int32, "
            "float32, float64"
        )
    if not 1 <= array.ndim <= 255:
        raise InputError(f"an IDX array needs 1..255 dimensions, got {array.ndim}")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
