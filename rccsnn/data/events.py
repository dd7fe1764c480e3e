"""``nmnist``, ``dvsgesture``, ``shd``: neuromorphic event sets, read by tonic and binned into frames.

The recordings are read by tonic's own dataset classes (``tonic.datasets.NMNIST``, ``DVSGesture``, ``SHD``) from
``root`` in tonic's on-disk layout, downloaded there only when ``download`` is true:

* ``nmnist``: ``root/NMNIST/Train/<digit>/*.bin`` and ``root/NMNIST/Test/...`` (the extracted train.zip/test.zip);
* ``dvsgesture``: ``root/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy`` and ``ibmGestureTest``;
* ``shd``: ``root/SHD/shd_train.h5`` and ``root/SHD/shd_test.h5``.

Files present are enough: tonic's own check also wants the downloaded archive and a minimum file count (10,000
.bin files for N-MNIST), which would send a user's converted copy, or a small subset, to the network.

Every recording is binned by ``tonic.transforms.ToFrame`` into a fixed number T of frames of event counts per
bin, pixel (or channel) and polarity; ``frames`` (``data.frames`` in a recipe) are its settings:

* ``n_time_bins`` (default :data:`DEFAULT_N_TIME_BINS`): T bins of equal duration, or ``n_event_bins``: T bins of
  equal event count (one of the two);
* ``overlap``: fraction of a bin that consecutive bins share, in [0, 1) (default 0).

ToFrame's other slicings (``time_window``, ``event_count``) give each recording its own number of frames, which
no fixed-T batch can hold, so they are not accepted. A sample is ``(x [T, *step_shape] float32, y int64)``:
``[T, 2, 34, 34]`` for N-MNIST, ``[T, 2, 128, 128]`` for DVS Gesture (polarity, y, x), ``[T, 700]`` for SHD
(channels). ``DataSplits.steps`` is T; batch with ``collate_fn=splits.collate`` to get ``[T, B, *step_shape]``.

Binning a recording reads and parses its whole event stream, so every binned recording is kept on disk
(:class:`CachedFrames`): ``root/<tonic class>/frames/<settings>/<train|test>-<count>/<index>.npz``, the folder
named by the frame settings, so changed settings bin again and never read stale frames. It is filled as samples
are first read. 10 % of tonic's training set (fixed, seed 0) becomes the validation split.

tonic is an optional extra (``pip install -e ".[events]"``); it is imported only when one of these sets is
loaded (:mod:`rccsnn.data.tonic_sets`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from rccsnn.data.base import DATASETS, EVENT_DATASETS, DataSplits, seeded_split
from rccsnn.data.vision import VAL_FRACTION
from rccsnn.errors import UserError

#: number of time bins T when ``data.frames`` names neither ``n_time_bins`` nor ``n_event_bins``.
DEFAULT_N_TIME_BINS = 16

#: the ToFrame settings ``data.frames`` may hold (the ones that give every recording the same T).
FRAME_KEYS = ("n_time_bins", "n_event_bins", "overlap")

_BIN_KEYS = ("n_time_bins", "n_event_bins")


@dataclass(frozen=True)
class EventSet:
    """What rccsnn needs to know about one tonic data set.

    Attributes:
        name: registry name.
        tonic_class: the class name in :mod:`tonic.datasets` (also tonic's folder under ``root``).
        raw: paths, relative to ``root``, of the extracted training and test recordings.
        step_shape: shape of one frame as samples give it (tonic's ``[P, H, W]``, or ``[X]`` for a 1-D sensor).
        num_classes: number of classes K.
    """

    name: str
    tonic_class: str
    raw: Tuple[str, str]
    step_shape: Tuple[int, ...]
    num_classes: int

    def raw_path(self, root: str, train: bool) -> str:
        return os.path.join(root, self.raw[0] if train else self.raw[1])


SETS: Tuple[EventSet, ...] = (
    EventSet("nmnist", "NMNIST", ("NMNIST/Train", "NMNIST/Test"), (2, 34, 34), 10),
    EventSet("dvsgesture", "DVSGesture", ("DVSGesture/ibmGestureTrain", "DVSGesture/ibmGestureTest"),
             (2, 128, 128), 11),
    # SHD's 700 cochlea channels on one polarity: tonic's [1, 700] frame, without the polarity axis of size 1.
    EventSet("shd", "SHD", ("SHD/shd_train.h5", "SHD/shd_test.h5"), (700,), 20),
)


def frame_settings(name: str, frames: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``frames`` checked and completed: exactly one of ``n_time_bins``/``n_event_bins`` (default
    ``n_time_bins`` = :data:`DEFAULT_N_TIME_BINS`), ``overlap`` if given; sorted by key."""
    settings = dict(frames or {})
    unknown = sorted(str(key) for key in settings if key not in FRAME_KEYS)
    if unknown:
        raise UserError(f"data.frames: unknown key '{unknown[0]}' for data set '{name}'; "
                        f"valid keys: {', '.join(FRAME_KEYS)}")
    bins = [key for key in _BIN_KEYS if key in settings]
    if len(bins) > 1:
        raise UserError("data.frames: give one of n_time_bins and n_event_bins, not both")
    if not bins:
        settings["n_time_bins"] = DEFAULT_N_TIME_BINS
    for key in _BIN_KEYS:
        value = settings.get(key)
        if key in settings and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"data.frames.{key} must be a whole number >= 1, got {value!r}")
    overlap = settings.get("overlap", 0)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise UserError(f"data.frames.overlap must be a fraction of a bin in [0, 1), got {overlap!r}")
    return dict(sorted(settings.items()))


def settings_folder(settings: Mapping[str, Any]) -> str:
    """The cache folder name of frame settings, e.g. ``n_time_bins=16`` or ``n_event_bins=8,overlap=0.5``."""
    return ",".join(f"{key}={value}" for key, value in sorted(settings.items()))


class CachedFrames(Dataset):
    """The recordings of a tonic dataset as frames, each binned once and then read from ``cache_dir``.

    Args:
        recordings: tonic dataset of ``(events structured array, label)``.
        to_frame: the binning, events -> ``[T, ...]`` counts (a ``tonic.transforms.ToFrame``).
        steps: T.
        step_shape: shape of one frame as samples give it; the binned ``[T, ...]`` is reshaped to it.
        cache_dir: folder of ``<index>.npz`` files (``frames``, ``label``), one per recording.

    Each file is written to a temporary name and renamed into place, so a DataLoader worker or another run
    reading the same cache sees a whole file or none, never half of one.
    """

    def __init__(self, recordings: Dataset, to_frame: Callable[[np.ndarray], np.ndarray], steps: int,
                 step_shape: Tuple[int, ...], cache_dir: Path) -> None:
        self.recordings = recordings
        self.to_frame = to_frame
        self.shape = (steps, *step_shape)
        self.cache_dir = Path(cache_dir)
        self.length = len(recordings)  # tonic's SHD opens its h5 file on every len()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path = self.cache_dir / f"{index}.npz"
        try:
            with np.load(path) as cached:
                frames, label = cached["frames"], int(cached["label"])
        except FileNotFoundError:
            events, label = self.recordings[index]
            frames, label = np.asarray(self.to_frame(events)), int(label)
            self._store(path, frames, label)
        return torch.from_numpy(frames.astype(np.float32).reshape(self.shape)), label

    def _store(self, path: Path, frames: np.ndarray, label: int) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                # Compressed: frames are mostly zeros (N-MNIST's are ~95 % empty bins).
                np.savez_compressed(out, frames=frames, label=np.int64(label))
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise


def _build(spec: EventSet, root: str, download: bool, frames: Optional[Mapping[str, Any]]) -> DataSplits:
    settings = frame_settings(spec.name, frames)
    try:
        from rccsnn.data import tonic_sets
    except ModuleNotFoundError as exc:
        raise UserError(f"data set '{spec.name}' needs tonic ({exc}); install it with: "
                        f"pip install -e \".[events]\"") from None
    steps = settings.get("n_time_bins") or settings["n_event_bins"]
    to_frame = tonic_sets.to_frame(spec.tonic_class, settings)
    cache_root = Path(root) / spec.tonic_class / "frames" / settings_folder(settings)
    split_frames = {}
    for split, train in (("train", True), ("test", False)):
        recordings = tonic_sets.open_split(spec.tonic_class, spec.name, root, download, train,
                                           spec.raw_path(root, train))
        split_frames[split] = CachedFrames(recordings, to_frame, steps, spec.step_shape,
                                           cache_root / f"{split}-{len(recordings)}")
    train_idx, val_idx = seeded_split(len(split_frames["train"]), (1.0 - VAL_FRACTION, VAL_FRACTION), seed=0)
    return DataSplits(
        name=spec.name,
        train=Subset(split_frames["train"], train_idx.tolist()),
        val=Subset(split_frames["train"], val_idx.tolist()),
        test=split_frames["test"],
        input_shape=spec.step_shape,
        num_classes=spec.num_classes,
        extra={"val_fraction": VAL_FRACTION, "val_seed": 0, "frames": settings, "cache": str(cache_root)},
        steps=steps,
    )


def _register(spec: EventSet) -> None:
    def factory(*, root: str = "data", download: bool = False, path: Optional[str] = None,
                frames: Optional[Dict[str, Any]] = None) -> DataSplits:
        return _build(spec, root, download, frames)

    factory.__doc__ = (f"{spec.tonic_class} through tonic: x ``[T, {', '.join(map(str, spec.step_shape))}]`` "
                       f"event counts, {spec.num_classes} classes; ``path`` is unused (see rccsnn.data.events).")
    DATASETS.register(spec.name)(factory)


for _spec in SETS:
    _register(_spec)

if tuple(spec.name for spec in SETS) != EVENT_DATASETS:  # the static sets' error message lists EVENT_DATASETS
    raise AssertionError("rccsnn.data.base.EVENT_DATASETS must name exactly the sets registered here")

__all__ = ["CachedFrames", "DEFAULT_N_TIME_BINS", "EventSet", "FRAME_KEYS", "SETS", "frame_settings",
           "settings_folder"]
