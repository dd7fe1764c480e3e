"""``npz``: a user's own arrays in one ``.npz`` file (``--data-path``), static images or event frames.

Keys:

* ``x`` ``[N, C, H, W]`` or ``[N, H, W]`` (a channel axis is added), ``y`` ``[N]`` integer labels ``>= 0``;
* optionally ``x_val``/``y_val`` and ``x_test``/``y_test``, given in pairs, with the same sample shape as ``x``;
* event data (time-major samples, ``DataSplits.steps`` = T): ``x`` ``[N, T, C, H, W]`` (5-D) is always event
  data; so is ``x`` ``[N, T, F]``, ``[N, T, H, W]`` (a channel axis is added) or ``[N, T, C, H, W]`` when the
  file holds ``events`` = True (a 0-d bool or int array, e.g. ``numpy.savez(..., events=True)``). A sample is
  ``[T, *step_shape]`` and ``input_shape`` is the step shape. Event values (counts or any non-negative floats)
  are kept as they are, converted to float32, never divided by 255; they must be finite and ``>= 0``.

A missing validation split is carved out of ``x``/``y``: a fixed (seed 0) 15 % of the given training samples;
a missing test split is carved likewise, another 15 % of them. With both missing, train/val/test are
70 / 15 / 15 % of ``x`` (as for ``digits``). Integer pixels of static images (e.g. uint8 0..255) are scaled to
[0, 1] by /255; floating-point pixels are kept as they are. ``num_classes`` is the largest label over all
splits plus one. The frames of an npz are already binned, so ``data.frames`` is an error here.
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from rccsnn.data.base import DATASETS, DataSplits, reject_frames, seeded_split
from rccsnn.errors import UserError, first_line

#: fraction of the given training samples carved out for each missing split (validation, test).
CARVE_FRACTION = 0.15

_OPTIONAL_SPLITS = ("val", "test")


def _read_npz(path: Optional[str]) -> Dict[str, np.ndarray]:
    if not path:
        raise UserError("data set 'npz' needs --data-path pointing to an .npz file with arrays 'x' and 'y'")
    if not os.path.isfile(path):
        raise UserError(f"npz file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        # numpy's own message here speaks of pickles, which would mislead: the file is just not an archive.
        raise UserError(f"not a valid .npz file: {path} (expected arrays saved with numpy.savez)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy file gives one bare array
        raise UserError(f"not a valid .npz file: {path} (holds a single array; save with numpy.savez)")
    try:
        with archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"not a valid .npz file: {path} ({first_line(exc)})") from None


def _pixels(x: np.ndarray, key: str, path: str) -> torch.Tensor:
    """``[N, C, H, W]`` float32 from ``[N, C, H, W]`` or ``[N, H, W]`` integer/float pixels."""
    if x.ndim not in (3, 4):
        raise UserError(f"{path}: '{key}' must be [N, C, H, W] or [N, H, W], got shape {list(x.shape)}")
    if x.ndim == 3:
        x = x[:, None]
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise UserError(f"{path}: integer '{key}' must hold pixel values 0..255, got {x.min()}..{x.max()}")
        return torch.from_numpy(x.astype(np.float32) / 255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{path}: '{key}' must be integer or floating-point pixels, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise UserError(f"{path}: '{key}' contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _events(x: np.ndarray, key: str, path: str) -> torch.Tensor:
    """``[N, T, *step_shape]`` float32 event frames from ``[N, T, F]``, ``[N, T, H, W]`` or ``[N, T, C, H, W]``."""
    if x.ndim not in (3, 4, 5):
        raise UserError(f"{path}: event data '{key}' must be [N, T, F], [N, T, H, W] or [N, T, C, H, W], "
                        f"got shape {list(x.shape)}")
    if x.ndim == 4:
        x = x[:, :, None]
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_):
        raise UserError(f"{path}: event data '{key}' must be integer or floating-point, got dtype {x.dtype}")
    frames = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(frames).all():
        raise UserError(f"{path}: event data '{key}' {list(x.shape)} contains NaN or infinite values")
    if frames.size and frames.min() < 0:
        raise UserError(f"{path}: event data '{key}' {list(x.shape)} has negative values (min {frames.min()}); "
                        f"events are counts >= 0")
    return torch.from_numpy(frames)


def _is_event_file(arrays: Dict[str, np.ndarray], path: str) -> bool:
    """Whether ``x`` holds time-major event frames: a 5-D ``x``, or the file's ``events`` flag."""
    if "events" not in arrays:
        return arrays["x"].ndim == 5
    flag = arrays["events"]
    if flag.ndim != 0 or not (flag.dtype == np.bool_ or np.issubdtype(flag.dtype, np.integer)):
        raise UserError(f"{path}: 'events' must be a single bool (numpy.savez(..., events=True)), "
                        f"got dtype {flag.dtype} shape {list(flag.shape)}")
    return bool(flag)


def _labels(y: np.ndarray, key: str, path: str) -> torch.Tensor:
    if y.ndim != 1:
        raise UserError(f"{path}: '{key}' must be 1-D integer labels [N], got shape {list(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: '{key}' must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise UserError(f"{path}: '{key}' has negative labels (min {y.min()}); labels must be 0..K-1")
    return torch.from_numpy(y.astype(np.int64))


def _pair(arrays: Dict[str, np.ndarray], x_key: str, y_key: str, path: str,
          events: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    x = (_events if events else _pixels)(arrays[x_key], x_key, path)
    y = _labels(arrays[y_key], y_key, path)
    if len(x) != len(y):
        raise UserError(f"{path}: '{x_key}' has {len(x)} samples but '{y_key}' has {len(y)} labels")
    if len(x) == 0:
        raise UserError(f"{path}: '{x_key}' is empty")
    return x, y


@DATASETS.register("npz")
def npz(*, root: str = "data", download: bool = False, path: Optional[str] = None,
        frames: Optional[Dict[str, Any]] = None) -> DataSplits:
    """Arrays from the ``.npz`` at ``path`` (see the module docstring); ``root``/``download`` are unused."""
    reject_frames("npz", frames, what="reads frames already binned")
    arrays = _read_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise UserError(f"{path}: missing array '{key}' (found: {', '.join(sorted(arrays)) or 'none'})")
    events = _is_event_file(arrays, path)
    splits = {"train": _pair(arrays, "x", "y", path, events)}
    for split in _OPTIONAL_SPLITS:
        x_key, y_key = f"x_{split}", f"y_{split}"
        if (x_key in arrays) != (y_key in arrays):
            given, absent = (x_key, y_key) if x_key in arrays else (y_key, x_key)
            raise UserError(f"{path}: '{given}' is given without '{absent}'")
        if x_key in arrays:
            splits[split] = _pair(arrays, x_key, y_key, path, events)
            if splits[split][0].shape[1:] != splits["train"][0].shape[1:]:
                raise UserError(
                    f"{path}: '{x_key}' samples have shape {list(splits[split][0].shape[1:])} "
                    f"but 'x' samples have {list(splits['train'][0].shape[1:])}"
                )

    carved = [split for split in _OPTIONAL_SPLITS if split not in splits]
    if carved:
        x, y = splits["train"]
        *carved_idx, train_idx = seeded_split(len(y), (CARVE_FRACTION,) * len(carved) + (1.0,), seed=0)
        for split, idx in zip(carved, carved_idx):
            if len(idx) == 0:
                raise UserError(
                    f"{path}: {len(y)} samples in 'x' are too few to carve a {split} split; "
                    f"give 'x_{split}'/'y_{split}' or more samples"
                )
            splits[split] = (x[idx], y[idx])
        splits["train"] = (x[train_idx], y[train_idx])

    num_classes = int(max(int(y.max()) for _, y in splits.values())) + 1
    sample_shape = tuple(splits["train"][0].shape[1:])
    return DataSplits(
        name="npz",
        train=TensorDataset(*splits["train"]),
        val=TensorDataset(*splits["val"]),
        test=TensorDataset(*splits["test"]),
        input_shape=sample_shape[1:] if events else sample_shape,
        num_classes=num_classes,
        extra={"path": os.path.abspath(path), "carved": carved, "carve_fraction": CARVE_FRACTION,
               "carve_seed": 0, "events": events,
               "scaled_from_integer": not events and not np.issubdtype(arrays["x"].dtype, np.floating)},
        steps=sample_shape[0] if events else None,
    )
