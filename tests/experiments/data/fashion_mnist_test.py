"""Tests of experiments/data/fashion_mnist.py on IDX files written here (no download)."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np
import pytest

from experiments.data import DataError
from experiments.data import fashion_mnist as fm


def _idx(values: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, values.ndim]) + np.asarray(values.shape, ">u4").tobytes()
    return header + values.astype(np.uint8).tobytes()


def _write(path: pathlib.Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(payload)


def _package(root: pathlib.Path, n_train: int = 7, n_test: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, (n,)).astype(np.uint8)
        image_file, label_file = fm.FILES[split]
        _write(root / fm.FOLDER / image_file, _idx(images))
        _write(root / fm.FOLDER / label_file, _idx(labels))
        out[split] = (images, labels)
    return out


def test_reads_both_splits_exactly(tmp_path, monkeypatch):
    expected = _package(tmp_path)
    monkeypatch.setattr(fm.download, "obtain_debian_package", lambda name, cache: tmp_path)
    splits = fm.load(tmp_path / "cache")
    for split, (images, labels) in expected.items():
        np.testing.assert_array_equal(splits[split].images, images)
        np.testing.assert_array_equal(splits[split].labels, labels)
        assert splits[split].images.dtype == np.uint8 and splits[split].labels.dtype == np.int32
    assert len(fm.CLASS_NAMES) == 10 and fm.CLASS_NAMES[9] == "ankle boot"


def test_read_idx_checks_the_header_against_the_contents(tmp_path):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write(tmp_path / "ok.gz", _idx(values))
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "ok.gz"), values)
    _write(tmp_path / "short.gz", _idx(values)[:-1])
    with pytest.raises(DataError, match="holds 23 values where its header says"):
        fm.read_idx(tmp_path / "short.gz")
    _write(tmp_path / "float.gz", bytes([0, 0, 0x0D, 1]) + np.asarray([1], ">u4").tobytes() + b"\0" * 4)
    with pytest.raises(DataError, match="no IDX header of unsigned bytes"):
        fm.read_idx(tmp_path / "float.gz")
    _write(tmp_path / "cut.gz", bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(DataError, match="ends inside its IDX header"):
        fm.read_idx(tmp_path / "cut.gz")
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip file"):
        fm.read_idx(tmp_path / "plain.gz")
    with pytest.raises(DataError, match="does not exist.*fetched again"):
        fm.read_idx(tmp_path / "absent.gz")


def test_load_split_rejects_inconsistent_files(tmp_path):
    _package(tmp_path)
    image_file, label_file = fm.FILES["test"]
    _write(tmp_path / fm.FOLDER / label_file, _idx(np.zeros((4,), np.uint8)))
    with pytest.raises(DataError, match="3 images but labels of shape"):
        fm.load_split(tmp_path, "test")
    _write(tmp_path / fm.FOLDER / label_file, _idx(np.array([1, 10, 2], np.uint8)))
    with pytest.raises(DataError, match="label 10"):
        fm.load_split(tmp_path, "test")
    _write(tmp_path / fm.FOLDER / image_file, _idx(np.zeros((3, 28, 27), np.uint8)))
    with pytest.raises(DataError, match="expected"):
        fm.load_split(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        fm.load_split(tmp_path, "dev")


def test_split_by_class_keeps_only_those_classes(tmp_path):
    images = np.arange(6 * 28 * 28, dtype=np.int64).reshape(6, 28, 28).astype(np.uint8)
    split = fm.Split(images, np.array([0, 5, 1, 5, 9, 0], np.int32))
    kept = fm.split_by_class(split, (0, 5))
    np.testing.assert_array_equal(kept.labels, [0, 5, 5, 0])
    np.testing.assert_array_equal(kept.images, images[[0, 1, 3, 5]])
    for bad in ((0, 0), (10,), (-1,)):
        with pytest.raises(ValueError, match="distinct labels"):
            fm.split_by_class(split, bad)
