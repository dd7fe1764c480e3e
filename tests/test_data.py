"""Data sets: every registered loader reads tiny files written here in its real on-disk format.

Each fake image carries its own id (1..255) in a 10x10 block around the centre of channel 0, which survives
CIFAR's crop (padding 4) and flip; the test recovers the id from every loaded sample to check its label, its
pixels (splits without augmentation) and that train / validation / test do not overlap.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rccsnn.data import DATASETS, EVENT_DATASETS, SPLITS, DataSplits
from rccsnn.data.vision import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from rccsnn.errors import UserError

TORCHVISION_SETS = ("mnist", "fashion-mnist", "cifar10", "cifar100")
#: the registered sets of static samples; the event sets have their own builders in tests/test_events.py.
STATIC_SETS = [name for name in DATASETS.names() if name not in EVENT_DATASETS]


@dataclass
class Fake:
    """What a builder wrote and what the loader must give back."""

    sizes: Dict[str, int]
    num_classes: int
    path: Optional[str] = None
    images: Dict[int, np.ndarray] = field(default_factory=dict)  # id -> uint8 [C, H, W]
    labels: Dict[int, int] = field(default_factory=dict)  # id -> label
    groups: List[Tuple[Tuple[str, ...], Set[int]]] = field(default_factory=list)  # splits partitioning these ids
    augmented: Tuple[str, ...] = ()
    normalization: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None


def _images(ids: range, shape: Tuple[int, int, int], rng: np.random.Generator) -> Dict[int, np.ndarray]:
    images = {}
    for i in ids:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        h, w = shape[1] // 2, shape[2] // 2
        image[0, h - 5:h + 5, w - 5:w + 5] = i
        images[i] = image
    return images


def _ident(x: torch.Tensor) -> int:
    """The id written into an image, from the unnormalised ``[C, H, W]`` sample in [0, 1]."""
    return int(round(float(x[0, x.shape[1] // 2, x.shape[2] // 2]) * 255))


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX ("SN3 Pascal Vincent") file: magic 0x0000 08 <ndim> (uint8), big-endian int32 dims, raw bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _pickle(path: Path, obj: dict) -> None:
    # The official batches are Python 2 pickles whose str keys load as str under torchvision's
    # encoding="latin1" (as bytes b'data' only with encoding="bytes"); str keys reproduce what torchvision reads.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _mnist_like(folder: str) -> Callable[[Path], Fake]:
    def build(root: Path) -> Fake:
        rng = np.random.default_rng(1)
        raw = root / folder / "raw"  # torchvision 0.29: root/<ClassName>/raw/<archive name without .gz>
        raw.mkdir(parents=True)
        train_ids, test_ids = range(1, 21), range(21, 31)
        images = _images(range(1, 31), (1, 28, 28), rng)
        labels = {i: int(rng.integers(0, 10)) for i in images}
        for prefix, ids in (("train", train_ids), ("t10k", test_ids)):
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", np.stack([images[i][0] for i in ids]))
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.array([labels[i] for i in ids], dtype=np.uint8))
        return Fake(sizes={"train": 18, "val": 2, "test": 10}, num_classes=10, images=images, labels=labels,
                    groups=[(("train", "val"), set(train_ids)), (("test",), set(test_ids))])

    return build


def _cifar(num_classes: int) -> Callable[[Path], Fake]:
    def build(root: Path) -> Fake:
        rng = np.random.default_rng(2)
        images = _images(range(1, 31), (3, 32, 32), rng)
        labels = {i: int(rng.integers(0, num_classes)) for i in images}
        train_ids, test_ids = range(1, 21), range(21, 31)

        def batch(ids, label_key: str) -> dict:
            # b'data': uint8 [N, 3072], each row the 1024 red, then green, then blue values of a 32x32 image.
            return {"batch_label": "fake", "data": np.stack([images[i].reshape(-1) for i in ids]),
                    label_key: [labels[i] for i in ids], "filenames": [f"{i}.png" for i in ids]}

        if num_classes == 10:
            folder = root / "cifar-10-batches-py"
            folder.mkdir()
            for b in range(5):
                _pickle(folder / f"data_batch_{b + 1}", batch(train_ids[4 * b:4 * b + 4], "labels"))
            _pickle(folder / "test_batch", batch(test_ids, "labels"))
            _pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)],
                                              "num_cases_per_batch": 4, "num_vis": 3072})
            normalization = (CIFAR10_MEAN, CIFAR10_STD)
        else:
            folder = root / "cifar-100-python"
            folder.mkdir()
            for name, ids in (("train", train_ids), ("test", test_ids)):
                data = batch(ids, "fine_labels")
                data["coarse_labels"] = [label // 5 for label in data["fine_labels"]]
                _pickle(folder / name, data)
            _pickle(folder / "meta", {"fine_label_names": [f"f{k}" for k in range(100)],
                                      "coarse_label_names": [f"c{k}" for k in range(20)]})
            normalization = (CIFAR100_MEAN, CIFAR100_STD)
        return Fake(sizes={"train": 18, "val": 2, "test": 10}, num_classes=num_classes, images=images,
                    labels=labels, groups=[(("train", "val"), set(train_ids)), (("test",), set(test_ids))],
                    augmented=("train",), normalization=normalization)

    return build


def _npz(root: Path) -> Fake:
    rng = np.random.default_rng(3)
    ids = range(1, 41)
    images = _images(ids, (1, 12, 12), rng)
    labels = {i: int(rng.integers(0, 4)) for i in ids}
    labels[7] = 4  # num_classes = max label + 1 = 5
    path = root / "mine.npz"
    # [N, H, W] uint8 without val/test: both are carved, 15 % (6 samples) each.
    np.savez(path, x=np.stack([images[i][0] for i in ids]), y=np.array([labels[i] for i in ids]))
    return Fake(sizes={"train": 28, "val": 6, "test": 6}, num_classes=5, path=str(path), images=images,
                labels=labels, groups=[(("train", "val", "test"), set(ids))])


def _digits(root: Path) -> Fake:
    return Fake(sizes={"train": 1258, "val": 270, "test": 269}, num_classes=10)  # embedded, 1797 in all


#: one fake-file builder per registered data set; a newly registered name must add one here.
BUILDERS: Dict[str, Callable[[Path], Fake]] = {
    "digits": _digits,
    "mnist": _mnist_like("MNIST"),
    "fashion-mnist": _mnist_like("FashionMNIST"),
    "cifar10": _cifar(10),
    "cifar100": _cifar(100),
    "npz": _npz,
}


def _unnormalize(x: torch.Tensor, splits: DataSplits) -> torch.Tensor:
    norm = splits.extra.get("normalization")
    if not norm:
        return x
    mean = torch.tensor(norm["mean"]).view(-1, 1, 1)
    std = torch.tensor(norm["std"]).view(-1, 1, 1)
    return x * std + mean


def _whole(dataset) -> Tuple[torch.Tensor, torch.Tensor]:
    return next(iter(DataLoader(dataset, batch_size=len(dataset), shuffle=False)))


@pytest.mark.parametrize("name", STATIC_SETS)
def test_registered_loader_reads_real_format(name, tmp_path):
    assert name in BUILDERS, f"data set '{name}' is registered but tests/test_data.py has no fake-data builder"
    torch.manual_seed(0)
    fake = BUILDERS[name](tmp_path)
    splits = DATASETS.create(name, root=str(tmp_path), download=False, path=fake.path)

    assert splits.name == name
    assert splits.num_classes == fake.num_classes
    if fake.normalization is None:
        assert not splits.extra.get("normalization")
    else:
        assert tuple(splits.extra["normalization"]["mean"]) == fake.normalization[0]
        assert tuple(splits.extra["normalization"]["std"]) == fake.normalization[1]

    ids: Dict[str, List[int]] = {}
    for split in SPLITS:
        dataset = splits.split(split)
        assert len(dataset) == fake.sizes[split], split
        x0, y0 = dataset[0]
        assert x0.dtype == torch.float32 and tuple(x0.shape) == splits.input_shape
        assert isinstance(y0, int) or (torch.is_tensor(y0) and y0.dtype == torch.int64 and y0.ndim == 0)

        x, y = _whole(dataset)
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == splits.input_shape
        assert y.dtype == torch.int64 and y.shape == (len(dataset),)
        assert 0 <= int(y.min()) and int(y.max()) < splits.num_classes
        pixels = _unnormalize(x, splits)
        assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5

        if not fake.images:
            continue
        ids[split] = [_ident(sample) for sample in pixels]
        for sample, label, i in zip(pixels, y.tolist(), ids[split]):
            assert label == fake.labels[i], (split, i)
            if split not in fake.augmented:
                expected = torch.from_numpy(fake.images[i]).float()
                assert torch.allclose(sample * 255, expected, atol=1e-3), (split, i)
        if split in fake.augmented:  # random crop/flip: a second pass gives other pixels, same ids and labels
            x2, y2 = _whole(dataset)
            assert torch.equal(y, y2) and [_ident(s) for s in _unnormalize(x2, splits)] == ids[split]
            assert not torch.equal(x, x2)

    for group, expected_ids in fake.groups:
        seen = [i for split in group for i in ids[split]]
        assert len(seen) == len(set(seen)), f"{group} overlap or repeat samples"
        assert set(seen) == expected_ids


def test_builders_cover_exactly_the_registry():
    assert sorted(BUILDERS) == STATIC_SETS


def test_digits_split_is_fixed():
    first, second = DATASETS.create("digits"), DATASETS.create("digits")
    assert sum(len(first.split(s)) for s in SPLITS) == 1797
    for split in SPLITS:
        (x1, y1), (x2, y2) = _whole(first.split(split)), _whole(second.split(split))
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_vision_validation_split_is_fixed(tmp_path):
    BUILDERS["mnist"](tmp_path)
    first = DATASETS.create("mnist", root=str(tmp_path))
    second = DATASETS.create("mnist", root=str(tmp_path))
    assert first.val.indices == second.val.indices
    assert not set(first.val.indices) & set(first.train.indices)


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_missing_torchvision_set_without_download_is_user_error(name, tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(UserError) as info:
        DATASETS.create(name, root=str(root), download=False)
    message = str(info.value)
    assert "\n" not in message
    assert name in message and str(root) in message
    assert "--download" in message and "--data-root" in message


def test_torchvision_own_cifar_rejects_files_without_official_md5(tmp_path):
    """Why vision.py checks presence only: torchvision's md5 check refuses any batch file but the official ones."""
    import torchvision

    BUILDERS["cifar10"](tmp_path)
    with pytest.raises(RuntimeError):
        torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)
    assert len(DATASETS.create("cifar10", root=str(tmp_path)).test) == 10


@pytest.mark.parametrize("name, corrupt", [
    ("cifar10", "cifar-10-batches-py/test_batch"),
    ("cifar100", "cifar-100-python/train"),
    ("mnist", "MNIST/raw/t10k-images-idx3-ubyte"),
])
def test_corrupt_torchvision_file_is_user_error(name, corrupt, tmp_path):
    BUILDERS[name](tmp_path)
    (tmp_path / corrupt).write_bytes(b"\xff\xff\xff\xff not a data file")
    with pytest.raises(UserError) as info:
        DATASETS.create(name, root=str(tmp_path))
    assert "\n" not in str(info.value) and name in str(info.value)


# ---------------------------------------------------------------------------------------------------- npz


def test_npz_keeps_given_splits_and_float_pixels(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 3, size=(10, 3, 4, 4)).astype(np.float32)  # outside [0, 1] on purpose: kept as given
    x_val, x_test = x[:3] + 100, x[:4] - 100
    path = tmp_path / "given.npz"
    np.savez(path, x=x, y=np.arange(10) % 3, x_val=x_val, y_val=np.array([0, 1, 2]),
             x_test=x_test, y_test=np.array([6, 0, 1, 2]))
    splits = DATASETS.create("npz", path=str(path))
    assert splits.input_shape == (3, 4, 4) and splits.num_classes == 7  # max label 6 is only in the test split
    assert splits.extra["carved"] == []
    for split, (xs, ys) in {"train": (x, np.arange(10) % 3), "val": (x_val, [0, 1, 2]),
                            "test": (x_test, [6, 0, 1, 2])}.items():
        got_x, got_y = _whole(splits.split(split))
        assert torch.equal(got_x, torch.from_numpy(xs)) and got_y.tolist() == list(ys)


def test_npz_carves_only_the_missing_split(tmp_path):
    x = np.arange(20 * 36, dtype=np.uint8).reshape(20, 6, 6)
    path = tmp_path / "no_val.npz"
    np.savez(path, x=x, y=np.arange(20) % 2, x_test=x[:5], y_test=np.zeros(5, dtype=np.int64))
    splits = DATASETS.create("npz", path=str(path))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (17, 3, 5)
    assert splits.extra["carved"] == ["val"] and splits.input_shape == (1, 6, 6)
    first_pixels = {int(round(float(s[0, 0, 0]) * 255)) for s in _whole(splits.train)[0]}
    val_pixels = {int(round(float(s[0, 0, 0]) * 255)) for s in _whole(splits.val)[0]}
    assert not first_pixels & val_pixels and len(first_pixels | val_pixels) == 20


def _save(**arrays) -> Callable[[Path], str]:
    def write(tmp_path: Path) -> str:
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays)
        return str(path)

    return write


_X = np.zeros((10, 8, 8), dtype=np.uint8)
_Y = np.arange(10) % 2


def _write_text(tmp_path: Path) -> str:
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    return str(tmp_path / "text.npz")


def _write_npy(tmp_path: Path) -> str:
    np.save(tmp_path / "one.npy", _X)
    return str(tmp_path / "one.npy")


NPZ_ERRORS = {
    "no path": (lambda tmp_path: None, "--data-path"),
    "file not found": (lambda tmp_path: str(tmp_path / "absent.npz"), "not found"),
    "text file": (_write_text, "not a valid .npz"),
    "npy file": (_write_npy, "not a valid .npz"),
    "object array": (_save(x=np.array([None] * 10, dtype=object), y=_Y), "not a valid .npz"),
    "missing x": (_save(y=_Y), "'x'"),
    "missing y": (_save(x=_X), "'y'"),
    "length mismatch": (_save(x=_X, y=_Y[:9]), "9 labels"),
    "x 2-D": (_save(x=_X.reshape(10, 64), y=_Y), "[N, C, H, W]"),
    "x 6-D": (_save(x=_X.reshape(10, 1, 1, 1, 8, 8), y=_Y), "[N, C, H, W]"),
    "y 2-D": (_save(x=_X, y=_Y.reshape(10, 1)), "1-D"),
    "float labels": (_save(x=_X, y=_Y.astype(np.float32)), "integer"),
    "negative labels": (_save(x=_X, y=_Y - 1), "negative"),
    "pixels over 255": (_save(x=_X.astype(np.int64) + 300, y=_Y), "0..255"),
    "nan pixels": (_save(x=np.full((10, 8, 8), np.nan, dtype=np.float32), y=_Y), "NaN"),
    "string pixels": (_save(x=np.array([["a"] * 8] * 8 * 10).reshape(10, 8, 8), y=_Y), "dtype"),
    "empty": (_save(x=_X[:0], y=_Y[:0]), "empty"),
    "too few to carve": (_save(x=_X[:2], y=_Y[:2]), "too few"),
    "val shape mismatch": (_save(x=_X, y=_Y, x_val=np.zeros((3, 7, 7), np.uint8), y_val=_Y[:3]), "'x_val'"),
    "test channel mismatch": (_save(x=_X, y=_Y, x_test=np.zeros((3, 2, 8, 8), np.uint8), y_test=_Y[:3]),
                              "'x_test'"),
    "val length mismatch": (_save(x=_X, y=_Y, x_val=_X[:3], y_val=_Y[:2]), "'y_val'"),
    "x_val without y_val": (_save(x=_X, y=_Y, x_val=_X[:3]), "without 'y_val'"),
    "y_test without x_test": (_save(x=_X, y=_Y, y_test=_Y[:3]), "without 'x_test'"),
    "negative test labels": (_save(x=_X, y=_Y, x_test=_X[:3], y_test=-_Y[:3] - 1), "negative"),
}


@pytest.mark.parametrize("case", sorted(NPZ_ERRORS))
def test_npz_problem_is_one_line_user_error(case, tmp_path):
    write, expected = NPZ_ERRORS[case]
    with pytest.raises(UserError) as info:
        DATASETS.create("npz", path=write(tmp_path))
    message = str(info.value)
    assert "\n" not in message and expected in message
