"""Run directories: claim one (locked, never replacing a run unless told), start fresh or resume, small atomic writes.

The rules that keep what a user ran (README, "When something goes wrong"):

* a run directory is locked while a run writes it (:mod:`rccsnn.runlock`); a second run there stops at once;
* a directory that holds a finished run (``summary.json``) or an unfinished one (``state.pt``) is not started afresh
  unless the user says ``--overwrite``; ``--resume`` continues only an unfinished run;
* a default directory name is versioned: a run whose settings differ from the run already there gets ``NAME-2``,
  ``NAME-3``, ... (as Lightning's loggers make ``version_N``), and the same settings find the same directory again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Optional

from rccsnn.errors import UserError

if TYPE_CHECKING:
    from rccsnn.runlock import RunLock


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
    LOCK = "run.lock"         # held while a run (or the sweep that starts it) writes here: who, since when

    state, model, summary, config = _file(STATE), _file(MODEL), _file(SUMMARY), _file(CONFIG)
    point, log, error, lock = _file(POINT), _file(LOG), _file(ERROR), _file(LOCK)

    def holds_run(self) -> bool:
        """Whether anything of a run is here (its settings, resume state, model or summary)."""
        return any((self.root / name).exists() for name in RUN_FILES)


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
    """Clear what an earlier run left in ``path`` (a directory this run has claimed), unless ``resume``.

    A reused directory would otherwise mix two runs' TensorBoard curves and leave a stale summary behind.
    Temporary files of a write that a crash cut short go in either case.
    """
    out = Path(path)
    for name in RUN_FILES:  # temporary files of a write that a crash (or SIGKILL) cut short
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
    if resume:  # a finished run resumed to run more epochs is unfinished again until its new summary
        (out / RunDir.SUMMARY).unlink(missing_ok=True)
        return out
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for events in out.glob(EVENTS_GLOB):
        events.unlink()
    return out


# ============================================================================================ claiming a directory
#: Settings that do not change what a run computes, so do not tell two runs apart for a default directory.
NOT_COMPARED = ("out", "device")
#: Versions of a default directory name tried before giving up (NAME, NAME-2, ... NAME-MAX_VERSIONS).
MAX_VERSIONS = 999


@dataclass
class Claim:
    """A run directory this process holds locked, and what the user should hear about how it got it."""

    root: Path
    notes: List[str] = field(default_factory=list)


def versions(base: Path) -> Iterator[Path]:
    """``base``, ``base-2``, ``base-3``, ... (``MAX_VERSIONS`` names)."""
    yield base
    for n in range(2, MAX_VERSIONS + 1):
        yield base.with_name(f"{base.name}-{n}")


def settings_digest(cfg: Any) -> str:
    """A short digest of a config dataclass's resolved settings, :data:`NOT_COMPARED` aside: equal for two configs
    exactly when they describe the same run (tuples and lists alike, as a YAML round trip leaves them)."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_COMPARED}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def holds_config(root: Path, cfg: Any) -> bool:
    """Whether the run in ``root`` was started with the same resolved settings as ``cfg`` (a config dataclass),
    :data:`NOT_COMPARED` aside; a missing or unreadable ``config.yaml`` holds other settings."""
    from rccsnn.config import from_dict, read_yaml  # config imports the model code; claiming needs it only here

    file = RunDir(root).config
    if not file.is_file():
        return False
    try:
        theirs = from_dict(type(cfg), read_yaml(file))
    except (UserError, TypeError, ValueError):
        return False
    return settings_digest(theirs) == settings_digest(cfg)


def find_versioned(base: Path, cfg: Any) -> Path:
    """Without locking anything: the version of the default name ``base`` a run of ``cfg`` would use - the one
    that holds a run with these settings, else the first that holds no run."""
    for root in versions(base):
        if holds_config(root, cfg) or not RunDir(root).holds_run():
            return root
    raise UserError(f"{MAX_VERSIONS} versions of {base} exist; choose another --out")


def _make_dirs(root: Path) -> List[Path]:
    """Create ``root`` and its missing parents; returns the directories created, deepest first."""
    created = []
    for parent in [root, *root.parents]:
        if parent.exists():
            break
        created.append(parent)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise UserError(no_space_message(root)) from None
        raise UserError(f"output directory {root} is not writable: {exc.strerror or exc}") from None
    return created


def _lock(root: Path, settings: str) -> "RunLock":
    from rccsnn.runlock import RunLock  # runlock imports errors only; imported here to keep rundir's import light

    try:
        return RunLock.acquire(RunDir(root).lock, settings=settings)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise UserError(no_space_message(RunDir(root).lock)) from None
        raise UserError(f"output directory {root} is not writable: {exc.strerror or exc}") from None


def finished_epochs(root: Path) -> Optional[int]:
    """The epochs the finished run in ``root`` ran (its summary's ``epochs``); ``None`` when unreadable."""
    try:
        epochs = json.loads(RunDir(root).summary.read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        return None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def check_start(root: Path, *, resume: bool, overwrite: bool, epochs: Optional[int] = None) -> None:
    """The rules of starting a run of ``epochs`` epochs in ``root`` (held locked): a finished run is replaced only
    with ``overwrite``, and resumed only to run more epochs than it did; an unfinished run is resumed, or replaced
    with ``overwrite``; nothing else is resumed."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: --resume continues the run, "
                        "--overwrite replaces it")
    files = RunDir(root)
    fresh = "choose a fresh --out directory"
    if files.summary.is_file():
        done = finished_epochs(root)
        if resume and not (epochs is not None and done is not None and epochs > done):
            ran = f" (all its {done} epochs; --epochs with more continues it)" if done is not None else ""
            raise UserError(f"{root} holds a finished run{ran}: there is nothing to resume; --overwrite runs it "
                            f"again from the start, or {fresh}")
        if not (resume or overwrite):
            raise UserError(f"{root} already holds a finished run ({RunDir.SUMMARY}): --overwrite replaces it, "
                            f"or {fresh} (--resume continues only an unfinished run)")
    elif files.state.is_file():
        if not (resume or overwrite):
            raise UserError(f"{root} holds an unfinished run ({RunDir.STATE}): --resume continues it, "
                            f"--overwrite replaces it, or {fresh}")
    elif resume:
        raise UserError(f"nothing to resume in {root}: no {RunDir.STATE} (run the command once without --resume)")


@contextlib.contextmanager
def claimed_run_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False, epochs: Optional[int] = None,
                    settings: Any = None) -> Iterator[Claim]:
    """Hold the run directory ``path`` locked for the ``with`` block, after :func:`check_start`'s rules for a run
    of ``epochs`` epochs.

    ``settings`` (the run's config dataclass) makes ``path`` a default name, versioned: the first of ``path``,
    ``path-2``, ... that holds a run with these settings (:func:`holds_config`) or no run at all is claimed, and a
    note says so when it is not ``path`` itself. A directory another live run holds stops the claim at once
    (:class:`~rccsnn.runlock.LockHeld`), unless it is a version that run holds with other settings (the lock
    file names their digest): then the next version is tried. When the block raises, what the claim created (the
    lock file, directories) is removed again where the run wrote nothing: a failed start leaves nothing behind.
    """
    from rccsnn.runlock import LockHeld

    base = Path(path)
    digest = settings_digest(settings) if settings is not None else ""
    if resume and settings is None and not (RunDir(base).state.is_file() or RunDir(base).summary.is_file()):
        check_start(base, resume=resume, overwrite=overwrite, epochs=epochs)  # before anything is created
    notes: List[str] = []
    for root in (versions(base) if settings is not None else [base]):
        created = _make_dirs(root)
        try:
            lock = _lock(root, digest)
        except UserError as exc:
            _remove_empty(created)
            if not isinstance(exc, LockHeld) or settings is None:
                raise
            theirs = exc.holder.settings if exc.holder is not None else ""
            if theirs == digest or (not theirs and holds_config(root, settings)):
                raise
            continue  # a run with other settings is starting or running there
        if settings is not None and RunDir(root).holds_run() and not holds_config(root, settings):
            lock.release()
            _remove_empty(created)
            continue
        if lock.previous is not None:
            notes.append(f"took over {lock.path}: its {lock.previous.describe()} ended without releasing it")
        if root != base:
            notes.append(f"{base} holds a run with other settings; this run writes {root}")
        break
    else:
        raise UserError(f"{MAX_VERSIONS} versions of {base} exist; choose another --out")
    try:
        check_start(root, resume=resume, overwrite=overwrite, epochs=epochs)
        yield Claim(root, notes)
    except BaseException:
        lock.release()
        _remove_empty(created)
        raise
    lock.release()


def _remove_empty(created: List[Path]) -> None:
    for directory in created:  # deepest first; one that a run wrote into stays
        try:
            directory.rmdir()
        except OSError:
            return


def exists_message(path: str | Path) -> str:
    return f"{path} already exists: --overwrite replaces it, or choose another --out"


def check_destination(path: str | Path, *, overwrite: bool) -> None:
    """An output file that exists is another run's result: a :class:`UserError` unless ``overwrite``."""
    if not overwrite and os.path.lexists(path):
        raise UserError(exists_message(path))


def publish(tmp: str | Path, path: str | Path, *, overwrite: bool) -> None:
    """Give the complete file ``tmp`` its name ``path`` (same directory). Unless ``overwrite`` an existing ``path``
    is kept and this is a :class:`UserError`: a hard link fails atomically where the name exists, so of two writers
    one wins and the other is told, instead of the later silently replacing the earlier."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise UserError(exists_message(path)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        check_destination(path, overwrite=False)  # a file system without hard links: check, then rename
        os.replace(tmp, path)
        return
    os.unlink(tmp)


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
