"""Image classification data sets by name, whole in memory as normalised tensors.

* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, always available);
  a fixed stratified 80/20 split (1437 train, 360 test), values scaled to [0, 1].
* ``mnist``: the four standard MNIST IDX files (raw or ``.gz``) from ``data_dir``,
  else from ``$INFDEPTH_DATA/mnist``, ``~/.cache/infdepth/mnist`` or
  ``/usr/share/datasets/mnist``.
* ``fashion-mnist``: the same file names, by default from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
* ``idx``: any other MNIST-format set, from ``data_dir`` (required).

IDX images are scaled to [0, 1] (divided by 255), as in the original code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from infdepth.data.idx import read_idx
from infdepth.data.image_sets import DATASETS as DATASETS  # re-exported: the names load_images takes
from infdepth.errors import InputError

#: (split, kind) -> standard MNIST file name (a ``.gz`` twin is accepted too)
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = (
    "install the Debian package with `sudo apt-get install dataset-fashion-mnist` "
    f"(it puts the files in {FASHION_MNIST_DIR}) or pass --data-dir with the four IDX files"
)
MNIST_HINT = (
    "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (MNIST) into one folder "
    "and pass it with --data-dir"
)
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ImageData:
    """A whole image data set in memory: ``x`` is ``(N, C, H, W)`` float32, ``y`` int64 classes."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: str | torch.device) -> ImageData:
        """The same data on ``device``."""
        return ImageData(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.classes,
            self.source,
        )


def mnist_dirs() -> list[Path]:
    """Folders searched for ``mnist`` when no ``data_dir`` is given, in order."""
    dirs = []
    if os.environ.get("INFDEPTH_DATA"):
        dirs.append(Path(os.environ["INFDEPTH_DATA"]) / "mnist")
    dirs += [Path.home() / ".cache" / "infdepth" / "mnist", Path("/usr/share/datasets/mnist")]
    return dirs


def find_idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (raw first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _check_images(array: np.ndarray, path: Path) -> None:
    if array.ndim != 3 or array.dtype != np.uint8:
        raise InputError(
            f"data file {path} holds a {array.dtype} array of shape {array.shape}; "
            "expected uint8 images of shape (N, height, width)"
        )


def _check_labels(array: np.ndarray, path: Path, count: int, images: Path) -> None:
    if array.ndim != 1 or array.dtype != np.uint8:
        raise InputError(
            f"data file {path} holds a {array.dtype} array of shape {array.shape}; "
            "expected uint8 labels of shape (N,)"
        )
    if len(array) != count:
        raise InputError(f"data file {path} has {len(array)} labels but {images} has {count} images")


def load_idx_folder(folder: str | os.PathLike[str], name: str = "idx") -> ImageData:
    """The four standard MNIST-format files in ``folder`` (raw or ``.gz``) as :class:`ImageData`."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"--data-dir {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"--data-dir {folder} is not a folder")
    paths = {key: find_idx_file(folder, base) for key, base in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, p in paths.items() if p is None]
    if missing:
        raise InputError(
            f"{folder} lacks {', '.join(missing)} (raw or .gz); an MNIST-format folder holds "
            + ", ".join(IDX_FILES.values())
        )
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        ipath, lpath = paths[(split, "images")], paths[(split, "labels")]
        assert ipath is not None and lpath is not None
        images, labels = read_idx(ipath), read_idx(lpath)
        _check_images(images, ipath)
        _check_labels(labels, lpath, len(images), ipath)
        if not len(images):
            raise InputError(f"data file {ipath} holds no images")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise InputError(
            f"train images are {arrays['x_train'].shape[1:]} but test images are "
            f"{arrays['x_test'].shape[1:]} in {folder}"
        )
    classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1

    def x(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).to(torch.float32).div_(255.0).unsqueeze(1)

    def y(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return ImageData(
        name,
        x(arrays["x_train"]),
        y(arrays["y_train"]),
        x(arrays["x_test"]),
        y(arrays["y_test"]),
        classes,
        str(folder),
    )


def load_digits_data() -> ImageData:
    """scikit-learn's 8x8 digits with a fixed stratified split (seed 0), values in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=DIGITS_TEST_FRACTION, random_state=0, stratify=bunch.target
    )
    return ImageData(
        "digits",
        torch.from_numpy(x_tr).unsqueeze(1),
        torch.from_numpy(y_tr.astype(np.int64)),
        torch.from_numpy(x_te).unsqueeze(1),
        torch.from_numpy(y_te.astype(np.int64)),
        10,
        "sklearn.datasets.load_digits",
    )


def load_images(name: str, data_dir: str | os.PathLike[str] | None = None) -> ImageData:
    """The data set called ``name`` (one of :data:`DATASETS`); ``data_dir`` overrides where IDX sets live."""
    if name not in DATASETS:
        raise InputError(
            f"--dataset {name!r} is not accepted; choose one of {', '.join(map(repr, DATASETS))}"
        )
    if name == "digits":
        if data_dir is not None:
            raise InputError("--data-dir is not used by --dataset digits (it is bundled with scikit-learn)")
        return load_digits_data()
    if data_dir is not None:
        return load_idx_folder(data_dir, name)
    if name == "idx":
        raise InputError("--dataset idx needs --data-dir: a folder with " + ", ".join(IDX_FILES.values()))
    if name == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise InputError(f"Fashion-MNIST is not installed at {FASHION_MNIST_DIR}: {FASHION_MNIST_HINT}")
        return load_idx_folder(FASHION_MNIST_DIR, name)
    for folder in mnist_dirs():
        if folder.is_dir() and all(find_idx_file(folder, f) for f in IDX_FILES.values()):
            return load_idx_folder(folder, name)
    raise InputError(
        "MNIST not found in " + ", ".join(str(d) for d in mnist_dirs()) + f": {MNIST_HINT}"
    )
