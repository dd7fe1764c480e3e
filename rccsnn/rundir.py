"""Run directories: create, check writable, start fresh or resume, and small atomic writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rccsnn.errors import UserError

#: Files a run writes; a fresh run removes these (and only these) from a reused directory.
RUN_FILES = ("state.pt", "model.pt", "summary.json", "config.yaml")
EVENTS_GLOB = "events.out.tfevents.*"


def prepare_run_dir(path: str | Path, resume: bool = False) -> Path:
    """Create ``path`` (writable), and unless ``resume`` clear the files an earlier run left there.

    A reused directory would otherwise mix two runs' TensorBoard curves and leave a stale summary behind.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".rccsnn-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
    if resume:
        if not (out / "state.pt").is_file():
            raise UserError(f"nothing to resume in {out}: no state.pt (run once without --resume)")
        return out
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for events in out.glob(EVENTS_GLOB):
        events.unlink()
    return out


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON through a temporary file and a rename; an unwritable path is a :class:`UserError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
