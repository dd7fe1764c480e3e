"""The tonic side of :mod:`rccsnn.data.events`: tonic's dataset classes with a presence-only file check, and
the ToFrame binning.

Imported only when an event set is loaded: tonic is an optional extra, and importing it takes about a second.
"""
from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.error import URLError

from tonic import datasets, transforms
from torch.utils.data import Dataset

from rccsnn.errors import UserError, first_line


def _holds_files(folder: str) -> bool:
    return os.path.isdir(folder) and any(files for _, _, files in os.walk(folder))


# The subclasses keep tonic's class names: tonic places each set in root/<class name>/.
class NMNIST(datasets.NMNIST):
    """tonic's N-MNIST, content with any extracted recordings (tonic also wants train.zip and 10,000 files)."""

    def _check_exists(self) -> bool:
        return _holds_files(os.path.join(self.location_on_system, self.folder_name))


class DVSGesture(datasets.DVSGesture):
    """tonic's DVS Gesture, content with any extracted recordings (tonic also wants the .tar.gz and 100 files)."""

    def _check_exists(self) -> bool:
        return _holds_files(os.path.join(self.location_on_system, self.folder_name))


class SHD(datasets.SHD):
    """tonic's SHD, content with the .h5 file (tonic also wants the downloaded .h5.zip beside it)."""

    def _check_exists(self) -> bool:
        return os.path.isfile(os.path.join(self.location_on_system, self.data_filename))


CLASSES = {"NMNIST": NMNIST, "DVSGesture": DVSGesture, "SHD": SHD}


def to_frame(tonic_class: str, settings: Mapping[str, Any]) -> transforms.ToFrame:
    """ToFrame on the sensor of ``tonic_class`` with the checked frame settings (see :mod:`rccsnn.data.events`)."""
    return transforms.ToFrame(sensor_size=CLASSES[tonic_class].sensor_size, **dict(settings))


def open_split(tonic_class: str, name: str, root: str, download: bool, train: bool, expected: str) -> Dataset:
    """The tonic dataset of one split; missing or unreadable files are a UserError naming ``expected``."""
    present = os.path.isfile(expected) or _holds_files(expected)
    if not present and not download:
        raise UserError(f"data set '{name}' not found under root '{root}' (missing {expected}); "
                        f"pass --download to fetch it or --data-root to point at the directory that holds it")
    try:
        return CLASSES[tonic_class](root, train=train)
    except (URLError, OSError, RuntimeError, ValueError, KeyError, IndexError, EOFError) as exc:
        # tonic raises these on a failed download or a file it cannot parse (h5py: OSError/KeyError).
        action = "download or read" if download else "read (bad or truncated file?)"
        raise UserError(f"could not {action} data set '{name}' under root '{root}': {first_line(exc)}") from exc


__all__ = ["CLASSES", "DVSGesture", "NMNIST", "SHD", "open_split", "to_frame"]
