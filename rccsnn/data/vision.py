"""``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: torchvision's image classification sets.

The files are read by torchvision's own dataset classes from ``root`` (the usual torchvision layout:
``root/MNIST/raw/train-images-idx3-ubyte`` ..., ``root/cifar-10-batches-py/data_batch_1`` ...) and downloaded
there only when ``download`` is true. 10 % of the training set (fixed, seed 0) becomes the validation split;
only the remaining training subset is augmented.

Samples are ``(x [C, H, W] float32, y int)``: MNIST-like sets ``[1, 28, 28]`` in [0, 1]; CIFAR ``[3, 32, 32]``
normalised per channel with the mean and std recorded in ``DataSplits.extra["normalization"]``.
"""
from __future__ import annotations

import os
import pickle
from typing import Callable, Optional, Sequence, Tuple
from urllib.error import URLError

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from rccsnn.data.base import DATASETS, DataSplits, seeded_split
from rccsnn.errors import UserError

#: fraction of the training set held out for validation (model selection), fixed with seed 0.
VAL_FRACTION = 0.1

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class TransformedSubset(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image; lets one loaded set feed two splits.

    Args:
        dataset: map-style dataset of ``(PIL image, label)`` built without a transform.
        indices: the samples of this split (all of them when None).
        transform: image transform, e.g. augmentation for training and plain conversion for evaluation.
    """

    def __init__(self, dataset: Dataset, indices: Optional[Sequence[int]], transform: Callable) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.dataset[self.indices[i]]
        return self.transform(image), int(label)


class _FileCheckedCIFAR10(datasets.CIFAR10):
    """CIFAR-10 that accepts any batch files present under ``root``.

    torchvision compares the md5 sum of every batch file with the official archive's, both before loading and
    to decide whether to download. That check only guards a download: it rejects batch files a user made or
    converted (and the tiny files our tests write) although they have exactly the format the loader reads.
    Here presence is enough; a download is still verified, by the md5 of the archive it fetches.
    """

    def _check_integrity(self) -> bool:
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name)) for name in names)

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as infile:
            self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _FileCheckedCIFAR100(_FileCheckedCIFAR10, datasets.CIFAR100):
    """CIFAR-100 with the same presence-only check (see :class:`_FileCheckedCIFAR10`).

    The method resolution order (this, _FileCheckedCIFAR10, CIFAR100, CIFAR10) takes the checks from the
    first base and the file names, URL and meta key from torchvision's CIFAR100.
    """


def _expected_files(dataset_class: type, root: str) -> Tuple[str, ...]:
    """Paths the torchvision class reads under ``root``."""
    if issubclass(dataset_class, datasets.MNIST):
        # MNIST-like sets live in root/<ClassName>/raw/ under the names of the archives without ".gz".
        raw = os.path.join(root, dataset_class.__name__, "raw")
        return tuple(os.path.join(raw, os.path.splitext(name)[0]) for name, _ in dataset_class.resources)
    names = [name for name, _ in dataset_class.train_list + dataset_class.test_list] + [dataset_class.meta["filename"]]
    return tuple(os.path.join(root, dataset_class.base_folder, name) for name in names)


def _open(dataset_class: type, name: str, root: str, download: bool, train: bool) -> Dataset:
    """Build the torchvision dataset; every failure caused by missing or unreadable files is a UserError."""
    if not download:
        missing = [p for p in _expected_files(dataset_class, root) if not os.path.isfile(p)]
        # torchvision still reads MNIST's old cache root/MNIST/processed/{training,test}.pt when it exists.
        legacy = issubclass(dataset_class, datasets.MNIST) and os.path.isdir(
            os.path.join(root, dataset_class.__name__, "processed"))
        if missing and not legacy:
            raise UserError(
                f"data set '{name}' not found under root '{root}' (missing {missing[0]}); "
                f"pass --download to fetch it or --data-root to point at the directory that holds it"
            )
    try:
        return dataset_class(root=root, train=train, download=download)
    except (URLError, OSError, RuntimeError, ValueError, TypeError, KeyError, AssertionError, EOFError,
            pickle.UnpicklingError) as exc:
        # Raised by torchvision on a failed download or a file it cannot parse; the first line says which.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        action = "download or read" if download else "read (bad or truncated file?)"
        raise UserError(f"could not {action} data set '{name}' under root '{root}': {reason}") from exc


def _build(
    name: str,
    dataset_class: type,
    root: str,
    download: bool,
    input_shape: Tuple[int, int, int],
    num_classes: int,
    train_transform: Callable,
    eval_transform: Callable,
    extra: dict,
) -> DataSplits:
    full_train = _open(dataset_class, name, root, download, train=True)
    test = _open(dataset_class, name, root, download, train=False)
    train_idx, val_idx = seeded_split(len(full_train), (1.0 - VAL_FRACTION, VAL_FRACTION), seed=0)
    return DataSplits(
        name=name,
        train=TransformedSubset(full_train, train_idx.tolist(), train_transform),
        val=TransformedSubset(full_train, val_idx.tolist(), eval_transform),
        test=TransformedSubset(test, None, eval_transform),
        input_shape=input_shape,
        num_classes=num_classes,
        extra={"val_fraction": VAL_FRACTION, "val_seed": 0, **extra},
    )


def _mnist_like(name: str, dataset_class: type, root: str, download: bool) -> DataSplits:
    to_tensor = transforms.ToTensor()
    return _build(
        name, dataset_class, root, download, (1, 28, 28), 10, to_tensor, to_tensor,
        extra={"normalization": None, "train_augmentation": []},
    )


def _cifar(name: str, dataset_class: type, root: str, download: bool, num_classes: int,
           mean: Tuple[float, ...], std: Tuple[float, ...]) -> DataSplits:
    normalize = transforms.Normalize(mean, std)
    train_transform = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    eval_transform = transforms.Compose([transforms.ToTensor(), normalize])
    return _build(
        name, dataset_class, root, download, (3, 32, 32), num_classes, train_transform, eval_transform,
        extra={
            "normalization": {"mean": list(mean), "std": list(std)},
            "train_augmentation": ["RandomCrop(32, padding=4)", "RandomHorizontalFlip(p=0.5)"],
        },
    )


@DATASETS.register("mnist")
def mnist(*, root: str = "data", download: bool = False, path: Optional[str] = None) -> DataSplits:
    """MNIST handwritten digits: x ``[1, 28, 28]`` in [0, 1], 10 classes; 54k/6k/10k. ``path`` is unused."""
    return _mnist_like("mnist", datasets.MNIST, root, download)


@DATASETS.register("fashion-mnist")
def fashion_mnist(*, root: str = "data", download: bool = False, path: Optional[str] = None) -> DataSplits:
    """Fashion-MNIST clothing images: x ``[1, 28, 28]`` in [0, 1], 10 classes; 54k/6k/10k. ``path`` is unused."""
    return _mnist_like("fashion-mnist", datasets.FashionMNIST, root, download)


@DATASETS.register("cifar10")
def cifar10(*, root: str = "data", download: bool = False, path: Optional[str] = None) -> DataSplits:
    """CIFAR-10: x ``[3, 32, 32]`` normalised, 10 classes; 45k/5k/10k; crop+flip on train. ``path`` is unused."""
    return _cifar("cifar10", _FileCheckedCIFAR10, root, download, 10, CIFAR10_MEAN, CIFAR10_STD)


@DATASETS.register("cifar100")
def cifar100(*, root: str = "data", download: bool = False, path: Optional[str] = None) -> DataSplits:
    """CIFAR-100: x ``[3, 32, 32]`` normalised, 100 classes; 45k/5k/10k; crop+flip on train. ``path`` unused."""
    return _cifar("cifar100", _FileCheckedCIFAR100, root, download, 100, CIFAR100_MEAN, CIFAR100_STD)
