"""Image data sets by name: digits, MNIST-format folders, Fashion-MNIST's default place, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from infdepth.data import images as images_mod
from infdepth.data.idx import write_idx
from infdepth.data.images import DATASETS, IDX_FILES, load_idx_folder, load_images
from infdepth.errors import InputError


def make_idx_folder(folder: Path, n_train: int = 40, n_test: int = 20, size: int = 28,
                    gz: bool = True, seed: int = 0) -> Path:
    """Four MNIST-format files of random images; labels 0..9 (train .gz, test raw when ``gz``)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        suffix = ".gz" if gz and split == "train" else ""
        write_idx(folder / (IDX_FILES[(split, "images")] + suffix),
                  rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        write_idx(folder / (IDX_FILES[(split, "labels")] + suffix),
                  (np.arange(n) % 10).astype(np.uint8))
    return folder


def test_digits_split_shapes_and_range():
    d = load_images("digits")
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) == 1.0
    assert d.classes == 10 and d.image_shape == (1, 8, 8)
    assert set(d.y_test.tolist()) == set(range(10))
    again = load_images("digits")
    assert torch.equal(again.x_test, d.x_test)


def test_idx_folder_raw_and_gzip(tmp_path):
    folder = make_idx_folder(tmp_path / "set")
    d = load_images("idx", folder)
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert float(d.x_train.max()) <= 1.0 and d.classes == 10
    assert d.y_train.tolist() == [i % 10 for i in range(40)]
    assert load_images("mnist", folder).name == "mnist"


def test_unknown_name_lists_accepted_names():
    with pytest.raises(InputError) as info:
        load_images("cifar")
    for name in DATASETS:
        assert repr(name) in str(info.value)


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(InputError, match="does not exist") as info:
        load_images("mnist", tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value)
    folder = make_idx_folder(tmp_path / "partial")
    next(folder.glob("t10k-labels*")).unlink()
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte") as info:
        load_images("mnist", folder)
    assert str(folder) in str(info.value)


def test_label_count_mismatch_and_wrong_rank(tmp_path):
    folder = make_idx_folder(tmp_path / "set", gz=False)
    write_idx(folder / IDX_FILES[("test", "labels")], np.zeros(3, dtype=np.uint8))
    with pytest.raises(InputError, match="3 labels but"):
        load_idx_folder(folder)
    write_idx(folder / IDX_FILES[("test", "labels")], np.zeros((20, 1), dtype=np.uint8))
    with pytest.raises(InputError, match="expected uint8 labels"):
        load_idx_folder(folder)


def test_fashion_mnist_default_place_and_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_images("fashion-mnist")
    monkeypatch.setattr(images_mod, "FASHION_MNIST_DIR", make_idx_folder(tmp_path / "fm"))
    assert load_images("fashion-mnist").x_train.shape[0] == 40


def test_mnist_search_path(tmp_path, monkeypatch):
    monkeypatch.setenv("INFDEPTH_DATA", str(tmp_path))
    assert images_mod.mnist_dirs()[0] == tmp_path / "mnist"
    make_idx_folder(tmp_path / "mnist")
    assert load_images("mnist").source == str(tmp_path / "mnist")
    monkeypatch.setattr(images_mod, "mnist_dirs", lambda: [tmp_path / "none"])
    with pytest.raises(InputError, match="pass it with --data-dir") as info:
        load_images("mnist")
    assert str(tmp_path / "none") in str(info.value)


def test_digits_and_idx_data_dir_rules(tmp_path):
    with pytest.raises(InputError, match="not used by --dataset digits"):
        load_images("digits", tmp_path)
    with pytest.raises(InputError, match="needs --data-dir"):
        load_images("idx")
