"""Data sets: ``digits`` (embedded), ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (torchvision) and
``npz`` (a user's own arrays), registered in :data:`DATASETS` (see :mod:`rccsnn.data.base` for what a data set
factory takes and returns) and built with :func:`load_data`.
"""
from __future__ import annotations

# Importing the data sets registers them.
from rccsnn.data import digits, npz, vision  # noqa: F401
from rccsnn.data.base import DATASETS, SPLITS, DataSplits, load_data, seeded_split

__all__ = ["DATASETS", "DataSplits", "SPLITS", "load_data", "seeded_split"]
