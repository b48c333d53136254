"""The IDX reader: round trips, and every kind of damaged file reported by name."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from infdepth.data.idx import parse_idx, read_idx, write_idx
from infdepth.errors import InputError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@given(
    array=st.sampled_from(DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
    ),
    compressed=st.booleans(),
)
def test_round_trip(tmp_path_factory: pytest.TempPathFactory, array: np.ndarray, compressed: bool) -> None:
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if compressed else "a.idx")
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=")
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_mnist_layout_bytes(tmp_path):
    labels = np.array([7, 2, 1], dtype=np.uint8)
    path = tmp_path / "labels"
    write_idx(path, labels)
    # the MNIST label file header: magic 0x00000801, count 3, then the bytes
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_gzip_recognised_by_content_not_name(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", images)
    renamed = tmp_path / "x-idx3-ubyte"
    renamed.write_bytes((tmp_path / "x.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(renamed), images)


def _raw(array: np.ndarray, tmp_path) -> bytes:
    write_idx(tmp_path / "ok", array)
    return (tmp_path / "ok").read_bytes()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:6], "truncated inside its IDX header"),
        (lambda b: b[:3], "no complete IDX header"),
        (lambda b: b + b"\x00", "trailing data"),
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x42" + b[3:], "not an IDX file"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
        (lambda b: gzip.compress(b)[:-9], "corrupt or truncated gzip"),
        (lambda b: gzip.compress(b)[:12] + b"garbage" * 3, "corrupt or truncated gzip"),
        (lambda b: gzip.compress(b[:-5]), "truncated"),
    ],
)
def test_damaged_file_is_reported_by_name(tmp_path, damage, message):
    good = _raw(np.ones((4, 5, 6), dtype=np.uint8), tmp_path)
    path = tmp_path / "damaged-file"
    path.write_bytes(damage(good))
    with pytest.raises(InputError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_is_reported_by_name(tmp_path):
    with pytest.raises(InputError, match="does not exist") as info:
        read_idx(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_parse_idx_without_file():
    data = bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0x01, 0x00, 0xFF, 0xFF])
    np.testing.assert_array_equal(parse_idx(data), np.array([[256, -1]], dtype=np.int16))


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(InputError, match="cannot be stored in IDX"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
