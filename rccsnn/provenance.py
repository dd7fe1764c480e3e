"""Which code made a result: the rccsnn version and, for a git checkout (an editable install), its commit; and
what it ran on (:func:`environment`).

A sweep's finished points are kept by their settings; after the code changes (a new default, a fix) they still count
as done, so results from two versions of the method can sit in one table. Each run records its code in
``summary.json`` (``code``), and the sweep's results say when the finished points come from more than one.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from rccsnn.version import __version__

#: The package's directory, and the directory that holds it: a checkout when that has a ``.git`` (an editable install;
#: an installed wheel sits in site-packages, which has none).
PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent


def _git(root: Path, *args: str) -> str:
    # Read-only: no optional locks (a status that refreshed the index could make the user's own `git commit` fail
    # on index.lock), and no GIT_DIR / GIT_WORK_TREE inherited from a hook pointing git at another repository.
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True,
                          errors="replace", check=True, timeout=30, env=env).stdout.strip()


def code_version(root: Path = SOURCE_ROOT, package: str = PACKAGE_DIR.name) -> Dict[str, Any]:
    """``{"rccsnn": version, "commit": 40 hex digits or None, "modified": bool or None}``.

    ``commit`` is the HEAD of the git checkout at ``root``; ``modified`` whether the package's files there (the
    directory ``package``: tracked ones changed, or new ones git does not ignore) differ from it, so editing a test
    or a document does not mark a run. Both are None for an installed package (no ``.git``) or where git cannot
    answer (no git, a checkout it refuses).
    """
    commit = modified = None
    if (root / ".git").exists():
        try:
            commit = _git(root, "rev-parse", "HEAD")
            modified = bool(_git(root, "status", "--porcelain", "--", package))
        except (OSError, subprocess.SubprocessError):
            commit = modified = None
    return {"rccsnn": __version__, "commit": commit, "modified": modified}


def code_label(code: Optional[Mapping[str, Any]]) -> str:
    """Short form for tables: ``0.1.0+b86d942``, ``0.1.0+b86d942.modified``, ``0.1.0`` (no commit), or ``unknown``
    for a run that did not record its code (made before runs recorded it); a run resumed with other code than it
    started with adds `` after 0.1.0+a72a64d`` (the earlier starts' labels)."""
    if not isinstance(code, Mapping) or not code:
        return "unknown"
    label = str(code.get("rccsnn", "?"))
    if code.get("commit"):
        label += f"+{str(code['commit'])[:7]}" + (".modified" if code.get("modified") else "")
    earlier = code.get("resumed_from")
    if isinstance(earlier, list) and earlier:
        label += " after " + ", ".join(code_label(c) for c in earlier)
    return label


#: The libraries whose versions a run records besides torch (those that shape its numbers).
LIBRARIES = ("snntorch", "numpy")


def environment(device: torch.device | str, processes: int = 1) -> Dict[str, Any]:
    """What a run ran on: ``python``, ``torch`` (its ``__version__``, with the build: ``2.14.1+cu130``) and the
    :data:`LIBRARIES`' versions (None where one is not installed),
    ``threads`` (torch's intra-op threads of this process), ``device`` and ``processes`` (a distributed run's); on a
    CUDA device also ``gpu`` (its name), ``cuda`` and ``cudnn`` (the versions torch runs with).

    Why the threads: the same code, data and seed give other numbers with another thread count, since a sum over
    threads adds in another order. Mostly in the last digits; but a run that is chaotic (a network near collapse at
    a tight budget) can end elsewhere: the panel's synaptic conv net at 0.005 and 10 epochs, seed 1, gave 10.4 % with
    one thread and 30.9 % with two (BENCHMARKS.md). To repeat a run exactly, repeat these too.
    """
    versions: Dict[str, Optional[str]] = {"torch": str(torch.__version__)}  # (a str subclass: it would not load)
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env: Dict[str, Any] = {"python": platform.python_version(), **versions, "threads": torch.get_num_threads(),
                           "device": str(device), "processes": int(processes)}
    device = torch.device(device)
    if device.type == "cuda":  # a GPU's kernels, and so its sums' order, change with the card and the libraries
        cudnn = torch.backends.cudnn.version()
        env.update(gpu=str(torch.cuda.get_device_name(device)), cuda=str(torch.version.cuda),
                   cudnn=None if cudnn is None else str(cudnn))
    return env
