"""The data set registry and the types every data set shares. Every data set is a registered factory::

    factory(*, root: str, download: bool, path: str | None) -> DataSplits

returning train, validation and test splits of ``(x [C, H, W] float32, y int64)`` pairs. The validation split
is always carved out of the training data with a fixed seed, so model selection never looks at the test split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch.utils.data import Dataset

from rccsnn.registry import Registry


@dataclass
class DataSplits:
    """The three splits of a data set and what a model needs to know about it.

    Attributes:
        name: registry name of the data set.
        train, val, test: map-style datasets of ``(x [C, H, W] float32, y int64)``.
        input_shape: ``(C, H, W)`` of one sample.
        num_classes: number of classes K; labels are in ``[0, K)``.
        extra: anything else a data set wants to record (normalisation, source files, how splits were carved),
            for the code that loaded it; checkpoints do not store it (they record the data set's name only).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: Tuple[int, int, int]
    num_classes: int
    extra: Dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Dataset:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


DATASETS: Registry[DataSplits] = Registry("data set")

SPLITS = ("train", "val", "test")


def seeded_split(n: int, fractions: Tuple[float, ...], seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Split ``range(n)`` into disjoint index sets of the given fractions (the last takes the rest)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [int(round(f * n)) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    return tuple(torch.split(perm, sizes))


def load_data(name: str, root: str = "data", download: bool = False, path: Optional[str] = None) -> DataSplits:
    """Build the registered data set ``name``."""
    return DATASETS.create(name, root=root, download=download, path=path)


__all__ = ["DATASETS", "DataSplits", "SPLITS", "load_data", "seeded_split"]
