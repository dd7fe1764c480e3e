"""Run directories: create, check writable, start fresh or resume, and small atomic writes."""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rccsnn.errors import UserError


def _file(name: str) -> property:
    return property(lambda self: self.root / name, doc=f"``root/{name}``")


@dataclass(frozen=True)
class RunDir:
    """The one layout of a run directory: every file name a run, a sweep point or a benchmark reads or writes.

    Example::

        run = RunDir("runs/compress/x")
        run.model      # runs/compress/x/model.pt
    """

    root: Path

    def __init__(self, root: "str | Path") -> None:
        object.__setattr__(self, "root", Path(root))

    STATE = "state.pt"        # resume state, rewritten atomically after every epoch
    MODEL = "model.pt"        # the run's model (masks baked), the checkpoint format
    SUMMARY = "summary.json"  # what the run produced; its presence marks a finished run
    CONFIG = "config.yaml"    # the resolved settings
    POINT = "point.yaml"      # a sweep point's settings (input of the run)
    LOG = "log.txt"           # a sweep point's console output
    ERROR = "error.txt"       # a failed sweep point's last line

    state, model, summary, config = _file(STATE), _file(MODEL), _file(SUMMARY), _file(CONFIG)
    point, log, error = _file(POINT), _file(LOG), _file(ERROR)


#: Files a run writes; a fresh run removes these (and only these) from a reused directory.
RUN_FILES = (RunDir.STATE, RunDir.MODEL, RunDir.SUMMARY, RunDir.CONFIG)
EVENTS_GLOB = "events.out.tfevents.*"

#: errno values that mean "the disk (or the user's quota) is full".
NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def no_space_message(path: Any = None) -> str:
    """The one line for a full disk; ``path`` is the file being written, when known."""
    where = f" writing {path}" if path else ""
    return f"no space left on device{where}; free space or choose another --out"


def write_error(path: str | Path, exc: OSError) -> UserError:
    """The :class:`UserError` for an ``OSError`` raised while writing ``path`` (a full disk, a file where a
    directory should be, no permission...)."""
    if exc.errno in NO_SPACE:
        return UserError(no_space_message(path))
    if exc.errno == errno.EEXIST and exc.filename:  # mkdir of a parent that is a file
        return UserError(f"cannot write {path}: {exc.filename} exists and is not a directory")
    return UserError(f"cannot write {path}: {exc.strerror or exc}")


def fsync_directory(path: str | Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every file system lets a directory be fsynced)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prepare_run_dir(path: str | Path, resume: bool = False) -> Path:
    """Create ``path`` (writable), and unless ``resume`` clear the files an earlier run left there.

    A reused directory would otherwise mix two runs' TensorBoard curves and leave a stale summary behind.
    With ``resume`` the directory must already hold a ``state.pt``; nothing is created when it does not.
    """
    out = Path(path)
    if resume and not RunDir(out).state.is_file():
        raise UserError(f"nothing to resume in {out}: no state.pt (run the command once without --resume)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".rccsnn-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise UserError(no_space_message(out)) from None
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
    for name in RUN_FILES:  # temporary files of a write that a crash (or SIGKILL) cut short
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
    if resume:
        return out
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for events in out.glob(EVENTS_GLOB):
        events.unlink()
    return out


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON through a temporary file, fsync and a rename: ``path`` is either the old file or the whole new
    one. An unwritable path or a full disk is a :class:`UserError`, and leaves no temporary file behind."""
    path = Path(path)
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_error(path, exc) from None
    fsync_directory(path.parent)
