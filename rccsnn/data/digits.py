"""``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes), no download."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch.utils.data import TensorDataset

from rccsnn.data.base import DATASETS, DataSplits, reject_frames, seeded_split

#: train / validation / test fractions; the split is fixed (seed 0) so every run sees the same test set.
DIGITS_SPLIT = (0.7, 0.15, 0.15)


@DATASETS.register("digits")
def digits(*, root: str = "data", download: bool = False, path: Optional[str] = None,
           frames: Optional[Dict[str, Any]] = None) -> DataSplits:
    """Pixels scaled from 0..16 to [0, 1]; x ``[1, 8, 8]`` float32, y int64. ``root``/``download`` are unused;
    a static set, so a non-empty ``frames`` is a UserError."""
    reject_frames("digits", frames)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train, val, test = seeded_split(len(y), DIGITS_SPLIT, seed=0)
    return DataSplits(
        name="digits",
        train=TensorDataset(x[train], y[train]),
        val=TensorDataset(x[val], y[val]),
        test=TensorDataset(x[test], y[test]),
        input_shape=(1, 8, 8),
        num_classes=10,
    )
