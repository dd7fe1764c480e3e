"""The data set registry and the types every data set shares. Every data set is a registered factory::

    factory(*, root: str, download: bool, path: str | None, frames: dict | None = None) -> DataSplits

returning train, validation and test splits of ``(x, y int64)`` pairs. The validation split is always carved out
of the training data with a fixed seed, so model selection never looks at the test split.

Two kinds of samples:

* static sets (``DataSplits.steps`` None): ``x [*input_shape]`` float32, e.g. ``[C, H, W]`` images; the model's
  input encoder turns one into T steps;
* event sets (``steps`` = T): ``x [T, *input_shape]`` float32, time-major, ``input_shape`` the shape of ONE step
  (``(2, 34, 34)`` for N-MNIST frames, ``(700,)`` for SHD); values are event counts per time bin, not pixels.
  Batch them with ``DataLoader(..., collate_fn=splits.collate)``: :func:`time_major` stacks samples to
  ``x [T, B, *input_shape]``, the layout the time loop steps through.

``frames`` are the binning settings of event sets (``data.frames`` in a recipe, e.g. ``{"n_time_bins": 20}``;
see :mod:`rccsnn.data.events`); static sets take ``None`` or ``{}`` and reject anything else with
:func:`reject_frames`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset
from torch.utils.data import default_collate

from rccsnn.errors import UserError
from rccsnn.registry import Registry

#: the registered data sets of event streams, binned into frames by ``data.frames`` (:mod:`rccsnn.data.events`).
EVENT_DATASETS = ("nmnist", "dvsgesture", "shd")


def time_major(batch: Sequence[Tuple[torch.Tensor, Any]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """DataLoader ``collate_fn`` of event samples: ``B`` pairs ``(x [T, *S], y)`` -> ``(x [T, B, *S], y [B])``.

    The time axis goes first because the time loop feeds the model one step ``x[t]`` (``[B, *S]``) at a time;
    contiguous so each step is one dense block.
    """
    x, y = default_collate(batch)
    return x.transpose(0, 1).contiguous(), y


@dataclass
class DataSplits:
    """The three splits of a data set and what a model needs to know about it.

    Attributes:
        name: registry name of the data set.
        train, val, test: map-style datasets of ``(x, y int64)``: ``x [*input_shape]`` float32 for static sets,
            ``x [steps, *input_shape]`` float32 for event sets.
        input_shape: shape of one sample of a static set (``(C, H, W)``), of one time step of an event set.
        num_classes: number of classes K; labels are in ``[0, K)``.
        extra: anything else a data set wants to record (normalisation, source files, how splits were carved),
            for the code that loaded it; checkpoints do not store it (they record the data set's name only).
        steps: number of time steps T of an event set; None for a static set.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: Tuple[int, ...]
    num_classes: int
    extra: Dict[str, Any] = field(default_factory=dict)
    steps: Optional[int] = None

    def split(self, name: str) -> Dataset:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    @property
    def collate(self) -> Optional[Callable[[Sequence[Tuple[torch.Tensor, Any]]], Tuple[torch.Tensor, torch.Tensor]]]:
        """The DataLoader ``collate_fn`` of these samples: :func:`time_major` for event sets, None (the default,
        batch-major ``[B, *input_shape]``) for static sets."""
        return time_major if self.steps is not None else None


DATASETS: Registry[DataSplits] = Registry("data set")

SPLITS = ("train", "val", "test")


def reject_frames(name: str, frames: Optional[Mapping[str, Any]], what: str = "is not event data") -> None:
    """Raise the one-line UserError for frame settings given to data set ``name``, which takes none."""
    if frames:
        raise UserError(f"data set '{name}' {what}; data.frames applies to {', '.join(EVENT_DATASETS)}")


def seeded_split(n: int, fractions: Tuple[float, ...], seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Split ``range(n)`` into disjoint index sets of the given fractions (the last takes the rest)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [int(round(f * n)) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    return tuple(torch.split(perm, sizes))


def load_data(name: str, root: str = "data", download: bool = False, path: Optional[str] = None,
              frames: Optional[Mapping[str, Any]] = None) -> DataSplits:
    """Build the registered data set ``name``; ``frames`` are the binning settings of an event set."""
    return DATASETS.create(name, root=root, download=download, path=path,
                           frames=dict(frames) if frames else None)


__all__ = ["DATASETS", "DataSplits", "EVENT_DATASETS", "SPLITS", "load_data", "reject_frames", "seeded_split",
           "time_major"]
