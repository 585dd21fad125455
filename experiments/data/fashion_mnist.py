"""Fashion-MNIST, the real images of the vision, set and hard-attention experiments (issue 14).

Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", arXiv:1708.07747. Debian ships it as ``dataset-fashion-mnist`` (MIT), fetched once with
``apt-get download`` into the cache folder (`download.obtain_debian_package`):

    usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

60,000 training and 10,000 test images, 28 x 28 greyscale, in 10 classes (`CLASS_NAMES`, in label order). The
files are gzip-compressed IDX: a big-endian header (two zero bytes, the element type 0x08 = unsigned byte, the
number of dimensions, then each size as a 4-byte int), then the values in C order. `read_idx` checks every
field of that header against the file's length before it reads the values.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib

import numpy as np

from experiments.data import download
from experiments.data.base import DataError

PACKAGE = "dataset-fashion-mnist"
FOLDER = pathlib.Path("usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASS_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
IMAGE_SIZE = 28
_UBYTE = 0x08


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: images [N, 28, 28] uint8 (0 = background) and labels [N] int32 in [0, 10)."""

    images: np.ndarray
    labels: np.ndarray


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The unsigned-byte array of a gzip-compressed IDX file (the MNIST format).

    Args:
      path: a ``*-ubyte.gz`` file.

    Returns:
      uint8 array of the header's shape.

    Raises:
      DataError: if the file is missing, not gzip, or its header does not describe its contents (the message
        names the file and what is wrong, and says how to fetch it again).
    """
    path = pathlib.Path(path)
    fix = f"fix: delete the {PACKAGE!r} folder in the cache so that the package is fetched again"
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise DataError(f"{str(path)!r} does not exist; {fix}") from err
    except (OSError, EOFError) as err:
        raise DataError(f"{str(path)!r} is not a readable gzip file ({err}); {fix}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] == 0:
        raise DataError(f"{str(path)!r} has no IDX header of unsigned bytes (first bytes {raw[:4].hex()}); {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r} ends inside its IDX header ({len(raw)} bytes); {fix}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{str(path)!r} holds {len(raw) - header} values where its header says {shape}; {fix}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_split(root: str | os.PathLike[str], split: str) -> Split:
    """One split read from an unpacked package folder ``root`` (which holds ``usr/share/datasets/...``).

    Raises:
      ValueError: for a split other than "train" or "test".
      DataError: if a file is missing or damaged, the images are not [N, 28, 28], the counts differ, or a label
        lies outside [0, 10).
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    folder = pathlib.Path(root) / FOLDER
    images, labels = (read_idx(folder / name) for name in FILES[split])
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"Fashion-MNIST {split} images have shape {images.shape}, expected [N, 28, 28]")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"Fashion-MNIST {split}: {images.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(f"Fashion-MNIST {split} has label {int(labels.max())}, outside [0, {len(CLASS_NAMES)})")
    return Split(images, labels.astype(np.int32))


def load(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """{"train": 60,000 images, "test": 10,000 images}, from the Debian package (downloaded once).

    Raises:
      DataError: if the package cannot be obtained (the message says how to fix it) or is damaged.
    """
    root = download.obtain_debian_package(PACKAGE, download.resolve_data_dir(data_dir))
    return {split: load_split(root, split) for split in FILES}


def split_by_class(split: Split, classes: tuple[int, ...]) -> Split:
    """The images of the given classes only, with their original labels (few-shot meta-train / meta-test).

    Raises:
      ValueError: if a class lies outside [0, 10) or repeats.
    """
    if len(set(classes)) != len(classes) or any(not 0 <= c < len(CLASS_NAMES) for c in classes):
        raise ValueError(f"classes must be distinct labels in [0, {len(CLASS_NAMES)}), got {classes}")
    keep = np.isin(split.labels, np.asarray(classes, np.int32))
    return Split(split.images[keep], split.labels[keep])
