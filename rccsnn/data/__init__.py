"""Data sets: ``digits`` (embedded), ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (torchvision),
``npz`` (a user's own arrays, static or event frames) and the event sets ``nmnist``, ``dvsgesture``, ``shd``
(tonic, an optional extra), registered in :data:`DATASETS` (see :mod:`rccsnn.data.base` for what a data set
factory takes and returns) and built with :func:`load_data`.
"""
from __future__ import annotations

# Importing the data sets registers them.
from rccsnn.data import digits, events, npz, vision  # noqa: F401
from rccsnn.data.base import (DATASETS, EVENT_DATASETS, SPLITS, DataSplits, load_data, reject_frames,
                               seeded_split, time_major)

__all__ = ["DATASETS", "DataSplits", "EVENT_DATASETS", "SPLITS", "load_data", "reject_frames", "seeded_split",
           "time_major"]
