"""The torchvision side of :mod:`rccsnn.data.vision`: the dataset classes, the file checks and opening them.

Imported only when a torchvision data set is loaded: importing torchvision takes about 2 s (it imports its model
zoo), which every ``rccsnn`` process, and every point of a sweep, would otherwise pay for the embedded digits too.
"""
from __future__ import annotations

import os
import pickle
from typing import Tuple
from urllib.error import URLError

from torch.utils.data import Dataset
from torchvision import datasets

from rccsnn.errors import UserError, first_line

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


def expected_files(dataset_class: type, root: str) -> Tuple[str, ...]:
    """Paths the torchvision class reads under ``root``."""
    if issubclass(dataset_class, datasets.MNIST):
        # MNIST-like sets live in root/<ClassName>/raw/ under the names of the archives without ".gz".
        raw = os.path.join(root, dataset_class.__name__, "raw")
        return tuple(os.path.join(raw, os.path.splitext(name)[0]) for name, _ in dataset_class.resources)
    names = [name for name, _ in dataset_class.train_list + dataset_class.test_list] + [dataset_class.meta["filename"]]
    return tuple(os.path.join(root, dataset_class.base_folder, name) for name in names)


def open_split(dataset_class: type, name: str, root: str, download: bool, train: bool) -> Dataset:
    """Build the torchvision dataset; every failure caused by missing or unreadable files is a UserError."""
    if not download:
        missing = [p for p in expected_files(dataset_class, root) if not os.path.isfile(p)]
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
        action = "download or read" if download else "read (bad or truncated file?)"
        raise UserError(f"could not {action} data set '{name}' under root '{root}': {first_line(exc)}") from exc


#: The torchvision class behind each registered name.
CLASSES = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": _FileCheckedCIFAR10,
                "cifar100": _FileCheckedCIFAR100}
