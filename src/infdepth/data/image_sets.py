"""The image data sets known by name, torch-free: ``infdepth images``/``study --help`` list them."""

from __future__ import annotations

#: ``digits`` (scikit-learn's 8x8, always available), MNIST, Fashion-MNIST, or ``idx``: any folder
#: of the four MNIST-format IDX files
DATASETS = ("digits", "mnist", "fashion-mnist", "idx")
