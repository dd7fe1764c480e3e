"""Which code made a result: the rccsnn version and, for a git checkout (an editable install), its commit.

A sweep's finished points are kept by their settings; after the code changes (a new default, a fix) they still count
as done, so results from two versions of the method can sit in one table. Each run records its code in
``summary.json`` (``code``), and the sweep's results say when the finished points come from more than one.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from rccsnn.version import __version__

#: The directory that holds the package; a checkout when it has a ``.git``.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def code_version(root: Path = SOURCE_ROOT) -> Dict[str, Any]:
    """``{"rccsnn": version, "commit": 40 hex digits or None, "modified": bool or None}``.

    ``commit`` is the HEAD of the git checkout at ``root`` and ``modified`` whether tracked files differ from it; both
    are None for an installed package (no ``.git``) or where git cannot answer.
    """
    commit = modified = None
    if (root / ".git").exists():
        try:
            commit = _git(root, "rev-parse", "HEAD")
            modified = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
        except (OSError, subprocess.SubprocessError):
            commit = modified = None
    return {"rccsnn": __version__, "commit": commit, "modified": modified}


def code_label(code: Optional[Mapping[str, Any]]) -> str:
    """Short form for tables: ``0.1.0+b86d942``, ``0.1.0+b86d942.modified``, ``0.1.0`` (no commit), or ``unknown``
    for a run that did not record its code (made before runs recorded it)."""
    if not code:
        return "unknown"
    label = str(code.get("rccsnn", "?"))
    if code.get("commit"):
        label += f"+{str(code['commit'])[:7]}" + (".modified" if code.get("modified") else "")
    return label
